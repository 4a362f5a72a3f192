"""Scoring a denoiser on a test set: batched application, timing, metrics rows."""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from cryojax_denoise import metrics


def apply_batched(fn: Callable, images: np.ndarray, noise_std: np.ndarray, batch_size: int,
                  on_batch: Callable[[int], None] | None = None, ctf: np.ndarray | None = None) -> np.ndarray:
  """Applies `fn(images (b,H,W), noise_std (b,)) -> (b,H,W)` in batches of `batch_size`
  (the last batch padded by repetition, so jitted kernels see one shape); `on_batch(k)` is called
  after each batch with its k images (progress). With `ctf` (N,H,W), `fn` also gets each image's CTF:
  `fn(images, noise_std, ctf)` (dataset-level methods from `denoisers.fit`)."""
  n = len(images)
  out = np.empty(images.shape, np.float32)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.arange(start, start + batch_size) % n if n >= batch_size else np.arange(n)
    args = (images[idx], noise_std[idx]) + (() if ctf is None else (ctf[idx],))
    res = np.asarray(jax.block_until_ready(fn(*args)), np.float32)
    out[start:stop] = res[: stop - start]
    if on_batch is not None:
      on_batch(stop - start)
  return out


def score(denoised: np.ndarray, clean: np.ndarray, pixel_size: float) -> dict[str, float]:
  """Mean MSE, PSNR, SSIM, FRC(0.5) resolution of `denoised` against `clean`."""
  return metrics.summarize(denoised, clean, pixel_size)


def evaluate(fn: Callable, noisy: np.ndarray, clean: np.ndarray, noise_std: np.ndarray, pixel_size: float,
             batch_size: int, ctf: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
  """Denoises `noisy` with `fn`, timed (wall clock, including any host transfer), and scores it.

  Returns the denoised stack and {mse, psnr, ssim, frc_resolution_A, seconds_per_image, n_images}.
  Jitted kernels should already be compiled for `batch_size` (the tuning pass does that), so the
  time is the steady-state cost.
  """
  t0 = time.perf_counter()
  denoised = apply_batched(fn, noisy, noise_std, batch_size, ctf=ctf)
  seconds = time.perf_counter() - t0
  row = score(denoised, clean, pixel_size)
  row.update(seconds_per_image=seconds / len(noisy), n_images=int(len(noisy)))
  return denoised, row
