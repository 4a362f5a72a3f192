"""Memory budget of the CWF fit (`memory_gb`), lazy particle sources and the working box.

The fit streams the particles in batches (`cwf._fit`): it keeps only the basis, the block covariance
accumulators and, per particle, its block-0 coefficients and radial CTF profile (~p + n_rho numbers), so
its memory is `fixed_bytes` + batch · `per_particle_bytes`, whatever the number of particles. The batch
is the largest that fits `memory_gb` (capped at `batch_size`); a budget that cannot hold even one
particle's work is an InputError naming the minimum.

The basis alone grows as L⁴ (the orbit matrices: 1.1 GB at 256², 6.3 GB at 400²) and its work per image
as L⁴ too, so boxes above `MAX_BOX` are Fourier-cropped to it for the fit and the Wiener step (`crop`,
`uncrop`; docs/cwf.md has the measurement that this loses nothing measurable at cryo-EM SNRs).

Sizes of the FB basis of an L² box (`steerable.fb_basis`), fitted on L = 128…400: count ≈ 0.308 L²
functions, K+1 ≈ 1.53 L blocks of pmax = L/2, n_orb ≈ 0.1 L² pixel orbits, ~0.078 L² distinct radii. A
disk reaching `reach` px past the edge (radius L/2 + reach = s·L/2) has s² times the functions, s times the
blocks and pmax, and the orbits of the grid's pixels inside it (measured at 64²…192², reach L/16: count
×1.265, K+1 and pmax ×1.125, orbits ×1.16).
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.errors import InputError

GB = 1e9
MAX_BOX = 256  # CWF works on boxes up to this size; larger ones are Fourier-cropped to it (see docs/cwf.md)
RUNTIME_BYTES = 0.8 * GB  # Python, JAX/XLA and their compiled programs, measured ~0.6-0.7 GB


def machine_gb() -> float:
  """Physical memory of this machine in GB (POSIX sysconf; 16 when unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
  except (ValueError, OSError, AttributeError):
    return 16.0


def default_memory_gb() -> float:
  """The default budget: half the machine's memory (other processes, the OS's page cache)."""
  return 0.5 * machine_gb()


def check_memory_gb(value, where: str = "memory_gb") -> float:
  """`value` as a positive finite number of GB; None -> `default_memory_gb()`; InputError otherwise."""
  if value is None:
    return default_memory_gb()
  try:
    gb = float(value)
  except (TypeError, ValueError):
    raise InputError(f"{where}: must be a number of GB > 0, got {value!r}") from None
  if isinstance(value, bool) or not (math.isfinite(gb) and gb > 0):
    raise InputError(f"{where}: must be a number of GB > 0, got {value!r}")
  return gb


def _dims(L: int, n_rho: int | None, reach: float = 0.0):
  """(count, K+1, pmax, n_orb, n_rho) of the basis of an L² box whose disk reaches `reach` px past its edge."""
  n_rho, s = int(n_rho or L), 1 + 2 * float(reach) / L
  inside = 1.0
  if reach > 0:  # the fraction of the disk's pixels on the grid, relative to the inscribed disk's
    yy, xx = np.mgrid[0:L, 0:L] - L // 2
    r = np.hypot(xx, yy)
    inside = np.count_nonzero(r < L / 2 + reach) / np.count_nonzero(r < L / 2)
  return 0.308 * L * L * s * s, int(1.53 * L * s) + 2, int(L * s) // 2 + 1, 0.1 * L * L * inside, n_rho


def _basis_bytes(L: int, n_rho: int | None, reach: float = 0.0) -> float:
  """The basis (orbit matrices with the copies made while they are built; radial profiles; the CTF
  averaging matrix) and the runtime."""
  count, k1, pmax, n_orb, n_rho = _dims(L, n_rho, reach)
  return (1.3 * count * 2 * n_orb * 4 + 0.078 * L * L * count * 4 + k1 * n_rho * pmax * 4 + n_rho * L * L * 4
          + RUNTIME_BYTES)


def fixed_bytes(L: int, n: int, n_rho: int | None = None, reach: float = 0.0) -> float:
  """Bytes the pass over n particles of L² holds whatever its batch: the basis and runtime, the (K+1, p, p)
  covariance accumulators, and per particle its block-0 coefficients and CTF profile."""
  count, k1, pmax, n_orb, n_rho = _dims(L, n_rho, reach)
  return _basis_bytes(L, n_rho, reach) + 3 * k1 * pmax * pmax * 8 + n * (pmax * 8 + n_rho * 4) * 2


def solve_bytes(L: int, n: int, n_groups: int = 32, n_rho: int | None = None, reach: float = 0.0) -> float:
  """Bytes of the solve after the pass: the basis, the mean M_i² (its (K+1, n_rho, n_rho) intermediate),
  eigendecompositions of the blocks, and the CG's G per-group block matrices (4 copies; at most every block
  live)."""
  count, k1, pmax, n_orb, n_rho = _dims(L, n_rho, reach)
  g = min(int(n_groups), int(n))
  return (_basis_bytes(L, n_rho, reach) + 2 * k1 * n_rho * n_rho * 4 + 12 * k1 * pmax * pmax * 8
          + 4 * g * k1 * pmax * pmax * 4 + n * (pmax * 8 + n_rho * 4) * 2)


def per_particle_bytes(L: int, n_rho: int | None = None, reach: float = 0.0) -> float:
  """Bytes of one particle in a fit batch: the image, its CTF (and the CTF's computation), the orbit
  transform's work (pixels, orbit sums, residue GEMM outputs), its coefficients and M_i b_i (complex,
  (K+1, p)) and the radial intermediates ((K+1, n_rho) complex)."""
  count, k1, pmax, n_orb, n_rho = _dims(L, n_rho, reach)
  return L * L * 4 * 6 + count * 8 * 2 + k1 * pmax * 8 * 6 + k1 * n_rho * 8 * 3


def min_gb(L: int, n: int, n_rho: int | None = None, n_groups: int = 32, reach: float = 0.0) -> float:
  """The smallest budget (GB) `fit_batch` accepts for n particles of L²: one particle's pass or the solve."""
  need = max(fixed_bytes(L, n, n_rho, reach) + per_particle_bytes(L, n_rho, reach),
             solve_bytes(L, n, n_groups, n_rho, reach))
  return need / GB


def fit_batch(L: int, n: int, memory_gb: float, cap: int = 256, n_rho: int | None = None,
              n_groups: int = 32, reach: float = 0.0) -> int:
  """The largest fit batch (<= cap, <= n) within `memory_gb` for a basis reaching `reach` px past the
  edge; InputError when even 1 does not fit (the pass with one particle, or the solve after it)."""
  budget = float(memory_gb) * GB
  fixed, each = fixed_bytes(L, n, n_rho, reach), per_particle_bytes(L, n_rho, reach)
  solve = solve_bytes(L, n, n_groups, n_rho, reach)
  batch = int((budget - fixed) // each)
  if batch < 1 or solve > budget:
    need = min_gb(L, n, n_rho, n_groups, reach)
    raise InputError(f"memory_gb: {memory_gb:g} GB is too little for cwf on {n} particles of {L}x{L}: "
                     f"it needs at least {math.ceil(need * 10) / 10:g} GB")
  return max(1, min(batch, int(cap), int(n)))


class Rows:
  """A lazy (N, H, W) float32 particle array: `fn(rows)` -> (n, H, W) for row numbers; slicing reads only
  those rows, so a fit on 10⁴ particles of 256² never holds all of them (whitened for coloured noise too,
  `noise.methods`). `np.asarray` reads them all, for callers that need the array."""

  def __init__(self, fn, n: int, shape: tuple[int, int]):
    self.fn, self.n, self.shape = fn, int(n), (int(n), *(int(s) for s in shape))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index):
    if not isinstance(index, slice):
      raise TypeError("Rows supports slices only")
    return np.asarray(self.fn(np.arange(self.n)[index]), np.float32)

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[:], dtype or np.float32)


