"""The `denoise` pipeline's noise step (`noise=auto|white|coloured`, `noise_psd=FILE`; `cryojax_denoise.pipeline.run` calls it).

    psd, noise_record = stack_noise(table, reader, mode, psd_file, fit_size, mean, scale)
    den = fit_coloured(method, images, σ, ctf, psd, **params)      # dataset-level methods (noise/methods.py)
    den = methods.wrap(den, psd)                                     # per-image methods: colour ∘ den ∘ whiten
    add_record(params_json_record_or_None, noise_record, stack_path) # the decision + spectrum in the params JSON

One spectrum for the streamed stack: the particles the fit reads (up to `fit_size`, random rows),
normalised as the denoiser sees them; the record keeps each optics group's / micrograph's own spectrum,
flatness and tolerance (`decide.choose`), and the denoiser whitens with the pooled one (per-group
whitening in the streaming loop needs each batch's rows: `decide.apply_by_group` does it for an
in-memory set).
"""

from __future__ import annotations

import json
import os

import numpy as np

from cryojax_denoise.noise import decide


def stack_noise(table, reader, mode: str, psd_file: str | None = None, fit_size: int = 10_000,
                normalize: str = "mean", seed: int = 0):
  """(PSD (H, W) in the denoiser's units or None for white, JSON record) of a `ParticleTable`.
  'auto' on a stack whose spectrum cannot be measured (too few or too small images) stays white and
  says why in the record; 'coloured' raises the estimator's InputError."""
  from cryojax_denoise.denoise_stack import normalization
  from cryojax_denoise.errors import InputError
  from cryojax_denoise.streaming import read_rows

  if mode == "white" and not psd_file:
    return None, {"mode": "white", "decision": "white"}
  mean, scale = normalization(table, reader, normalize)
  n = len(table.indices)
  rows = np.sort(np.random.default_rng(seed).choice(n, min(n, int(fit_size)), replace=False))
  images = (read_rows(table, reader, rows) - np.float32(mean)) / np.float32(scale)
  particles = table.star.particles.iloc[rows] if table.star is not None else None
  try:
    model, record = decide.choose(mode, images, particles, psd_file=psd_file or None)
  except InputError as err:
    if mode != "auto" or psd_file:
      raise
    decide.log.warning("noise=auto: %s; denoising with the white-noise model", err)
    return None, {"mode": mode, "decision": "white", "reason": str(err)}
  if model is not None and not psd_file and len(model[1]) > 1:  # one pooled spectrum for the stream
    model, _ = decide.choose("coloured", images, None)
  record["n_images"] = int(len(rows))
  if model is None:
    return None, record
  return next(iter(model[1].values())), record


def add_record(record: dict | None, noise_record: dict, stack_path: str) -> dict | None:
  """Puts `noise_record` under 'noise' in the params record; without one (no params=auto) writes
  `<stack stem>.params.json` with it (INTERFACE.md: the decision and spectrum go to the params JSON)."""
  if record is not None:
    record["noise"] = noise_record
    return record
  from cryojax_denoise import io

  path = os.path.splitext(stack_path)[0] + ".params.json"
  io.atomic_write_text(path, json.dumps({"noise": noise_record}, indent=2, default=str) + "\n")
  return None
