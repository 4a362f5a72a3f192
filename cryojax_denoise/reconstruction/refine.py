"""Iterative gold-standard refinement: projection matching (`align`) alternated with direct Fourier
reconstruction (`fourier`), from an initial map low-passed to ~30 Å.

    from cryojax_denoise.reconstruction import refine
    result = refine.refine(images, params, initial_map, pixel_size_A, steps_deg=(15, 10, 7.5), max_shift_A=10)
    result.half1, result.half2, result.full, result.fsc, result.resolution_A, result.poses, result.history

The particles are split at random (seeded, `fourier.random_halves`) into two half sets that never mix:
each half is aligned only against its own half map and reconstructed only from its own particles
(round 1 starts both from the same low-passed initial map). After each round the half-map FSC gives
the next references: each half map times the FSC weight sqrt(2·FSC/(1 + FSC)) per shell, zero beyond
the FSC 0.143 crossing, inside a soft spherical mask; matching is band-limited to that resolution.
Round r searches exhaustively at `steps_deg[r]` (then local refinement to a quarter of the step) while
r < exhaustive_rounds, afterwards only locally around the previous poses (± the step, then finer).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.reconstruction import align, fourier, so3_grid
from cryojax_denoise.reconstruction import fsc as fsc_lib
from cryojax_denoise.reconstruction.particles import ParticleParams


class RefineResult(NamedTuple):
  """Maps (D, D, D) of the last round, the split (N,) 0/1, poses (N,), the half-map FSC (D//2 + 1,) and
  its 0.143 resolution (Å), and one dict per round (`history`)."""

  half1: np.ndarray
  half2: np.ndarray
  full: np.ndarray
  split: np.ndarray
  poses: align.Poses
  fsc: np.ndarray
  resolution_A: float
  history: list


def _shell_radius(d: int) -> np.ndarray:
  k = np.fft.fftfreq(d, 1.0 / d)
  return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


def lowpass(volume, pixel_size: float, resolution_A: float, edge_shells: float = 2.0) -> np.ndarray:
  """The map low-passed to `resolution_A`: a cosine edge `edge_shells` Fourier shells wide, centred there."""
  vol = np.asarray(volume, np.float32)
  d = vol.shape[0]
  r = _shell_radius(d) - d * pixel_size / float(resolution_A)
  filt = 0.5 * (1 - np.sin(np.pi * np.clip(r / edge_shells, -0.5, 0.5)))
  return np.fft.fftshift(np.real(np.fft.ifftn(np.fft.fftn(np.fft.ifftshift(vol)) * filt))).astype(np.float32)


def fsc_filter(volume, curve, threshold: float = 0.143) -> np.ndarray:
  """The map times sqrt(2·FSC/(1 + FSC)) per shell (FSC clipped at 0), zero from the first shell where the
  FSC drops below `threshold` (the FSC-weighted reference of a gold-standard refinement)."""
  vol = np.asarray(volume, np.float32)
  d = vol.shape[0]
  curve = np.clip(np.asarray(curve, np.float64), 0.0, 1.0)
  below = np.flatnonzero(curve[1:] < threshold)
  stop = below[0] + 1 if len(below) else len(curve)
  weight = np.sqrt(2 * curve / (1 + curve))
  weight[stop:] = 0.0
  weight[0] = 1.0
  shells = np.rint(_shell_radius(d)).astype(int)
  filt = np.where(shells < len(weight), weight[np.minimum(shells, len(weight) - 1)], 0.0)
  return np.fft.fftshift(np.real(np.fft.ifftn(np.fft.fftn(np.fft.ifftshift(vol)) * filt))).astype(np.float32)


def with_poses(params: ParticleParams, poses: align.Poses) -> ParticleParams:
  """The kernel parameters with the rotations and origins of `poses` (CTF fields kept)."""
  return params._replace(rows=np.asarray(poses.matrices[:, :2, :], np.float32),
                         shift=np.stack([poses.origin_x_A, poses.origin_y_A], -1).astype(np.float32))


def pose_errors(poses: align.Poses, true_matrices, true_origins_A=None) -> dict:
  """Scores against known poses: median angular error (deg, geodesic, no symmetry), fraction within 5°,
  and with origins the median origin error (Å)."""
  err = so3_grid.geodesic_deg(poses.matrices, true_matrices)
  out = {"median_angular_error_deg": float(np.median(err)), "fraction_within_5deg": float(np.mean(err <= 5.0))}
  if true_origins_A is not None:
    d = np.stack([poses.origin_x_A, poses.origin_y_A], -1) - np.asarray(true_origins_A)
    out["median_shift_error_A"] = float(np.median(np.sqrt(np.sum(d * d, -1))))
  return out


POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def table_poses(particles, pixel_size: float):
  """(matrices (N, 3, 3), origins (N, 2) Å) from a RELION particle table, or None without pose columns
  (the truth that `pose_errors` scores against, when the table is a simulation's)."""
  from cryojax_denoise.data.relion import relion_matrix

  if not all(k in particles.columns for k in POSE_COLUMNS):
    return None
  m = relion_matrix(*(particles[k].to_numpy(np.float64) for k in POSE_COLUMNS))
  get = lambda k: particles[k].to_numpy(np.float64) if k in particles.columns else np.zeros(len(particles))
  if "rlnOriginXAngst" in particles.columns or "rlnOriginYAngst" in particles.columns:
    origins = np.stack([get("rlnOriginXAngst"), get("rlnOriginYAngst")], -1)
  else:
    origins = pixel_size * np.stack([get("rlnOriginX"), get("rlnOriginY")], -1)
  return m, origins


def refine_scores(images, particles, optics, pixel_size: float, initial_map, *, truth_map=None,
                  seed: int = 0, ctf: bool | None = None, **options) -> dict:
  """`refine` of (N, D, D) `images` of a RELION table (CTF read from it; its poses, when present, only
  score the result) from `initial_map`: {resolution_A (half maps, FSC 0.143), median_angular_error_deg,
  fraction_within_5deg, median_shift_error_A, reference_resolution_A (the map against `truth_map`, FSC 0.5)}.
  `options` go to `refine` (steps_deg, max_shift_A, align_images, ...)."""
  params = align.ctf_params(particles, optics, pixel_size, ctf)
  truth = table_poses(particles, pixel_size)
  result = refine(images, params, initial_map, pixel_size, seed=seed, truth=truth, **options)
  out = {"resolution_A": float(result.resolution_A)}
  if truth is not None:
    out.update(pose_errors(result.poses, *truth))
  if truth_map is not None:
    curve = fsc_lib.fsc_curve(result.full, np.asarray(truth_map, np.float32))
    out["reference_resolution_A"] = float(fsc_lib.fsc_resolution(curve, pixel_size, 0.5))
  return out


def _take(poses: align.Poses, rows) -> align.Poses:
  return align.Poses(*(np.asarray(v)[rows] for v in poses))


def refine(images, params: ParticleParams, initial_map, pixel_size: float, *, align_images=None,
           steps_deg=(15.0, 10.0, 7.5), exhaustive_rounds: int | None = None, initial_lowpass_A: float = 30.0,
           max_shift_A: float = 0.0, seed: int = 0, pad: int = fourier.DEFAULT_PAD, reg: float = fourier.DEFAULT_REG,
           batch_size: int = align.DEFAULT_BATCH, mask: bool = True, truth=None,
           align_resolution_A: float | None = None, particle_radius_A: float | None = None,
           log: Callable[[str], None] | None = None, mesh=None) -> RefineResult:
  """Gold-standard refinement of (N, D, D) `images` (module docstring).

  params: `reconstruction.particles` kernel parameters (N,) of the particles: only their CTF is read
  (use `align.ctf_params` when the table has no poses); initial_map: (D, D, D) on the particles' grid;
  align_images: the images to align (e.g. denoised), default `images` (which are always the ones
  reconstructed); truth: optional (matrices (N, 3, 3), origins (N, 2) Å) scored in `history` each round;
  align_resolution_A: the finest band matching may use (Å; None: the FSC 0.143 resolution each round);
  particle_radius_A (default 0.4·D·pixel size): the exhaustive stage is band-limited to radius·step (rad),
  the finest detail a grid at that step can tell apart (local refinement uses the full band);
  mesh: `sharding.data_mesh()` to split the alignment's batches over its devices (`align.search`).
  """
  n, d = len(images), int(images.shape[-1])
  if n < 2:
    raise InputError("images: refinement needs at least 2 particles")
  align_images = images if align_images is None else align_images
  if len(align_images) != n:
    raise InputError(f"align_images: {len(align_images)} images for {n} particles")
  steps = [float(s) for s in steps_deg]
  if not steps:
    raise InputError("steps_deg: give at least one angular step")
  exhaustive = len(steps) if exhaustive_rounds is None else max(1, int(exhaustive_rounds))
  split = fourier.random_halves(n, seed)
  halves = [np.flatnonzero(split == h) for h in (0, 1)]
  start = lowpass(np.asarray(initial_map, np.float32), pixel_size, initial_lowpass_A)
  sphere = fsc_lib.soft_sphere(d) if mask else 1.0
  refs = [start * sphere, start * sphere]
  align_res = float(initial_lowpass_A)
  poses, history = None, []
  radius = float(particle_radius_A or 0.4 * d * pixel_size)
  for r, step in enumerate(steps):
    t0 = time.time()
    grid = so3_grid.uniform_grid(step) if r < exhaustive else so3_grid.Grid(np.zeros((0, 3)), np.zeros((0, 3, 3)), step)
    parts = []
    for h in (0, 1):
      rows = halves[h]
      ref = align.prepare_reference(refs[h], pixel_size, d, pixel_size, pad=pad)
      init = None if r < exhaustive else _take(poses, rows)
      parts.append(align.search(RowsView(align_images, rows), params_take(params, rows), ref, grid,
                                resolution_A=align_res, max_shift_A=max_shift_A, batch_size=batch_size, init=init,
                                search_resolution_A=radius * np.deg2rad(step), mesh=mesh))
    poses = _merge(parts, halves, n)
    acc = fourier.backproject(images, with_poses(params, poses), pixel_size, groups=split, n_groups=2, pad=pad,
                              batch_size=None)
    half1, half2 = (fourier.invert(acc[h], d, pad=pad, reg=reg) for h in (0, 1))
    curve = fsc_lib.fsc_curve(half1, half2)
    resolution = fsc_lib.fsc_resolution(curve, pixel_size, 0.143)
    row = {"round": r + 1, "step_deg": step, "search": "exhaustive" if r < exhaustive else "local",
           "align_resolution_A": align_res, "resolution_A": resolution, "seconds": round(time.time() - t0, 2)}
    if truth is not None:
      row.update(pose_errors(poses, *truth))
    history.append(row)
    if log:
      log(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    refs = [fsc_filter(half1, curve) * sphere, fsc_filter(half2, curve) * sphere]
    align_res = max(resolution, 2.0 * pixel_size * d / (d - 2), align_resolution_A or 0.0)
  full = fourier.invert(acc[0] + acc[1], d, pad=pad, reg=reg)
  return RefineResult(half1, half2, full, split, poses, curve, resolution, history)


def params_take(params: ParticleParams, rows) -> ParticleParams:
  return ParticleParams(*(np.asarray(v)[rows] for v in params))


def _merge(parts, halves, n: int) -> align.Poses:
  out = [np.empty((n,) + np.asarray(v).shape[1:], np.float32) for v in parts[0]]
  for part, rows in zip(parts, halves):
    for o, v in zip(out, part):
      o[rows] = v
  return align.Poses(*out)


class RowsView:
  """The rows `rows` of an image array-like that takes index arrays, read a batch at a time (nothing is
  copied up front)."""

  def __init__(self, images, rows):
    self.images, self.rows = images, np.asarray(rows)
    self.shape = (len(self.rows), *images.shape[1:])

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, sl):
    return np.asarray(self.images[self.rows[sl]], np.float32)  # NumPy arrays, memory maps, STAR readers
