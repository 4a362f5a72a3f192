"""A seeded family of pseudo-molecules covering what cryo-EM users image, for the general training corpus.

`molecule_map(seed, box)` draws one molecule and renders it into a (box, box, box) float32 map with its
own pixel size. The family (shares of draws in `KINDS`):

* `globular`: 2–10 ellipsoidal domains (aspect ratio up to 2.5) docked into an asymmetric complex;
* `rod`: 1–3 elongated domains (aspect 3–8) end to end, possibly kinked;
* `ring`: C_n (n = 3–12) copies of a 1–3-domain subunit around an axis; half of them D_n (a second,
  two-fold-related ring stacked on the first);
* `disc`: flat oblate domains (thickness 15–35% of the diameter), sometimes with a central hole;
* `filament`: a helical lattice of subunits (rise, twist random) longer than the box, so it crosses it;
* `shell`: a hollow cage (virus-like capsid) of subunits on a sphere, from 12 to 60 copies;
* `blobs`: a dense globule of 20–60 overlapping lumps of mixed density (nucleoprotein-like, e.g. a
  ribosome).

Size and scale: the pixel size is log-uniform in `PIXEL_SIZE_RANGE_A` (1–6 Å/px) and the molecule's
largest diameter is a uniform fraction `FILL_RANGE` (25–95%) of the box, at least `MIN_DIAMETER_A`.
Density: each domain is filled with pseudo-atoms (beads) on a jittered grid of spacing
max(3.8 Å, 1.2 px), each a Gaussian of σ = max(2 Å, bead spacing / 2), with per-domain density 0.6–1.6
(protein vs nucleic acid), bead-scale log-normal speckle, a smooth log-density field of 20–60 bumps of
4–16 Å (density contrast at the 10–40 Å scales real maps have) and random solvent channels; then a B-factor
blur with B uniform in `B_FACTOR_RANGE_A2` (sharp maps) or, for half of them, log-uniform in
`LOW_RES_B_RANGE_A2` (resolution-limited maps, 10–45 Å). Rendering splats beads trilinearly and blurs in Fourier space
(exact Gaussians; fast enough to refresh a pool of hundreds of maps during training).
Everything is a pure function of the seed.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = {"globular": 0.3, "rod": 0.08, "ring": 0.12, "disc": 0.1, "filament": 0.1, "shell": 0.1, "blobs": 0.2}
PIXEL_SIZE_RANGE_A = (1.0, 6.0)
FILL_RANGE = (0.25, 0.95)
MIN_DIAMETER_A = 40.0
B_FACTOR_RANGE_A2 = (0.0, 200.0)
# Half of the maps are resolution-limited (B log-uniform 200–4000 Å², i.e. ~10–45 Å): low-pass filtered
# maps like the 70S test map (its projections' power falls as B ≈ 3000 Å² between 40 and 20 Å). Trained on
# sharp maps only, a network reads the missing high-frequency structure as "low SNR" and over-smooths.
LOW_RES_FRACTION = 0.5
LOW_RES_B_RANGE_A2 = (200.0, 4000.0)


def _rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random rotation matrix (3, 3) (QR of a Gaussian matrix, sign-fixed)."""
  q, r = np.linalg.qr(rng.standard_normal((3, 3)))
  q = q * np.sign(np.diag(r))
  return q if np.linalg.det(q) > 0 else -q


