"""Noise level estimation for images with additive white Gaussian noise.

`estimate_noise_std` is the robust wavelet estimator of Donoho & Johnstone (1994): the finest
diagonal (HH) coefficients of the orthonormal Haar transform, d = (a - b - c + e) / 2 over the
non-overlapping 2×2 blocks [[a, b], [c, e]], have standard deviation σ for white noise of std σ,
and almost no signal for images that are smooth at the pixel scale (true of cryo-EM particles,
whose signal is band-limited well below Nyquist). σ̂ = median(|d|) / 0.6745 (0.6745 = Φ⁻¹(3/4)),
the median absolute deviation, which ignores the few large coefficients at edges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAD_TO_STD = 0.6744897501960817  # Phi^{-1}(3/4): median |N(0, 1)|


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
