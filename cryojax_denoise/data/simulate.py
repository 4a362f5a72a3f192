"""Simulated particle images: cryojax projections of a 3D map at random poses, with CTF and noise.

Poses are uniform on SO(3) (Shoemake's uniform unit quaternion); poses, origins and CTF follow
RELION 3.1 (see `data/relion.py`), so a STAR file we write means to RELION what we simulated.
Maps live in `data/maps.py`, the projector (and the stack standardisation) in `data/projector.py`,
RELION conventions in `data/relion.py`: import them from there.

* SNR (INTERFACE): the clean stack is standardised (mean 0, variance 1 over the whole stack),
  then white Gaussian noise of variance mean_i(var(clean_i)) / snr is added; no clipping.
  `Simulator.batch` uses constants fixed once from a calibration set instead (see its docstring).

The random draws of image i come from `jax.random.fold_in(key, i)`, so image i of a seed is the
same whatever the stack size or batch size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from absl import logging

from cryojax_denoise.data.maps import MapSource, fit_volume
from cryojax_denoise.data.projector import Projector, _project_many, _standardize_inplace
from cryojax_denoise.data.relion import (AMPLITUDE_CONTRAST, SPHERICAL_ABERRATION_MM, VOLTAGE_KV, ParticleParams,
                                         optics_table, particles_table, relion_angles_from_matrix)
from cryojax_denoise.errors import InputError
from cryojax_denoise.io import StackWriter, write_stack, write_star
from cryojax_denoise.progress import Progress

ASTIGMATISM_A = 500.0
DEFOCUS_RANGE_A = (10000.0, 25000.0)
CALIBRATION_SIZE = 256  # images used to fix the standardisation constants of Simulator.batch
CALIBRATION_SEED = 20240601


# ---------------------------------------------------------------------------- pose sampling


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
  """Rotation matrix (3, 3) of a unit quaternion (w, x, y, z) (active rotation)."""
  w, x, y, z = q[0], q[1], q[2], q[3]
  return jnp.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])



def _sample_one(key, ranges: dict) -> ParticleParams:
  """One image's parameters (scalar fields), from a single draw of 8 uniforms (one
  threefry call keeps compilation fast). The rotation is uniform on SO(3): Shoemake's uniform unit
  quaternion from three uniforms. `ranges`: max_shift_A, defocus_lo, defocus_hi, astigmatism_A."""
  u = jax.random.uniform(key, (8,))
  r1, r2 = jnp.sqrt(1.0 - u[0]), jnp.sqrt(u[0])
  t1, t2 = 2 * jnp.pi * u[1], 2 * jnp.pi * u[2]
  q = jnp.stack([r2 * jnp.cos(t2), r1 * jnp.sin(t1), r1 * jnp.cos(t1), r2 * jnp.sin(t2)])
  rot, tilt, psi = relion_angles_from_matrix(quaternion_to_matrix(q))
  origin = (2 * u[3:5] - 1) * ranges["max_shift_A"]
  defocus = ranges["defocus_lo"] + (ranges["defocus_hi"] - ranges["defocus_lo"]) * u[5]
  astig = ranges["astigmatism_A"] * u[6]
  return ParticleParams(rot_in_degrees=rot, tilt_in_degrees=tilt, psi_in_degrees=psi,
                        origin_x_in_angstroms=origin[0], origin_y_in_angstroms=origin[1],
                        defocus_u_in_angstroms=defocus + astig / 2, defocus_v_in_angstroms=defocus - astig / 2,
                        defocus_angle_in_degrees=180.0 * u[7], phase_shift_in_degrees=jnp.zeros_like(u[0]))


def _per_image_keys(key, start, n: int):
  """Keys of images start..start+n-1: fold_in(key, index), so image i never depends on n."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(n))


def _sample_many(key, start, n: int, ranges: dict) -> ParticleParams:
  return jax.vmap(lambda k: _sample_one(k, ranges))(_per_image_keys(key, start, n))


