"""Even grids on SO(3) for projection matching, in RELION's Euler convention.

    grid = so3_grid.uniform_grid(15.0)        # Grid: (J, 3) Euler angles (deg) and (J, 3, 3) matrices
    offsets = so3_grid.local_offsets(3.75)    # (27, 3, 3) small rotations for local refinement

A rotation is RELION's matrix A = Rz(psi) Ry(tilt) Rz(rot) (`data.relion.relion_matrix`), which maps map
coordinates to image coordinates; its third row (sin tilt cos rot, sin tilt sin rot, cos tilt) is the
viewing direction in the map. The grid is a Fibonacci sphere of viewing directions (rot = azimuth, tilt =
polar angle; about one point per step² of solid angle, nearest neighbours ≈ one step apart) times
in-plane angles psi evenly spaced at the step, so neighbouring rotations are about one step apart in
every direction: ≈ 8π²/step³ rotations (step in radians): 4,400 at 15°, 14,800 at 10°, 35,000 at 7.5°.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cryojax_denoise.data.relion import relion_matrix
from cryojax_denoise.errors import InputError

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


class Grid(NamedTuple):
  """J rotations: `euler` (J, 3) RELION (rot, tilt, psi) in degrees, `matrices` (J, 3, 3) float32 RELION
  matrices A (map -> image), and the `step_deg` they were built at."""

  euler: np.ndarray
  matrices: np.ndarray
  step_deg: float


def sphere_directions(n: int) -> np.ndarray:
  """(n, 2) (rot, tilt) in degrees of n near-evenly spread directions (Fibonacci sphere: equal-area
  bands in cos tilt, azimuths advancing by the golden angle)."""
  i = np.arange(n, dtype=np.float64)
  z = 1.0 - (2.0 * i + 1.0) / n
  rot = np.rad2deg(np.mod(i * GOLDEN_ANGLE, 2 * math.pi))
  return np.stack([rot, np.rad2deg(np.arccos(z))], -1)


def grid_size(step_deg: float) -> tuple[int, int]:
  """(directions, in-plane angles) of `uniform_grid(step_deg)`: 4π/step² and 360°/step, rounded up."""
  h = math.radians(step_deg)
  return max(2, math.ceil(4 * math.pi / (h * h))), max(1, math.ceil(360.0 / step_deg))


def uniform_grid(step_deg: float) -> Grid:
  """The directions x in-plane angles grid at an angular step in degrees (0 < step <= 90)."""
  if not (0.0 < float(step_deg) <= 90.0):
    raise InputError(f"angular step: must be in (0, 90] degrees, got {step_deg}")
  n_dir, n_psi = grid_size(float(step_deg))
  dirs = sphere_directions(n_dir)
  psi = np.arange(n_psi) * (360.0 / n_psi)
  euler = np.concatenate([np.repeat(dirs, n_psi, 0), np.tile(psi, n_dir)[:, None]], -1)
  return Grid(euler.astype(np.float32), relion_matrix(*euler.T).astype(np.float32), float(step_deg))


def axis_angle_matrix(v: np.ndarray) -> np.ndarray:
  """Rotation matrices (..., 3, 3) of rotation vectors v (..., 3) (axis · angle in radians; Rodrigues)."""
  v = np.asarray(v, np.float64)
  theta = np.linalg.norm(v, axis=-1)[..., None, None]
  k = np.zeros(v.shape[:-1] + (3, 3))
  k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
  k = k - np.swapaxes(k, -1, -2)
  safe = np.where(theta > 1e-12, theta, 1.0)
  s = np.where(theta > 1e-12, np.sin(theta) / safe, 1.0)
  c = np.where(theta > 1e-12, (1 - np.cos(theta)) / safe**2, 0.5)
  return np.eye(3) + s * k + c * (k @ k)


def local_offsets(step_deg: float, n: int = 1) -> np.ndarray:
  """(L, 3, 3) float32 small rotations for a local search: rotation vectors on the cube grid
  {-n..n}³ · step about the image's x, y, z axes, L = (2n + 1)³; index L // 2 is the identity.
  Applied as Δ·A, so z-offsets turn psi and x/y-offsets tilt the viewing direction."""
  r = np.arange(-n, n + 1)
  v = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3) * math.radians(step_deg)
  return axis_angle_matrix(v).astype(np.float32)


def geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Angle in degrees (...,) of the rotation between matrices a and b (..., 3, 3): arccos((tr(aᵀb) - 1)/2),
  no symmetry; the same whether a and b are RELION matrices or their transposes."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  tr = np.einsum("...ij,...ij->...", a, b)
  return np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def covering_radius_deg(grid: Grid, n_samples: int = 2000, seed: int = 0) -> float:
  """Largest angle (deg) from n_samples uniform random rotations to their nearest grid rotation (a
  Monte Carlo estimate of the grid's covering radius; used by tests and to choose steps)."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n_samples, 4))
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = q.T
  m = np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)
  tr = np.einsum("nij,mij->nm", m, grid.matrices.astype(np.float64))
  return float(np.rad2deg(np.arccos(np.clip((tr.max(1) - 1.0) / 2.0, -1.0, 1.0))).max())
