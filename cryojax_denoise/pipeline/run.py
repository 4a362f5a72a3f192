"""The stack pipeline: open a particle set, make or fit the denoiser, choose params by SURE, score,
denoise every image in batches, write the stack (+ STAR) and the record.

`denoise_particles` is the whole run in one call (one process); `run` is the same with a `Settings`
and the multi-process split of `distributed` (the `denoise` experiment calls it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
from absl import logging

from cryojax_denoise import denoise_stack, distributed, io, parts
from cryojax_denoise.errors import InputError
from cryojax_denoise.pipeline import sure_step
from cryojax_denoise.pipeline.params import (NORMALIZE, OUTPUT_GAIN, Settings, gain_applies, has_fit_hook,
                                             is_learned)


def check_settings(settings: Settings) -> None:
  """InputError for a bad setting (cheap: no file is read, no JAX array made)."""
  from cryojax_denoise import denoisers

  if settings.method not in denoisers.names():
    raise InputError(f"method: unknown method {settings.method!r}; valid methods: {', '.join(denoisers.names())}")
  if int(settings.fit_size) < 1:
    raise InputError(f"fit_size: must be at least 1, got {settings.fit_size}")
  if int(settings.batch_size) < 1:
    raise InputError(f"batch_size: must be at least 1, got {settings.batch_size}")
  if settings.noise_std is not None and settings.noise_std < 0:
    raise InputError(f"noise_std: must be >= 0 (0 = estimate), got {settings.noise_std}")
  if settings.normalize not in NORMALIZE:
    raise InputError(f"normalize: {settings.normalize!r} is not one of none, mean, std")
  if settings.noise not in ("auto", "white", "coloured"):
    raise InputError(f"noise: {settings.noise!r} is not one of auto, white, coloured")
  if settings.output_gain not in OUTPUT_GAIN:
    raise InputError(f"output_gain: {settings.output_gain!r} is not one of auto, on, off")
  if settings.output_gain == "on" and settings.sure_images < 1:
    raise InputError("output_gain: on needs SURE's images, got sure_images=0")
  if settings.memory_gb is not None:
    from cryojax_denoise.denoisers.cwf.budget import check_memory_gb

    check_memory_gb(settings.memory_gb)
  if settings.noise_psd:
    from cryojax_denoise.noise.decide import load_psd_file

    load_psd_file(settings.noise_psd)
  auto, _ = settings.mode()  # parses params: InputError on bad text
  if auto:
    from cryojax_denoise.denoisers.tuning.sure_policy import check_tunable

    if not scored_only(settings.method):
      check_tunable(settings.method)
    if settings.sure_images < 1:
      raise InputError(f"sure_images: params=auto needs at least 1 image, got {settings.sure_images}")
  if is_learned(settings.method):
    if not settings.checkpoint:
      from cryojax_denoise.training.restore import bundled_dir

      if not os.path.isdir(bundled_dir(settings.method)):
        raise InputError(f"checkpoint: no bundled general {settings.method} model; give checkpoint=DIR")
    elif not os.path.isdir(settings.checkpoint):
      raise InputError(f"{settings.checkpoint}: checkpoint folder not found")
  elif settings.checkpoint:
    learned = [name for name in denoisers.names() if is_learned(name)]
    raise InputError(f"checkpoint: method {settings.method} takes no checkpoint (only {', '.join(learned)})")


def scored_only(method: str) -> bool:
  """Whether params=auto has nothing to choose for `method` but is still meaningful: a classical
  dataset-level method without a knob (cwf) is fitted as given and SURE's estimate is recorded."""
  from cryojax_denoise import denoisers

  m = denoisers.REGISTRY[method]
  return m.fit is not None and m.knob is None and not m.learned


def check_stack_size(method: str, n: int, where: str) -> None:
  """InputError when a dataset-level method gets fewer particles than its registry `min_stack`; a warning
  below twice that (see the number's justification where the method registers)."""
  from cryojax_denoise import denoisers

  need = denoisers.REGISTRY[method].min_stack
  if need and n < need:
    raise InputError(f"{where}: {n} particles, fewer than the {need} that {method} needs to fit its statistics "
                     "(use a classical method, e.g. bm3d, for so few)")
  if need and n < 2 * need:
    logging.warning("%s: only %d particles; %s fits its statistics on the stack and gains little below ~%d",
                    where, n, method, 2 * need)


