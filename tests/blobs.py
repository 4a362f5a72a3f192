"""A test map: an asymmetric volume of Gaussian blobs, fast to make (reconstruction and alignment tests),
and particles projected from it."""

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


def blob_particles(n: int, snr: float, seed: int, max_shift_A: float, box: int = 32, pixel_size: float = 4.0):
  """(MapSource of `blobs(box)`, a simulated set of `n` CTF particles with shifts up to `max_shift_A`)."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import MapSource

  source = MapSource(blobs(box), pixel_size, "blobs")
  return source, simulate.simulate_dataset(source, n, box, snr=snr, seed=seed, ctf=True, max_shift_A=max_shift_A,
                                           batch_size=n)
