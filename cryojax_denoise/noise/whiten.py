"""Whitening and colouring filters, parametric noise spectra, coloured-noise draws, flatness.

A PSD is either radial (S,) on shells 0 … 0.5 cycles/px (`spectrum.shell_frequencies`), taken as
isotropic (modes beyond 0.5 get the last shell's value), or a full (H, W) FFT-grid array; units:
image units² per pixel (`spectrum.py`), mean over the grid = total noise variance σ².

Whitening convention: W(k) = sqrt(mean_k P / P(k)), so whitened noise is white with the SAME total
variance σ² as the original (W ≡ 1 for a flat P): SNRs (total signal variance / total noise
variance, INTERFACE.md) and every σ-based method keep their meaning; `colour` divides by W (the exact
inverse). A classical per-image method under coloured noise is run as colour ∘ method(σ) ∘ whiten
(`methods.wrap`); CWF joins W to each particle's CTF instead (`methods.fit_coloured`).

Parametric families (ratio = P(0) / P(∞), the low-frequency excess over the high-frequency plateau;
only the shape matters, the total variance is set separately):
  exp:      P(k) = 1 + (ratio − 1) exp(−k / k0)
  plateau:  P(k) = 1 + (ratio − 1) / (1 + (k / kc)^n)
Fitted to the measured bands of issue 29 (`fit_family`, n <= 12; tests/test_whiten.py checks the fits),
rms error of log band power: relion31 plateau ratio 7.0, kc 0.117, n 3.2 (0.12; exp: ratio 10.2, k0 0.10,
0.15); the 320² corners row plateau 3.2, 0.051, 12 (0.045); the reprojection row plateau 2.15, 0.215, 12
(0.076). `plateau:ratio=2.2,kc=0.21,n=12` is the issue's "milder" spectrum, `issue:relion31` its table row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import spectrum as sp

FAMILIES = {"exp": ("ratio", "k0"), "plateau": ("ratio", "kc", "n")}
FAMILY_BOUNDS = {"n": 12.0}
FAMILY_DEFAULTS = {"exp": {"ratio": 4.0, "k0": 0.08}, "plateau": {"ratio": 6.0, "kc": 0.13, "n": 6.0}}
# Rows of issue 29's table: band means (0.05-cycle bands from 0), relative to the 0.35-0.5 band.
ISSUE_BANDS = {
    "relion31": (6.1, 5.6, 4.0, 1.6, 1.8, 1.4, 1.2, 1.1, 1.0, 0.9),
    "corners320": (3.1, 1.2, 1.0, 0.9, 1.0, 1.0, 1.0, 1.1, 1.0, 1.0),
    "reprojection48": (2.2, 2.1, 2.2, 2.4, 1.5, 1.0, 1.2, 1.1, 1.0, 1.0),
}


def family_psd(family: str, k, **params) -> np.ndarray:
  """Relative PSD of a parametric `family` at frequencies `k` (cycles/px)."""
  if family not in FAMILIES:
    raise InputError(f"noise_psd: unknown family {family!r} (known: {', '.join(FAMILIES)})")
  p = {**FAMILY_DEFAULTS[family], **params}
  k = np.asarray(k, np.float64)
  if p["ratio"] <= 0 or any(p[name] <= 0 for name in FAMILIES[family][1:]):
    raise InputError(f"noise_psd: {family} parameters must be positive, got {p}")
  if family == "exp":
    return 1.0 + (p["ratio"] - 1.0) * np.exp(-k / p["k0"])
  return 1.0 + (p["ratio"] - 1.0) / (1.0 + (k / p["kc"]) ** p["n"])


def fit_family(bands, family: str = "plateau", n_shells: int = 129) -> dict:
  """Parameters of `family` whose 0.05-cycle band means best match `bands` (n_bands,) up to a scale
  (least squares on log band ratios); also the fit's rms log error as 'rms'."""
  from scipy.optimize import least_squares

  target = np.log(np.asarray(bands, np.float64))
  k = sp.shell_frequencies(n_shells)
  names = FAMILIES[family]

  def resid(theta):
    psd = family_psd(family, k, **dict(zip(names, np.exp(theta[1:]))))
    return np.log(sp.band_means(psd)) + theta[0] - target

  start = np.log([FAMILY_DEFAULTS[family][n] for n in names])
  hi = np.log([FAMILY_BOUNDS.get(n, np.inf) for n in names])  # a smooth plateau: n <= 12
  fit = least_squares(resid, np.concatenate([[0.0], start]), bounds=(-np.inf, np.concatenate([[np.inf], hi])))
  out = dict(zip(names, map(float, np.exp(fit.x[1:]))))
  out["rms"] = float(np.sqrt(np.mean(fit.fun ** 2)))
  return out


def psd_grid(psd, shape) -> np.ndarray:
  """(H, W) float64 FFT-grid PSD from a radial (S,) or an (H, W) `psd`."""
  psd = np.asarray(psd, np.float64)
  h, w = int(shape[-2]), int(shape[-1])
  if psd.ndim == 2:
    if psd.shape != (h, w):
      raise InputError(f"noise_psd: a 2D spectrum of shape {psd.shape} for {h}x{w} images")
    grid = psd
  elif psd.ndim == 1 and psd.size >= 2:
    grid = sp.profile_grid(psd, h, w)
  else:
    raise InputError(f"noise_psd: a spectrum must be radial (S >= 2 shells) or 2D, got shape {psd.shape}")
  if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
    raise InputError("noise_psd: the spectrum must be positive and finite at every frequency")
  return grid


def noise_variance(psd, shape) -> float:
  """Total noise variance σ² (image units²) of `psd` on (H, W) images: its mean over the grid."""
  return float(psd_grid(psd, shape).mean())


def whitening_filter(psd, shape) -> np.ndarray:
  """W (H, W) float32 = sqrt(mean P / P): whitened noise is white with the original total variance."""
  grid = psd_grid(psd, shape)
  return np.sqrt(grid.mean() / grid).astype(np.float32)


@jax.jit
def apply_filter(images, filt):
  """Real images (..., H, W) filtered by the real FFT-grid filter `filt` (H, W) (circular)."""
  return jnp.fft.ifft2(jnp.fft.fft2(jnp.asarray(images, jnp.float32)) * filt).real


def whiten(images, psd) -> jax.Array:
  """Images (..., H, W) with noise of spectrum `psd` -> white noise of the same total variance."""
  return apply_filter(images, jnp.asarray(whitening_filter(psd, np.shape(images))))


def colour(images, psd) -> jax.Array:
  """The exact inverse of `whiten`: multiplies the spectrum back by sqrt(P / mean P)."""
  return apply_filter(images, jnp.asarray(1.0 / whitening_filter(psd, np.shape(images))))


def coloured_noise(key, shape, psd, std: float = 1.0) -> jax.Array:
  """Gaussian noise (N, H, W) with spectrum ∝ `psd` and total variance std² (circular filtering of
  white noise: E|FFT(n)|²/(H·W) = std² · P / mean P exactly)."""
  grid = psd_grid(psd, shape)
  amp = jnp.asarray(np.sqrt(grid / grid.mean()) * float(std), jnp.float32)
  return apply_filter(jax.random.normal(key, tuple(shape), jnp.float32), amp)


def psd_flatness(psd) -> float:
  """max / min of a PSD's 0.05-cycle band means (radial; a 2D PSD is radially averaged first):
  1 for white noise, 6.8 for relion31's measured spectrum."""
  psd = np.asarray(psd, np.float64)
  b = sp.band_means(sp.radial_average(psd) if psd.ndim == 2 else psd)
  return float(b.max() / b.min())
