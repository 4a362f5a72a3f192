"""Image quality metrics in JAX, vmapped over a batch of images.

All take `x` (estimate) and `y` (clean reference) of shape (B, H, W) and return (B,).
PSNR and SSIM use the data range (max - min) of each clean image, since cryo-EM images
are standardised floats with no fixed range.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


@jax.jit
def mse(x, y):
  """Mean squared error per image."""
  return jnp.mean((x - y) ** 2, axis=(-2, -1))


@jax.jit
def psnr(x, y):
  """Peak SNR in dB per image, with the peak = data range of each clean image."""
  data_range = jnp.max(y, axis=(-2, -1)) - jnp.min(y, axis=(-2, -1))
  return 10.0 * jnp.log10(data_range**2 / mse(x, y))


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _blur(img, kernel):
  """Separable Gaussian filter of one (H, W) image with symmetric (half-sample) reflection."""
  r = (len(kernel) - 1) // 2
  img = jnp.pad(img, r, mode="symmetric")
  img = jax.vmap(lambda row: jnp.convolve(row, kernel, mode="valid"))(img)
  img = jax.vmap(lambda col: jnp.convolve(col, kernel, mode="valid"), in_axes=1, out_axes=1)(img)
  return img


def _ssim_one(x, y, sigma, truncate):
  kernel = jnp.asarray(_gaussian_kernel(sigma, truncate))
  data_range = jnp.max(y) - jnp.min(y)
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  mx, my = _blur(x, kernel), _blur(y, kernel)
  sxx = _blur(x * x, kernel) - mx * mx
  syy = _blur(y * y, kernel) - my * my
  sxy = _blur(x * y, kernel) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
  pad = (len(kernel) - 1) // 2
  return jnp.mean(s[pad:-pad, pad:-pad])


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def ssim(x, y, sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE):
  """Structural similarity (Wang et al. 2004) per image: Gaussian window σ=1.5 px,
  K1=0.01, K2=0.03, population covariances, mean over the map away from the border
  (matches scikit-image with gaussian_weights=True, use_sample_covariance=False)."""
  return jax.vmap(lambda a, b: _ssim_one(a, b, sigma, truncate))(x, y)


def _ring_index(h: int, w: int) -> np.ndarray:
  ky = np.fft.fftfreq(h) * h
  kx = np.fft.rfftfreq(w) * w
  return np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int32)


def _rfft_weights(w: int) -> np.ndarray:
  """Counts each rfft column twice except DC (and Nyquist for even W), so ring sums match the full FFT."""
  wt = np.full(w // 2 + 1, 2.0, np.float32)
  wt[0] = 1.0
  if w % 2 == 0:
    wt[-1] = 1.0
  return wt


@jax.jit
def frc_curve(x, y):
  """Fourier ring correlation per image: (B, n_rings) for rings k = 0 .. min(H, W)//2 (in
  Fourier pixels; spatial frequency k / (box · pixel_size))."""
  h, w = x.shape[-2:]
  n = min(h, w) // 2 + 1
  rings = jnp.asarray(_ring_index(h, w))
  weights = jnp.asarray(_rfft_weights(w))[None, :]
  mask = rings < n
  idx = jnp.where(mask, rings, n).ravel()

  def one(a, b):
    fa, fb = jnp.fft.rfft2(a), jnp.fft.rfft2(b)
    cross = jnp.real(fa * jnp.conj(fb)) * weights
    pa, pb = jnp.abs(fa) ** 2 * weights, jnp.abs(fb) ** 2 * weights
    s = lambda v: jax.ops.segment_sum(v.ravel(), idx, num_segments=n + 1)[:n]
    return s(cross) / jnp.sqrt(s(pa) * s(pb) + 1e-30)

  return jax.vmap(one)(x, y)


def resolution_from_curve(curve, box: int, pixel_size: float, threshold: float):
  """Resolution in Å where a correlation curve (..., n_shells) first falls below `threshold`,
  searched from shell 1, linearly interpolated between shells; Nyquist (2·pixel) if it never does."""
  curve = jnp.asarray(curve)
  n = curve.shape[-1]
  k = jnp.arange(n)
  below = (curve < threshold) & (k >= 1)
  first = jnp.where(below.any(-1), jnp.argmax(below, axis=-1), n)
  prev = jnp.clip(first - 1, 0, n - 1)
  cur = jnp.clip(first, 0, n - 1)
  c_prev = jnp.take_along_axis(curve, prev[..., None], -1)[..., 0]
  c_cur = jnp.take_along_axis(curve, cur[..., None], -1)[..., 0]
  frac = jnp.clip((c_prev - threshold) / jnp.maximum(c_prev - c_cur, 1e-12), 0.0, 1.0)
  k_cross = jnp.where(first >= n, n - 1, prev + frac)
  k_cross = jnp.maximum(k_cross, 1e-6)
  return jnp.minimum(box * pixel_size / k_cross, box * pixel_size)


def frc_resolution(x, y, pixel_size: float, threshold: float = 0.5):
  """FRC resolution in Å per image (B,): 0.5 against a clean reference, 0.143 between two
  independent estimates."""
  curve = frc_curve(x, y)
  return resolution_from_curve(curve, min(x.shape[-2:]), pixel_size, threshold)


def summarize(x, y, pixel_size: float) -> dict[str, float]:
  """Mean MSE, PSNR, SSIM and FRC (0.5) resolution over a batch, as Python floats."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  return {
      "mse": float(jnp.mean(mse(x, y))),
      "psnr": float(jnp.mean(psnr(x, y))),
      "ssim": float(jnp.mean(ssim(x, y))),
      "frc_resolution_A": float(jnp.mean(frc_resolution(x, y, pixel_size))),
  }
