"""The built-in phantom: a seeded pseudo-molecule that looks like a protein complex.

Thousands of pseudo-atoms (one per residue, 3.8 Å apart like C-alpha atoms) are laid out as
self-avoiding chains packed into 3-6 compact, asymmetric domains of different sizes and shapes
(some elongated), docked against each other. The atoms are rendered as Gaussians into a voxel
map with cryojax, so the project runs with no data files. Everything is deterministic from the
seed.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from scipy.spatial import cKDTree

BOND_A = 3.8  # distance between consecutive pseudo-atoms (C-alpha spacing), Å
ATOM_SIGMA_A = 2.0  # standard deviation of one residue-sized Gaussian blob, Å
MIN_SEPARATION_A = 3.0  # non-consecutive atoms stay at least this far apart, Å
RESIDUE_VOLUME_A3 = 170.0  # protein volume per residue, sets domain size from atom count
FILL = 0.6  # default: the phantom's diameter is this fraction of the box


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3x3 rotation matrix (from a random unit quaternion)."""
  w, x, y, z = rng.normal(size=4) / 1.0
  n = math.sqrt(w * w + x * x + y * y + z * z)
  w, x, y, z = w / n, x / n, y / n, z / n
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def _chain_in_ellipsoid(rng: np.random.Generator, n_atoms: int, semi_axes: np.ndarray) -> np.ndarray:
  """A self-avoiding, persistent random walk of `n_atoms` steps of BOND_A confined to an
  axis-aligned ellipsoid centred at the origin; returns (n_atoms, 3) positions in Å.

  Self-avoidance uses an occupancy grid of MIN_SEPARATION_A / 4 cells: each placed atom marks a
  ball of radius MIN_SEPARATION_A, so a trial step costs one lookup.
  """
  cell = MIN_SEPARATION_A / 4.0
  reach = 4
  offsets = np.arange(-reach, reach + 1) * cell
  ball = (offsets[:, None, None]**2 + offsets[None, :, None]**2 + offsets[None, None, :]**2
          < MIN_SEPARATION_A**2)
  origin = -semi_axes - 2 * MIN_SEPARATION_A
  dims = np.ceil((2 * semi_axes + 4 * MIN_SEPARATION_A) / cell).astype(int) + 1
  occupied = np.zeros(dims, bool)

  def index(p):
    return tuple(np.rint((p - origin) / cell).astype(int))

  def blocked(p):
    return occupied[index(p)]

  def occupy(p):
    i, j, k = index(p)
    occupied[i - reach:i + reach + 1, j - reach:j + reach + 1, k - reach:k + reach + 1] |= ball

  pos = np.zeros((n_atoms, 3))
  pos[0] = rng.uniform(-0.3, 0.3, 3) * semi_axes
  direction = rng.normal(size=3)
  direction /= np.linalg.norm(direction)
  inv_axes2 = 1.0 / semi_axes**2
  noise = rng.normal(size=(n_atoms, 40, 3))
  for i in range(1, n_atoms):
    if i >= 2:
      occupy(pos[i - 2])  # the previous atom may be 3.8 Å away: mark it one step late
    trial = None
    for attempt in range(40):
      # Persistence (like secondary structure) relaxes as attempts fail, so walks escape corners.
      persistence = 0.7 * max(0.0, 1.0 - attempt / 20)
      step = persistence * direction + noise[i, attempt]
      step /= np.linalg.norm(step)
      candidate = pos[i - 1] + BOND_A * step
      if np.sum(candidate**2 * inv_axes2) <= 1.0 and not blocked(candidate):
        trial = candidate
        break
    if trial is None:
      # Trapped: step towards the centre (keeps the domain compact; a rare overlap is allowed).
      step = -pos[i - 1] / (np.linalg.norm(pos[i - 1]) + 1e-9) + 0.5 * noise[i, 0]
      step /= np.linalg.norm(step)
      trial = pos[i - 1] + BOND_A * step
    pos[i] = trial
    direction = (trial - pos[i - 1]) / BOND_A
  return pos


def phantom_atoms(seed: int = 0, n_domains: int | None = None) -> np.ndarray:
  """Pseudo-atom positions (M, 3) in Å, centred on their centroid, of the seeded phantom
  (cached per seed; returns a copy). See `_phantom_atoms`."""
  return _phantom_atoms(int(seed), n_domains).copy()


