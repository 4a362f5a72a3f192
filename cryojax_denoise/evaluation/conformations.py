"""Conformational states of one molecule, particles drawn from them, and the classifiers that
tell them apart (the `conformations` experiment).

* States: the built-in phantom with one domain moved rigidly (`move_domain`: translated away from
  the rest of the complex by d Å, or hinged about its contact with the rest by an angle), or
  user maps. Every state is a (D, D, D) map on one grid.
* Particles (`make_particles`): labels balanced in every block of K consecutive images, each
  image the projection of its state at its own pose and CTF; the clean stack is standardised as a
  whole and white noise of one σ = sqrt(mean per-image variance / SNR) is added (INTERFACE SNR).
  The same affine standardisation maps every state's projection at every pose into the
  particles' units (`templates`), so pose-known template matching sees exact templates.
* Classifiers: `least_squares_labels` (argmin_k ‖y − T_k‖², the likelihood-optimal rule for
  white Gaussian noise with known poses and CTF); `correlation_labels` (argmax_k of the
  correlation coefficient, blind to a denoiser's offset and gain); `cluster_labels` (PCA + Gaussian mixture or
  k-means, unsupervised, on particles from a narrow pose range); `class_map_scores` (a 3D map per
  predicted class, compared by FSC with its true state map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cryojax_denoise.data import phantom
from cryojax_denoise.data.maps import fit_volume, load_source
from cryojax_denoise.data.projector import Projector
from cryojax_denoise.data.relion import relion_angles_from_matrix, relion_matrix
from cryojax_denoise.data.relion import ParticleParams
from cryojax_denoise.errors import InputError

# ---------------------------------------------------------------------------- states


def move_domain(positions: np.ndarray, labels: np.ndarray, domain: int, displacement_A: float = 0.0,
                angle_deg: float = 0.0) -> np.ndarray:
  """Atoms (M, 3) Å with domain `domain` moved rigidly: translated by `displacement_A` along the
  unit vector from the centroid of the other atoms to the domain's centroid, then rotated by
  `angle_deg` about a hinge axis through the domain's atom closest to the rest, perpendicular to
  that vector. Other atoms are unchanged."""
  positions = np.asarray(positions, np.float64)
  sel = np.asarray(labels) == int(domain)
  if not sel.any() or sel.all():
    raise InputError(f"domain: {domain} is not one of the molecule's {int(np.max(labels)) + 1} domains")
  out = positions.copy()
  rest_centre = positions[~sel].mean(axis=0)
  radial = positions[sel].mean(axis=0) - rest_centre
  radial /= np.linalg.norm(radial)
  moved = positions[sel] + float(displacement_A) * radial
  if angle_deg:
    pivot = moved[np.argmin(np.linalg.norm(moved - rest_centre, axis=1))]
    axis = np.cross(radial, [0.0, 0.0, 1.0] if abs(radial[2]) < 0.9 else [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    t = math.radians(float(angle_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k  # Rodrigues
    moved = (moved - pivot) @ rot.T + pivot
  out[sel] = moved
  return out


def render_phantom(positions: np.ndarray, box: int, pixel_size: float) -> np.ndarray:
  """Atoms rendered like `phantom.phantom_volume` (unit Gaussians of σ = max(2 Å, 0.6 px))."""
  sigma = max(phantom.ATOM_SIGMA_A, 0.6 * pixel_size)
  n = len(positions)
  return phantom.render_atoms(positions, np.ones(n), np.full(n, sigma**2), box, pixel_size)


@dataclass
class PhantomStates:
  """The unmoved phantom map and one moved map per motion amount, on one grid."""

  reference: np.ndarray       # (D, D, D)
  moved: list[np.ndarray]     # one (D, D, D) map per amount
  rms_A: list[float]          # RMS displacement of the moved domain's atoms per amount, Å
  pixel_size: float
  domain: int
  domain_fraction: float      # the moved domain's share of the atoms


def phantom_states(image_size: int, amounts, *, motion: str = "translate", domain: int = -1, seed: int = 0,
                   pixel_size: float | None = None) -> PhantomStates:
  """Built-in states: the phantom and, per amount (Å for 'translate', degrees for 'rotate'), the
  phantom with `domain` moved (-1: its smallest domain). Pixel size as `load_source` chooses it."""
  if motion not in ("translate", "rotate"):
    raise InputError(f"motion: must be 'translate' or 'rotate', got {motion!r}")
  positions = phantom.phantom_atoms(seed)
  labels = phantom.domain_labels(positions)
  sizes = np.bincount(labels)
  domain = int(np.argmin(sizes)) if int(domain) < 0 else int(domain)
  if domain >= len(sizes):
    raise InputError(f"domain: the phantom (seed {seed}) has domains 0..{len(sizes) - 1}, got {domain}")
  box = int(image_size) + int(image_size) % 2
  size = float(pixel_size) if pixel_size else phantom.default_pixel_size(positions, box)
  moved, rms = [], []
  for amount in amounts:
    kw = {"displacement_A": amount} if motion == "translate" else {"angle_deg": amount}
    new = move_domain(positions, labels, domain, **kw)
    moved.append(render_phantom(new, box, size))
    rms.append(float(np.sqrt(np.mean(np.sum((new - positions) ** 2, axis=1)[labels == domain]))))
  return PhantomStates(render_phantom(positions, box, size), moved, rms, size, domain,
                       float(sizes[domain] / len(labels)))


def load_states(image_size: int, volumes=(), structures=(), pixel_size: float | None = None):
  """User states: MRC maps or PDB/mmCIF models, each loaded like `load_source` on one
  grid (models at the first one's pixel size). Returns (list of (D, D, D) maps, pixel size)."""
  volumes, structures = tuple(v for v in volumes if v), tuple(s for s in structures if s)
  if bool(volumes) == bool(structures) or len(volumes or structures) < 2:
    raise InputError("give two or more states as volumes=(a.mrc,b.mrc) or structures=(a.cif,b.cif), not both")
  sources, size = [], pixel_size or None
  for path in volumes or structures:
    src = load_source(volume=path if volumes else None, structure=path if structures else None,
                               pixel_size=size, image_size=image_size)
    if structures:  # models: render every state at the first one's pixel size (maps keep their headers')
      size = size or src.pixel_size
    sources.append(src)
  first = sources[0]
  for src in sources[1:]:
    if src.volume.shape != first.volume.shape or abs(src.pixel_size - first.pixel_size) > 1e-3 * first.pixel_size:
      raise InputError(f"{src.name}: map grid {src.volume.shape[0]}³ at {src.pixel_size:.4g} Å differs from "
                       f"{first.name}'s {first.volume.shape[0]}³ at {first.pixel_size:.4g} Å")
  return [s.volume for s in sources], float(first.pixel_size)


# ---------------------------------------------------------------------------- particles


def balanced_labels(n: int, k: int, seed: int) -> np.ndarray:
  """(N,) int32 state labels: every block of K consecutive images holds each state once, in a
  seeded random order (so any prefix of a multiple of K images is exactly balanced)."""
  rng = np.random.default_rng(seed)
  blocks = -(-int(n) // int(k))
  return np.concatenate([rng.permutation(k) for _ in range(blocks)])[:n].astype(np.int32)


def narrow_poses(params: ParticleParams, view: tuple[float, float, float], spread_deg: float,
                 seed: int) -> ParticleParams:
  """`params` with (rot, tilt, psi) replaced by rotations within `spread_deg` of the RELION view
  (rot, tilt, psi): A = R_δ A_view, R_δ about a uniformly random axis by an angle uniform in
  [0, spread]; origins zeroed (a centred, narrow-pose set as for 2D classification)."""
  n = len(np.asarray(params.rot_in_degrees))
  rng = np.random.default_rng(seed)
  axes = rng.normal(size=(n, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  t = np.deg2rad(rng.uniform(0, spread_deg, n))[:, None, None]
  k = np.zeros((n, 3, 3))
  k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
  k -= np.transpose(k, (0, 2, 1))
  r = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
  a = r @ relion_matrix(*view)
  rot, tilt, psi = jax.vmap(relion_angles_from_matrix)(jnp.asarray(a, jnp.float32))
  zeros = np.zeros(n, np.float32)
  return params.astype(np.float32)._replace(
      rot_in_degrees=np.asarray(rot), tilt_in_degrees=np.asarray(tilt), psi_in_degrees=np.asarray(psi),
      origin_x_in_angstroms=zeros, origin_y_in_angstroms=zeros)


def project_states(maps, pixel_size: float, params: ParticleParams, image_size: int, ctf: bool = True) -> np.ndarray:
  """Raw projections (K, N, H, W) float32 of each of K maps at every pose (and CTF) of `params`."""
  out = []
  for volume in maps:
    fitted, size = fit_volume(np.asarray(volume, np.float32), pixel_size, image_size)
    out.append(np.asarray(Projector(fitted, image_size, size, ctf=ctf)(params)))
  return np.stack(out)


def most_different_pose(raw: np.ndarray) -> int:
  """Index of the pose where the projections raw (K, N, H, W) of states 0 and 1 differ most
  relative to state 0's: the best view for 2D classification."""
  raw = np.asarray(raw, np.float64)
  return int(np.argmax(np.sum((raw[1] - raw[0]) ** 2, axis=(1, 2)) / np.sum(raw[0] ** 2, axis=(1, 2))))


@dataclass
class Particles:
  """Particles drawn from K states. `templates[k, i]` is state k at particle i's pose and CTF in
  the units of `clean`/`noisy`; `clean[i] = templates[labels[i], i]`."""

  noisy: np.ndarray       # (N, H, W)
  clean: np.ndarray       # (N, H, W)
  templates: np.ndarray   # (K, N, H, W)
  labels: np.ndarray      # (N,) int32
  noise_std: float
  snr: float


def make_particles(raw: np.ndarray, labels: np.ndarray, unit_noise: np.ndarray, snr: float) -> Particles:
  """Particles from raw projections (K, N, H, W): clean[i] = raw[labels[i], i], standardised over
  the stack (float64 statistics), plus unit_noise (N, H, W) × σ, σ² = mean_i var(clean_i) / snr.
  The same standardisation is applied to all of `raw` to give the templates."""
  if not (math.isfinite(snr) and snr > 0):
    raise InputError(f"snr: must be a positive number, got {snr}")
  n = raw.shape[1]
  picked = raw[labels, np.arange(n)].astype(np.float64)
  mean, std = picked.mean(), picked.std()
  if not std > 0:
    raise InputError("clean projections are constant (is the map empty or outside the box?)")
  templates = ((raw - mean) / std).astype(np.float32)
  clean = templates[labels, np.arange(n)]
  noise_std = math.sqrt(float(np.mean(np.var(clean.astype(np.float64), axis=(1, 2)))) / snr)
  noisy = (clean + np.float32(noise_std) * unit_noise).astype(np.float32)
  return Particles(noisy, clean, templates, np.asarray(labels, np.int32), noise_std, float(snr))


# ---------------------------------------------------------------------------- classifiers


@jax.jit
def least_squares_labels(images: jax.Array, templates: jax.Array) -> jax.Array:
  """(N,) int32 argmin_k ‖images[i] − templates[k, i]‖² of images (N, H, W) and templates
  (K, N, H, W): pose-known template matching (ties go to the lower k)."""
  d = jnp.sum(jnp.square(images[None].astype(jnp.float32) - templates.astype(jnp.float32)), axis=(-2, -1))
  return jnp.argmin(d, axis=0).astype(jnp.int32)


@jax.jit
def correlation_labels(images: jax.Array, templates: jax.Array) -> jax.Array:
  """(N,) int32 argmax_k of the Pearson correlation of images[i] with templates[k, i]: template
  matching that ignores each image's offset and scale (a denoiser's gain does not bias it)."""
  centre = lambda x: x - jnp.mean(x, axis=(-2, -1), keepdims=True)
  y, t = centre(images[None].astype(jnp.float32)), centre(templates.astype(jnp.float32))
  corr = jnp.sum(y * t, axis=(-2, -1)) / jnp.sqrt(jnp.sum(t * t, axis=(-2, -1)) * jnp.sum(y * y, axis=(-2, -1)) + 1e-30)
  return jnp.argmax(corr, axis=0).astype(jnp.int32)


def pca_scores(images: np.ndarray, n_components: int) -> np.ndarray:
  """(N, C) principal-component scores of the flattened, mean-centred images (float64 SVD)."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  x = x - x.mean(axis=0)
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  c = min(int(n_components), len(s))
  return u[:, :c] * s[:c]


def cluster_labels(images: np.ndarray, k: int, *, algorithm: str = "gmm", n_components: int = 4,
                   seed: int = 0) -> np.ndarray:
  """(N,) unsupervised labels: PCA to `n_components`, then a K-component Gaussian mixture
  ('gmm', full covariances, 5 initialisations) or k-means ('kmeans', 10 initialisations)."""
  from sklearn.cluster import KMeans
  from sklearn.mixture import GaussianMixture
  from threadpoolctl import threadpool_limits

  if algorithm not in ("gmm", "kmeans"):
    raise InputError(f"unknown clustering algorithm {algorithm!r}; valid: gmm, kmeans")
  with threadpool_limits(1):  # tiny problems: BLAS threads only contend (10x slower on a busy CPU)
    z = pca_scores(images, n_components)
    z = z / (z[:, :1].std() or 1.0)  # scale-free (raw and denoised images differ in units)
    if algorithm == "gmm":
      model = GaussianMixture(k, covariance_type="full", n_init=5, reg_covar=1e-4, random_state=seed)
    else:
      model = KMeans(k, n_init=10, random_state=seed)
    return model.fit_predict(z).astype(np.int32)


def accuracy(truth: np.ndarray, predicted: np.ndarray, k: int, permute: bool = False) -> float:
  """Fraction of correct labels; `permute` maximises it over relabellings of the predicted
  classes (Hungarian assignment on the K×K confusion matrix), as for unsupervised clusters."""
  truth, predicted = np.asarray(truth), np.asarray(predicted)
  if not permute:
    return float(np.mean(truth == predicted))
  from scipy.optimize import linear_sum_assignment

  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (predicted, truth), 1)
  rows, cols = linear_sum_assignment(-confusion)
  return float(confusion[rows, cols].sum() / len(truth))


def class_map_scores(images: np.ndarray, particles: pd.DataFrame, optics: pd.DataFrame, pixel_size: float,
                     predicted: np.ndarray, truth_maps, *, pad: int = 1) -> dict:
  """Reconstructs one map per predicted class (class k = state k) from `images` at the known poses
  and CTF, and scores each against its true state map (FSC). Returns fsc_resolution_A (mean over
  classes of the FSC-0.5 crossing, Å), fsc_mean (mean FSC over shells 1..Nyquist and classes),
  difference_correlation (K = 2: correlation of the class-map difference with the true one) and
  class_sizes."""
  from cryojax_denoise.reconstruction import fourier, fsc

  k, d = len(truth_maps), images.shape[-1]
  params = fourier.particle_params(particles, optics, pixel_size, None)
  acc = fourier.backproject(images, params, pixel_size, groups=np.asarray(predicted, np.int32), n_groups=k, pad=pad)
  sizes = np.bincount(predicted, minlength=k)
  maps = [fourier.invert(acc[c], d, pad=pad) if sizes[c] else np.zeros((d, d, d), np.float32) for c in range(k)]
  resolutions, means = [], []
  for c in range(k):
    curve = fsc.fsc_curve(maps[c], truth_maps[c]) if sizes[c] else np.zeros(d // 2 + 1)
    resolutions.append(fsc.fsc_resolution(curve, pixel_size, 0.5) if sizes[c] else float("nan"))
    means.append(float(np.mean(curve[1:])))
  out = {"fsc_resolution_A": float(np.nanmean(resolutions)) if any(sizes) else float("nan"),
         "fsc_mean": float(np.mean(means)), "class_sizes": [int(s) for s in sizes]}
  if k == 2:
    a, b = (maps[0] - maps[1]).ravel(), (np.asarray(truth_maps[0]) - np.asarray(truth_maps[1])).ravel()
    denom = np.linalg.norm(a - a.mean()) * np.linalg.norm(b - b.mean())
    out["difference_correlation"] = float(np.dot(a - a.mean(), b - b.mean()) / denom) if denom > 0 else 0.0
  return out
