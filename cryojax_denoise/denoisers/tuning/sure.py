"""Monte-Carlo SURE, the estimator (Ramani, Blu & Unser, IEEE TIP 2008); the tuning policy that uses
it (knob grids, subsets, budgets) is `sure_policy.py`, the measurements behind the constants
`docs/sure_notes.md`.

For y = x + n with Gaussian noise n of covariance Σ over the N pixels of an image, and any denoiser
f (weakly differentiable), Stein's unbiased risk estimate of the per-image MSE ‖f(y) − x‖²/N needs
no clean image:

    SURE(y) = (‖y − f(y)‖² − tr Σ + 2 tr(Σ J_f)) / N.

White noise (Σ = σ²I): tr(Σ J_f) = σ² div f ≈ σ² bᵀ(f(y + εb) − f(y))/ε with b a Rademacher probe
(entries ±1), averaged over `n_probes` probes, ε = `eps`·σ per image. Stationary coloured noise
(`noise_psd`: Σ's eigenvalues on the FFT grid, image units² per pixel, white σ² = flat σ²): the
probe is coloured, b = G ε with G = sqrt(PSD / mean PSD) applied in Fourier space (`_colour`), so
E bᵀJb = tr(G J G) = tr(Σ J)/σ² with σ² = mean PSD (tr Σ / N); SURE then has the white formula with
that σ (`sure_from_stats`). A linear shift-invariant method (gaussian) registers its exact
divergence (`Method.divergence`, `known_divergence`; white noise only) and is not probed.
Everything is in image units; `relative` divides by the signal power estimated from the noisy
images, var(y) − σ² (the sweep's MSE is relative to signal power).

    est = sure(denoisers.get("wiener"), noisy, sigma)          # SureEstimate: mse (B,), relative, gain_db
    est = sure(den, noisy, noise_psd=psd)                      # coloured noise, psd (H, W) or radial (R,)
    est = sure(lambda y, s: fitted(y, s, ctf), noisy)          # dataset-level: each particle's CTF in the call
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.noise import (  # noqa: F401 (band_power, tail_corrected_noise_std: API)
    band_power, noise_std_or_estimate, tail_corrected_noise_std)
from cryojax_denoise.denoisers.tuning.sure_grid import (  # noqa: F401 (divergence, is_jittable, rademacher: API)
    divergence, grid_stats, is_jittable, rademacher, rademacher_probes, sure_from_stats)
from cryojax_denoise.denoisers.registry import keyword_params
from cryojax_denoise.errors import InputError

# Probe step as a fraction of σ: 0.07σ for thresholding methods, smaller for smooth ones and bm3d
# (docs/sure_notes.md, "Probe step").
EPS = 0.07
EPS_BY_METHOD = {"gaussian": 0.01, "wiener": 0.01, "bm3d": 0.04}
N_PROBES = 4       # Rademacher probes per estimate
GAIN_Z = 2.0       # output gain from ⟨f, x⟩ less 2 standard errors (`output_gain`)


def psd_grid(noise_psd, shape: tuple) -> np.ndarray:
  """The noise PSD (..., H, W) float64 on the unshifted FFT grid of (..., H, W) images, image units²
  per pixel (white σ²: σ² everywhere; its mean is the per-pixel noise variance tr Σ / N).

  `noise_psd`: an array (..., H, W) in FFT layout (e.g. from `np.abs(np.fft.fft2(n))**2 / (H·W)`
  averaged over noise images), made symmetric under k -> −k (a real noise's spectrum is); or a
  radial profile (R,) sampled at radii r_i = i / (2(R − 1)) cycles/px, 0 … Nyquist, interpolated
  linearly in |k| and held beyond Nyquist. InputError for a negative, non-finite or misshapen one.
  """
  p = np.asarray(noise_psd, np.float64)
  H, W = shape[-2:]
  if not np.all(np.isfinite(p)) or np.any(p < 0) or p.size == 0:
    raise InputError("noise_psd: must be finite and >= 0")
  if p.ndim == 1:
    if len(p) < 2:
      raise InputError(f"noise_psd: a radial profile needs at least 2 values, got {len(p)}")
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(H), np.fft.fftfreq(W), indexing="ij"))
    return np.interp(r, np.linspace(0.0, 0.5, len(p)), p)
  if p.shape[-2:] != (H, W):
    raise InputError(f"noise_psd: shape {p.shape} does not end in the images' {H}x{W}")
  flip = np.roll(p[..., ::-1, ::-1], (1, 1), axis=(-2, -1))  # p at −k
  return 0.5 * (p + flip)


def _colour(x, psd2d):
  """x (..., H, W) filtered by sqrt(`psd2d`) (H, W) or (..., H, W) on the unshifted FFT grid: white
  unit-variance x becomes noise of covariance Σ with eigenvalues `psd2d` (Σ^{1/2} x; per-pixel
  variance mean(psd2d)). Real for a k -> −k symmetric psd2d (`psd_grid`). NumPy float32."""
  return np.fft.ifft2(np.fft.fft2(np.asarray(x, np.float64)) * np.sqrt(psd2d)).real.astype(np.float32)


def probes(seed: int, n_probes: int, shape: tuple, noise_psd=None) -> np.ndarray:
  """`n_probes` probes (n_probes, *shape) from `seed`: Rademacher, or with `noise_psd` coloured by
  sqrt(PSD / mean PSD) (`_colour`; per-pixel variance 1, covariance Σ / σ²), so the step ε·σ and
  SURE's formula are those of white noise of σ² = mean PSD."""
  b = rademacher_probes(seed, n_probes, shape)
  if noise_psd is None or n_probes == 0:
    return b
  p = psd_grid(noise_psd, shape)
  mean = p.mean(axis=(-2, -1), keepdims=True)
  return _colour(b, np.divide(p, mean, out=np.zeros_like(p), where=mean > 0))


def psd_std(noise_psd, shape: tuple) -> np.ndarray:
  """σ = sqrt(mean PSD) (B,) for images of `shape` (B, H, W): the noise std SURE's formula takes."""
  p = psd_grid(noise_psd, shape)
  return np.broadcast_to(np.sqrt(p.mean(axis=(-2, -1))), shape[:1]).astype(np.float32)


@dataclasses.dataclass
class SureEstimate:
  """SURE of one denoiser on a batch: `mse` (B,) per image in image units, `sigma` (B,) used,
  `power` the estimated signal power of the batch, `output` f(y) (B, H, W) (None if not kept),
  `band` (B,) each image's high-band power (`noise.band_power`) and `div` (B,) its divergence per
  pixel, for `standard_error` (None: not known)."""
  mse: np.ndarray
  sigma: np.ndarray
  power: float
  output: np.ndarray | None = None
  band: np.ndarray | None = None
  div: np.ndarray | None = None

  @property
  def mean(self) -> float:
    """Estimated MSE of the batch, image units."""
    return float(np.mean(self.mse))

  @property
  def relative(self) -> float:
    """Estimated MSE relative to the signal power (the sweep's MSE); NaN when no signal is seen."""
    return self.mean / self.power if self.power > 0 else float("nan")

  @property
  def gain_db(self) -> float:
    """Estimated MSE reduction 10·log10(σ² / SURE) in dB (the noisy input has MSE σ²)."""
    return gain_db(self.mse, self.sigma)

  @property
  def standard_error(self) -> float:
    """Standard error of `mean`, image units (`standard_error`)."""
    return standard_error(self.mse, self.band, self.div)

  def record(self) -> dict:
    """The numbers to report: {"n_images", "sure_mse", "sure_relative", "gain_db", "sure_se" (image units),
    "relative_se" (standard error / estimate)}."""
    se = self.standard_error
    return {"n_images": len(self.mse), "sure_mse": self.mean, "sure_relative": self.relative, "gain_db": self.gain_db,
            "sure_se": se, "relative_se": se / self.mean if self.mean > 0 else float("nan")}


def standard_error(sure_mse, band=None, div=None) -> float:
  """Standard error of the mean of per-image SURE values (B,) over independent images, image units.

  SURE's σ² is the mean high-band power of the same images (`noise.band_power`, `band` (B,)), so
  the mean's error is that of mean_i ψ_i with ψ_i = SURE_i − (1 − 2·mean div)·band_i (its influence
  values; `div` (B,) per pixel, 0 if None): the sample sd of ψ over sqrt(B). Without `band`, that
  of the SURE values. Conservative: the spread of the true per-image MSEs counts too. NaN with
  fewer than 3 images.
  """
  s = np.asarray(sure_mse, np.float64)
  if len(s) < 3:
    return float("nan")
  if band is not None:
    s = s - (1.0 - 2.0 * (0.0 if div is None else float(np.mean(div)))) * np.asarray(band, np.float64)
  return float(np.std(s, ddof=1) / np.sqrt(len(s)))


def difference_se(a: SureEstimate, b: SureEstimate) -> float:
  """Standard error of mean(a.mse − b.mse), SURE's difference between two knob values on the same
  images (B,), image units: the sample spread of the paired differences over sqrt(B), each with its
  influence on the shared σ² (2·(mean a.div − mean b.div)·band, cf. `standard_error`). NaN with
  fewer than 3 images."""
  d = np.asarray(a.mse, np.float64) - np.asarray(b.mse, np.float64)
  if len(d) < 3:
    return float("nan")
  if a.band is not None:
    mean_div = lambda e: 0.0 if e.div is None else float(np.mean(e.div))  # noqa: E731
    d = d + 2.0 * (mean_div(a) - mean_div(b)) * np.asarray(a.band, np.float64)
  return float(np.std(d, ddof=1) / np.sqrt(len(d)))


def above_best(ests: list[SureEstimate]) -> np.ndarray:
  """(G,) how many paired standard errors (`difference_se`) each knob value's SURE lies above the
  lowest on the same images (0 there; NaN with under 3 images)."""
  means = np.array([e.mean for e in ests])
  i = int(np.argmin(means))
  return np.array([0.0 if g == i else (means[g] - means[i]) / difference_se(e, ests[i]) for g, e in enumerate(ests)])


def signal_power(images, sigma) -> float:
  """Signal power of a batch (B, H, W) from the noisy images: var(y) − mean σ² (over the batch)."""
  return float(np.var(np.asarray(images, np.float64)) - np.mean(np.square(np.asarray(sigma, np.float64))))


def gain_db(mse, sigma) -> float:
  """10·log10(mean σ² / mean MSE): the estimated MSE reduction over the noisy input, in dB."""
  mse, s2 = float(np.mean(mse)), float(np.mean(np.square(sigma)))
  return float(10.0 * np.log10(s2 / mse)) if mse > 0 else float("inf")


def sigmas(images, noise_std=None, sure_std=None, noise_psd=None) -> tuple[np.ndarray, np.ndarray]:
  """(σ passed to the denoiser, σ in SURE's formula), each (B,), for images (B, H, W).

  Given `noise_std` serves both; when None the denoiser gets what `denoisers.get` would estimate
  (per-image MAD, computed once on y so that y + εb sees the same σ) and SURE gets `sure_std`, or
  the batch's `tail_corrected_noise_std` (the high band's power less the signal extrapolated into
  it) when that is None too. A given `noise_psd` (`psd_grid`) replaces both estimates by
  sqrt(mean PSD) (the white band estimate is wrong for coloured noise).
  """
  if noise_std is None and noise_psd is not None:
    noise_std = psd_std(noise_psd, np.shape(images))
  images = jnp.asarray(images, jnp.float32)
  den = noise_std_or_estimate(images, noise_std)
  if noise_std is None:
    den_sure = tail_corrected_noise_std(images) if sure_std is None else sure_std
  else:
    den_sure = noise_std
  est = jnp.broadcast_to(jnp.asarray(den_sure, jnp.float32), images.shape[:1])
  return np.asarray(den, np.float32), np.asarray(est, np.float32)


def eps_for(name: str) -> float:
  """The measured probe step (fraction of σ) for method `name`."""
  return EPS_BY_METHOD.get(name, EPS)


@functools.lru_cache(maxsize=64)
def _fixed_knob(den: Callable) -> Callable:
  """`den` as a grid function of no knob; one object per `den`, so repeated `sure` calls hit the compile cache."""
  return lambda images, sigma, value: den(images, sigma)


def sure(den: Callable, images, noise_std=None, *, sure_std=None, noise_psd=None, eps: float = EPS,
         n_probes: int = N_PROBES, seed: int = 0, keep_output: bool = False, div: float | None = None) -> SureEstimate:
  """MC-SURE of `den(images (B, H, W), noise_std (B,)) -> (B, H, W)` on `images`, in image units.

  `noise_std` scalar or (B,) (None: estimated, see `sigmas`; `sure_std` then overrides SURE's σ);
  `noise_psd` the stationary noise's PSD ((H, W), (B, H, W) in FFT layout or a radial profile,
  `psd_grid`): probes coloured by it (`probes`) and σ = sqrt(mean PSD) unless `noise_std` is
  given; `eps` the probe step as a fraction of σ; `n_probes` probes from `seed`, or none when
  `div`, the exact divergence per pixel of a linear method under white noise, is known
  (`known_divergence`; ignored with `noise_psd`, where tr(ΣJ) ≠ σ² tr J).
  Costs 1 + n_probes calls of `den` on the batch (1 with `div`). A dataset-level (fitted) method
  is probed with its model held fixed and each particle's CTF in the call:
  `sure(lambda y, s: fitted(y, s, ctf_rows), images)`.
  """
  images = np.asarray(images, np.float32)
  div = None if noise_psd is not None else div
  den_sigma, sigma = sigmas(images, noise_std, sure_std, noise_psd)
  b = probes(seed, 0 if div is not None else n_probes, images.shape, noise_psd)
  resid, mc_div, _ = grid_stats(_fixed_knob(den), images, den_sigma, [0.0], b, eps * sigma)
  div = mc_div[0] if div is None else np.full(len(images), div, np.float32)
  output = np.asarray(den(images, den_sigma), np.float32) if keep_output else None
  band = None if noise_psd is not None else np.asarray(band_power(images))  # σ known: no σ̂ in the error
  return SureEstimate(sure_from_stats(resid[0], div, sigma), sigma, signal_power(images, sigma), output, band, div)


def output_gain(images, output, est: SureEstimate, z: float = GAIN_Z) -> tuple[float, float]:
  """SURE's output gain for a denoiser's `output` f(y) (B, H, W) on `images` y, and SURE's per-image MSE
  of the gained output α·f(y) (image units): (α, mse).

  The MSE-optimal gain is ⟨f, x⟩ / ‖f‖², with ⟨f, x⟩ = ⟨f, y⟩ − tr(Σ J_f) (Stein: E⟨f, n⟩ = tr(Σ J_f)), read
  from `est` = `sure(den, images, ...)` of the same images (its σ and divergence, white or coloured probes).
  α is a lower confidence bound: the ratio of the batch's sums less `z` of the ratio's standard errors,
  clipped to [0, 1] (`_bounded_weight`). Why: α·f is worse than a blank image (α = 0) only when α exceeds
  2⟨f, x⟩/‖f‖², and where a method passes far more noise than signal (low SNR under coloured noise, whose
  excess sits where the signal is) ⟨f, x⟩ is a few % of ⟨f, y⟩, so the point estimate can land anywhere in
  [0, 1] (a hard-thresholding method's divergence is itself uncertain). The bound keeps α below the optimum
  with probability ≈ Φ(z), hence α·f at or below a blank image's MSE; where SURE is sure (⟨f, x⟩ many
  standard errors above 0) it costs almost nothing. z = 0 is the point estimate; below 3 images too.
  """
  y = np.asarray(images, np.float64)
  f = np.asarray(output, np.float64)
  n_pix = y[0].size
  s2 = np.square(np.asarray(est.sigma, np.float64))
  trace = s2 * np.asarray(est.div, np.float64) * n_pix  # (B,) tr(Σ J_f) per image
  ff, fy, yy = (np.sum(a * b, axis=(-2, -1)) for a, b in ((f, f), (f, y), (y, y)))
  signal = fy - trace  # (B,) per-image estimates of ⟨f, x⟩
  alpha = _bounded_weight(signal, ff, z)
  mse = (alpha ** 2 * ff - 2 * alpha * signal + yy - n_pix * s2) / n_pix
  return alpha, mse


def blend_weight(images, base: SureEstimate, other: SureEstimate, z: float = GAIN_Z) -> float:
  """SURE's weight β in [0, 1] of `other` in base + β·(other − base): how much of a correction (a network's,
  on top of the `base` estimate it was given) to apply. `base` and `other` from `sure(..., keep_output=True)`
  on the same `images` (B, H, W) with the same σ and probes (seed, eps). The optimum ⟨x − b, o − b⟩ / ‖o − b‖²
  is read as ⟨y − b, o − b⟩ − tr(Σ (J_o − J_b)) per image, and β is taken from its lower confidence bound
  (less `z` standard errors, as `output_gain`): a correction SURE cannot show to help is not applied, so
  the blend is never worse than `base` beyond SURE's error."""
  y = np.asarray(images, np.float64)
  b, o = (np.asarray(e.output, np.float64) for e in (base, other))
  d = o - b
  trace = np.square(np.asarray(base.sigma, np.float64)) * y[0].size * (
      np.asarray(other.div, np.float64) - np.asarray(base.div, np.float64))
  gain = np.sum((y - b) * d, axis=(-2, -1)) - trace  # (B,) per-image estimates of ⟨x − b, o − b⟩
  return _bounded_weight(gain, np.sum(d * d, axis=(-2, -1)), z)


def _bounded_weight(terms, denoms, z: float) -> float:
  """The lower-confidence-bound weight of `output_gain` and `blend_weight`: the ratio w = Σ terms / Σ denoms
  of the per-image (B,) estimates, less `z` of its standard error, clipped to [0, 1]; 0 when Σ denoms is 0.

  The standard error is the ratio estimator's, sqrt(B)·std(terms − w·denoms) / Σ denoms (0 below 3 images):
  it measures how uncertain the weight is, not how much each image's terms vary with the signal it carries
  (the spread of the terms themselves, which made the bound cost up to 5% at SNR 0.2–1 where SURE is sure)."""
  terms, denoms = np.asarray(terms, np.float64), np.asarray(denoms, np.float64)
  total = float(np.sum(denoms))
  if total <= 0:
    return 0.0
  w = float(np.sum(terms)) / total
  se = float(np.sqrt(len(terms)) * np.std(terms - w * denoms, ddof=1)) / total if len(terms) >= 3 else 0.0
  return float(np.clip(w - z * se, 0.0, 1.0))


def gained(images, est: SureEstimate) -> tuple[float, SureEstimate]:
  """(α, SURE of the gained output α·f) from `est` = `sure(den, images, ..., keep_output=True)`: the
  estimate of what is applied when the gain is (`output_gain`); J_{αf} = α J_f, so its divergence is α·div."""
  alpha, mse = output_gain(images, est.output, est)
  div = None if est.div is None else alpha * np.asarray(est.div)
  return alpha, dataclasses.replace(est, mse=np.asarray(mse, np.float32), output=None, div=div)


def known_divergence(name: str, shape: tuple, **params) -> float | None:
  """Exact divergence per pixel of registry method `name` with `params` (its defaults for the rest)
  on images of `shape` (..., H, W), when it registers one (`Method.divergence`: linear shift-invariant
  methods); None otherwise."""
  from cryojax_denoise import denoisers

  method = denoisers.REGISTRY.get(name)
  if method is None or method.divergence is None:
    return None
  takes = keyword_params(method.divergence)
  return float(method.divergence(*shape[-2:], **{k: v for k, v in {**method.defaults, **params}.items() if k in takes}))
