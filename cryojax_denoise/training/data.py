"""Training data for the learned denoisers: fresh simulated pairs, pairs of stacks from disk, a fixed
validation batch, and the per-image standardisation every learned model sees.

Standardisation (used identically at training and at inference): each noisy image is shifted and
scaled by its own mean and standard deviation over the box, x' = (x - m) / s; the network maps x' to
an estimate of (clean - m) / s, which is mapped back to the input's units as y = y' s + m. Per-image
(rather than per-stack) statistics make the model independent of the batch composition and let large
stacks stream in batches, and they make it indifferent to the units of real data.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise.sharding import shard_host_batch, shard_host_rows

_VAL_TAG = 0x5EED  # folds the validation key away from every training step's key


def standardise(images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(B, H, W) -> (standardised images, mean (B, 1, 1), std (B, 1, 1)); std floored to avoid 0/0."""
  mean = jnp.mean(images, axis=(-2, -1), keepdims=True)
  std = jnp.std(images, axis=(-2, -1), keepdims=True)
  std = jnp.maximum(std, 1e-6 * (1.0 + jnp.abs(mean)))
  return (images - mean) / std, mean, std


def destandardise(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Inverse of `standardise` for the network's output."""
  return images * std + mean


def sample_snr(key: jax.Array, batch_size: int, snr: float, snr_range) -> jax.Array:
  """(B,) SNRs: the fixed `snr` when > 0, else log-uniform in `snr_range` (one model for all SNRs)."""
  if snr and snr > 0:
    return jnp.full((batch_size,), float(snr), jnp.float32)
  lo, hi = (float(v) for v in snr_range)
  u = jax.random.uniform(key, (batch_size,), jnp.float32)
  return jnp.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def check_snr_config(config) -> None:
  if config.snr and config.snr > 0:
    return
  rng = tuple(config.snr_range)
  if len(rng) != 2 or not (0 < rng[0] <= rng[1]) or not all(math.isfinite(v) for v in rng):
    raise InputError(f"config.snr_range: expected (low, high) with 0 < low <= high, got {rng}")


class SimulatedPairs:
  """Fresh (noisy, clean) batches from the jitted simulator; batch `step` is a pure function of
  (seed, step), so a resumed run sees the same data stream as an uninterrupted one."""

  def __init__(self, config, sharding=None):
    from cryojax_denoise.data import simulate
    from cryojax_denoise.data.maps import load_source

    check_snr_config(config)
    source = load_source(volume=config.volume or None, structure=config.structure or None,
                                  pixel_size=config.pixel_size or None, image_size=config.image_size,
                                  seed=config.seed)
    self.simulator = simulate.Simulator(source, config.image_size, ctf=bool(config.ctf))
    self.config = config
    self.image_size = int(config.image_size)
    b, snr, snr_range = int(config.batch_size), float(config.snr), tuple(config.snr_range)
    sim = self.simulator

    def make(key):
      k_snr, k_img = jax.random.split(key)
      return sim.batch(k_img, b, sample_snr(k_snr, b, snr, snr_range))

    outs = None if sharding is None else (sharding, sharding)
    self._make = jax.jit(make, out_shardings=outs)

  def batch(self, step: int):
    return self._make(jax.random.fold_in(jax.random.key(self.config.seed), step))

  def validation(self):
    """A fixed held-out batch of `val_size` images at `val_snr` (poses never drawn in training)."""
    c = self.config
    key = jax.random.fold_in(jax.random.key(c.seed), _VAL_TAG)
    key = jax.random.fold_in(key, 1 << 30)
    snr = jnp.full((int(c.val_size),), float(c.val_snr), jnp.float32)
    noisy, clean = self.simulator.batch(key, int(c.val_size), snr)
    return np.asarray(noisy, np.float32), np.asarray(clean, np.float32)


def read_images(path: str) -> io.Stack:
  """An MRC stack (memory-mapped), or the particles of a RELION STAR file in row order (in memory)."""
  if path.endswith(".star"):
    star = io.read_star(path)
    return io.Stack(data=io.star_images(star), pixel_size=star.pixel_size(), path=path)
  return io.read_stack(path)


def read_pairs(noisy_path: str, clean_path: str) -> tuple[io.Stack, io.Stack]:
  """Reads and checks a (noisy, clean) pair: MRC stacks or STAR files (e.g. particles.star and the
  make_pairs clean.mrcs in its row order); same shape, square, finite, ≥ 2 images."""
  noisy = read_images(noisy_path)
  clean = read_images(clean_path)
  if noisy.data.shape != clean.data.shape:
    raise InputError(f"{clean_path}: clean stack shape {clean.data.shape} differs from noisy stack "
                     f"{noisy_path} shape {noisy.data.shape}")
  n, h, w = noisy.data.shape
  if h != w:
    raise InputError(f"{noisy_path}: images are {h}×{w}, expected square images")
  if n < 2:
    raise InputError(f"{noisy_path}: {n} image(s); training needs at least 2 (one held out for validation)")
  return noisy, clean


class StackPairs:
  """Random (noisy, clean) batches from two aligned MRC stacks (e.g. real particles and their
  `make_pairs` projections); the last `val_size` images (at most a tenth of the stack) are held out
  for validation. Batch `step` depends only on (seed, step). Random 90° rotations and flips, applied
  identically to both images, augment the (usually small) real sets."""

  def __init__(self, config, sharding=None):
    self.noisy, self.clean = read_pairs(config.noisy, config.clean)
    n, self.image_size = self.noisy.data.shape[0], self.noisy.data.shape[1]
    self.n_val = max(1, min(int(config.val_size), n // 10))
    self.n_train = n - self.n_val
    self.config, self.sharding = config, sharding

  def batch(self, step: int):
    rng = np.random.default_rng([int(self.config.seed), int(step)])
    idx = np.sort(rng.integers(0, self.n_train, int(self.config.batch_size)))
    rot, flip = rng.integers(0, 4, len(idx)), rng.integers(0, 2, len(idx))

    def rows(start: int, stop: int):  # batch rows start..stop-1 (this process's share), augmented
      noisy = np.asarray(self.noisy.data[idx[start:stop]], np.float32)
      clean = np.asarray(self.clean.data[idx[start:stop]], np.float32)
      for i in range(stop - start):
        for a in (noisy, clean):
          a[i] = np.rot90(a[i], rot[start + i])
          if flip[start + i]:
            a[i] = a[i][:, ::-1]
      return noisy, clean

    return shard_host_rows(rows, len(idx), self.sharding)

  def validation(self):
    sl = slice(self.n_train, self.n_train + self.n_val)
    return np.asarray(self.noisy.data[sl], np.float32), np.asarray(self.clean.data[sl], np.float32)


def check_pair_config(config) -> None:
  if config.get("data", "simulate") not in ("simulate", "corpus", "cwf_corpus"):
    raise InputError("config.data: must be 'simulate' (one map), 'corpus' (the molecule family) or 'cwf_corpus' "
                     f"(molecule-family datasets with their CWF estimates), got {config.data!r}")
  if bool(config.noisy) != bool(config.clean):
    missing = "clean" if config.noisy else "noisy"
    raise InputError(f"config.{missing}: training on stacks needs both noisy= and clean=")


def make_data(config, sharding=None):
  """`StackPairs` when `config.noisy`/`config.clean` are given, else `SimulatedPairs` of one map
  (`data="simulate"`), the molecule corpus (`data="corpus"`, `data.corpus.CorpusPairs`) or its CWF triplets
  (`data="cwf_corpus"`, `training.cwf_corpus.CwfCorpusPairs`: inputs (B, 2, H, W)); noisy particles
  alone (`NoisyStack`) for kind="self_supervised"."""
  if config.kind == "self_supervised":
    return NoisyStack(config, sharding)
  check_pair_config(config)
  if config.noisy:
    return StackPairs(config, sharding)
  if config.get("data", "simulate") == "corpus":
    from cryojax_denoise.data.corpus import CorpusPairs
    return CorpusPairs(config, sharding)
  if config.data == "cwf_corpus":
    from cryojax_denoise.training.cwf_corpus import CwfCorpusPairs
    return CwfCorpusPairs(config, sharding)
  return SimulatedPairs(config, sharding)


# ---------------------------------------------------------------------------- noisy particles alone (self-supervised)


class NoisyStack:
  """Random batches of noisy particles (and their second copies for noise2noise) for `train.train`.

  `noisy=` (and `noisy2=`) an MRC stack (memory-mapped) or a STAR file, or `arrays=(noisy, noisy2)`
  in memory; the last `val_size` images (at most a tenth) are held out for validation. Batch `step`
  depends only on (seed, step); random 90° rotations and flips, the same for both copies, and a random
  swap of the two copies. `batch` returns (noisy, target) with target = the second copy or noisy itself.
  With `noise=coloured|auto` the images are whitened first (`filter`, `noise_record`: see
  `ss_noise.noise_model`). `crop_size` > 0 and below the box: each training image is a random square crop
  of that size (all channels and both copies alike); validation keeps whole particles.
  """

  def __init__(self, config, sharding=None, arrays=None):
    self.noisy, self.noisy2 = NoisyStack.read(config, arrays)
    n = self.noisy.shape[0]
    self.n_val = max(1, min(int(config.val_size), n // 10))
    self.n_train = n - self.n_val
    where = config.noisy or "noisy particles"
    if self.n_train < int(config.batch_size):
      raise InputError(f"{where}: {n} image(s), fewer than one batch of {config.batch_size} plus "
                       f"{self.n_val} held out for validation (lower batch_size= or give more particles)")
    self.image_size = self.noisy.shape[-1]
    self.config, self.sharding = config, sharding
    from cryojax_denoise.training.ss_noise import noise_model  # noise=coloured: whitened particles

    self.filter, self.noise_record = noise_model(config, None if arrays is None else self.noisy)

  @staticmethod
  def read(config, arrays=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(noisy (N, H, W), noisy2 or None), checked: 3D, square, finite, same shapes."""
    if arrays is None:
      if not config.noisy:
        raise InputError("config.noisy: self-supervised training needs the noisy particles (an MRC stack or STAR file)")
      stacks = [read_images(p).data if p else None for p in (config.noisy, config.noisy2)]
      names = (config.noisy, config.noisy2)
    else:
      stacks = [None if a is None else np.asarray(a) for a in arrays]
      names = ("noisy", "noisy2")
      for a, name in zip(stacks, names):
        if a is not None and (a.ndim not in (3, 4) or min(a.shape) < 1):
          raise InputError(f"{name}: expected images (N, H, W) or channels (N, C, H, W), got shape {a.shape}")
        if a is not None and not np.isfinite(a).all():
          raise InputError(f"{name}: contains NaN or Inf values")
    noisy, noisy2 = stacks
    if (noisy2 is not None) != (config.loss == "noise2noise"):
      raise InputError("config.noisy2: loss=noise2noise needs a second noisy copy of the particles (noisy2=)"
                       if noisy2 is None else f"config.noisy2: only used by loss=noise2noise (loss is {config.loss})")
    io.check_square(names[0], noisy.shape[:1] + noisy.shape[-2:])
    if noisy2 is not None and noisy2.shape != noisy.shape:
      raise InputError(f"{names[1]}: second copy has shape {noisy2.shape}, the noisy stack {noisy.shape}")
    return noisy, noisy2

  def _pair(self, idx):
    noisy = self._whiten(np.asarray(self.noisy[idx], np.float32))
    if noisy.ndim == 4:  # (noisy, prior, probe, W probe) channels: the target is the noisy channel
      return noisy, noisy[:, 0]
    return noisy, (noisy if self.noisy2 is None else self._whiten(np.asarray(self.noisy2[idx], np.float32)))

  def _whiten(self, images: np.ndarray) -> np.ndarray:
    """Images whitened with the training particles' noise spectrum (noise=coloured); as read otherwise."""
    if self.filter is None:
      return images
    from cryojax_denoise.noise.whiten import apply_filter

    return np.asarray(apply_filter(images, self.filter), np.float32)

  def batch(self, step: int):
    rng = np.random.default_rng([int(self.config.seed), int(step)])
    idx = np.sort(rng.integers(0, self.n_train, int(self.config.batch_size)))
    noisy, target = self._pair(idx)
    rot, flip, swap = (rng.integers(0, k, len(idx)) for k in (4, 2, 2))
    crop = int(self.config.get("crop_size", 0))
    if 0 < crop < self.image_size:
      corner = rng.integers(0, self.image_size - crop + 1, (len(idx), 2))
      noisy, target = (np.stack([a[i, ..., r:r + crop, c:c + crop] for i, (r, c) in enumerate(corner)])
                       for a in (noisy, target))
    noisy, target = noisy.copy(), target.copy()
    for i in range(len(idx)):
      for a in (noisy, target):
        a[i] = np.rot90(a[i], rot[i], axes=(-2, -1))
        if flip[i]:
          a[i] = a[i][..., ::-1]
      if swap[i] and self.noisy2 is not None:
        noisy[i], target[i] = target[i].copy(), noisy[i].copy()
    if self.sharding is None:
      return jnp.asarray(noisy), jnp.asarray(target)
    return shard_host_batch(noisy, self.sharding), shard_host_batch(target, self.sharding)

  def validation(self):
    return self._pair(slice(self.n_train, self.n_train + self.n_val))