def make_denoiser(settings: Settings, params: dict | None = None, psd=None) -> Callable:
  """`den(images (B, H, W), noise_std=None)` of `settings.method` with `params` (default: those given by
  value), for methods without a fit hook; whitened for noise of spectrum `psd` ((H, W); None: white)."""
  from cryojax_denoise import denoisers

  params = dict(settings.mode()[1] if params is None else params)
  if is_learned(settings.method):
    params["checkpoint"] = settings.checkpoint
  try:
    den = denoisers.get(settings.method, **params)
  except TypeError as e:
    raise InputError(f"params: {e} (method {settings.method})") from None
  if psd is None:
    return den
  from cryojax_denoise.noise.methods import wrap

  return wrap(den, psd, settings.method, {k: v for k, v in params.items() if k != "checkpoint"})


def fit_denoiser(settings: Settings, table, reader, params: dict | None = None, psd=None):
  """Dataset-level methods (a registry `fit` hook, e.g. cwf): reads `fit_size` random particles (and their
  CTFs from the STAR file), none of those SURE scores (`sure_step.scored_rows`), and fits, on whitened
  particles when `psd` (noise spectrum (H, W)) is given; returns (den(images, σ, ctf), ctf_of: rows -> CTFs,
  or None)."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.noise.methods import fit_coloured

  params = dict(settings.mode()[1] if params is None else params)
  if is_learned(settings.method):
    params["checkpoint"] = settings.checkpoint
  ctf_of = denoise_stack.ctf_rows(table)
  if ctf_of is None and denoisers.REGISTRY[settings.method].uses_ctf:
    logging.warning("%s: no CTF metadata (a bare MRC stack or no rlnDefocusU): %s runs with the identity CTF",
                    table.source, settings.method)
  n = len(table)
  held = sure_step.scored_rows(settings, n, gain_applies(settings.output_gain, psd))
  pool = np.setdiff1d(np.arange(n), held)  # SURE's particles out of the fit: its fixed-model premise holds
  rows = np.sort(np.random.default_rng(0).choice(pool, min(len(pool), int(settings.fit_size)), replace=False))
  mean, scale = denoise_stack.normalization(table, reader, settings.normalize)
  std = None if not settings.sigma else settings.sigma / scale
  logging.info("%s: fitting on %d of %d particles%s%s", settings.method, len(rows), n,
               " with their CTFs" if ctf_of else "",
               f" (the {len(held)} that SURE scores left out)" if len(held) else "")
  images, ctfs = _fit_inputs(table, reader, rows, mean, scale, ctf_of)
  if "memory_gb" in denoisers.registry.keyword_params(denoisers.REGISTRY[settings.method].fit):
    params.setdefault("memory_gb", _memory_gb(settings, table.shape[-1], len(rows), params.get("max_box")))
  else:  # other fit hooks take arrays: the subset is read into memory
    images, ctfs = np.asarray(images), None if ctfs is None else np.asarray(ctfs)
  try:
    den = fit_coloured(settings.method, images, std, ctfs, psd, **params)
  except TypeError as e:
    raise InputError(f"params: {e} (method {settings.method})") from None
  if ctf_of is None:
    return (lambda x, s, ctf=None: den(x, s)), None
  return den, ctf_of


def _fit_inputs(table, reader, rows, mean: float, scale: float, ctf_of):
  """The fit subset as lazy (N, H, W) arrays (`budget.Rows`): images normalised like the stream, and their
  CTFs (None without), read a batch at a time as the fit asks for them."""
  from cryojax_denoise.denoisers.cwf.budget import Rows

  def read(sel):
    return (denoise_stack.read_rows(table, reader, rows[sel]) - np.float32(mean)) / np.float32(scale)

  images = Rows(read, len(rows), table.shape)
  return images, None if ctf_of is None else Rows(lambda sel: ctf_of(rows[sel]), len(rows), table.shape)


# The default budget may stretch from half the machine up to this fraction when cwf's estimate (an upper
# bound: 10,000 × 256² is estimated at 9.4 GB and peaked at ~4.2) asks for more; a given memory_gb never does.
DEFAULT_STRETCH = 0.8


def _memory_gb(settings: Settings, box: int, n_fit: int, max_box: int | None = None) -> float:
  """The fit's budget: `settings.memory_gb`; by default half the machine's memory, raised up to
  DEFAULT_STRETCH of it when the fit of `n_fit` particles of `box`² is estimated to need more."""
  from cryojax_denoise.denoisers.cwf import budget as bdg
  from cryojax_denoise.denoisers.cwf.steerable import basis_reach

  budget = bdg.check_memory_gb(settings.memory_gb)
  note = ""
  if settings.memory_gb is None:
    work = bdg.working_box(box, bdg.MAX_BOX if max_box is None else max_box)
    need = bdg.min_gb(work, n_fit, reach=basis_reach(work))
    if need > budget:
      budget = min(need, DEFAULT_STRETCH * bdg.machine_gb())
      note = f" (cwf's estimate for {n_fit} × {work}²; its measured peaks are about half)"
    note = note or " (half the machine's; set memory_gb= to change)"
  logging.info("%s: memory budget %.3g GB%s", settings.method, budget, note)
  return budget


def checkpoint_noise(settings: Settings) -> Settings:
  """A learned model trained on whitened particles (`train_self_supervised --config.noise=coloured`: its
  workdir's noise.json) is applied whitened: noise=white without noise_psd becomes noise=coloured with the
  training spectrum (applied raw it is ~2× further from the truth, docs/finetuning.md); logged."""
  if not settings.checkpoint or not is_learned(settings.method) or settings.noise != "white" or settings.noise_psd:
    return settings
  from cryojax_denoise.training.ss_noise import saved_noise

  record = saved_noise(settings.checkpoint)
  if not record or not record.get("whitened"):
    return settings
  logging.info("%s was trained on whitened particles (its noise.json): denoising with noise=coloured, "
               "noise_psd=%s", settings.checkpoint, record["noise_psd"])
  return dataclasses.replace(settings, noise="coloured", noise_psd=record["noise_psd"])


def noise_step(settings: Settings, table, reader):
  """(noise PSD (H, W) in the denoiser's units, or None for white; the JSON record of the decision and
  spectra): `noise=white` without `noise_psd` reads nothing."""
  from cryojax_denoise.noise.stack import stack_noise

  psd, record = stack_noise(table, reader, settings.noise, settings.noise_psd or None, settings.fit_size,
                            settings.normalize)
  logging.info("noise model: %s%s", record["decision"], f" ({record['reason']})" if record.get("reason") else "")
  return psd, record


def run(settings: Settings, input_path: str, output: str = "", default_dir: str = ".") -> dict:
  """Denoises `input_path` (MRC stack or STAR file) into `output` (default `default_dir/denoised.mrcs`);
  over every process of a `distributed` job when one is joined. Returns the record: method, params,
  auto, and "sure" (SURE's estimate for the params used; absent when `sure_images` is 0 or SURE cannot
  call the method), "outputs" (stack, star, params_json)."""
  check_settings(settings)
  settings = checkpoint_noise(settings)
  reader = io.ImageReader()
  table = denoise_stack.open_particles(input_path, reader)  # file problems surface before JAX loads
  outputs = denoise_stack.output_paths(table, output, default_dir)
  if has_fit_hook(settings.method):
    check_stack_size(settings.method, len(table), input_path)
  auto, _ = settings.mode()
  choose = auto and not scored_only(settings.method)
  psd, noise_record = noise_step(settings, table, reader)
  record = distributed.share(sure_step.choose_params, settings, table, reader, psd) if choose else None  # process 0's
  ctf_of = None
  if has_fit_hook(settings.method):
    denoiser, ctf_of = fit_denoiser(settings, table, reader, record["params"] if choose else None, psd)
  else:
    denoiser = make_denoiser(settings, record["params"] if choose else None, psd)
  logging.info("denoise %s: %d images of %dx%d (%.4g Å/px) with %s -> %s%s", input_path, len(table),
               *table.shape, table.pixel_size, settings.method, outputs.stack,
               f" + {outputs.star}" if outputs.star else "")
  wants_gain = gain = gain_applies(settings.output_gain, psd) and settings.sure_images > 0
  if wants_gain:  # its SURE record (the gained output's) replaces the quality score
    denoiser, gain_record = gain_step(settings, table, reader, denoiser, ctf_of, psd,
                                      record["params"] if choose else None)
    gain = "reason" not in gain_record
  if record is None:
    record = {"method": settings.method, "params": settings.mode()[1], "auto": auto}
    if settings.sure_images > 0 and distributed.is_main() and not gain:
      try:  # only a score: a method SURE cannot call this way still denoises (unless auto asked for it)
        record = {**sure_step.quality(settings, table, reader, denoiser, ctf_of, psd), "auto": auto}
      except InputError:
        raise
      except Exception as e:  # noqa: BLE001  (a stop is a BaseException: it is not caught here)
        if auto:
          raise
        logging.warning("no SURE quality score for %s: %s: %s", settings.method, type(e).__name__, e)
    if auto:
      logging.info("params=auto: %s has no knob to choose; fitted as given, SURE's estimate recorded",
                   settings.method)
  if wants_gain:
    gained = gain_record.pop("sure", None)
    record = {**record, **({"sure": gained} if gained else {}), "output_gain": gain_record}
  parts.denoise(table, denoiser, outputs, reader, ctf_of, batch_size=settings.batch_size,
                      noise_std=settings.sigma, normalize=settings.normalize, facts=settings.facts())
  params_json = None
  coloured = settings.noise != "white" or bool(settings.noise_psd)
  if distributed.is_main() and (auto or coloured or wants_gain):  # the record of the choice, noise model and gain
    if coloured:
      record["noise"] = noise_record
    params_json = sure_step.write_record(record, outputs)
  logging.info("wrote %s%s", outputs.stack, f" and {outputs.star}" if outputs.star else "")
  return {**record, "outputs": {"stack": outputs.stack, "star": outputs.star, "params_json": params_json}}


def gain_step(settings: Settings, table, reader, denoiser, ctf_of=None, psd=None, params=None):
  """(the denoiser scaled by SURE's output gain α, the gain's record): α computed on process 0 and shared;
  where SURE cannot be applied, the denoiser unchanged and the reason in the record (logged)."""
  def record():
    try:
      return sure_step.output_gain(settings, table, reader, denoiser, ctf_of, psd, params)
    except ValueError as e:
      return {"alpha": 1.0, "reason": str(e)}

  out = distributed.share(record)
  if "reason" in out:
    logging.warning("output gain not applied: %s", out["reason"])
  from cryojax_denoise.denoisers.tuning.sure_policy import scale_output

  return scale_output(denoiser, float(out["alpha"])), out


def denoise_particles(input_path: str, method: str = "ddtf", *, params="", output: str = "", **settings) -> dict:
  """Denoises a particle set from Python; returns the run's record (see `run`).

  >>> from cryojax_denoise import pipeline
  >>> record = pipeline.denoise_particles("particles.star", method="cwf", params="auto",
  ...                                     output="out/denoised.mrcs")
  >>> record["sure"]["gain_db"], record["outputs"]["star"]

  `params`: "key=value,...", a dict, "auto" (SURE picks the knob) or "" (see `pipeline.params`);
  `settings`: the other `Settings` fields (noise_std, checkpoint, batch_size, normalize, sure_images,
  fit_size). Writes `output` (default ./denoised.mrcs) and, for STAR input, a STAR file beside it.
  """
  known = set(Settings.__dataclass_fields__) - {"method", "params"}
  bad = sorted(set(settings) - known)
  if bad:
    raise InputError(f"unknown setting(s) {bad}; valid: {', '.join(sorted(known))}")
  return run(Settings(method=method, params=params, **settings), input_path, output)
