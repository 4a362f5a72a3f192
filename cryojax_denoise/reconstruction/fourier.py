"""3D reconstruction with known poses by direct Fourier inversion (Fourier slice theorem).

Each particle image is zero-padded to P = pad·D, Fourier transformed, centred by its origin
shift (a phase ramp), multiplied by its CTF, and its central slice is inserted into a P³
Fourier grid by trilinear gridding (scatter-add). Two accumulators are kept per map,
Σ CTF·F and Σ CTF², and the map is their Wiener-style ratio Σ CTF·F / (Σ CTF² + λ), inverse
transformed, cropped to D³ and divided by the trilinear kernel's real-space transform
(gridding correction). Maps are in the images' units: summing a map along z gives back a
CTF-free, centred image at the identity pose.

Conventions (checked against `cryojax_denoise.data.simulate`, which simulates with cryojax):
- Poses are RELION's: rlnAngleRot/Tilt/Psi (degrees, ZYZ) give RELION's matrix A
  (Euler_angles2matrix, `data.relion.relion_matrix`) that maps map coordinates to image
  coordinates, so the image frequency (kx, ky) lies at Aᵀ (kx, ky, 0) in the map. It equals
  cryojax's `EulerAnglePose(phi=-rot, theta=-tilt, psi=-psi).rotation`. Volumes are indexed
  [z, y, x] and images [y, x], like cryojax and mrcfile.
- Origins: a particle sits at (box centre − rlnOriginX/YAngst) in its image, so it is
  centred by a shift of +origin (RELION's convention; cryojax `offset = -origin`).
- CTF: RELION's (rlnDefocusU/V, rlnDefocusAngle = angle of U from +kx towards +ky, image x =
  column, y = row), evaluated with cryojax's `AstigmaticCTF` at the parameters of
  `data.relion.relion_to_cryojax_ctf` (cryojax measures its angle from +ky, so it gets
  90° − rlnDefocusAngle) times `data.relion.RELION_CTF_SIGN` (cryojax's CTF is minus
  RELION's), with `amplitude_contrast_ratio` and phase shift, at the padded grid's frequencies.
  The simulator uses the same mapping, so correction uses the simulator's CTF exactly, and
  real RELION data (astigmatic, RELION's contrast) are corrected with RELION's CTF
  (tests/test_ctf_convention.py).

Only the rfft half plane (kx ≥ 0, inside the Nyquist circle) is inserted; Friedel symmetry
fills the other half at the end (V(−k) = conj V(k)), halving the scatter work.
Accumulation streams fixed-size batches (padding + a zero weight for the tail) through
one jitted, `shard_map`-ped step: each device scatters its share of a batch into its own
accumulator and the per-device accumulators are summed once, at the end.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import NamedSharding, PartitionSpec

import cryojax.simulator as cxs

from cryojax_denoise.data.relion import RELION_CTF_SIGN
from cryojax_denoise.errors import InputError
from cryojax_denoise.progress import Progress
from cryojax_denoise.reconstruction import fsc as fsc_lib

DEFAULT_PAD = 2
DEFAULT_REG = 1e-3


from cryojax_denoise.reconstruction.particles import ParticleParams, particle_params  # noqa: E402


# ---------------------------------------------------------------------------- insertion kernel


class _Geometry(NamedTuple):
  """Static sampling of one padded image: the rfft half-plane points inside the Nyquist circle."""

  flat: np.ndarray   # (M,) indices into the (P, P//2+1) rfft of the padded image
  kx: np.ndarray     # (M,) frequency in padded-grid units
  ky: np.ndarray     # (M,)
  half: np.ndarray   # (M,) 0.5 on the kx = 0 column (it holds both ±ky), else 1


@functools.lru_cache(maxsize=8)
def _geometry(p: int) -> _Geometry:
  ky = np.fft.fftfreq(p, 1.0 / p)
  kx = np.arange(p // 2 + 1, dtype=np.float64)
  kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
  inside = kyy**2 + kxx**2 <= (p / 2 - 1) ** 2
  flat = np.flatnonzero(inside.ravel())
  half = np.where(kxx.ravel()[flat] == 0, 0.5, 1.0)
  return _Geometry(flat.astype(np.int32), kxx.ravel()[flat].astype(np.float32), kyy.ravel()[flat].astype(np.float32),
                   half.astype(np.float32))


def _ctf_values(params: ParticleParams, freqs):
  """RELION's CTF of one particle at (M, 2) frequencies (x, y) in 1/Å, via cryojax (params
  already mapped by `relion_to_cryojax_ctf`, sign RELION_CTF_SIGN); 1 where `params.ctf` is 0."""
  ctf = cxs.AstigmaticCTF(defocus_in_angstroms=params.defocus, astigmatism_in_angstroms=params.astigmatism,
                          astigmatism_angle=params.angle, spherical_aberration_in_mm=params.cs)
  value = ctf(freqs, wavelength_in_angstroms=params.wavelength, amplitude_contrast_ratio=params.ac,
              phase_shift=params.phase)
  return jnp.where(params.ctf > 0, RELION_CTF_SIGN * value, 1.0)


def _slice_contributions(image, params: ParticleParams, weight, group, *, p: int, pixel_size: float):
  """One particle's trilinear scatter: flat voxel indices (M·8,) into a (groups·P³) grid and
  values (M·8, 3) = (Re CTF·F, Im CTF·F, CTF²) × trilinear weight × particle weight."""
  geo = _geometry(p)
  d = image.shape[-1]
  lo = (p - d) // 2
  padded = jnp.zeros((p, p), jnp.float32).at[lo:lo + d, lo:lo + d].set(image.astype(jnp.float32))
  f = jnp.fft.rfft2(jnp.fft.ifftshift(padded)).ravel()[geo.flat]
  kx, ky = jnp.asarray(geo.kx), jnp.asarray(geo.ky)
  scale = 1.0 / (p * pixel_size)
  # Centre the particle: shift by +origin multiplies F by exp(-2πi k·origin).
  phase = -2.0 * jnp.pi * scale * (kx * params.shift[0] + ky * params.shift[1])
  f = f * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
  c = _ctf_values(params, jnp.stack([kx * scale, ky * scale], -1))
  w = weight * jnp.asarray(geo.half)
  data = f * (c * w)
  ctf2 = c * c * w
  # Map coordinates (x, y, z) of the slice: kx·A[0] + ky·A[1].
  xyz = kx[:, None] * params.rows[0][None, :] + ky[:, None] * params.rows[1][None, :]
  base = jnp.floor(xyz)
  frac = xyz - base
  base = base.astype(jnp.int32)
  idx, vals = [], []
  for dz in (0, 1):
    for dy in (0, 1):
      for dx in (0, 1):
        t = ((frac[:, 2] if dz else 1 - frac[:, 2]) * (frac[:, 1] if dy else 1 - frac[:, 1])
             * (frac[:, 0] if dx else 1 - frac[:, 0]))
        iz, iy, ix = ((base[:, 2] + dz) % p, (base[:, 1] + dy) % p, (base[:, 0] + dx) % p)
        idx.append(group * p**3 + (iz * p + iy) * p + ix)
        vals.append(jnp.stack([jnp.real(data) * t, jnp.imag(data) * t, ctf2 * t], -1))
  # Corners interleaved per point: consecutive updates hit neighbouring voxels (cache locality).
  return jnp.stack(idx, 1).ravel(), jnp.stack(vals, 1).reshape(-1, 3)


def insert_batch(acc, images, params: ParticleParams, weights, groups, *, p: int, pixel_size: float):
  """Adds a batch of (B, D, D) images into an accumulator (groups·P³, 3) by scatter-add; pure.

  `weights` (B,) are 0 for padding rows, `groups` (B,) int pick the map (e.g. half 0 or 1).
  """
  idx, vals = jax.vmap(functools.partial(_slice_contributions, p=p, pixel_size=pixel_size))(
      images, params, weights, groups)
  return acc.at[idx.ravel()].add(vals.reshape(-1, 3), mode="drop")


@functools.lru_cache(maxsize=16)
def _sharded_step(mesh, p: int, pixel_size: float):
  """Jitted step over a (data,) mesh: every device inserts its slice of the batch into its own
  accumulator (leading axis = device)."""
  spec = PartitionSpec("data")

  def local(acc, images, params, weights, groups):
    return insert_batch(acc[0], images, params, weights, groups, p=p, pixel_size=pixel_size)[None]

  step = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, spec, spec), out_specs=spec)
  return jax.jit(step, donate_argnums=0)


def _default_mesh():
  return jax.make_mesh((jax.local_device_count(),), ("data",), devices=jax.local_devices())


def default_batch_size(image_size: int, pad: int = DEFAULT_PAD) -> int:
  """Particles per step so that one step's scatter values stay near 2·10⁷ floats."""
  m = len(_geometry(pad * image_size).flat)
  return int(max(8, min(512, 2e7 // (m * 8 * 3))))


# ---------------------------------------------------------------------------- accumulate and invert


def backproject(images, params: ParticleParams, pixel_size: float, *, groups=None, n_groups: int = 1,
                pad: int = DEFAULT_PAD, batch_size: int | None = None, transform: Callable | None = None,
                mesh=None, progress: str | None = None) -> np.ndarray:
  """Streams particles through the insertion kernel; returns accumulators (n_groups, P³, 3).

  images: (N, D, D) array-like (NumPy array, memory map, or anything sliceable to (b, D, D));
  params: from `particle_params`; groups: (N,) int in [0, n_groups) (None: all 0);
  transform: optional callable on (B, D, D) float32 batches (e.g. a denoiser) applied first;
  progress: a description to log rate and ETA under, or None for silence.
  """
  n = len(params.shift)
  if len(images) != n:
    raise InputError(f"images: {len(images)} images but {n} particles")
  d = int(images.shape[-1]) if hasattr(images, "shape") else int(np.asarray(images[0:1]).shape[-1])
  p = pad * d
  mesh = mesh or _default_mesh()
  ndev = mesh.devices.size
  b = batch_size or default_batch_size(d, pad)
  b = ((b + ndev - 1) // ndev) * ndev
  groups = np.zeros(n, np.int32) if groups is None else np.asarray(groups, np.int32)
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  acc = jax.device_put(jnp.zeros((ndev, n_groups * p**3, 3), jnp.float32), sharding)
  step = _sharded_step(mesh, p, float(pixel_size))
  bar = Progress(n, progress, unit="particles") if progress else None
  for start in range(0, n, b):
    stop = min(start + b, n)
    batch = np.asarray(images[start:stop], np.float32)
    if batch.ndim != 3 or batch.shape[1:] != (d, d):
      raise InputError(f"images: expected square (N, {d}, {d}) images, got a batch of shape {batch.shape}")
    fill = b - (stop - start)
    take = lambda v: np.concatenate([v[start:stop], np.repeat(v[stop - 1:stop], fill, 0)]) if fill else v[start:stop]
    if fill:
      batch = np.concatenate([batch, np.zeros((fill, d, d), np.float32)])
    if transform is not None:
      batch = np.asarray(transform(batch), np.float32)
    weights = np.concatenate([np.ones(stop - start, np.float32), np.zeros(fill, np.float32)])
    batch_params = ParticleParams(*(take(v) for v in params))
    inputs = jax.device_put((batch, batch_params, weights, take(groups)), sharding)
    acc = step(acc, *inputs)
    if bar:
      bar.update(stop - start)
  return np.asarray(jnp.sum(acc, axis=0)).reshape(n_groups, p**3, 3)


@functools.partial(jax.jit, static_argnames=("d", "p", "gridding"))
def _invert(acc, reg, *, d: int, p: int, gridding: bool = True):
  """One map from its accumulator (P³, 3): Friedel-completes, divides, inverse transforms,
  crops to D³ and applies the trilinear gridding correction."""
  num = jax.lax.complex(acc[:, 0], acc[:, 1]).reshape(p, p, p)
  den = acc[:, 2].reshape(p, p, p)
  flip = lambda v: jnp.roll(jnp.flip(v, (0, 1, 2)), 1, (0, 1, 2))  # v(-k) on the FFT-ordered grid
  num = num + jnp.conj(flip(num))
  den = den + flip(den)
  k = jnp.fft.fftfreq(p, 1.0 / p)
  r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
  inside = r2 <= (p / 2 - 1) ** 2
  lam = reg * jnp.sum(jnp.where(inside, den, 0.0)) / jnp.maximum(jnp.sum(inside & (den > 0)), 1)
  vhat = jnp.where(inside & (den > 0), num / (den + lam), 0.0)
  vol = jnp.fft.fftshift(jnp.real(jnp.fft.ifftn(vhat)))
  lo = p // 2 - d // 2
  vol = vol[lo:lo + d, lo:lo + d, lo:lo + d]
  if gridding:
    x = (jnp.arange(d) - d // 2) / p
    s = jnp.sinc(x) ** 2
    vol = vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])
  return vol


def invert(acc, image_size: int, *, pad: int = DEFAULT_PAD, reg: float = DEFAULT_REG,
           gridding: bool = True) -> np.ndarray:
  """A (D, D, D) float32 map from one accumulator (P³, 3) of `backproject`.

  reg: λ as a fraction of the mean Σ CTF² over the Nyquist sphere (Wiener-style regulariser).
  """
  return np.asarray(_invert(jnp.asarray(acc), jnp.float32(reg), d=int(image_size), p=int(pad * image_size),
                            gridding=gridding))


def _image_size(images) -> int:
  shape = images.shape if hasattr(images, "shape") else np.asarray(images[0:1]).shape
  if len(shape) != 3 or shape[1] != shape[2]:
    raise InputError(f"images: expected square (N, D, D) images, got shape {tuple(shape)}")
  return int(shape[-1])


def reconstruct(images, particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float, *,
                ctf: bool | None = None, pad: int = DEFAULT_PAD, reg: float = DEFAULT_REG,
                batch_size: int | None = None, transform: Callable | None = None, gridding: bool = True,
                progress: str | None = None) -> np.ndarray:
  """Reconstructs a (D, D, D) float32 map from (N, D, D) images at the poses of `particles`.

  ctf: None applies the CTF when the table has rlnDefocusU (False: images are CTF-free).
  See `backproject` for the streaming arguments and `invert` for `reg`.
  """
  d = _image_size(images)
  params = particle_params(particles, optics, pixel_size, ctf)
  acc = backproject(images, params, pixel_size, pad=pad, batch_size=batch_size, transform=transform,
                    progress=progress)
  return invert(acc[0], d, pad=pad, reg=reg, gridding=gridding)


class HalfMaps(NamedTuple):
  """Two independent half maps, the map from all particles (D, D, D) each, and the split (N,) of 0/1."""

  half1: np.ndarray
  half2: np.ndarray
  full: np.ndarray
  split: np.ndarray


def random_halves(n: int, seed: int) -> np.ndarray:
  """(N,) int32 of 0/1: a seeded random split into halves of sizes ⌈N/2⌉ and ⌊N/2⌋."""
  split = np.zeros(n, np.int32)
  split[np.random.default_rng(seed).permutation(n)[n - n // 2:]] = 1
  return split


def half_maps(images, particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float, seed: int = 0, *,
              ctf: bool | None = None, pad: int = DEFAULT_PAD, reg: float = DEFAULT_REG,
              batch_size: int | None = None, transform: Callable | None = None,
              progress: str | None = None) -> HalfMaps:
  """Half maps from a seeded random split of the particles, and the full map, in one pass.

  The full map divides the summed accumulators of both halves (not an average of half maps).
  """
  d = _image_size(images)
  if len(images) < 2:
    raise InputError("images: half maps need at least 2 particles")
  params = particle_params(particles, optics, pixel_size, ctf)
  split = random_halves(len(params.shift), seed)
  from cryojax_denoise import distributed  # one process: plain backproject; several: shares, summed

  acc = distributed.backproject(backproject, images, params, pixel_size, groups=split, n_groups=2, pad=pad,
                                batch_size=batch_size, transform=transform, progress=progress)
  inv = lambda a: invert(a, d, pad=pad, reg=reg)
  return HalfMaps(inv(acc[0]), inv(acc[1]), inv(acc[0] + acc[1]), split)


def half_map_resolution(images, particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float,
                        seed: int = 0, mask: bool = False, **kwargs) -> dict:
  """Half-map FSC of a reconstruction: dict(resolution_A (FSC 0.143 crossing, Å), fsc (per shell),
  freq (shell frequencies, 1/Å)). Keyword arguments go to `half_maps`; `mask` as in `fsc.fsc_curve`."""
  maps = half_maps(images, particles, optics, pixel_size, seed, **kwargs)
  curve = fsc_lib.fsc_curve(maps.half1, maps.half2, mask=mask)
  return {"resolution_A": fsc_lib.fsc_resolution(curve, pixel_size, 0.143),
          "fsc": [float(v) for v in curve],
          "freq": [float(v) for v in fsc_lib.shell_frequencies(maps.half1.shape[0], pixel_size)]}
