"""Registered denoisers made correct under coloured noise of a known spectrum `psd` (`whiten.py`).

`fit_coloured(name, images, noise_std, ctf, psd, **params)` is `denoisers.fit`'s coloured-noise form,
`den(batch, noise_std=None, ctf=None) -> (B, H, W)`, so the sweep and the `denoise` pipeline call
every method one way:
* dataset-level CTF methods (`cwf`): fitted and applied on whitened particles W·y = (W·CTF) * x + white
  noise, with W joined to each particle's CTF (W alone without CTF); the output (W·CTF) * x̂ is coloured
  back to CTF * x̂ (what the other methods are scored against);
* per-image classical methods: colour ∘ method(σ) ∘ whiten (`wrap`), σ the total noise std
  (the whitened noise's; None: the method's estimator on the whitened images);
* `bm3d` (default `bm3d_psd=True`): the bm3d package's own coloured-noise path (the PSD passed as
  `sigma_psd`, in its convention: σ²·H·W for white noise), under a guard for `np.trapz` (removed in
  NumPy 2.4, called by bm4d's PSD analysis). Chosen by measured MSE over whiten/colour: unseen
  ribosome 64², CTF, relion31's spectrum, 24 images (scripts/coloured_noise_check.py): SNR 0.1 0.815
  vs 0.847, SNR 0.05 0.979 vs 1.025 (true spectrum; estimated: 0.815 vs 0.853, 0.986 vs 1.025).
`psd` None is `denoisers.fit` itself. `wrap(den, psd, name, params)` is the per-image form alone (the sweep's
and the pipeline's knob tuning score it).
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.noise import whiten as wh


def fit_coloured(name: str, images, noise_std=None, ctf=None, psd=None, *, bm3d_psd: bool = True, **params):
  """`denoisers.fit(name, ...)` for noise of spectrum `psd` (radial (S,) or (H, W); None: white)."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers import registry
  from cryojax_denoise.denoisers.cwf import budget as bdg

  if psd is None:
    return denoisers.fit(name, images, noise_std, ctf, **params)
  shape = np.shape(images)[-2:]
  filt = jnp.asarray(wh.whitening_filter(psd, shape))
  inv = 1.0 / filt
  m = registry.method(name)
  if m.fit is not None and m.uses_ctf:
    joined = lambda c, n: jnp.broadcast_to(filt, (n, *shape)) if c is None else jnp.asarray(c) * filt  # noqa: E731
    if isinstance(images, bdg.Rows):  # lazy in, lazy out: whitened a batch at a time as the fit reads it
      white_in, joined_in = _whitened_rows(images, ctf, np.asarray(filt))
    else:
      white_in, joined_in = wh.apply_filter(images, filt), joined(ctf, len(images))
    if "whitening" in registry.keyword_params(m.fit):  # a learned fit: its model and SURE know the filter
      params = {"whitening": np.asarray(filt), **params}
    den = denoisers.fit(name, white_in, noise_std, joined_in, **params)

    modulate = params.get("modulate", True)  # CTF-free x̂ (modulate=False) is not coloured back

    def run(batch, noise_std=None, ctf=None):
      out = den(wh.apply_filter(batch, filt), noise_std, joined(ctf, len(batch)))
      return wh.apply_filter(out, inv) if modulate else out
  else:
    den = wrap(denoisers.get(name, **params), psd, name if bm3d_psd else None, params)

    def run(batch, noise_std=None, ctf=None):
      return den(batch, noise_std)
  run.__name__ = f"{name}_coloured"
  return run


