"""The general training corpus: fresh (noisy, clean) pairs of many molecules under many imaging conditions.

`CorpusPairs(config).batch(step)` draws each image's molecule from a pool of `pool_size` maps of the
`data.molecules` family (built once, a slot refreshed every `pool_refresh` / `pool_size` steps, so no
molecule dominates and memory stays bounded: ~1 MiB per 64³ map), then images it with cryojax:

| quantity | distribution |
|---|---|
| pose | uniform on SO(3) |
| pixel size | the molecule's: log-uniform 1–6 Å/px (diameter 25–90% of the box) |
| defocus | mean uniform 0.5–3.5 µm, astigmatism uniform 0–1000 Å at a uniform angle |
| voltage, Cs | 300 kV (80%) or 200 kV; Cs 2.7 mm |
| amplitude contrast | uniform 0.04–0.15 |
| B-factor | the molecule's: uniform 0–200 Å² |
| in-plane shift | uniform, up to ±8% of the box per axis |
| CTF | on for 80% of images, off (plain projection) for 20% |
| polarity | ×(−1) for half of the images (with or without contrast inversion) |
| SNR | log-uniform in `snr_range` (default 0.02–2), per image: var(clean image) / noise variance |

Clean images are scaled to unit variance per image (their mean kept); noise is white Gaussian.
Batch `step` is a pure function of (seed, step): a resumed run sees the same stream. Validation uses
`VAL_MOLECULES` molecules drawn from another seed range, never in training.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.data import molecules
from cryojax_denoise.data.projector import _project_one
from cryojax_denoise.data.simulate import _sample_one

DEFOCUS_RANGE_A = (5000.0, 35000.0)
ASTIGMATISM_A = 1000.0
AMPLITUDE_CONTRAST_RANGE = (0.04, 0.15)
CTF_FRACTION = 0.8
MAX_SHIFT_FRACTION = 0.08
VAL_MOLECULES = 16
_VAL_ID_OFFSET = 1 << 40  # validation molecules' ids: disjoint from every training id


def _fourier_values(volume: np.ndarray) -> np.ndarray:
  return np.asarray(_to_fourier(jnp.asarray(volume)).values)


@jax.jit
def _to_fourier(volume):
  import cryojax.simulator as cxs

  return cxs.FourierVoxelGridVolume.from_real_voxel_grid(volume)


class MoleculePool:
  """`size` molecule maps in Fourier form (host memory), slot j refreshed at a staggered step.

  Slot j holds molecule id j + size·⌊(step + j·refresh/size) / refresh⌋, so one slot changes every
  refresh/size steps and each molecule serves `refresh` steps; `at(step)` brings the pool to `step`.
  """

  def __init__(self, box: int, size: int, seed: int, refresh: int):
    self.box, self.size, self.seed, self.refresh = int(box), int(size), int(seed), max(1, int(refresh))
    self.values = np.zeros((self.size, self.box, self.box, self.box // 2 + 1), np.complex64)
    self.pixel_size = np.zeros(self.size, np.float32)
    self.kinds = [""] * self.size
    self.ids = np.full(self.size, -1, np.int64)
    self.dirty: set[int] = set()  # slots loaded since a device copy last synced (`CorpusPairs`)

  def slot_ids(self, step: int) -> np.ndarray:
    j = np.arange(self.size)
    return j + self.size * ((int(step) + j * self.refresh // self.size) // self.refresh)

  def at(self, step: int) -> "MoleculePool":
    for j, mid in enumerate(self.slot_ids(step)):
      if mid != self.ids[j]:
        self.load(j, int(mid))
    return self

  def load(self, slot: int, molecule_id: int) -> None:
    volume, pixel_size, kind = molecules.molecule_map([self.seed, molecule_id], self.box)
    self.values[slot] = _fourier_values(volume)
    self.pixel_size[slot], self.kinds[slot], self.ids[slot] = pixel_size, kind, molecule_id
    self.dirty.add(slot)


def _sample_imaging(key, pixel_size, box: int, ctf_fraction: float = CTF_FRACTION):
  """One image's RELION parameters and optics (traced scalars), from the corpus distribution."""
  k_pose, k_rest = jax.random.split(key)
  lo, hi = DEFOCUS_RANGE_A
  ranges = dict(max_shift_A=MAX_SHIFT_FRACTION * box * pixel_size, defocus_lo=lo, defocus_hi=hi,
                astigmatism_A=ASTIGMATISM_A)
  p = _sample_one(k_pose, ranges)
  u = jax.random.uniform(k_rest, (4,))
  a_lo, a_hi = AMPLITUDE_CONTRAST_RANGE
  optics = dict(pixel_size=pixel_size, voltage_kv=jnp.where(u[0] < 0.8, 300.0, 200.0), cs_mm=jnp.float32(2.7),
                amplitude_contrast=a_lo + (a_hi - a_lo) * u[1])
  return p, optics, u[2] < ctf_fraction, jnp.where(u[3] < 0.5, 1.0, -1.0)