@functools.lru_cache(maxsize=8)
def _phantom_atoms(seed: int, n_domains: int | None) -> np.ndarray:
  """Pseudo-atom positions (M, 3) in Å, centred on their centroid, of the seeded phantom.

  3-6 domains of 300-1600 residues each; each domain is an ellipsoid (aspect ratios up to ~2.5,
  randomly oriented) filled by one chain at protein density; domains are docked one after another
  against a random earlier domain, so the complex is compact but asymmetric.
  """
  rng = np.random.default_rng(seed)
  if n_domains is None:
    n_domains = int(rng.integers(3, 7))
  domains, centers, radii = [], [], []
  for d in range(n_domains):
    n_atoms = int(rng.integers(300, 1600))
    aspect = np.sort(rng.uniform(1.0, 2.5 if rng.uniform() < 0.5 else 1.4, 3))[::-1]
    volume = n_atoms * RESIDUE_VOLUME_A3
    scale = (volume / (4.0 / 3.0 * math.pi * np.prod(aspect))) ** (1.0 / 3.0)
    semi_axes = scale * aspect
    local = _chain_in_ellipsoid(rng, n_atoms, semi_axes)
    rotation = _random_rotation(rng)
    atoms = local @ rotation.T
    radius = float(np.sqrt(np.mean(np.sum(atoms**2, axis=1))) * 1.25)
    if d == 0:
      center = np.zeros(3)
    else:
      # Dock against a random earlier domain, trying directions until the overlap is small.
      anchor = int(rng.integers(0, d))
      best, best_overlap = None, np.inf
      tree = cKDTree(np.concatenate(domains))
      for _ in range(30):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        trial = centers[anchor] + direction * 0.85 * (radii[anchor] + radius)
        dist, _ = tree.query(atoms + trial, k=1, distance_upper_bound=2 * MIN_SEPARATION_A)
        overlap = int(np.sum(np.isfinite(dist)))
        if overlap < best_overlap:
          best, best_overlap = trial, overlap
      center = best
    domains.append(atoms + center)
    centers.append(center)
    radii.append(radius)
  positions = np.concatenate(domains)
  return positions - positions.mean(axis=0)


def domain_labels(positions: np.ndarray) -> np.ndarray:
  """Domain index (M,) int of each atom of `phantom_atoms`: every domain is one chain whose
  consecutive atoms lie exactly BOND_A apart, so a new domain starts wherever that spacing breaks."""
  positions = np.asarray(positions, np.float64)
  steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
  starts = np.abs(steps - BOND_A) > 1e-6
  return np.concatenate([[0], np.cumsum(starts)]).astype(np.int32)


def atoms_diameter(positions: np.ndarray, sigma: float = ATOM_SIGMA_A) -> float:
  """Diameter in Å of the sphere about the origin holding every atom, plus 2 sigma of blur."""
  return 2.0 * (float(np.max(np.linalg.norm(positions, axis=1))) + 2.0 * sigma)


def default_pixel_size(positions: np.ndarray, image_size: int, fill: float = FILL) -> float:
  """Pixel size (Å) that makes the molecule's diameter `fill` of an `image_size` box."""
  return atoms_diameter(positions) / (fill * image_size)


@functools.lru_cache(maxsize=None)
def _render_fn(box: int, n_spread):
  """Jitted cryojax Gaussian-mixture renderer for a (box, box, box) grid; `n_spread` None renders
  densely (exact erf integrals over the whole grid), a tuple spreads each term locally."""
  import cryojax.simulator as cxs

  def render(positions, amplitudes, variances, voxel_size):
    render_fn = cxs.GaussianMixtureRenderFn((box, box, box), voxel_size, n_spread=n_spread)
    return render_fn(cxs.GaussianMixtureVolume(positions, amplitudes, variances))

  return jax.jit(render)


def render_atoms(positions, amplitudes, variances, box: int, pixel_size: float) -> np.ndarray:
  """Renders Gaussian atoms into a (box, box, box) float32 voxel map with cryojax.

  positions (M, 3) Å (x, y, z; 0 is the box centre, voxel index box // 2), amplitudes and
  variances (Å^2) (M,) or (M, K) for K Gaussians per atom. Each voxel holds the Gaussian's
  average over the voxel (erf integrals). Small jobs render densely; large ones spread each
  Gaussian over the voxels within 4 sigma.
  """
  positions = np.asarray(positions, np.float32)
  amplitudes = np.broadcast_to(np.asarray(amplitudes, np.float32).reshape(len(positions), -1),
                               np.asarray(variances).reshape(len(positions), -1).shape)
  variances = np.asarray(variances, np.float32).reshape(amplitudes.shape)
  n_spread = None
  if box**3 * amplitudes.size > 2e10:
    n_spread = tuple(max(3, min(box, int(math.ceil(8 * math.sqrt(float(v)) / pixel_size))))
                     for v in variances.max(axis=0))
  volume = _render_fn(int(box), n_spread)(positions, np.ascontiguousarray(amplitudes), variances,
                                         np.float32(pixel_size))
  return np.asarray(volume, dtype=np.float32)


def phantom_volume(box: int, pixel_size: float | None = None, seed: int = 0) -> tuple[np.ndarray, float]:
  """The phantom rendered into a (box, box, box) float32 map; returns (map, pixel size Å).

  Without `pixel_size`, it is chosen so the phantom fills ~60% of the box. The atom blur is
  at least ATOM_SIGMA_A and at least 0.6 pixel, so coarse grids are not aliased.
  """
  positions = phantom_atoms(seed)
  if not pixel_size:
    pixel_size = default_pixel_size(positions, box)
  sigma = max(ATOM_SIGMA_A, 0.6 * pixel_size)
  volume = render_atoms(positions, np.ones(len(positions)), np.full(len(positions), sigma**2), box, pixel_size)
  return volume, float(pixel_size)
