"""Fourier shell correlation (FSC) between two 3D maps and the resolution where it crosses a threshold.

Shells are one Fourier voxel wide, k = 0 .. D/2 (frequency k / (D · pixel size) in 1/Å).
0.143 is the threshold between two independent half maps, 0.5 against a noise-free ground truth.

The FSC is unmasked by default. `mask=True` multiplies both maps by a soft spherical mask first
(cosine edge from 0.85·D/2 to D/2), which keeps the noise of the box corners out, but the mask
also mixes neighbouring shells: for maps from low-pass-filtered (denoised) particles it carries
the strong low-frequency correlation into the high shells and overstates their resolution (seen
with Gaussian-filtered particles: masked 26 Å vs 28 Å raw, unmasked 42 Å vs 31 Å), so
comparisons of denoisers use the unmasked FSC.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.metrics import resolution_from_curve


def soft_sphere(d: int, inner: float = 0.85, outer: float = 1.0) -> np.ndarray:
  """(D, D, D) float32 mask: 1 inside radius inner·D/2, cosine edge to 0 at outer·D/2 (centre D//2)."""
  x = np.arange(d) - d // 2
  r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) / (d / 2)
  t = np.clip((r - inner) / max(outer - inner, 1e-6), 0.0, 1.0)
  return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def _shells(d: int) -> tuple[np.ndarray, np.ndarray]:
  """Shell index of each rfftn voxel (D, D, D//2+1) and its multiplicity in the full FFT."""
  k = np.fft.fftfreq(d, 1.0 / d)
  kx = np.arange(d // 2 + 1)
  r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
  mult = np.full(d // 2 + 1, 2.0, np.float32)
  mult[0] = 1.0
  if d % 2 == 0:
    mult[-1] = 1.0
  return np.rint(r).astype(np.int32), np.broadcast_to(mult, r.shape)


@functools.partial(jax.jit, static_argnames=("mask",))
def _fsc(v1, v2, mask: bool):
  d = v1.shape[0]
  if mask:
    m = jnp.asarray(soft_sphere(d))
    v1, v2 = v1 * m, v2 * m
  shells, mult = _shells(d)
  n = d // 2 + 1
  idx = jnp.asarray(np.where(shells < n, shells, n).ravel())
  mult = jnp.asarray(mult)
  f1, f2 = jnp.fft.rfftn(v1), jnp.fft.rfftn(v2)
  s = lambda v: jax.ops.segment_sum((v * mult).ravel(), idx, num_segments=n + 1)[:n]
  cross = s(jnp.real(f1 * jnp.conj(f2)))
  return cross / jnp.sqrt(s(jnp.abs(f1) ** 2) * s(jnp.abs(f2) ** 2) + 1e-30)


def fsc_curve(v1, v2, mask: bool = False) -> np.ndarray:
  """FSC of two (D, D, D) maps per shell k = 0 .. D//2: (D//2 + 1,) float64 NumPy array;
  `mask=True` applies `soft_sphere` to both first (see the module docstring)."""
  v1, v2 = jnp.asarray(v1, jnp.float32), jnp.asarray(v2, jnp.float32)
  if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
    raise ValueError(f"fsc_curve needs two cubic maps of one shape, got {v1.shape} and {v2.shape}")
  return np.asarray(_fsc(v1, v2, bool(mask)), np.float64)


def shell_frequencies(d: int, pixel_size: float) -> np.ndarray:
  """Spatial frequency of each shell in 1/Å: k / (D · pixel size), k = 0 .. D//2."""
  return np.arange(d // 2 + 1) / (d * float(pixel_size))


def fsc_resolution(curve, pixel_size: float, threshold: float = 0.143) -> float:
  """Resolution in Å where an FSC curve (shells 0 .. D/2) first falls below `threshold`, linearly
  interpolated between shells; Nyquist (2 · pixel size) when it never does."""
  curve = np.asarray(curve)
  box = 2 * (curve.shape[-1] - 1)
  return float(resolution_from_curve(curve, box, float(pixel_size), float(threshold)))


def fsc_at(curve, pixel_size: float, resolution_A: float) -> float:
  """Lowest FSC over the shells from 1 up to `resolution_A` (used to check a map up to a resolution)."""
  curve = np.asarray(curve)
  freqs = shell_frequencies(2 * (len(curve) - 1), pixel_size)
  sel = (freqs > 0) & (freqs <= 1.0 / resolution_A + 1e-9)
  return float(curve[sel].min())