def _log_uniform(u, lo: float, hi: float):
  return jnp.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def make_batch_fn(box: int, snr_range, ctf_fraction: float = CTF_FRACTION):
  """Jitted (key, values (B, D, D, D//2+1) complex64, pixel sizes (B,)) -> (noisy, clean) (B, D, D)."""
  import cryojax.simulator as cxs

  template = cxs.FourierVoxelGridVolume.from_real_voxel_grid(jnp.zeros((box, box, box), jnp.float32))
  freq_slice = template.frequency_slice
  shape = (box, box)
  lo, hi = (float(v) for v in snr_range)

  def one(key, values, pixel_size):
    k_img, k_snr, k_noise = jax.random.split(key, 3)
    p, optics, ctf_on, sign = _sample_imaging(k_img, pixel_size, box, ctf_fraction)
    fvol = cxs.FourierVoxelGridVolume(values, freq_slice)
    with_ctf = _project_one(fvol, p, optics, shape=shape, ctf=True)
    plain = _project_one(fvol, p, optics, shape=shape, ctf=False)
    clean = jnp.where(ctf_on, with_ctf, plain)
    clean = sign * clean / jnp.maximum(jnp.std(clean), 1e-12)
    snr = _log_uniform(jax.random.uniform(k_snr), lo, hi)
    noisy = clean + jax.random.normal(k_noise, shape) / jnp.sqrt(snr)
    return noisy.astype(jnp.float32), clean.astype(jnp.float32)

  @jax.jit
  def batch(key, values, pixel_sizes):
    keys = jax.random.split(key, values.shape[0])
    return jax.vmap(one)(keys, values, pixel_sizes)

  return batch


@partial(jax.jit, donate_argnums=0)
def _set_slots(pool_values, slots, values):
  return pool_values.at[slots].set(values)


class CorpusPairs:
  """Training data source over the molecule family (see the module docstring); the `training.data`
  interface: `batch(step) -> (noisy, clean)` sharded like `sharding`, `validation() -> (noisy, clean)`.

  The pool's maps also live on the device (updated in place, slot by slot, as the pool refreshes), so a
  batch costs one gather and the projections there: no per-step host→device copy of B maps (~1 MiB each).
  """

  def __init__(self, config, sharding=None):
    self.config, self.sharding = config, sharding
    self.box = int(config.image_size)
    self.pool = MoleculePool(self.box, int(config.pool_size), int(config.seed), int(config.pool_refresh))
    batch = make_batch_fn(self.box, tuple(config.snr_range))
    self._batch = jax.jit(lambda key, values, sizes, idx: batch(key, values[idx], sizes[idx]))
    self._values = self._sizes = None
    self.image_size = self.box

  def _sync(self) -> None:
    pool = self.pool
    if self._values is None:
      self._values, self._sizes = jnp.asarray(pool.values), jnp.asarray(pool.pixel_size)
    elif pool.dirty:
      slots = np.array(sorted(pool.dirty))
      self._values = _set_slots(self._values, jnp.asarray(slots), jnp.asarray(pool.values[slots]))
      self._sizes = jnp.asarray(pool.pixel_size)
    pool.dirty.clear()

  def batch(self, step: int):
    self.pool.at(step)
    self._sync()
    rng = np.random.default_rng([int(self.config.seed), int(step), 7])
    idx = rng.integers(0, self.pool.size, int(self.config.batch_size))
    key = jax.random.fold_in(jax.random.key(int(self.config.seed)), int(step))
    noisy, clean = self._batch(key, self._values, self._sizes, jnp.asarray(idx, jnp.int32))
    if self.sharding is not None:
      noisy, clean = jax.device_put((noisy, clean), self.sharding)
    return noisy, clean

  def validation(self):
    """`val_size` images of VAL_MOLECULES held-out molecules at SNR `val_snr`, CTF on (fixed)."""
    c = self.config
    n = int(c.val_size)
    vals, sizes = [], []
    for m in range(VAL_MOLECULES):
      volume, pixel_size, _ = molecules.molecule_map([int(c.seed), _VAL_ID_OFFSET + m], self.box)
      vals.append(_fourier_values(volume))
      sizes.append(pixel_size)
    idx = np.arange(n) % VAL_MOLECULES
    batch = make_batch_fn(self.box, (float(c.val_snr), float(c.val_snr)), ctf_fraction=1.0)
    noisy, clean = batch(jax.random.key(int(c.seed) + 0x5EED), np.stack(vals)[idx],
                         np.asarray(sizes, np.float32)[idx])
    return np.asarray(noisy, np.float32), np.asarray(clean, np.float32)
