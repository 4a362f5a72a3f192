"""Linear baselines in JAX: Gaussian low-pass and a Wiener filter from the radial power spectrum.

Both act in Fourier space on each image of a (B, H, W) batch, are jitted and batch-vectorised.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.registry import register


def _freq2(h: int, w: int) -> np.ndarray:
  """|k|² in cycles/pixel for the rfft2 grid, (h, w//2+1)."""
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  return (fy ** 2 + fx ** 2).astype(np.float32)


def _gaussian_gain(f2, width, xp=jnp):
  """Transfer function of a Gaussian kernel of std `width` pixels at |k|² = `f2` (cycles/pixel)²
  (`xp`: jnp, or np for float64 on the host)."""
  return xp.exp(-2.0 * (xp.pi * width) ** 2 * f2)


def gaussian_divergence(h: int, w: int, *, width: float = 1.5) -> float:
  """Divergence per pixel of `gaussian_denoise` on h × w images: its transfer function averaged over
  the full DFT grid (a circular convolution has that on its matrix's diagonal). Exact, for SURE."""
  f2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
  return float(np.mean(_gaussian_gain(f2, float(width), np)))


@register("gaussian", knob="width", grid=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0), needs_sigma=False,
          divergence=gaussian_divergence, description="Gaussian low-pass, kernel std `width` pixels")
@jax.jit
def gaussian_denoise(images: jax.Array, noise_std=None, *, width: float = 1.5) -> jax.Array:
  """Gaussian low-pass of (B, H, W) with kernel std `width` pixels (periodic boundary); σ unused."""
  del noise_std
  x = jnp.asarray(images, jnp.float32)
  B, H, W = x.shape
  gain = _gaussian_gain(jnp.asarray(_freq2(H, W)), width)
  return jnp.fft.irfft2(jnp.fft.rfft2(x) * gain, s=(H, W))


def _radial_bins(h: int, w: int) -> tuple[np.ndarray, int]:
  """Integer radius (in units of the frequency step 1/max(h, w)) of each rfft2 bin, and #bins."""
  k = np.sqrt(_freq2(h, w)) * max(h, w)
  idx = np.rint(k).astype(np.int32)
  return idx, int(idx.max()) + 1


@register("wiener", knob="strength", grid=(0.5, 1.0, 2.0, 4.0),
          description="Wiener filter from the radially averaged power spectrum; gain S/(S + strength·N)")
@functools.partial(jax.jit, static_argnames=("shared",))
def wiener_denoise(images: jax.Array, noise_std: jax.Array, *, strength: float = 1.0,
                   shared: bool = False) -> jax.Array:
  """Wiener filter of (B, H, W) from the radially averaged power spectrum, σ scalar or (B,).

  For each radius k, the noisy power P(k) (mean |FFT|² over the shell) gives the signal power
  S(k) = max(P(k) - N, 0) with N = σ² H W the white-noise power; the gain is
  S / (S + strength·N). `shared` averages P(k) over the batch (images of one molecule at one
  defocus spread share a spectrum; less variance at low SNR).
  """
  x = jnp.asarray(images, jnp.float32)
  B, H, W = x.shape
  sigma = jnp.broadcast_to(jnp.asarray(noise_std, jnp.float32), (B,))
  f = jnp.fft.rfft2(x)
  idx, nbins = _radial_bins(H, W)
  # rfft2 stores half the plane: weight the columns that stand for two conjugate bins by 2.
  mult = np.full(idx.shape, 2.0, np.float32)
  mult[:, 0] = 1.0
  if W % 2 == 0:
    mult[:, -1] = 1.0
  p = jnp.abs(f) ** 2 * mult
  flat = jnp.asarray(idx.reshape(-1))
  num = jax.vmap(lambda q: jnp.zeros(nbins).at[flat].add(q.reshape(-1)))(p)
  den = jnp.zeros(nbins).at[flat].add(jnp.asarray(mult.reshape(-1)))
  power = num / den  # (B, nbins)
  if shared:
    power = jnp.broadcast_to(power.mean(0, keepdims=True), power.shape)
  noise = (sigma ** 2 * H * W)[:, None]
  signal = jnp.maximum(power - noise, 0.0)
  gain = signal / (signal + strength * noise + 1e-12)  # (B, nbins)
  return jnp.fft.irfft2(f * gain[:, flat].reshape(B, *idx.shape), s=(H, W))
