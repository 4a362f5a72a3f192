"""Parameter search as in the study: each method's knob chosen by MSE on a tuning batch."""

from __future__ import annotations

import time

import numpy as np

from cryojax_denoise import denoisers
from cryojax_denoise.errors import InputError


def tune(name: str, noisy, clean, noise_std=None, *, grid=None, wrap=None, **fixed) -> tuple[dict, list[dict]]:
  """Grid search of `REGISTRY[name].knob` on (noisy, clean) (B, H, W) by mean MSE.

  `noise_std` is a scalar or (B,) (None: estimated); `grid` overrides the registered grid; `fixed`
  are other parameters passed through; `wrap(den, value)` -> the denoiser actually applied for knob
  `value` (as in `sure_policy.sure_tune`: e.g. whitened for coloured noise, `noise.methods.wrap`).
  The tuning batch must be disjoint from the test images.
  Returns ({knob: best value, **fixed}, table) with one row {knob: value, "mse": float,
  "seconds": float} per grid value, in grid order (steady state: for a `compiled` method the first
  value is run once untimed, for compilation). A method without a knob returns (fixed, []).
  """
  method = denoisers.REGISTRY.get(name)
  if method is None:
    raise InputError(f"unknown denoiser {name!r}; valid: {', '.join(denoisers.names())}")
  if method.knob is None:
    return dict(fixed), []
  values = tuple(method.grid if grid is None else grid)
  if not values:
    raise InputError(f"empty tuning grid for {name!r}")
  noisy = np.asarray(noisy, np.float32)
  clean = np.asarray(clean, np.float32)
  table = []
  for i, v in enumerate(values):
    fn = denoisers.get(name, **{method.knob: v}, **fixed)
    fn = fn if wrap is None else wrap(fn, v)
    if i == 0 and method.compiled:  # compile (knobs are traced, so once) outside the timing
      fn(noisy, noise_std)
    t0 = time.perf_counter()
    out = np.asarray(fn(noisy, noise_std), np.float32)
    seconds = time.perf_counter() - t0
    table.append({method.knob: v, "mse": float(np.mean((out - clean) ** 2)), "seconds": seconds})
  best = min(table, key=lambda row: row["mse"])
  return {method.knob: best[method.knob], **fixed}, table