def _whitened_rows(images, ctf, filt: np.ndarray):
  """Lazy whitened particles and CTFs joined to the filter (`budget.Rows` in, `budget.Rows` out): a streamed
  fit (cwf within `memory_gb`) stays streamed under coloured noise, never holding the N particles or their CTFs."""
  from cryojax_denoise.denoisers.cwf import budget as bdg

  shape = images.shape[1:]
  white = bdg.mapped(images, lambda x: np.asarray(wh.apply_filter(x, filt)), shape)
  if ctf is None:
    return white, bdg.Rows(lambda rows: np.broadcast_to(filt, (len(rows), *shape)), len(images), shape)
  return white, bdg.mapped(ctf, lambda c: np.asarray(c, np.float32) * filt, shape)


def wrap(denoiser, psd, method: str | None = None, params: dict | None = None):
  """A per-image `denoiser(images, noise_std, ...)` made correct for noise of spectrum `psd` (radial or
  (H, W); None: unchanged): colour ∘ denoiser ∘ whiten, `noise_std` the total σ (None: the method's
  estimate on the whitened images); extra arguments pass through. `method` 'bm3d' uses the bm3d
  package's PSD input instead, with `params` (lower MSE, above)."""
  if psd is None:
    return denoiser
  if method == "bm3d":
    def run_bm3d(images, noise_std=None):
      return bm3d_psd_denoise(images, psd, noise_std, **(params or {}))

    return run_bm3d
  filters = {}  # (H, W) -> (W, 1/W), made once per image shape

  def run(images, noise_std=None, *args, **kw):
    shape = np.shape(images)[-2:]
    if shape not in filters:
      filt = wh.whitening_filter(psd, shape)
      filters[shape] = (filt, 1.0 / filt)
    filt, inv = filters[shape]
    return wh.apply_filter(denoiser(wh.apply_filter(images, filt), noise_std, *args, **kw), inv)

  run.__name__ = getattr(denoiser, "__name__", "denoiser")
  return run


@contextlib.contextmanager
def numpy_trapz():
  """`np.trapz` present while bm3d/bm4d's PSD path runs (an alias of `np.trapezoid` on NumPy >= 2.4)."""
  added = not hasattr(np, "trapz")
  if added:
    np.trapz = np.trapezoid
  try:
    yield
  finally:
    if added:
      del np.trapz


def _bm3d_psd_chunk(images: np.ndarray, psds: np.ndarray, one_thread: bool = False) -> np.ndarray:
  """bm3d of each image with its PSD (bm3d's convention), in this process."""
  import bm3d

  profile = bm3d.BM3DProfile()
  if one_thread:
    profile.num_threads = 1
  with numpy_trapz():
    return np.stack([np.asarray(bm3d.bm3d(im, sigma_psd=p, profile=profile), np.float32)
                     for im, p in zip(images, psds)])


def bm3d_psd_denoise(images, psd, noise_std=None, *, sigma_scale: float = 1.0, workers: int | None = None):
  """BM3D of (B, H, W) under noise of spectrum ∝ `psd` with total std `noise_std` (scalar or (B,);
  None: estimated on the whitened images), through the package's PSD input. (B, H, W) float32."""
  import os

  from cryojax_denoise.denoisers.classical import bm3d as bm3d_mod
  from cryojax_denoise.denoisers.noise import noise_std_or_estimate

  x = np.asarray(images, np.float32)
  b, h, w = x.shape
  grid = wh.psd_grid(psd, (h, w))
  if noise_std is None:
    noise_std = noise_std_or_estimate(wh.whiten(x, psd), None)
  sig = np.broadcast_to(np.asarray(noise_std, np.float64), (b,)) * sigma_scale
  psds = (grid / grid.mean() * h * w)[None] * (sig ** 2)[:, None, None]
  workers = int(workers or os.cpu_count() or 1)
  if workers <= 1 or b == 1:
    return _bm3d_psd_chunk(x, psds)
  chunks = [c for c in np.array_split(np.arange(b), min(b, 4 * workers)) if len(c)]
  parts = list(bm3d_mod._pool(workers).map(_bm3d_psd_chunk, [x[c] for c in chunks], [psds[c] for c in chunks],
                                           [True] * len(chunks)))
  return np.concatenate(parts, axis=0)