def _unit_noise(key, start, n: int, shape: tuple[int, int]) -> jax.Array:
  """White unit Gaussian noise (n, H, W) of images start..start+n-1 (per-image keys)."""
  return jax.vmap(lambda k: jax.random.normal(k, shape))(_per_image_keys(key, start, n))


_sample_jit = jax.jit(_sample_many, static_argnums=2)


@partial(jax.jit, static_argnames=("n", "shape", "ctf"))
def _dataset_chunk(fvol, key_params, key_noise, start, ranges, optics, *, n, shape, ctf):
  """Images start..start+n-1 of a dataset: (parameters, raw clean projections, unit noise)."""
  params = _sample_many(key_params, start, n, ranges)
  return params, _project_many(fvol, params, optics, shape, ctf), _unit_noise(key_noise, start, n, shape)


@partial(jax.jit, static_argnames=("n", "shape", "ctf"))
def _simulator_batch(fvol, key, snr, ranges, optics, stats, *, n, shape, ctf):
  """(noisy, clean) of one on-the-fly batch; clean = (projection - mean) / std with fixed stats."""
  k_params, k_noise = jax.random.split(key)
  params = _sample_many(k_params, 0, n, ranges)
  clean = (_project_many(fvol, params, optics, shape, ctf) - stats["mean"]) / stats["std"]
  noise_std = jnp.sqrt(stats["signal_var"] / jnp.broadcast_to(jnp.asarray(snr, jnp.float32), (n,)))
  noisy = clean + noise_std[:, None, None] * _unit_noise(k_noise, 0, n, shape)
  return noisy.astype(jnp.float32), clean.astype(jnp.float32)



# ---------------------------------------------------------------------------- simulator


