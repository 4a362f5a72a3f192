"""`noise=white|coloured|auto` of self-supervised training: the training particles' noise spectrum, the
whitening filter the batches go through (`data.NoisyStack`), and the record `denoise` reads back.

The blind spot of noise2self (and neighbor2neighbor's pixel pairs) needs noise independent between
pixels; under a coloured spectrum it is not (relion31's: correlation 0.24 between adjacent pixels), so
the particles are whitened with W = sqrt(mean P / P) (`noise.whiten`) before the per-image
standardisation, and `denoise --config.noise=coloured --config.noise_psd=WORKDIR/noise_psd.npy` applies
the model as colour ∘ network ∘ whiten with the same filter (`noise.methods.wrap`). Measurements:
docs/finetuning.md.
"""

from __future__ import annotations

import json
import os

import numpy as np

from cryojax_denoise.errors import InputError

NOISE_RECORD = "noise.json"    # in the workdir: the noise decision and spectra of the training particles
NOISE_PSD = "noise_psd.npy"    # in the workdir: the (H, W) PSD the particles were whitened with


def noise_model(config, images=None) -> tuple[np.ndarray | None, dict]:
  """(whitening filter W (H, W) float32, or None for white noise; JSON record) of the training particles.

  From `config.noisy` the spectrum is measured exactly as `denoise` measures it on that stack
  (`noise.stack.stack_noise`: the same random rows, normalisation and pooling, hence the same PSD); from
  in-memory `images` (N, H, W) by `decide.choose` on up to `noise_fit_size` random rows."""
  from cryojax_denoise.noise import decide, stack as noise_stack, whiten as wh

  mode, psd_file = str(config.get("noise", "white")), str(config.get("noise_psd", "")) or None
  fit_size = int(config.get("noise_fit_size", 10000))
  if mode == "white" and not psd_file:
    return None, {"mode": "white", "decision": "white"}
  if images is None:
    from cryojax_denoise import io
    from cryojax_denoise.streaming import open_particles

    psd, record = noise_stack.stack_noise(open_particles(config.noisy), io.ImageReader(), mode, psd_file, fit_size)
  else:
    x = np.asarray(images, np.float32)
    if x.ndim != 3:
      raise InputError(f"config.noise: {mode} whitens single-channel particles (N, H, W), got shape {x.shape}")
    rows = np.sort(np.random.default_rng(0).choice(len(x), min(len(x), fit_size), replace=False))
    try:
      model, record = decide.choose(mode, x[rows], None, psd_file=psd_file)
    except InputError as err:
      if mode != "auto" or psd_file:
        raise
      model, record = None, {"mode": mode, "decision": "white", "reason": str(err)}
    record["n_images"] = int(len(rows))
    psd = None if model is None else model[1]["all"]
  if psd is None:
    return None, record
  return wh.whitening_filter(psd, psd.shape), {**record, "psd": np.asarray(psd, np.float64)}


def write_noise_record(workdir: str, record: dict) -> None:
  """`workdir/noise.json` (the decision; `whitened`, and `noise_psd` naming `noise_psd.npy` when the
  particles were whitened, for `denoise --config.noise=coloured --config.noise_psd=`). A workdir whose
  model was trained under another noise decision is refused (resuming would mix the two)."""
  from cryojax_denoise import io

  record = dict(record)
  psd = record.pop("psd", None)
  record["whitened"] = psd is not None
  path = os.path.join(workdir, NOISE_RECORD)
  saved = os.path.join(workdir, "checkpoints")
  if os.path.exists(path) and os.path.isdir(saved) and os.listdir(saved):  # resuming
    with open(path) as f:
      old = json.load(f)
    if old.get("whitened") != record["whitened"] or old.get("mode") != record.get("mode"):
      raise InputError(f"{path}: the checkpoints in {workdir} were trained with noise={old.get('mode')} "
                       f"(whitened: {old.get('whitened')}), the config asks for noise={record.get('mode')} "
                       f"(whitened: {record['whitened']}); use a new workdir")
  os.makedirs(workdir, exist_ok=True)
  if psd is not None:
    record["noise_psd"] = os.path.join(os.path.abspath(workdir), NOISE_PSD)
    tmp = os.path.join(workdir, f".{NOISE_PSD}.tmp.npy")
    np.save(tmp, psd)
    os.replace(tmp, os.path.join(workdir, NOISE_PSD))
  io.atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def saved_noise(checkpoint: str) -> dict | None:
  """The noise record of a self-supervised training run, `checkpoint` its workdir or its `checkpoints/`
  folder, with `noise_psd` the spectrum file beside it (wherever the workdir now is); None without one
  (not self-supervised, or trained before the option). For `denoise`: a record with `whitened` true means
  the model must be applied with noise=coloured, noise_psd=record["noise_psd"]."""
  d = os.path.abspath(checkpoint)
  for wd in (d, os.path.dirname(d)) if os.path.basename(d) == "checkpoints" else (d,):
    path = os.path.join(wd, NOISE_RECORD)
    if os.path.isfile(path):
      with open(path) as f:
        record = json.load(f)
      if record.get("whitened"):
        record["noise_psd"] = os.path.join(wd, NOISE_PSD)
      return record
  return None
