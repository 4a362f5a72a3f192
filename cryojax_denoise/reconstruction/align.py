"""Projection matching: each particle's rotation and origin against CTF-modulated projections of a map.

    from cryojax_denoise.reconstruction import align, so3_grid
    from cryojax_denoise.reconstruction.particles import particle_params
    ref = align.prepare_reference(volume, pixel_size_A, image_size=D)       # (D, D, D) map on the particles' grid
    ctfs = align.ctf_params(particles, optics, pixel_size_A)                # CTF of each row (poses not read)
    poses = align.search(images, ctfs, ref, so3_grid.uniform_grid(15.0), resolution_A=20.0, max_shift_A=15.0)
    poses.rot, poses.tilt, poses.psi, poses.origin_x_A, poses.origin_y_A   # (N,) RELION columns; poses.score NCC

Scoring. Images are compared in Fourier space on the rfft half plane, inside the band 0 < |k| <=
D·pixel size/resolution_A (K points; DC left out, so an image's mean does not matter). A particle X with
CTF c at candidate origin s (Å, RELION's: the particle sits at -s from the box centre) against the
central slice R of rotation A scores the normalised cross-correlation

    ncc = Σ_k w Re(conj(R(k)) c(k) X(k) e^{-2πi k·s}) / sqrt(Σ_k w c² |R|² · Σ_k w |X|²)

(w = 1, ½ on the kx = 0 column that holds both ±ky), the maximum-likelihood choice for white noise with
an unknown scale. For a batch of B particles, S shifts and J rotations this is one real matrix product
(B·S, 2K) @ (2K, J) per chunk of rotations, so the whole exhaustive search is GEMM-bound.

Search. Exhaustive over an SO(3) grid (`so3_grid.uniform_grid`: viewing directions x in-plane angles; the
in-plane angle is just another rotation of the references, whose slices are precomputed once) and over
integer-pixel origins in a disc of radius max_shift_A, keeping the `candidates` best rotations (each with
its best origin); then `local_levels` rounds of local refinement around each, the best refined one
winning: 27 rotations Δ·A (Δ on a {-1,0,1}³ grid of rotation vectors at step/2, step/4, ...) and 9
origins (±step_px/2, ±step_px/4, ...), all on the fly. Central slices are trilinear samples of the FFT of
the map zero-padded `pad` times (pre-divided by the interpolation kernel's transform, as in
`reconstruction.fourier`); conventions are `reconstruction.fourier`'s (image frequency k at Aᵀ(k, 0)).

Memory per batch of B particles: B·S·(2K + chunk) floats for the scores plus the J·3K floats of the
precomputed slices (shared by all batches); nothing grows with N but the (N,)-sized results.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cryojax_denoise.data.relion import RELION_CTF_SIGN, relion_angles_from_matrix
from cryojax_denoise import sharding
from cryojax_denoise.errors import InputError
from cryojax_denoise.reconstruction import so3_grid
from cryojax_denoise.reconstruction.particles import ParticleParams, particle_params

DEFAULT_PAD = 2
DEFAULT_BATCH = 64
DEFAULT_CHUNK = 512


class Reference(NamedTuple):
  """A map ready for slicing: `fvol` (P, P, P) complex64 FFT (FFT order, indexed [z, y, x]) of the map
  zero-padded to P = pad·D; `box` D and `pixel_size` (Å) of the particles it matches."""

  fvol: jax.Array
  box: int
  pixel_size: float


class Poses(NamedTuple):
  """Per-particle results (N,) (matrices (N, 3, 3)): RELION angles (deg), origins (Å), and the NCC score."""

  rot: np.ndarray
  tilt: np.ndarray
  psi: np.ndarray
  origin_x_A: np.ndarray
  origin_y_A: np.ndarray
  matrices: np.ndarray
  score: np.ndarray


class Band(NamedTuple):
  """The K rfft points of a D² image used for matching: `flat` indices into the (D, D//2+1) rfft2 of the
  centred image, frequencies `kx`, `ky` in cycles per box, weights `w`."""

  flat: np.ndarray
  kx: np.ndarray
  ky: np.ndarray
  w: np.ndarray


@functools.lru_cache(maxsize=32)
def band(d: int, pixel_size: float, resolution_A: float) -> Band:
  """The band 0 < |k| <= min(D·pixel_size/resolution_A, D/2 - 1) of a D² image (see the module docstring)."""
  kmax = min(d * pixel_size / resolution_A, d / 2 - 1)
  ky = np.fft.fftfreq(d, 1.0 / d)
  kx = np.arange(d // 2 + 1, dtype=np.float64)
  kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
  r2 = kyy**2 + kxx**2
  flat = np.flatnonzero(((r2 > 0) & (r2 <= kmax**2)).ravel())
  w = np.where(kxx.ravel()[flat] == 0, 0.5, 1.0)
  f32 = lambda v: np.asarray(v, np.float32)
  return Band(flat.astype(np.int32), f32(kxx.ravel()[flat]), f32(kyy.ravel()[flat]), f32(w))


def prepare_reference(volume, pixel_size: float, image_size: int | None = None,
                      image_pixel_size: float | None = None, pad: int = DEFAULT_PAD,
                      where: str = "reference") -> Reference:
  """A (D, D, D) map as a `Reference`; with `image_size`/`image_pixel_size` given, a map of another box
  or pixel size is an InputError naming `where` (resample it to the particles' grid first)."""
  vol = np.asarray(volume, np.float32)
  if vol.ndim != 3 or len(set(vol.shape)) != 1:
    raise InputError(f"{where}: expected a cubic (D, D, D) map, got shape {vol.shape}")
  d = vol.shape[0]
  if image_size is not None and d != int(image_size):
    raise InputError(f"{where}: map box {d} differs from the particles' box {int(image_size)}")
  if image_pixel_size is not None and abs(pixel_size - image_pixel_size) > 1e-3 * image_pixel_size:
    raise InputError(f"{where}: map pixel size {pixel_size:.4g} Å differs from the particles' "
                     f"{image_pixel_size:.4g} Å")
  return Reference(_fourier_volume(jnp.asarray(vol), pad=int(pad)), d, float(pixel_size))


@functools.partial(jax.jit, static_argnames=("pad",))
def _fourier_volume(vol, *, pad: int):
  d = vol.shape[0]
  p = pad * d
  s = jnp.sinc((jnp.arange(d) - d // 2) / p) ** 2  # trilinear interpolation's real-space transform
  vol = vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])
  lo = p // 2 - d // 2  # the map's centre voxel D//2 lands on P//2, the origin after ifftshift
  padded = jnp.zeros((p, p, p), jnp.float32).at[lo:lo + d, lo:lo + d, lo:lo + d].set(vol)
  return jnp.fft.fftn(jnp.fft.ifftshift(padded)).astype(jnp.complex64)


def slices(fvol, rows, kx, ky, scale: float):
  """Central slices (..., K) complex64 of `fvol` (P³) at rotations with first two rows `rows` (..., 2, 3),
  at band frequencies kx, ky (K,) in cycles per image box; `scale` = P / D. Trilinear, periodic."""
  p = fvol.shape[0]
  xyz = (kx[:, None] * rows[..., 0:1, :] + ky[:, None] * rows[..., 1:2, :]) * scale  # (..., K, 3) = (x, y, z)
  base = jnp.floor(xyz)
  t = xyz - base
  base = base.astype(jnp.int32)
  out = 0.0
  for dz in (0, 1):
    for dy in (0, 1):
      for dx in (0, 1):
        wgt = ((t[..., 2] if dz else 1 - t[..., 2]) * (t[..., 1] if dy else 1 - t[..., 1])
               * (t[..., 0] if dx else 1 - t[..., 0]))
        out = out + wgt * fvol[(base[..., 2] + dz) % p, (base[..., 1] + dy) % p, (base[..., 0] + dx) % p]
  return out


def ctf_params(particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float,
               ctf: bool | None = None) -> ParticleParams:
  """The CTF of each particle row in the kernel form (`reconstruction.particles.particle_params`), without
  reading its poses or origins (set to 0; absent columns are fine); `ctf=False` makes every CTF 1."""
  table = particles.drop(columns=["rlnOriginX", "rlnOriginY"], errors="ignore")
  for key in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
    table[key] = 0.0
  return particle_params(table, optics, pixel_size, ctf)


def _ctf_at(params: ParticleParams, freqs):
  """RELION's CTF of one particle at (K, 2) frequencies (x, y) in 1/Å (1 where params.ctf is 0)."""
  import cryojax.simulator as cxs

  ctf = cxs.AstigmaticCTF(defocus_in_angstroms=params.defocus, astigmatism_in_angstroms=params.astigmatism,
                          astigmatism_angle=params.angle, spherical_aberration_in_mm=params.cs)
  value = ctf(freqs, wavelength_in_angstroms=params.wavelength, amplitude_contrast_ratio=params.ac,
              phase_shift=params.phase)
  return jnp.where(params.ctf > 0, RELION_CTF_SIGN * value, 1.0)


def _prepare_batch(images, ctf, kx, ky, flat, w):
  """Band-limited, CTF-multiplied, weighted particle transforms y = w·c·X (B, K) and w·c² (B, K),
  Σ w|X|² (B,). `ctf` is (B, K) values."""
  f = jnp.fft.rfft2(jnp.fft.ifftshift(images.astype(jnp.float32), axes=(-2, -1)))
  x = f.reshape(f.shape[0], -1)[:, flat]
  return x * (ctf * w), ctf * ctf * w, jnp.sum(w * jnp.abs(x) ** 2, -1)


def _phases(shifts, kx, ky, d: int):
  """e^{-2πi k·s} (..., K) for origins `shifts` (..., 2) in pixels."""
  ang = (-2.0 * jnp.pi / d) * (shifts[..., 0:1] * kx + shifts[..., 1:2] * ky)
  return jax.lax.complex(jnp.cos(ang), jnp.sin(ang))


@functools.partial(jax.jit, static_argnames=("d", "top"))
def _exhaustive(y, c2w, refs, p2, valid, shifts, kx, ky, *, d: int, top: int = 1):
  """The `top` best (score, rotation index, shift index) per particle, each (B, top), best first, over all
  chunks of references (each rotation with its best shift).

  refs (C, Jc, 2K) real|imag of the slices, p2 (C, Jc, K) their |R|², valid (C, Jc) (False on padding),
  shifts (S, 2) px. Scores are cc / sqrt(Σ w c²|R|²) (the particle's own norm is divided out later)."""
  ys = y[:, None, :] * _phases(shifts, kx, ky, d)[None]           # (B, S, K)
  b, s, k = ys.shape
  ys = jnp.concatenate([jnp.real(ys), jnp.imag(ys)], -1).reshape(b * s, 2 * k)

  def chunk(carry, inputs):
    ref, pow2, ok = inputs
    best, best_j, best_s, offset = carry
    cc = (ys @ ref.T).reshape(b, s, -1)                              # (B, S, Jc)
    norm = jnp.sqrt(jnp.maximum(c2w @ pow2.T, 1e-30))               # (B, Jc)
    score = jnp.where(ok[None, None, :], cc / norm[:, None, :], -jnp.inf)
    arg_s = jnp.argmax(score, axis=1)                                # (B, Jc)
    score = jnp.max(score, axis=1)
    jc = score.shape[1]
    pool = jnp.concatenate([best, score], 1)                          # (B, top + Jc): earlier chunks first
    pool_j = jnp.concatenate([best_j, offset + jnp.broadcast_to(jnp.arange(jc, dtype=jnp.int32), (b, jc))], 1)
    pool_s = jnp.concatenate([best_s, arg_s.astype(jnp.int32)], 1)
    new, idx = jax.lax.top_k(pool, top)
    take = lambda v: jnp.take_along_axis(v, idx, 1)
    return (new, take(pool_j), take(pool_s), offset + jc), None

  init = (jnp.full((b, top), -jnp.inf, jnp.float32), jnp.zeros((b, top), jnp.int32),
          jnp.zeros((b, top), jnp.int32), jnp.int32(0))
  (score, j, si, _), _ = jax.lax.scan(chunk, init, (refs, p2, valid))
  return score, j, si


@functools.partial(jax.jit, static_argnames=("scale",))
def _local_slices(fvol, mats, offsets, kx, ky, *, scale: float):
  """Candidates Δ·A (B, L, 3, 3) around mats (B, 3, 3) for offsets (L, 3, 3), and their slices (B, L, K).
  A jit of its own: fused with the scoring below, XLA's CPU code ran 5-10x slower."""
  cand = jnp.einsum("lij,bjk->blik", offsets, mats)
  return cand, slices(fvol, cand[:, :, :2, :], kx, ky, scale)


@functools.partial(jax.jit, static_argnames=("d",))
def _local_score(y, c2w, cand, r, shift, dshifts, kx, ky, *, d: int):
  """Best of the candidates `cand` with slices r (B, L, K) x origins shift + dshifts (S', 2) px per
  particle; returns (score, matrix, shift)."""
  ys = y[:, None, :] * _phases(shift[:, None, :] + dshifts[None], kx, ky, d)  # (B, S', K)
  cc = jnp.real(jnp.einsum("bsk,blk->bsl", ys, jnp.conj(r)))
  norm = jnp.sqrt(jnp.maximum(jnp.einsum("bk,blk->bl", c2w, jnp.abs(r) ** 2), 1e-30))
  score = (cc / norm[:, None, :]).reshape(cc.shape[0], -1)
  best = jnp.argmax(score, axis=1)
  si, li = best // cand.shape[1], best % cand.shape[1]
  pick = jnp.take_along_axis(score, best[:, None], 1)[:, 0]
  return pick, jnp.take_along_axis(cand, li[:, None, None, None], 1)[:, 0], shift + dshifts[si]


def _local(fvol, y, c2w, mats, shift, offsets, dshifts, kx, ky, *, d: int, scale: float):
  """One level of local refinement: best of Δ·A (offsets (L, 3, 3)) x origin + dshifts (S', 2) px around
  each particle's mats (B, 3, 3) and shift (B, 2) px; returns (score, mats, shift)."""
  cand, r = _local_slices(fvol, mats, offsets, kx, ky, scale=scale)
  return _local_score(y, c2w, cand, r, shift, dshifts, kx, ky, d=d)


@functools.partial(jax.jit, static_argnames=("scale", "chunk"))
def reference_slices(fvol, matrices, kx, ky, *, scale: float, chunk: int):
  """Slices of J rotations (J padded to C·chunk) as refs (C, chunk, 2K), |R|² (C, chunk, K), valid (C, chunk)."""
  j = matrices.shape[0]
  c = -(-j // chunk)
  mats = jnp.concatenate([matrices, jnp.broadcast_to(jnp.eye(3, dtype=matrices.dtype), (c * chunk - j, 3, 3))])
  r = jax.lax.map(lambda m: slices(fvol, m[:, :2, :], kx, ky, scale), mats.reshape(c, chunk, 3, 3))
  valid = (jnp.arange(c * chunk) < j).reshape(c, chunk)
  return jnp.concatenate([jnp.real(r), jnp.imag(r)], -1), jnp.abs(r) ** 2, valid


def shift_grid(max_shift_px: float, step_px: float = 1.0) -> np.ndarray:
  """(S, 2) float32 origins in pixels on a step_px grid inside the disc of radius max_shift_px (0 first)."""
  n = int(math.floor(max_shift_px / step_px + 1e-6))
  r = np.arange(-n, n + 1) * step_px
  xy = np.stack(np.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
  xy = xy[np.sum(xy**2, -1) <= max_shift_px**2 + 1e-6]
  return xy[np.argsort(np.sum(xy**2, -1), kind="stable")].astype(np.float32)


def _ctf_batch(ctfs, rows: np.ndarray, freqs, flat_full: np.ndarray) -> jax.Array:
  """(B, K) CTF values of the particles at `rows`: from ParticleParams, an (N, D, D) fft2-layout grid, or None."""
  if ctfs is None:
    return jnp.ones((len(rows), freqs.shape[0]), jnp.float32)
  if isinstance(ctfs, ParticleParams):
    params = ParticleParams(*(jnp.asarray(np.asarray(v)[rows]) for v in ctfs))
    return _ctf_jit(params, freqs)
  grid = np.asarray(ctfs[rows], np.float32)
  return jnp.asarray(grid.reshape(len(rows), -1)[:, flat_full])


_ctf_jit = jax.jit(jax.vmap(_ctf_at, in_axes=(0, None)))


def search(images, ctfs, reference: Reference, grid: so3_grid.Grid, *, resolution_A: float,
           max_shift_A: float = 0.0, local_levels: int = 2, batch_size: int = DEFAULT_BATCH,
           chunk: int = DEFAULT_CHUNK, candidates: int = 4, init: Poses | None = None,
           search_resolution_A: float | None = None, mesh=None) -> Poses:
  """Best pose of every particle by projection matching (module docstring).

  images: (N, D, D) float (array or memory map, read a batch at a time); ctfs: `ctf_params(...)`
  (ParticleParams of (N,) arrays), an (N, D, D) CTF grid in fft2 layout (`data.ctf.ctf_grid`) or None
  (no CTF); reference: `prepare_reference` of a map on the particles' grid; grid: `so3_grid.uniform_grid`;
  resolution_A: band limit (Å); max_shift_A: radius of the origin search (Å; integer pixels, then local
  refinement to step/2^levels px); candidates: how many of the best grid poses (each rotation with its
  best origin) are refined locally, the best refined one wins (guards against a coarse grid's near
  misses). Results do not depend on the particles' order or `batch_size`.
  init: start poses (N,) for a local search only (no exhaustive stage): one more level first, at
  ± grid.step_deg and ± 1 px, then the usual levels; the grid's rotations are then not used.
  search_resolution_A: a coarser band (Å) for the exhaustive stage only (a coarse grid cannot use fine
  detail, and its cost is proportional to the band's size); None: resolution_A.
  mesh: `sharding.data_mesh()` to split each batch of particles over its devices (batch_size rounded up
  to a multiple of their number; references replicated); None: the default device.
  """
  n, d = len(images), int(images.shape[-1])
  if n == 0 or images.shape[-2] != d or d != reference.box:
    raise InputError(f"images: expected (N, {reference.box}, {reference.box}) particles for this reference, "
                     f"got shape {tuple(images.shape)}")
  px = reference.pixel_size
  bd = band(d, px, float(resolution_A))
  kx, ky, w = jnp.asarray(bd.kx), jnp.asarray(bd.ky), jnp.asarray(bd.w)
  flat = jnp.asarray(bd.flat)
  rows_full = (bd.flat // (d // 2 + 1)).astype(np.int64)
  flat_full = rows_full * d + bd.flat % (d // 2 + 1)
  freqs = jnp.stack([kx, ky], -1) / (d * px)
  scale = reference.fvol.shape[0] / d
  chunk = int(max(1, min(chunk, len(grid.matrices))))
  coarse = max(float(resolution_A), float(search_resolution_A or 0.0))
  sub = jnp.asarray(np.flatnonzero(bd.kx**2 + bd.ky**2 <= min(d * px / coarse, d / 2 - 1) ** 2 + 1e-3))
  if init is None:
    refs, p2, valid = reference_slices(reference.fvol, jnp.asarray(grid.matrices), kx[sub], ky[sub], scale=scale,
                                       chunk=chunk)
    shifts = jnp.asarray(shift_grid(max_shift_A / px))
  levels = range(0 if init is None else -1, local_levels)
  offsets = [jnp.asarray(so3_grid.local_offsets(grid.step_deg / 2 ** (lv + 1))) for lv in levels]
  r = np.array([-1.0, 0.0, 1.0])
  dxy = np.stack(np.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
  dshifts = [jnp.asarray(dxy * (0.5 ** (lv + 1)), jnp.float32) for lv in levels]
  mats_all = jnp.asarray(grid.matrices)
  out = {k: np.empty((n,) + s, np.float32) for k, s in (("mats", (3, 3)), ("shift", (2,)), ("score", ()))}
  b = int(max(1, min(batch_size, n)))
  if mesh is not None:
    b = -(-b // mesh.devices.size) * mesh.devices.size
  for start in range(0, n, b):
    stop = min(start + b, n)
    rows = np.minimum(np.arange(start, start + b), n - 1)  # pad the tail with repeats: one shape, one compile
    batch, ctf = np.asarray(images[start:stop], np.float32)[rows - start], _ctf_batch(ctfs, rows, freqs, flat_full)
    if mesh is None:
      batch = jnp.asarray(batch)
    else:
      batch, ctf = sharding.shard_host_batch(batch, sharding.batch_sharding(mesh)), jax.device_put(
          ctf, sharding.batch_sharding(mesh))
    y, c2w, x2 = _prepare_jit(batch, ctf, kx, ky, flat, w)
    m = 1
    if init is None:
      m = int(max(1, min(candidates, len(grid.matrices))))
      score, j, si = _exhaustive(y[:, sub], c2w[:, sub], refs, p2, valid, shifts, kx[sub], ky[sub], d=d, top=m)
      score, mats, shift = score.ravel(), mats_all[j.ravel()], shifts[si.ravel()]  # (B·M, ...), particle-major
      y, c2w = jnp.repeat(y, m, 0), jnp.repeat(c2w, m, 0)
    else:
      mats = jnp.asarray(np.asarray(init.matrices, np.float32)[rows])
      shift = jnp.asarray(np.stack([init.origin_x_A, init.origin_y_A], -1)[rows] / px, jnp.float32)
    for off, dsh in zip(offsets, dshifts):
      score, mats, shift = _local(reference.fvol, y, c2w, mats, shift, off, dsh, kx, ky, d=d, scale=scale)
    if m > 1:
      win = jnp.argmax(score.reshape(b, m), 1) + m * jnp.arange(b)
      score, mats, shift = score[win], mats[win], shift[win]
    keep = slice(0, stop - start)
    out["mats"][start:stop] = sharding.to_host(mats)[keep]
    out["shift"][start:stop] = sharding.to_host(shift)[keep] * px
    out["score"][start:stop] = sharding.to_host(score / jnp.sqrt(jnp.maximum(x2, 1e-30)))[keep]
  rot, tilt, psi = (np.asarray(v, np.float32) for v in _angles(jnp.asarray(out["mats"])))
  return Poses(rot, tilt, psi, out["shift"][:, 0], out["shift"][:, 1], out["mats"], out["score"])


_prepare_jit = jax.jit(_prepare_batch)
_angles = jax.jit(jax.vmap(relion_angles_from_matrix))
