"""Noise power spectrum of a particle stack, measured on the background outside a circular mask.

Convention: the PSD P(k) of noise n on an H×W box is E|FFT(n)(k)|² / (H·W) on the unshifted FFT
grid, in image units² per pixel: white noise of std σ has P ≡ σ², and mean_k P(k) is the noise's
total variance. A radial PSD is S values on shells k_i = i / (2(S-1)), i.e. 0 … 0.5 cycles/px
(S = H//2 + 1 for the estimator's output; files may use any S >= 2).

Estimator (a correlogram, as ASPIRE's noise estimators; RELION's σ²(k) is instead the mean
|y − reprojection|² per shell, which needs a refined map). For each image z = m·y with m the 0/1
background mask; zero-padded to 2H×2W, the sums of lagged products A(l) = Σ_p z(p) z(p+l) and the
pair counts C(l) = Σ_p m(p) m(p+l) give the unbiased
autocovariance c(l) = Σ_i A_i(l) / (n·C(l)) for every lag |l_x| < H, |l_y| < W (each lag has pairs
as long as the mask leaves background at the box's edges). Then
    P(k) = Σ_l c(l) (1 − |l_x|/H)(1 − |l_y|/W) e^{−2πi k·l}
is exactly E|FFT(n)|²/(H·W) of a noise-only full box (the Bartlett weights are the box's own
pair counts): the mask is divided out in lag space, so it neither smooths nor biases the spectrum,
unlike a periodogram of the masked image (whose mean is P convolved with |FFT(m)|²). The mean is not
removed (removing it takes power from the lowest shells: -5% in the first band under relion31's
spectrum): an image's offset d adds d² to c(l) at every lag, which after the Bartlett sum lands on
k = 0 alone. P(0) is therefore not measured and is set to the mean of its four neighbours. A mask that
leaves only the corners, or few images, make far lags noisy: they are then tapered (`lag_taper`).

Robustness: each image's windowed periodogram in 0.05-cycle bands is compared with the median over
images (log power, MAD z-score); images with any |z| > `REJECT_Z` (bad images, neighbours, ice,
carbon edges) are left out of the sums. The kept images are dealt into `N_SPLIT` groups; the spread of
the groups' band means gives the estimate's band standard errors (`band_se`), which set the flatness
tolerance (`decide.py`): it includes the correlogram's extra variance with a corners-only mask.

Measured (tests/test_noise_spectrum.py, scripts/coloured_noise_check.py): 1,000 CTF-modulated blob
particles of 64² at SNR 0.1 under issue 29's relion31 spectrum and one twice as steep: every 0.05-cycle
band within 0.9%; the unseen ribosome (fills the box: corners only, CTF signal leaks into them),
1,000 of 64²: within 6% (0.94-1.06) under relion31's measured spectrum, 3% under the milder one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.errors import InputError

BAND_WIDTH = 0.05          # cycles/px: the bands of `band_means`, the outlier test and the flatness measure
REJECT_Z = 5.0             # robust z (log band power vs the median image) above which an image is left out
MIN_PARTICLES = 2          # fewer images: no estimate
MIN_REJECT = 8             # outlier rejection needs at least this many images
MIN_BACKGROUND = 0.05      # minimum fraction of the box outside the mask
SE_MODE_MAX = 1.0          # per-mode relative SE above which the lag window is tapered (radial shells pool >= 4 modes)
N_SPLIT = 8                # groups of images whose spectra's spread gives the band standard errors
PSD_FLOOR = 0.05           # estimates below this fraction of the median (sampling noise) are raised to it


class NoiseSpectrum(NamedTuple):
  """A measured noise spectrum: `radial` (S,) PSD on shells 0…0.5 cycles/px, `psd2d` (H, W) on the
  FFT grid (anisotropic), `band_se` (n_bands,) relative standard errors of the 0.05-cycle band means,
  `radius_px` the mask radius, `n_used` / `n_rejected` images."""
  radial: np.ndarray
  psd2d: np.ndarray
  band_se: np.ndarray
  radius_px: float
  n_used: int
  n_rejected: int


def shell_frequencies(n_shells: int) -> np.ndarray:
  """Frequencies (S,) of a radial PSD's shells, cycles/px: 0 … 0.5."""
  return np.linspace(0.0, 0.5, int(n_shells))


def profile_grid(radial, h: int, w: int) -> np.ndarray:
  """A radial profile (S,) on shells 0 … 0.5 cycles/px as an (h, w) FFT grid: linear in |k|, held beyond
  Nyquist (the corners). float64."""
  return np.interp(np.minimum(radius_grid(h, w), 0.5), shell_frequencies(len(radial)), np.asarray(radial, np.float64))


