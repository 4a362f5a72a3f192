"""Noise level estimation for images with additive white Gaussian noise.

`estimate_noise_std` is the robust wavelet estimator of Donoho & Johnstone (1994): the finest
diagonal (HH) coefficients of the orthonormal Haar transform, d = (a - b - c + e) / 2 over the
non-overlapping 2×2 blocks [[a, b], [c, e]], have standard deviation σ for white noise of std σ,
and almost no signal for images that are smooth at the pixel scale (true of cryo-EM particles,
whose signal is band-limited well below Nyquist). σ̂ = median(|d|) / 0.6745 (0.6745 = Φ⁻¹(3/4)),
the median absolute deviation, which ignores the few large coefficients at edges. It is the
input of the learned models and of the classical methods' default σ.

`band_noise_std` is one σ for a whole batch from its power beyond `BAND_CUTOFF` cycles/pixel, the σ
of Monte-Carlo SURE (`sure.py`), whose −σ² term needs σ² to ~0.5% where the per-image MAD scatters by
~4% per image and is biased by the signal at low SNR. `tail_corrected_noise_std` (what SURE uses)
subtracts from it the signal power extrapolated into the band from the shells below, where that
signal is resolved (high SNR with CTF rings); elsewhere it is `band_noise_std`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MAD_TO_STD = 0.6744897501960817  # Phi^{-1}(3/4): median |N(0, 1)|
BAND_CUTOFF = 0.4   # cycles/pixel beyond which `band_noise_std` takes images to be noise alone


@jax.jit
def haar_diagonal(images: jax.Array) -> jax.Array:
  """Finest diagonal Haar coefficients of (B, H, W): (B, H//2 * W//2), orthonormal scaling."""
  x = jnp.asarray(images, jnp.float32)
  B, H, W = x.shape
  x = x[:, : H // 2 * 2, : W // 2 * 2]
  d = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2.0
  return d.reshape(B, -1)


@jax.jit
def estimate_noise_std(images: jax.Array) -> jax.Array:
  """Per-image noise std (B,) of (B, H, W) images, in image units (median |HH| / 0.6745)."""
  return jnp.median(jnp.abs(haar_diagonal(images)), axis=1) / MAD_TO_STD


def noise_std_or_estimate(images: jax.Array, noise_std) -> jax.Array:
  """`noise_std` broadcast to (B,), or the estimate when it is None."""
  B = images.shape[0]
  if noise_std is None:
    return estimate_noise_std(images)
  return jnp.broadcast_to(jnp.asarray(noise_std, jnp.float32), (B,))


@functools.partial(jax.jit, static_argnames=("cutoff",))
def band_noise_std(images: jax.Array, cutoff: float = BAND_CUTOFF) -> jax.Array:
  """One noise std for a (B, H, W) batch from its power beyond `cutoff` cycles/pixel, image units.

  White noise of std σ has mean |FFT|²/(H·W) = σ² at every frequency, while particle images carry
  little signal beyond 0.4 cycles/pixel: measured at SNR 1 on 64² images (5 Å/px ribosome, the
  phantom), its power there is 0.07-0.2% of σ², 1.2% for the phantom with CTF (σ̂ +0.6%), and
  falls with the SNR. The mean over those modes of all images is then σ² to that bias plus a
  statistical error ~1/sqrt(number of modes): 0.1-0.3% in σ for 32 images of 64².
  """
  return jnp.sqrt(jnp.mean(band_power(images, cutoff)))


@functools.partial(jax.jit, static_argnames=("cutoff",))
def band_power(images: jax.Array, cutoff: float = BAND_CUTOFF) -> jax.Array:
  """Per-image mean power |FFT|²/(H·W) beyond `cutoff` cycles/pixel, (B,) for (B, H, W): σ² plus the
  little signal there. Its mean is `band_noise_std`²; its spread over images is the realised noise
  that SURE's standard error removes (`sure.standard_error`)."""
  x = jnp.asarray(images, jnp.float32)
  _, H, W = x.shape
  r2 = np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2
  band = jnp.asarray(r2 > cutoff ** 2)
  return jnp.sum(jnp.where(band, power_spectrum(x), 0.0), axis=(-2, -1)) / jnp.sum(band)


def power_spectrum(images: jax.Array) -> jax.Array:
  """|FFT|²/(H·W) of each image of (B, H, W), (B, H, W): white noise of std σ has σ² in every mode."""
  return jnp.abs(jnp.fft.fft2(images)) ** 2 / (images.shape[-2] * images.shape[-1])


FIT_SHELLS = (0.25, 0.3, 0.35, 0.4)  # edges of the shells below the band whose excess power is extrapolated
FIT_Z = 3.0  # a shell's excess power over σ² counts as signal above this many standard errors


@jax.jit
def _mean_power(images: jax.Array) -> jax.Array:
  """`power_spectrum` averaged over a (B, H, W) batch, (H, W)."""
  return jnp.mean(power_spectrum(images), axis=0)


def tail_corrected_noise_std(images, cutoff: float = BAND_CUTOFF, shells: tuple = FIT_SHELLS,
                             z: float = FIT_Z, n_iter: int = 1) -> float:
  """`band_noise_std` less the signal power extrapolated into the band, for (B, H, W), image units.

  The signal's radial power spectrum falls roughly exponentially near Nyquist: log(excess power) of
  the `shells` just below `cutoff` (mean power − σ²) is fitted linearly in the radius, weighted by
  their significance, over the shells whose excess is above `z` standard errors (σ²/sqrt(M/2) for M
  modes of real images), and its mean over the band's modes is subtracted from the band's power (then
  σ² refitted, `n_iter` times). With fewer than two significant shells, or a profile that does not
  fall, nothing is subtracted: then it is `band_noise_std` itself (low SNR). Phantom with CTF rings at
  SNR 1, 64²: the band r > 0.4 holds 1.2% of σ² of signal, the shells below 7.7-50%.
  """
  b, h, w = np.shape(images)
  r = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
  power = np.asarray(_mean_power(jnp.asarray(images, jnp.float32)), np.float64)
  band = r > cutoff
  p_band = power[band].mean()
  masks = [(r > lo) & (r <= hi) for lo, hi in zip(shells[:-1], shells[1:])]
  p_shell = np.array([power[m].mean() for m in masks])
  n_shell = np.array([m.sum() for m in masks])
  r_shell = np.array([r[m].mean() for m in masks])
  s2 = p_band
  for _ in range(n_iter):
    excess, se = p_shell - s2, s2 * np.sqrt(2.0 / (b * n_shell))
    use = excess > z * se
    if use.sum() < 2:
      return float(np.sqrt(p_band))
    (slope, icpt), cov = np.polyfit(r_shell[use], np.log(excess[use]), 1, w=excess[use] / se[use], cov="unscaled")
    if not slope < -z * np.sqrt(cov[0, 0]):  # the fall is not resolved: no extrapolation
      return float(np.sqrt(p_band))
    s2 = p_band - float(np.mean(np.exp(icpt + slope * r[band])))
  return float(np.sqrt(max(s2, 0.0)))
