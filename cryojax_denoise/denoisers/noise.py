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
~4% per image and is biased by the signal at low SNR.
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
  x = jnp.asarray(images, jnp.float32)
  _, H, W = x.shape
  r2 = np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2
  band = jnp.asarray(r2 > cutoff ** 2)
  power = jnp.abs(jnp.fft.fft2(x)) ** 2 / (H * W)
  return jnp.sqrt(jnp.sum(jnp.where(band, power, 0.0)) / (x.shape[0] * jnp.sum(band)))