def radius_grid(h: int, w: int) -> np.ndarray:
  """|k| (h, w) in cycles/px on the unshifted FFT grid."""
  return np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])


def background_mask(h: int, w: int, radius_px: float) -> np.ndarray:
  """(h, w) float32: 1 outside the circle of `radius_px` about the box centre (h//2, w//2), else 0."""
  y, x = np.mgrid[:h, :w]
  return (np.hypot(y - h // 2, x - w // 2) > radius_px).astype(np.float32)


def _band_index(h: int, w: int) -> np.ndarray:
  """Band of each mode of an (h, w) grid: floor(|k| / BAND_WIDTH), -1 for k = 0 and |k| > 0.5."""
  r = radius_grid(h, w)
  idx = np.floor(r / BAND_WIDTH + 1e-9).astype(np.int32)
  return np.where((r == 0) | (r > 0.5), -1, np.minimum(idx, int(round(0.5 / BAND_WIDTH)) - 1))


def n_bands() -> int:
  """Number of 0.05-cycle bands in 0 … 0.5 cycles/px (10)."""
  return int(round(0.5 / BAND_WIDTH))


def _masked_fft(images, mask, centre: bool):
  """FFT (B, 2H, 2W) of each image's background (its mean removed when `centre`), zero-padded to twice
  the box."""
  x = jnp.asarray(images, jnp.float32)
  _, h, w = x.shape
  if centre:
    x = x - jnp.sum(x * mask, axis=(1, 2), keepdims=True) / jnp.sum(mask)
  return jnp.fft.fft2(mask * x, s=(2 * h, 2 * w))


@functools.partial(jax.jit, static_argnames=("nb",))
def band_powers(images, mask, band_idx, *, nb: int):
  """Windowed periodogram of each image's background averaged in bands: (B, nb), image units²."""
  p = jnp.abs(_masked_fft(images, mask, True)) ** 2 / jnp.sum(mask ** 2)
  onehot = (band_idx[..., None] == jnp.arange(nb)).astype(jnp.float32)  # (2H, 2W, nb)
  return jnp.einsum("bhw,hwn->bn", p, onehot) / jnp.sum(onehot, axis=(0, 1))


@jax.jit
def pair_sums(images, mask, weights):
  """Σ_i w_i A_i(l): weighted sums over images of the background's lagged products, (2H, 2W) for
  weights (B,), (G, 2H, 2W) for weights (B, G) (one sum per group of images). The mean is not removed:
  an image's offset d adds d² at every lag, i.e. to k = 0 alone after the Bartlett sum."""
  p = jnp.abs(_masked_fft(images, mask, False)) ** 2
  return jnp.fft.ifft2(jnp.einsum("b...,bhw->...hw", weights, p)).real


def lag_taper(counts: np.ndarray, n_images: int, se_max: float | None = None) -> np.ndarray:
  """Lag window (2H, 2W): 1 (no taper: the estimate is exact) when the per-mode relative standard error
  of white noise, sqrt(Σ_l b(l)² / (n·C(l))) with b the Bartlett weights, is at most `se_max`; else the
  widest Hann taper (to 0 at lag radius L) that brings it there: few images or a corners-only mask
  trade resolution 1/L cycles/px for variance (relion31's 5 images of 256²: L ≈ 20 px)."""
  se_max = SE_MODE_MAX if se_max is None else se_max
  h, w = counts.shape[0] // 2, counts.shape[1] // 2
  lx, ly = np.fft.fftfreq(2 * h) * 2 * h, np.fft.fftfreq(2 * w) * 2 * w
  bart = np.clip(1 - np.abs(lx) / h, 0, None)[:, None] * np.clip(1 - np.abs(ly) / w, 0, None)[None, :]
  rad = np.hypot(lx[:, None], ly[None, :])
  use = (bart > 0) & (counts > 0)
  inv = np.where(use, 1.0 / (n_images * np.maximum(counts, 1)), 0.0)

  def se(taper):
    return float(np.sqrt(np.sum((bart * taper) ** 2 * inv)))

  ones = np.ones_like(bart)
  if se(ones) <= se_max:
    return ones
  lmax = float(rad[use].max())
  for radius in lmax * 0.92 ** np.arange(80):
    taper = 0.5 * (1 + np.cos(np.pi * np.minimum(rad / max(radius, 1.0), 1.0)))
    if se(taper) <= se_max or radius <= 2:
      return taper
  return taper


def pair_counts(mask: np.ndarray) -> np.ndarray:
  """C(l) (2H, 2W): number of background pixel pairs at each lag (zero-padded autocorrelation)."""
  h, w = mask.shape
  f = np.fft.fft2(np.asarray(mask, np.float64), s=(2 * h, 2 * w))
  return np.round(np.fft.ifft2(np.abs(f) ** 2).real)


@jax.jit
def psd_from_autocovariance(cov):
  """PSD (H, W) from the autocovariance c(l) on the (2H, 2W) lag grid: the Bartlett-weighted sum
  over |l| < box, E|FFT(n)|²/(H·W) of a noise-only box."""
  h2, w2 = cov.shape
  h, w = h2 // 2, w2 // 2
  lx = jnp.fft.fftfreq(h2) * h2
  ly = jnp.fft.fftfreq(w2) * w2
  bart = jnp.clip(1 - jnp.abs(lx) / h, 0)[:, None] * jnp.clip(1 - jnp.abs(ly) / w, 0)[None, :]
  return jnp.fft.fft2(cov * bart).real[::2, ::2]


def radial_average(psd2d: np.ndarray) -> np.ndarray:
  """Radial profile (S,) of an (H, W) FFT-grid PSD on shells i/(2(S-1)), S = min(H, W)//2 + 1
  (nearest shell; modes beyond 0.5 cycles/px are left out)."""
  h, w = psd2d.shape
  s = min(h, w) // 2 + 1
  idx = np.round(radius_grid(h, w) * 2 * (s - 1)).astype(int)
  keep = idx < s
  sums = np.bincount(idx[keep], np.asarray(psd2d, np.float64)[keep], minlength=s)
  return sums / np.maximum(np.bincount(idx[keep], minlength=s), 1)


def band_means(radial: np.ndarray) -> np.ndarray:
  """Means (n_bands,) of a radial PSD over the 0.05-cycle bands 0…0.5 (k = 0 left out)."""
  k = shell_frequencies(len(radial))
  idx = np.minimum(np.floor(k / BAND_WIDTH + 1e-9).astype(int), n_bands() - 1)
  keep = k > 0
  return np.bincount(idx[keep], np.asarray(radial)[keep], n_bands()) / np.maximum(
      np.bincount(idx[keep], minlength=n_bands()), 1)


def estimate_mask_radius(images: np.ndarray, margin_px: float | None = None) -> float:
  """Particle radius (px) from the mean image's radial profile, plus a margin (default 8% of the box):
  XX
  4 standard errors), capped at half the box less one pixel."""
  x = np.asarray(images, np.float64)
  n, h, w = x.shape
  mean = x.mean(0)
  y, xx = np.mgrid[:h, :w]
  r = np.hypot(y - h // 2, xx - w // 2)
  shell = np.floor(r).astype(int)
  base = np.median(mean[r > min(h, w) / 2])
  sd = np.sqrt(x[:, r > min(h, w) / 2].var(axis=0).mean() / n) if np.any(r > min(h, w) / 2) else 0.0
  rmax = min(h, w) // 2
  prof = np.array([mean[shell == i].mean() - base for i in range(rmax)])
  se = sd / np.sqrt(np.array([max((shell == i).sum(), 1) for i in range(rmax)]))
  above = np.abs(prof) > np.maximum(0.02 * np.abs(prof).max(), 4 * se)
  r_particle = float(np.flatnonzero(above).max(initial=0)) + 1.0
  margin = 0.08 * min(h, w) if margin_px is None else float(margin_px)
  return float(min(r_particle + margin, min(h, w) / 2 - 1))


def _check(n: int, h: int, w: int, radius: float, mask: np.ndarray, counts: np.ndarray, where: str) -> None:
  if n < MIN_PARTICLES:
    raise InputError(f"{where}: {n} image(s), a noise spectrum needs at least {MIN_PARTICLES}")
  frac = float(mask.mean())
  if frac < MIN_BACKGROUND:
    raise InputError(f"{where}: the mask of radius {radius:g} px leaves {100 * frac:.1f}% of the {h}x{w} box as "
                     f"background, a noise spectrum needs at least {100 * MIN_BACKGROUND:g}%")
  lx = np.abs(np.fft.fftfreq(2 * h) * 2 * h)[:, None] < h
  ly = np.abs(np.fft.fftfreq(2 * w) * 2 * w)[None, :] < w
  if np.any((counts <= 0) & lx & ly):
    raise InputError(f"{where}: the mask of radius {radius:g} px leaves no background pixel pairs at some lags "
                     f"of the {h}x{w} box: use a radius below {min(h, w) // 2 - 1} px")


def estimate_spectrum(images, radius_px: float | None = None, *, batch_size: int = 256,
                      reject_z: float = REJECT_Z, where: str = "noise spectrum") -> NoiseSpectrum:
  """Noise PSD of a (N, H, W) stack from the background outside `radius_px` (None: estimated from the
  mean image, `estimate_mask_radius`), pooled over the images that pass the outlier test."""
  x = np.asarray(images, np.float32)
  if x.ndim != 3:
    raise InputError(f"{where}: expected a stack (N, H, W), got shape {x.shape}")
  n, h, w = x.shape
  if n < MIN_PARTICLES:
    raise InputError(f"{where}: {n} image(s), a noise spectrum needs at least {MIN_PARTICLES}")
  radius = estimate_mask_radius(x) if radius_px is None else float(radius_px)
  if radius < 0 or radius >= np.hypot(h, w) / 2:
    raise InputError(f"{where}: mask radius {radius:g} px is larger than the {h}x{w} box")
  mask = background_mask(h, w, radius)
  counts = pair_counts(mask)
  _check(n, h, w, radius, mask, counts, where)
  m, nb = jnp.asarray(mask), n_bands()
  bidx = jnp.asarray(_band_index(2 * h, 2 * w))
  bs = max(1, min(int(batch_size), n))
  chunks = [(s, min(s + bs, n)) for s in range(0, n, bs)]

  def padded(s, e):
    return jnp.asarray(np.concatenate([x[s:e], np.zeros((bs - (e - s), h, w), np.float32)]))

  bp = np.concatenate([np.asarray(band_powers(padded(s, e), m, bidx, nb=nb))[: e - s] for s, e in chunks])
  keep = np.ones(n, bool)
  if n >= MIN_REJECT:
    lp = np.log(np.maximum(bp, 1e-30))
    med = np.median(lp, 0)
    mad = np.median(np.abs(lp - med), 0) * 1.4826 + 1e-12
    keep = np.all(np.abs(lp - med) / mad <= reject_z, axis=1)
    if keep.sum() < MIN_PARTICLES:
      keep[:] = True
  k = int(keep.sum())
  n_groups = min(N_SPLIT, k)  # kept images dealt into groups: the spread of their spectra gives band_se
  group = np.where(keep, np.cumsum(keep) - 1, -1) % n_groups
  sums = np.zeros((n_groups, 2 * h, 2 * w))
  for s, e in chunks:
    wts = np.zeros((bs, n_groups), np.float32)
    wts[np.arange(e - s), group[s:e]] = keep[s:e]
    sums += np.asarray(pair_sums(padded(s, e), m, jnp.asarray(wts)), np.float64)
  taper, sizes = lag_taper(counts, k), np.bincount(group[keep], minlength=n_groups)

  def spectrum(total, count):
    cov = np.where(counts > 0, total / np.maximum(count * counts, 1), 0.0) * taper
    return np.asarray(psd_from_autocovariance(jnp.asarray(cov, jnp.float32)), np.float64)

  psd = spectrum(sums.sum(0), k)
  psd = np.maximum(psd, PSD_FLOOR * np.median(psd))
  psd[0, 0] = np.mean([psd[1 % h, 0], psd[-1, 0], psd[0, 1 % w], psd[0, -1]])
  bands = np.array([band_means(radial_average(spectrum(t, c))) for t, c in zip(sums, sizes)])
  radial = radial_average(psd)
  se = (bands.std(0, ddof=1) / np.sqrt(n_groups) / np.maximum(np.abs(band_means(radial)), 1e-30)
        if n_groups > 1 else np.full(nb, np.inf))
  return NoiseSpectrum(total_preserving(radial, psd), psd, se, radius, k, int(n - k))


def total_preserving(radial: np.ndarray, psd2d: np.ndarray) -> np.ndarray:
  """`radial` (the shell means of `psd2d`) scaled so that on the grid (`profile_grid`) its mean is `psd2d`'s:
  the total noise variance σ² the 2D estimate measured. Shell means read back linearly in |k| lose variance
  where the spectrum is steep (the modes of a shell sit mostly beyond its centre): −0.41% of σ² under relion31's
  spectrum and −0.26% under the milder one (1,000 ribosome particles of 64², SNR 0.05; the 2D mean +0.06–0.09%),
  which SURE's σ² term turns into +9–11% of cwf's estimated MSE at SNR 0.05 (σ² 30× the MSE). The shape, and so
  the whitening filter, is unchanged."""
  grid_mean = profile_grid(radial, *psd2d.shape).mean()
  return radial * (float(np.mean(psd2d)) / grid_mean) if grid_mean > 0 else radial