class Simulator:
  """Fresh (noisy, clean) batches on the fly from a key, for training.

  `batch(key, batch_size, snr) -> (noisy, clean)`, each (B, H, W) float32, jitted and vmapped
  (callable inside the caller's jit). The clean images are standardised with constants fixed
  once at construction from a calibration set of `calibration_size` images (fixed seed
  CALIBRATION_SEED): clean = (projection - mean) / std, mean and std over the calibration
  stack; the noise variance is the calibration set's mean per-image clean variance / snr (snr a
  scalar or (B,) array). So every batch has the same scale, and its SNR equals `snr` up to the
  calibration's sampling error (about 1%).
  """

  def __init__(self, source: MapSource, image_size: int, ctf: bool = True,
               defocus_range_A: tuple[float, float] = DEFOCUS_RANGE_A, max_shift_A: float = 0.0, *,
               astigmatism_A: float = ASTIGMATISM_A, voltage_kv: float = VOLTAGE_KV,
               cs_mm: float = SPHERICAL_ABERRATION_MM, amplitude_contrast: float = AMPLITUDE_CONTRAST,
               calibrate: bool = True, calibration_size: int = CALIBRATION_SIZE, calibration_batch: int = 64):
    image_size = int(image_size)
    if image_size < 8:
      raise InputError(f"image_size: must be at least 8, got {image_size}")
    lo, hi = (float(v) for v in defocus_range_A)
    if ctf and not (0 < lo <= hi and math.isfinite(hi)):
      raise InputError(f"defocus_range_A: need 0 < min <= max Å, got {tuple(defocus_range_A)}")
    if not (math.isfinite(float(max_shift_A)) and float(max_shift_A) >= 0):
      raise InputError(f"max_shift_A: must be >= 0 Å, got {max_shift_A}")
    if ctf and not 0 <= float(astigmatism_A) < 2 * lo:
      raise InputError(f"astigmatism_A: must be in [0, 2 * min defocus), got {astigmatism_A}")
    if not 0 <= float(amplitude_contrast) < 1:
      raise InputError(f"amplitude_contrast: must be in [0, 1), got {amplitude_contrast}")
    volume, pixel_size = fit_volume(source.volume, source.pixel_size, image_size)
    self.source, self.image_size, self.pixel_size, self.ctf = source, image_size, float(pixel_size), bool(ctf)
    self.defocus_range_A, self.max_shift_A, self.astigmatism_A = (lo, hi), float(max_shift_A), float(astigmatism_A)
    self.voltage_kv, self.cs_mm, self.amplitude_contrast = float(voltage_kv), float(cs_mm), float(amplitude_contrast)
    self.projector = Projector(volume, image_size, pixel_size, ctf=ctf, voltage_kv=voltage_kv, cs_mm=cs_mm,
                               amplitude_contrast=amplitude_contrast)
    self.ranges = {k: jnp.float32(v) for k, v in dict(
        max_shift_A=self.max_shift_A, defocus_lo=lo if ctf else 0.0, defocus_hi=hi if ctf else 0.0,
        astigmatism_A=self.astigmatism_A if ctf else 0.0).items()}
    self.mean = self.std = self.signal_var = None
    if calibrate:
      self.calibrate(calibration_size, calibration_batch)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.image_size, self.image_size)

  def sample_params(self, key, n: int, start: int = 0) -> ParticleParams:
    """Parameters ((n,) device arrays) of images start..start+n-1, each from fold_in(key, index)."""
    return _sample_jit(key, start, int(n), self.ranges)

  def project(self, params: ParticleParams) -> jax.Array:
    """Unstandardised clean images (B, H, W) at the given parameters."""
    return self.projector(params)

  def calibrate(self, n: int = CALIBRATION_SIZE, chunk: int = 64) -> None:
    """Fixes mean, std (over the stack) and mean per-image variance of the standardised clean
    images, from `n` images in batches of `chunk` (same compiled function as `batch(chunk)`)."""
    key = jax.random.PRNGKey(CALIBRATION_SEED)
    chunk = max(1, min(int(chunk), int(n)))
    identity = {k: jnp.float32(v) for k, v in dict(mean=0.0, std=1.0, signal_var=1.0).items()}
    raws = [np.asarray(self._run(jax.random.fold_in(key, i), chunk, jnp.ones((chunk,), jnp.float32), identity)[1],
                       np.float64) for i in range(-(-int(n) // chunk))]
    raw = np.concatenate(raws)[:n]
    mean, std = float(raw.mean()), float(raw.std())
    if not std > 0:
      raise InputError(f"{self.source.name}: projections are constant (empty map?)")
    self.mean, self.std = mean, std
    self.signal_var = float(np.mean(np.var((raw - mean) / std, axis=(1, 2))))

  def _run(self, key, n: int, snr, stats):
    return _simulator_batch(self.projector.fvol, key, snr, self.ranges, self.projector.optics, stats, n=n,
                            shape=self.shape, ctf=self.ctf)

  def batch(self, key, batch_size: int, snr):
    """(noisy, clean), each (batch_size, H, W) float32; see the class docstring for the scale."""
    if self.mean is None:
      self.calibrate()
    if isinstance(snr, (int, float)) and not snr > 0:
      raise InputError(f"snr: must be > 0, got {snr}")
    n = int(batch_size)
    snr = jnp.broadcast_to(jnp.asarray(snr, jnp.float32), (n,))
    stats = {k: jnp.float32(v) for k, v in dict(mean=self.mean, std=self.std, signal_var=self.signal_var).items()}
    return self._run(key, n, snr, stats)


# ---------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
  """A simulated stack with its RELION metadata. `noise_std` is the added noise's standard
  deviation in the (standardised) units of `clean`."""

  noisy: np.ndarray
  clean: np.ndarray
  pixel_size: float
  particles: pd.DataFrame
  optics: pd.DataFrame
  snr: float
  noise_std: float
  source: str


def _check(n_images, snr) -> tuple[int, float]:
  n_images, snr = int(n_images), float(snr)
  if n_images < 1:
    raise InputError(f"n_images: must be at least 1, got {n_images}")
  if not (math.isfinite(snr) and snr > 0):
    raise InputError(f"snr: must be a positive number, got {snr}")
  return n_images, snr


def _chunks(sim: Simulator, seed: int, n_images: int, batch_size: int, log_progress: bool):
  """(start, stop, parameters, raw clean projections (m, H, W), unit white noise (m, H, W)) per batch of
  images; image i depends on (seed, i) only, so two passes give the same images."""
  k_params, k_noise = jax.random.split(jax.random.PRNGKey(int(seed)))
  batch_size = max(1, min(int(batch_size), n_images))
  bar = None
  for start in range(0, n_images, batch_size):  # the last chunk runs past n: same shapes, one compile
    stop = min(start + batch_size, n_images)
    params, images, unit = _dataset_chunk(sim.projector.fvol, k_params, k_noise, start, sim.ranges,
                                          sim.projector.optics, n=batch_size, shape=sim.shape, ctf=sim.ctf)
    yield (start, stop, params.astype(np.float32).take(slice(0, stop - start)), np.asarray(images)[: stop - start],
           np.asarray(unit)[: stop - start])
    if bar is not None:
      bar.update(stop - start)
    elif log_progress:  # start the clock after the first batch, which includes compilation
      bar = Progress(n_images, "simulate", "img", start=stop, warmup=0)
      logging.info("simulate: compiled; %d/%d images", stop, n_images)


def _colourer(noise_psd, shape):
  """`colour(unit (m, H, W)) -> float32 (m, H, W)`: unit white noise to unit-variance noise of `noise_psd`'s
  shape (noise/whiten.py); None for white noise."""
  if noise_psd is None:
    return None
  from cryojax_denoise.noise import whiten as wh
  amp = 1.0 / wh.whitening_filter(noise_psd, shape)
  return lambda unit: np.asarray(wh.apply_filter(unit, amp), np.float32)


def simulate_dataset(source: MapSource, n_images: int, image_size: int, snr: float, seed: int = 0, ctf: bool = True,
                     defocus_range_A: tuple[float, float] = DEFOCUS_RANGE_A, max_shift_A: float = 0.0, *,
                     batch_size: int = 64, log_progress: bool = False, noise_psd=None, **simulator_options) -> Dataset:
  """A stack of `n_images` (noisy, clean) pairs at `snr` (INTERFACE definition, exact for the stack), in memory
  (`write_simulation` streams a large one to disk).

  The clean stack is standardised over itself, then white Gaussian noise of variance
  mean_i(var(clean_i)) / snr is added. Same seed -> same images, whatever `batch_size` (image i
  uses fold_in(key, i)). `simulator_options` go to `Simulator` (astigmatism_A, voltage_kv, ...).
  `noise_psd` (radial (S,) or (H, W), `noise.spec.resolve`): coloured noise of that spectrum's shape at
  the same total variance (the SNR keeps its meaning); None: white.
  """
  n_images, snr = _check(n_images, snr)
  sim = Simulator(source, image_size, ctf, defocus_range_A, max_shift_A, calibrate=False, **simulator_options)
  clean = np.empty((n_images, *sim.shape), np.float32)  # raw projections, standardised in place below
  noisy = np.empty((n_images, *sim.shape), np.float32)  # unit noise, turned into noisy images below
  chunks = []
  for start, stop, params, images, unit in _chunks(sim, seed, n_images, batch_size, log_progress):
    clean[start:stop], noisy[start:stop] = images, unit
    chunks.append(params)
  params = ParticleParams(*(np.concatenate(fields) for fields in zip(*chunks)))
  _standardize_inplace(clean)
  signal_var = float(np.mean([np.var(clean[i].astype(np.float64)) for i in range(n_images)]))
  noise_std = math.sqrt(signal_var / snr)
  colour = _colourer(noise_psd, sim.shape)
  if colour is not None:
    for start in range(0, n_images, 1024):
      noisy[start:start + 1024] = colour(noisy[start:start + 1024])
  noisy *= np.float32(noise_std)
  noisy += clean
  return Dataset(noisy=noisy, clean=clean, pixel_size=sim.pixel_size, particles=particles_table(params, ctf),
                 optics=optics_table(sim.pixel_size, image_size, sim.voltage_kv, sim.cs_mm, sim.amplitude_contrast),
                 snr=snr, noise_std=noise_std, source=source.name)


def write_simulation(workdir: str, source: MapSource, n_images: int, image_size: int, snr: float, seed: int = 0,
                     ctf: bool = True, defocus_range_A: tuple[float, float] = DEFOCUS_RANGE_A, max_shift_A: float = 0.0,
                     *, batch_size: int = 64, log_progress: bool = False, noise_psd=None, **simulator_options) -> dict:
  """`simulate_dataset` + `write_dataset` for any stack size: memory of one batch, not of the stack (10,000
  particles of 400² are 12.8 GB in memory). Two passes over the same images: the first accumulates the
  standardisation's statistics (float64), the second recomputes each batch, standardises it, adds its noise
  and writes both stacks (`io.StackWriter`: atomic). Equal to the in-memory stacks up to float32 rounding of
  the statistics. Returns {"paths", "pixel_size", "noise_std", "measured_snr"}."""
  n_images, snr = _check(n_images, snr)
  sim = Simulator(source, image_size, ctf, defocus_range_A, max_shift_A, calibrate=False, **simulator_options)
  total = total2 = image_vars = 0.0
  for _, _, _, images, _ in _chunks(sim, seed, n_images, batch_size, False):
    block = images.astype(np.float64)
    total, total2 = total + block.sum(), total2 + np.square(block).sum()
    image_vars += float(block.var(axis=(-2, -1)).sum())
  count = n_images * sim.shape[0] * sim.shape[1]
  mean, var = total / count, total2 / count - (total / count) ** 2
  if not var > 0:
    raise InputError("clean projections are constant (is the map empty or outside the box?)")
  signal_var = image_vars / n_images / var  # mean_i var(clean_i) after standardisation
  noise_std = math.sqrt(signal_var / snr)
  colour = _colourer(noise_psd, sim.shape)
  os.makedirs(workdir, exist_ok=True)
  paths = {name: os.path.join(workdir, name) for name in ("clean.mrcs", "noisy.mrcs", "particles.star")}
  chunks, noise_sum, noise_sq = [], 0.0, 0.0
  with StackWriter(paths["clean.mrcs"], n_images, sim.shape, sim.pixel_size) as out_clean, \
       StackWriter(paths["noisy.mrcs"], n_images, sim.shape, sim.pixel_size) as out_noisy:
    for start, _, params, images, unit in _chunks(sim, seed, n_images, batch_size, log_progress):
      clean = ((images.astype(np.float64) - mean) / math.sqrt(var)).astype(np.float32)
      noise = (unit if colour is None else colour(unit)) * np.float32(noise_std)
      out_clean.write(start, clean)
      out_noisy.write(start, noise + clean)
      noise_sum, noise_sq = noise_sum + noise.sum(dtype=np.float64), noise_sq + np.square(noise, dtype=np.float64).sum()
      chunks.append(params)
  params = ParticleParams(*(np.concatenate(fields) for fields in zip(*chunks)))
  write_star(paths["particles.star"],
             optics_table(sim.pixel_size, image_size, sim.voltage_kv, sim.cs_mm, sim.amplitude_contrast),
             particles_table(params, ctf))
  measured = signal_var / (noise_sq / count - (noise_sum / count) ** 2)
  return {"paths": paths, "pixel_size": sim.pixel_size, "noise_std": noise_std, "measured_snr": measured}


def write_dataset(ds: Dataset, workdir: str) -> dict[str, str]:
  """Writes clean.mrcs, noisy.mrcs (pixel size in the headers) and particles.star (RELION 3.1,
  rlnImageName -> noisy.mrcs); returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = {name: os.path.join(workdir, name) for name in ("clean.mrcs", "noisy.mrcs", "particles.star")}
  write_stack(paths["clean.mrcs"], ds.clean, ds.pixel_size)
  write_stack(paths["noisy.mrcs"], ds.noisy, ds.pixel_size)
  write_star(paths["particles.star"], ds.optics, ds.particles)
  return paths


def measured_snr(noisy: np.ndarray, clean: np.ndarray) -> float:
  """INTERFACE SNR of a pair of stacks: mean per-image clean variance / variance of the noise."""
  clean64 = np.asarray(clean, np.float64)
  return float(np.mean(np.var(clean64, axis=(1, 2))) / np.var(np.asarray(noisy, np.float64) - clean64))