def _rot_z(angle: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Domains:
  """Ellipsoids (centre Å (3,), rotation (3, 3), semi-axes Å (3,), density) making up a molecule."""

  def __init__(self):
    self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []

  def add(self, center, rotation, semi_axes, density):
    self.items.append((np.asarray(center, float), np.asarray(rotation, float), np.asarray(semi_axes, float),
                       float(density)))

  def transformed(self, rotation: np.ndarray, shift) -> "_Domains":
    out = _Domains()
    for c, r, a, d in self.items:
      out.add(rotation @ c + shift, rotation @ r, a, d)
    return out

  def extend(self, other: "_Domains"):
    self.items.extend(other.items)


def _subunit(rng, size: float, n_max: int = 3) -> _Domains:
  """1–n_max small ellipsoids of overall size ~`size` Å around the origin."""
  dom = _Domains()
  for i in range(int(rng.integers(1, n_max + 1))):
    axes = size / 2 * np.sort(rng.uniform(0.45, 1.0, 3))[::-1] / (1 + 0.4 * i)
    center = rng.normal(size=3) * size * 0.25 if i else np.zeros(3)
    dom.add(center, _rotation(rng), axes, rng.uniform(0.8, 1.3))
  return dom


def _globular(rng, d: float) -> _Domains:
  dom = _Domains()
  n = int(rng.integers(2, 11))
  radius = d / 2 / (1 + 0.3 * math.log(n))
  centers, radii = [], []
  for i in range(n):
    r = radius * rng.uniform(0.5, 1.0)
    aspect = np.sort(rng.uniform(1.0, 2.5, 3))[::-1]
    axes = r * aspect / np.prod(aspect) ** (1 / 3)
    if i == 0:
      c = np.zeros(3)
    else:
      j = int(rng.integers(0, i))
      u = rng.normal(size=3)
      c = centers[j] + u / np.linalg.norm(u) * rng.uniform(0.5, 0.85) * (radii[j] + r)
    centers.append(c)
    radii.append(r)
    dom.add(c, _rotation(rng), axes, rng.uniform(0.7, 1.3))
  return dom


def _rod(rng, d: float) -> _Domains:
  dom = _Domains()
  n = int(rng.integers(1, 4))
  length = d / n
  direction, pos = np.array([0.0, 0.0, 1.0]), np.zeros(3)
  for _ in range(n):
    width = length / rng.uniform(3.0, 8.0) * n
    width = min(width, length / 2)
    rot = np.linalg.qr(np.stack([direction, rng.normal(size=3), rng.normal(size=3)], 1))[0]
    rot = rot[:, [1, 2, 0]] * np.array([1, 1, np.sign(rot[:, 0] @ direction)])
    if np.linalg.det(rot) < 0:
      rot[:, 0] *= -1
    dom.add(pos + direction * length / 2, rot, (width / 2, width / 2 * rng.uniform(0.7, 1.0), length / 2),
            rng.uniform(0.8, 1.3))
    pos = pos + direction * length * 0.9
    kink = rng.normal(size=3) * rng.uniform(0.0, 0.6)
    direction = (direction + kink) / np.linalg.norm(direction + kink)
  return dom


def _ring(rng, d: float) -> _Domains:
  n = int(rng.integers(3, 13))
  dihedral = rng.uniform() < 0.5
  radius = d / 2 * rng.uniform(0.45, 0.7)
  sub_size = min(2 * radius * math.sin(math.pi / n) * 1.3, d / 2 - radius + d * 0.15)
  sub = _subunit(rng, max(sub_size, 0.15 * d))
  tilt = _rotation(rng) if rng.uniform() < 0.3 else np.eye(3)
  dom = _Domains()
  z = sub_size * 0.45 if dihedral else 0.0
  for k in range(n):
    rot = _rot_z(2 * math.pi * k / n)
    dom.extend(sub.transformed(rot @ tilt, rot @ np.array([radius, 0.0, z])))
    if dihedral:
      flip = np.diag([1.0, -1.0, -1.0])  # two-fold about x
      dom.extend(sub.transformed(flip @ rot @ tilt, flip @ rot @ np.array([radius, 0.0, z])))
  return dom


def _disc(rng, d: float) -> _Domains:
  dom = _Domains()
  thickness = d * rng.uniform(0.15, 0.35)
  if rng.uniform() < 0.4:  # an annulus of overlapping flat lumps
    n = 10
    for k in range(n):
      rot = _rot_z(2 * math.pi * k / n)
      dom.add(rot @ np.array([d * 0.32, 0.0, 0.0]), rot, (d * 0.18, d * 0.14, thickness / 2), rng.uniform(0.8, 1.2))
  else:
    dom.add(np.zeros(3), _rot_z(rng.uniform(0, 2 * math.pi)), (d / 2, d / 2 * rng.uniform(0.7, 1.0), thickness / 2),
            rng.uniform(0.8, 1.2))
  return dom


def _filament(rng, d: float, length: float) -> _Domains:
  dom = _Domains()
  radius = d / 2 * rng.uniform(0.2, 0.6)
  rise = rng.uniform(0.1, 0.35) * d
  twist = rng.uniform(-math.pi, math.pi)
  sub = _subunit(rng, max(d / 2 - radius, 0.2 * d) * 1.6, n_max=2)
  for k in range(int(length / rise) + 1):
    z = -length / 2 + k * rise
    rot = _rot_z(twist * k)
    dom.extend(sub.transformed(rot, rot @ np.array([radius, 0.0, 0.0]) + np.array([0.0, 0.0, z])))
  return dom


def _shell(rng, d: float) -> _Domains:
  dom = _Domains()
  n = int(rng.choice([12, 20, 32, 60]))
  radius = d / 2 * 0.8
  sub = _subunit(rng, d * 2.2 / math.sqrt(n), n_max=2)
  golden = math.pi * (3 - math.sqrt(5))
  for k in range(n):  # Fibonacci points: a near-uniform cage
    z = 1 - 2 * (k + 0.5) / n
    r = math.sqrt(1 - z * z)
    u = np.array([r * math.cos(golden * k), r * math.sin(golden * k), z])
    dom.extend(sub.transformed(_rotation(rng), radius * u))
  return dom


def _blobs(rng, d: float) -> _Domains:
  dom = _Domains()
  n = int(rng.integers(20, 61))
  for _ in range(n):  # a dense globule of overlapping lumps (nucleoprotein-like, e.g. a ribosome)
    u = rng.normal(size=3)
    c = u / np.linalg.norm(u) * d / 2 * rng.uniform(0, 1) ** (1 / 3) * 0.75
    size = d * rng.uniform(0.15, 0.35)
    dom.add(c, _rotation(rng), size / 2 * np.sort(rng.uniform(0.5, 1.0, 3))[::-1], rng.choice([0.9, 1.6]))
  return dom


def _fill(rng, domains: _Domains, spacing: float, limit: float) -> tuple[np.ndarray, np.ndarray]:
  """Beads (M, 3) Å and amplitudes (M,) filling the domains on a jittered grid of `spacing` Å, inside
  the cube |x| < limit; solvent channels and speckle make the density uneven."""
  points, amps = [], []
  for c, r, a, density in domains.items:
    ext = np.abs(r) @ a
    lo, hi = np.maximum(c - ext, -limit), np.minimum(c + ext, limit)
    if np.any(hi <= lo):
      continue
    axes = [np.arange(lo[i], hi[i], spacing) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    grid = grid + rng.uniform(-0.5, 0.5, grid.shape) * spacing
    local = (grid - c) @ r / a
    inside = np.sum(local**2, 1) <= 1.0
    points.append(grid[inside])
    amps.append(np.full(int(inside.sum()), density))
  if not points or not sum(len(p) for p in points):
    return np.zeros((1, 3)), np.ones(1)
  pts, amp = np.concatenate(points), np.concatenate(amps)
  amp = amp * rng.lognormal(0.0, 0.35, len(amp))
  span = np.ptp(pts, axis=0).max() + spacing
  # Density contrast at 10–40 Å scales (nucleic acid vs protein, packing, flexible parts): a smooth
  # log-density field of Gaussian bumps; without it the maps lack the mid-frequency power of real maps.
  n_bumps = int(rng.integers(20, 60))
  centres = pts[rng.integers(0, len(pts), n_bumps)]
  widths = rng.uniform(4.0, 16.0, n_bumps)
  heights = rng.normal(0.0, 1.0, n_bumps)
  d2 = np.sum((pts[:, None, :] - centres[None]) ** 2, -1)
  amp = amp * np.exp(np.sum(heights * np.exp(-d2 / (2 * widths**2)), 1))
  solid = amp.copy()
  for _ in range(int(rng.integers(0, 25))):  # solvent channels and cavities
    hole = pts[int(rng.integers(len(pts)))]
    amp[np.sum((pts - hole) ** 2, 1) < (span * rng.uniform(0.03, 0.12)) ** 2] = 0.0
  keep = amp > 0
  if keep.sum() < 0.5 * len(pts):  # a small molecule the channels would hollow out: keep it solid
    return pts, solid
  return pts[keep], amp[keep]


def _render(points: np.ndarray, amps: np.ndarray, box: int, pixel_size: float, sigma_A: float) -> np.ndarray:
  """Trilinear splat of beads into (box,)*3 (centre voxel box // 2), blurred by a Gaussian of σ Å."""
  vox = points / pixel_size + box // 2
  base = np.floor(vox).astype(int)
  frac = vox - base
  grid = np.zeros((box, box, box), np.float64)
  for dx in (0, 1):
    for dy in (0, 1):
      for dz in (0, 1):
        idx = base + np.array([dx, dy, dz])
        w = (np.where(dx, frac[:, 0], 1 - frac[:, 0]) * np.where(dy, frac[:, 1], 1 - frac[:, 1])
             * np.where(dz, frac[:, 2], 1 - frac[:, 2])) * amps
        ok = np.all((idx >= 0) & (idx < box), 1)
        np.add.at(grid, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), w[ok])  # map axes (z, y, x)
  k = np.fft.fftfreq(box)
  k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, : box // 2 + 1] ** 2
  s = sigma_A / pixel_size
  blurred = np.fft.irfftn(np.fft.rfftn(grid) * np.exp(-2 * math.pi**2 * s**2 * k2), s=grid.shape, axes=(0, 1, 2))
  return blurred.astype(np.float32)


def molecule_map(seed, box: int) -> tuple[np.ndarray, float, str]:
  """(map (box, box, box) float32, pixel size Å, kind) of the molecule drawn from `seed` (an int or a
  sequence of ints for numpy's SeedSequence). The map's largest extent is centred in the box."""
  rng = np.random.default_rng(seed)
  kind = str(rng.choice(list(KINDS), p=np.array(list(KINDS.values())) / sum(KINDS.values())))
  lo, hi = PIXEL_SIZE_RANGE_A
  pixel_size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
  diameter = max(MIN_DIAMETER_A, rng.uniform(*FILL_RANGE) * box * pixel_size)
  diameter = min(diameter, FILL_RANGE[1] * box * pixel_size)
  limit = box * pixel_size / 2 - 2 * pixel_size
  if kind == "filament":
    domains = _filament(rng, diameter, 2.2 * limit)
  else:
    domains = {"globular": _globular, "rod": _rod, "ring": _ring, "disc": _disc, "shell": _shell,
               "blobs": _blobs}[kind](rng, diameter)
  spacing = max(3.8, 1.2 * pixel_size)
  points, amps = _fill(rng, domains, spacing, limit)
  if kind != "filament":  # centre, then scale the largest extent to the drawn diameter
    points = points - points.mean(0)
    extent = 2 * np.max(np.linalg.norm(points, axis=1)) + spacing
    points = points * min(diameter / extent, 1.0)
  points = points @ _rotation(rng).T
  if rng.uniform() < LOW_RES_FRACTION:
    b_factor = math.exp(rng.uniform(*np.log(LOW_RES_B_RANGE_A2)))
  else:
    b_factor = rng.uniform(*B_FACTOR_RANGE_A2)
  sigma = math.sqrt(max(2.0, spacing / 2) ** 2 + b_factor / (8 * math.pi**2))
  volume = _render(points, amps, box, pixel_size, sigma)
  return volume / max(float(volume.max()), 1e-12), pixel_size, kind