def mapped(source, fn, shape: tuple[int, int]) -> Rows:
  """`source` (an array or `Rows`) with `fn` applied to each slice read (e.g. `crop`)."""
  if source is None:
    return None
  return Rows(lambda rows: fn(source[int(rows[0]):int(rows[-1]) + 1] if len(rows) else source[0:0]),
              len(source), shape)


def working_box(L: int, max_box: int | None) -> int:
  """The box CWF works on: L, or `max_box` (even, >= 16) when L is larger (0/None: always L)."""
  if not max_box or L <= int(max_box):
    return int(L)
  box = int(max_box) - int(max_box) % 2
  if box < 16:
    raise InputError(f"max_box: must be at least 16 (or 0 for no limit), got {max_box}")
  return box


def _freq_index(L: int, box: int) -> np.ndarray:
  """Indices of the `box` lowest frequencies (fftfreq order of a box grid) in an L-point FFT."""
  half = box // 2
  return np.concatenate([np.arange(half), np.arange(L - half, L)])


def crop(images, box: int):
  """(B, L, L) -> (B, box, box): the `box` lowest frequencies, scaled by box/L so that white noise keeps
  its per-pixel std (the noise_std of the full images stays right). `uncrop` inverts it on images without
  content at the box's Nyquist (the FB basis stops below it: CWF's estimates have none)."""
  x = jnp.asarray(images, jnp.float32)
  L = x.shape[-1]
  if L == box:
    return x
  idx = _freq_index(L, box)
  f = jnp.fft.fft2(x)[:, idx][:, :, idx]
  return jnp.fft.ifft2(f).real.astype(jnp.float32) * np.float32(box / L)


def crop_ctf(ctf, box: int):
  """(B, L, L) CTFs on the FFT grid -> their values at the `box` lowest frequencies (B, box, box)."""
  c = jnp.asarray(ctf, jnp.float32)
  idx = _freq_index(c.shape[-1], box)
  return c[:, idx][:, :, idx]


def uncrop(images, L: int):
  """Inverse of `crop` on band-limited images: (B, box, box) -> (B, L, L), zero above the box's band."""
  x = jnp.asarray(images, jnp.float32)
  box = x.shape[-1]
  if L == box:
    return x
  idx = _freq_index(L, box)
  f = jnp.zeros((x.shape[0], L, L), jnp.complex64).at[:, idx[:, None], idx[None, :]].set(jnp.fft.fft2(x))
  return jnp.fft.ifft2(f).real.astype(jnp.float32) * np.float32(L / box)
