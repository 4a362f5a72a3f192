"""Straightforward NumPy references of DDTF and TV, for checking and timing the JAX kernels (`benchmark`).

Same algorithm and conventions as `ddtf.py`, written the plain way: patches materialised as a
matrix, coefficients by matrix products, overlap-add by strided slices, float64 in NumPy/LAPACK.
Not used by the denoisers themselves.
"""

from __future__ import annotations

import numpy as np

from cryojax_denoise.denoisers.classical.ddtf import PROX, dct_filters


def learn_filters_numpy(x: np.ndarray, thresh: np.ndarray, n_iter: int = 30) -> np.ndarray:
  """DDTF filter learning on patches x (n, r²), per-patch thresholds (n,): orthogonal D (r², r²)."""
  x = np.asarray(x, np.float64)
  r = int(round(np.sqrt(x.shape[1])))
  d = dct_filters(r).astype(np.float64)
  dc = d[:, :1]
  for _ in range(n_iter):
    v = x @ d
    v[:, 1:] *= np.abs(v[:, 1:]) > thresh[:, None]
    m = x.T @ v[:, 1:]
    m += PROX * np.linalg.norm(m) * d[:, 1:]
    m -= dc @ (dc.T @ m)
    u, _, wt = np.linalg.svd(m, full_matrices=False)
    d = np.concatenate([dc, u @ wt], axis=1)
  return d


def apply_filters_numpy(image: np.ndarray, d: np.ndarray, thresh: float, stride: int = 1,
                        threshold_dc: bool = True) -> np.ndarray:
  """Denoise one image (H, W): threshold each grid patch's coefficients, average the overlaps."""
  H, W = image.shape
  r = int(round(np.sqrt(d.shape[0])))
  ph, pw = (-(H - r)) % stride, (-(W - r)) % stride
  x = np.pad(np.asarray(image, np.float64), ((0, ph), (0, pw)), mode="reflect")
  win = np.lib.stride_tricks.sliding_window_view(x, (r, r))[::stride, ::stride]
  ny, nx = win.shape[:2]
  p = win.reshape(ny * nx, r * r)
  c = p @ d
  first = 0 if threshold_dc else 1
  c[:, first:] *= np.abs(c[:, first:]) > thresh
  q = (c @ d.T).reshape(ny, nx, r, r)
  acc = np.zeros_like(x)
  cnt = np.zeros_like(x)
  for i in range(r):
    for j in range(r):
      acc[i:i + stride * ny:stride, j:j + stride * nx:stride] += q[:, :, i, j]
      cnt[i:i + stride * ny:stride, j:j + stride * nx:stride] += 1.0
  return (acc / cnt)[:H, :W]


def ddtf_denoise_numpy(images: np.ndarray, noise_std, positions, *, lam_scale: float = 1.0, lam1: float = 3.4,
                       lam2: float = 2.7, r: int = 8, n_iter: int = 30, stride: int = 2,
                       threshold_dc: bool = True) -> np.ndarray:
  """Shared-filter DDTF of (B, H, W), learning on the patches at `positions` = (b, y, x) arrays.

  Pass the positions `patches.sample_positions` drew for the JAX run to get the same result.
  """
  images = np.asarray(images, np.float64)
  B = images.shape[0]
  sigma = np.broadcast_to(np.asarray(noise_std, np.float64), (B,))
  b, y, x = (np.asarray(a) for a in positions)
  xs = np.stack([images[bi, yi:yi + r, xi:xi + r].reshape(-1) for bi, yi, xi in zip(b, y, x)])
  d = learn_filters_numpy(xs, lam_scale * lam1 * sigma[b], n_iter)
  return np.stack([apply_filters_numpy(im, d, lam_scale * lam2 * s, stride, threshold_dc) for im, s in zip(images, sigma)])



def _div_numpy(qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
  dy, dx = qy.copy(), qx.copy()
  dy[1:] -= qy[:-1]
  dx[:, 1:] -= qx[:, :-1]
  return dy + dx


def tv_denoise_numpy(images: np.ndarray, weights, n_iter: int, tau: float = 0.25) -> np.ndarray:
  """Chambolle's TV projection iteration in plain NumPy (loop over images), as `tv.tv_denoise`.

  `weights` (B,) or scalar: the TV weight w of each image (lam·σ in `tv_denoise`).
  """
  x = np.asarray(images, np.float64)
  w = np.broadcast_to(np.asarray(weights, np.float64), (x.shape[0],))
  out = np.empty_like(x)
  for b, (f, wb) in enumerate(zip(x, w)):
    qy, qx = np.zeros_like(f), np.zeros_like(f)
    for _ in range(n_iter):
      u = f - _div_numpy(qy, qx)
      gy, gx = np.zeros_like(f), np.zeros_like(f)
      gy[:-1] = u[1:] - u[:-1]
      gx[:, :-1] = u[:, 1:] - u[:, :-1]
      scale = 0.0 if wb == 0 else wb / (wb + tau * np.hypot(gy, gx))
      qy, qx = (qy - tau * gy) * scale, (qx - tau * gx) * scale
    out[b] = f - _div_numpy(qy, qx)
  return out.astype(np.float32)
