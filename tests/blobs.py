"""A test map: an asymmetric volume of Gaussian blobs, fast to make (reconstruction and alignment tests)."""

import numpy as np


def blobs(d: int, seed: int = 0) -> np.ndarray:
  """An asymmetric map of 12 Gaussian blobs (D, D, D) float32, zero near the box edge."""
  rng = np.random.default_rng(seed)
  x = np.arange(d) - d // 2
  zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
  vol = np.zeros((d, d, d), np.float32)
  for _ in range(12):
    c, s = rng.uniform(-d / 4, d / 4, 3), rng.uniform(1.0, 2.5)
    vol += rng.uniform(0.5, 1.5) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * s * s))
  return vol
