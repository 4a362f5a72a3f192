"""Simulated particle images: cryojax projections of a 3D map at random poses, with CTF and noise.

Conventions (RELION 3.1, so a STAR file we write means to RELION what we simulated):

* Poses are uniform on SO(3): a uniform unit quaternion (Shoemake's construction from three
  uniforms) gives the rotation matrix A, stored as
  RELION's ZYZ Euler angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; A = Rz(psi) Ry(tilt) Rz(rot)
  in RELION's Euler_angles2matrix, which projects a map point r to image point (A r)_xy). cryojax's
  EulerAnglePose is the extrinsic ZYZ rotation that generates the view, so it gets the negated
  angles (phi, theta, psi) = (-rot, -tilt, -psi); tests check this against RELION's matrix.
* In-plane shifts: the particle centre sits at (x, y) = -(rlnOriginXAngst, rlnOriginYAngst) from
  the box centre (pixel N // 2); cryojax's offset is minus RELION's origin.
* CTF: 300 kV, Cs 2.7 mm, amplitude contrast 0.07, rlnDefocusU/V (Å, U >= V) with mean defocus
  uniform in `defocus_range_A` and astigmatism U - V uniform in [0, astigmatism_A], rlnDefocusAngle
  uniform in [0, 180) degrees, all in RELION's meaning: defocus U lies along the angle
  rlnDefocusAngle counter-clockwise from +kx (x = column, y = row), i.e. RELION's defocus at
  frequency azimuth phi = atan2(ky, kx) is (U + V) / 2 + (U - V) / 2 cos(2 (phi - angle)).
  cryojax 0.6's AstigmaticCTF measures its angle from +ky (azimuth atan2(kx, ky)) and its CTF
  sin(chi - amplitude phase - phase shift) is minus RELION's -sin(gamma); `relion_to_cryojax_ctf`
  maps (U, V, angle) to cryojax's (defocus, astigmatism, 90 deg - angle) and images with CTF are
  multiplied by RELION_CTF_SIGN = -1, so the simulated CTF is RELION's exactly (same values,
  hence RELION's contrast: positive density is bright at low resolution). No envelope.
* SNR (INTERFACE): the clean stack is standardised (mean 0, variance 1 over the whole stack),
  then white Gaussian noise of variance mean_i(var(clean_i)) / snr is added; no clipping.
  `Simulator.batch` uses constants fixed once from a calibration set instead (see its docstring).
* Maps: `MapSource.volume` is a cube centred at voxel D // 2; odd image sizes use a grid one
  voxel larger and cryojax crops the projection.

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

from cryojax_denoise.data import phantom
from cryojax_denoise.errors import InputError
from cryojax_denoise.io import check_input_file, read_volume, write_stack, write_star
from cryojax_denoise.progress import Progress

VOLTAGE_KV = 300.0
SPHERICAL_ABERRATION_MM = 2.7
AMPLITUDE_CONTRAST = 0.07
ASTIGMATISM_A = 500.0
DEFOCUS_RANGE_A = (10000.0, 25000.0)
CALIBRATION_SIZE = 256  # images used to fix the standardisation constants of Simulator.batch
CALIBRATION_SEED = 20240601
FIT_MASS_TOLERANCE = 0.01  # crop a map's box only if it loses < 1% of its density, else resample


# ---------------------------------------------------------------------------- maps


@dataclass(frozen=True)
class MapSource:
  """A 3D map ready for projection: `volume` (D, D, D) float32 on a cubic grid of `pixel_size` Å,
  the molecule's centre at voxel D // 2; `name` says where it came from."""

  volume: np.ndarray
  pixel_size: float
  name: str


def _crop_or_pad(volume: np.ndarray, box: int) -> np.ndarray:
  """Centre-preserving crop/zero-pad of a cube to `box` (voxel D // 2 lands on box // 2)."""
  d = volume.shape[0]
  out = np.zeros((box, box, box), np.float32)
  shift = box // 2 - d // 2  # out[j] = volume[j - shift]
  lo_in, hi_in = max(0, -shift), min(d, box - shift)
  sl_in = slice(lo_in, hi_in)
  sl_out = slice(lo_in + shift, hi_in + shift)
  out[sl_out, sl_out, sl_out] = volume[sl_in, sl_in, sl_in]
  return out


def _fourier_resize(volume: np.ndarray, size: int) -> np.ndarray:
  """Fourier crop (downsample) or zero-pad (upsample) an even cube to an even `size`, keeping
  voxel values (a smooth map keeps its density values; the voxel size scales by D / size).
  Single-precision real FFTs keep memory near 1.5x the map."""
  d = volume.shape[0]
  if size == d:
    return volume.astype(np.float32)
  f = np.fft.rfftn(volume.astype(np.float32))
  freqs = np.rint(np.fft.fftfreq(size) * size).astype(int)
  keep = (freqs >= -(d // 2)) & (freqs < d - d // 2)  # frequencies both grids represent
  half = np.arange(min(size, d) // 2 + 1)
  g = np.zeros((size, size, size // 2 + 1), np.complex64)
  old = freqs[keep] % d
  g[np.ix_(np.flatnonzero(keep), np.flatnonzero(keep), half)] = f[np.ix_(old, old, half)]
  return (np.fft.irfftn(g, s=(size, size, size), axes=(0, 1, 2)) * (size / d) ** 3).astype(np.float32)


def fit_volume(volume: np.ndarray, pixel_size: float, box: int) -> tuple[np.ndarray, float]:
  """Fits a cubic map into an even `box` (box + 1 for odd box, cryojax needs even grids).

  Keeps the pixel size and crops/pads the real-space box, unless cropping would cut away more
  than 1% of the map's density: then the whole box is Fourier-resampled to `box` voxels, and the
  pixel size grows accordingly. Returns (map (B, B, B) float32, pixel size Å).
  """
  box = box + box % 2
  d = volume.shape[0]
  if d % 2:
    volume = _crop_or_pad(volume, d + 1)  # lossless: pad odd grids to even
    d += 1
  if d > box:
    kept = _crop_or_pad(volume, box)
    total = float(np.abs(volume).sum())
    if total > 0 and float(np.abs(kept).sum()) < (1 - FIT_MASS_TOLERANCE) * total:
      return _fourier_resize(volume, box), pixel_size * d / box
    return kept, pixel_size
  return _crop_or_pad(volume, box), pixel_size


def resample_volume(volume: np.ndarray, pixel_size: float, new_pixel_size: float, box: int) -> np.ndarray:
  """Resamples a map to `new_pixel_size` in a `box` grid (box + 1 if odd), by Fourier cropping or
  padding; the input is first zero-padded to a size whose rescaled size is nearly an even integer
  (relative voxel size error < 0.2% where possible)."""
  box = box + box % 2
  d = volume.shape[0] + volume.shape[0] % 2
  ratio = pixel_size / new_pixel_size
  if abs(ratio - 1.0) < 1e-6:
    return fit_volume(volume, pixel_size, box)[0]
  best = None
  for d0 in range(d, d + 130, 2):
    target = 2 * round(d0 * ratio / 2)
    err = abs(target / d0 - ratio) / ratio
    if target >= 2 and (best is None or err < best[0] - 1e-12):
      best = (err, d0, target)
    if err < 2e-3:
      break
  err, d0, target = best
  if err > 0.01:
    logging.warning("resampling map from %.4g to %.4g Å/px with %.2g%% voxel size error",
                    pixel_size, new_pixel_size, 100 * err)
  resized = _fourier_resize(_crop_or_pad(volume, d0), target)
  return _crop_or_pad(resized, box)


def _structure_atoms(path: str):
  """Positions (M, 3) Å centred on their centroid, Peng amplitudes and variances (M, 5)."""
  import cryojax.simulator as cxs

  check_input_file(path, "PDB/mmCIF file")
  try:
    gm = cxs.load_tabulated_volume(path, include_b_factors=True)
  except Exception as e:  # noqa: BLE001 - mmdf/gemmi raise many types on garbage
    raise InputError(f"{path}: not a readable PDB/mmCIF model ({type(e).__name__}: {e})") from None
  positions = np.asarray(gm.positions, np.float64)
  if len(positions) == 0:
    raise InputError(f"{path}: model holds no atoms")
  if not np.isfinite(positions).all():
    raise InputError(f"{path}: model has NaN or Inf atom coordinates")
  return positions - positions.mean(axis=0), np.asarray(gm.amplitudes), np.asarray(gm.variances)


def load_source(volume: str | None = None, structure: str | None = None, pixel_size: float | None = None,
                image_size: int = 64, seed: int = 0) -> MapSource:
  """The map to simulate from, on an `image_size` grid (even; odd sizes get one more voxel).

  * neither: the built-in phantom (`seed` picks it), ~60% of the box unless `pixel_size` is given;
  * `volume=`: an MRC map; pixel size from its header, or `pixel_size` (needed when the header
    says 0, overrides it otherwise); fitted to the box by `fit_volume`;
  * `structure=`: a PDB/mmCIF model rendered with cryojax (Peng scattering factors with the
    model's B-factors, blurred by sigma = pixel / 2 and averaged over voxels); without `pixel_size`
    the model fills ~60% of the box.
  """
  if volume and structure:
    raise InputError("give at most one of volume= (an MRC map) and structure= (a PDB/mmCIF model)")
  if int(image_size) < 8:
    raise InputError(f"image_size: must be at least 8, got {image_size}")
  if pixel_size is not None and (not math.isfinite(float(pixel_size)) or float(pixel_size) < 0):
    raise InputError(f"pixel_size: must be a positive number of Å (or 0 for the default), got {pixel_size}")
  box = int(image_size) + int(image_size) % 2
  if volume:
    check_input_file(volume, "MRC map file")
    data, size = read_volume(volume, pixel_size=pixel_size or None)
    if not np.any(data):
      raise InputError(f"{volume}: map is all zeros")
    fitted, size = fit_volume(data, size, box)
    return MapSource(fitted, float(size), os.path.abspath(volume))
  if structure:
    positions, amplitudes, variances = _structure_atoms(structure)
    size = float(pixel_size) if pixel_size else phantom.default_pixel_size(positions, box)
    # The model's B-factors blur each atom; a further Gaussian of sigma = pixel / 2 band-limits
    # the map to the grid (atoms narrower than a voxel would otherwise alias into speckle).
    rendered = phantom.render_atoms(positions, amplitudes, variances + (size / 2) ** 2, box, size)
    return MapSource(rendered, size, os.path.abspath(structure))
  rendered, size = phantom.phantom_volume(box, pixel_size=pixel_size or None, seed=int(seed))
  return MapSource(rendered, size, f"phantom(seed={int(seed)})")


# ---------------------------------------------------------------------------- poses and CTF


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
  """Rotation matrix (3, 3) of a unit quaternion (w, x, y, z) (active rotation)."""
  w, x, y, z = q[0], q[1], q[2], q[3]
  return jnp.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def relion_angles_from_matrix(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RELION (rot, tilt, psi) in degrees of a rotation matrix A = Rz(psi) Ry(tilt) Rz(rot)
  (RELION's Euler_matrix2angles; tilt in [0, 180])."""
  tilt = jnp.arccos(jnp.clip(a[2, 2], -1.0, 1.0))
  sin_tilt = jnp.sqrt(a[2, 0] ** 2 + a[2, 1] ** 2)
  regular = sin_tilt > 1e-6
  rot = jnp.where(regular, jnp.arctan2(a[2, 1], a[2, 0]), 0.0)
  psi = jnp.where(regular, jnp.arctan2(a[1, 2], -a[0, 2]), jnp.arctan2(-a[1, 0], a[0, 0]) * jnp.sign(a[2, 2]))
  return jnp.rad2deg(rot), jnp.rad2deg(tilt), jnp.rad2deg(psi)


def relion_matrix(rot, tilt, psi) -> np.ndarray:
  """RELION's Euler_angles2matrix (degrees) in numpy: (..., 3, 3); for tests and checks."""
  a, b, g = (np.deg2rad(np.asarray(v, np.float64)) for v in (rot, tilt, psi))
  ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
  cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
  return np.stack([
      np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
      np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
      np.stack([sc, ss, cb], -1),
  ], -2)


# RELION's CTF at given (U, V, angle, Cs, voltage, amplitude contrast, phase shift) is
# RELION_CTF_SIGN times cryojax's AstigmaticCTF at the parameters from `relion_to_cryojax_ctf`.
RELION_CTF_SIGN = -1.0


def relion_to_cryojax_ctf(defocus_u, defocus_v, angle_deg):
  """RELION rlnDefocusU/V (Å) and rlnDefocusAngle (deg) -> cryojax AstigmaticCTF's
  (defocus_in_angstroms, astigmatism_in_angstroms, astigmatism_angle in deg).

  RELION puts defocus U at angle `angle_deg` from +kx towards +ky; cryojax measures its angle
  from +ky towards +kx (so at 0 its U lies along ky), hence cryojax angle = 90 - angle_deg.
  Works on scalars, NumPy or JAX arrays (elementwise). The CTF values then still differ from
  RELION's by the global factor RELION_CTF_SIGN (tests/test_ctf_convention.py checks both)."""
  return 0.5 * (defocus_u + defocus_v), defocus_u - defocus_v, 90.0 - angle_deg


PARAM_NAMES = ("rot", "tilt", "psi", "origin_x", "origin_y", "defocus_u", "defocus_v", "defocus_angle",
               "phase_shift")


def _sample_one(key, ranges: dict) -> dict:
  """One image's parameters in RELION units (degrees, Å), from a single draw of 8 uniforms (one
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
  return dict(rot=rot, tilt=tilt, psi=psi, origin_x=origin[0], origin_y=origin[1],
              defocus_u=defocus + astig / 2, defocus_v=defocus - astig / 2, defocus_angle=180.0 * u[7],
              phase_shift=jnp.zeros_like(u[0]))


def _per_image_keys(key, start, n: int):
  """Keys of images start..start+n-1: fold_in(key, index), so image i never depends on n."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(n))


def _sample_many(key, start, n: int, ranges: dict) -> dict:
  return jax.vmap(lambda k: _sample_one(k, ranges))(_per_image_keys(key, start, n))


def _unit_noise(key, start, n: int, shape: tuple[int, int]) -> jax.Array:
  """White unit Gaussian noise (n, H, W) of images start..start+n-1 (per-image keys)."""
  return jax.vmap(lambda k: jax.random.normal(k, shape))(_per_image_keys(key, start, n))


def _project_one(fvol, p: dict, optics: dict, *, shape: tuple[int, int], ctf: bool) -> jax.Array:
  """cryojax image (H, W) of the Fourier voxel map at one set of RELION parameters `p`; `optics`
  holds pixel_size (Å), voltage_kv, cs_mm and amplitude_contrast as (traced) scalars."""
  import cryojax.simulator as cxs

  pose = cxs.EulerAnglePose(-p["origin_x"], -p["origin_y"], -p["rot"], -p["tilt"], -p["psi"])
  config = cxs.BasicImageConfig(shape, optics["pixel_size"], optics["voltage_kv"])
  integrator = cxs.FourierSliceExtraction()
  if ctf:
    defocus, astigmatism, angle = relion_to_cryojax_ctf(p["defocus_u"], p["defocus_v"], p["defocus_angle"])
    transfer = cxs.ContrastTransferTheory(
        cxs.AstigmaticCTF(defocus, astigmatism, angle, optics["cs_mm"]),
        amplitude_contrast_ratio=optics["amplitude_contrast"], phase_shift=p["phase_shift"])
    model = cxs.make_image_model(fvol, config, pose, transfer, volume_integrator=integrator)
    return RELION_CTF_SIGN * model.simulate()  # RELION's CTF (see the module docstring)
  model = cxs.make_image_model(fvol, config, pose, volume_integrator=integrator)
  return model.simulate()


def _project_many(fvol, params: dict, optics: dict, shape: tuple[int, int], ctf: bool) -> jax.Array:
  return jax.vmap(lambda p: _project_one(fvol, p, optics, shape=shape, ctf=ctf))(params)


# Module-level jits: one compile per (batch size, image shape, ctf) for the whole process; the map,
# the optics and the sampling ranges are traced arguments.
_project_jit = jax.jit(_project_many, static_argnames=("shape", "ctf"))
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


@jax.jit
def _fourier_volume(volume: jax.Array):
  """cryojax FourierVoxelGridVolume (linear interpolation, deconvolved) of a real (D, D, D) map."""
  import cryojax.simulator as cxs

  return cxs.FourierVoxelGridVolume.from_real_voxel_grid(volume)


def _optics(pixel_size: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> dict:
  return {k: jnp.float32(v) for k, v in dict(pixel_size=pixel_size, voltage_kv=voltage_kv, cs_mm=cs_mm,
                                             amplitude_contrast=amplitude_contrast).items()}


class Projector:
  """Jitted, vmapped cryojax projection of one map: `projector(params)` with a dict of (B,)
  RELION-unit arrays (PARAM_NAMES) -> (B, H, W) float32 in cryojax's units.

  The map must already be on the image grid (`fit_volume`/`resample_volume`), at `pixel_size`.
  Compiles once per (B, image size, ctf) per process.
  """

  def __init__(self, volume: np.ndarray, image_size: int, pixel_size: float, *, ctf: bool = True,
               voltage_kv: float = VOLTAGE_KV, cs_mm: float = SPHERICAL_ABERRATION_MM,
               amplitude_contrast: float = AMPLITUDE_CONTRAST):
    self.image_size, self.pixel_size, self.ctf = int(image_size), float(pixel_size), bool(ctf)
    self.fvol = _fourier_volume(jnp.asarray(volume, jnp.float32))
    self.optics = _optics(pixel_size, voltage_kv, cs_mm, amplitude_contrast)

  def __call__(self, params: dict) -> jax.Array:
    params = {k: jnp.asarray(params[k], jnp.float32) for k in PARAM_NAMES}
    return _project_jit(self.fvol, params, self.optics, shape=(self.image_size, self.image_size), ctf=self.ctf)


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

  def sample_params(self, key, n: int, start: int = 0) -> dict:
    """Parameters (RELION units) of images start..start+n-1, each from fold_in(key, index)."""
    return _sample_jit(key, start, int(n), self.ranges)

  def project(self, params: dict) -> jax.Array:
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


def optics_table(pixel_size: float, image_size: int, voltage_kv: float = VOLTAGE_KV,
                 cs_mm: float = SPHERICAL_ABERRATION_MM, amplitude_contrast: float = AMPLITUDE_CONTRAST) -> pd.DataFrame:
  """RELION 3.1 optics block with one group."""
  return pd.DataFrame({
      "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [float(voltage_kv)],
      "rlnSphericalAberration": [float(cs_mm)], "rlnAmplitudeContrast": [float(amplitude_contrast)],
      "rlnImagePixelSize": [float(pixel_size)], "rlnImageSize": [int(image_size)], "rlnImageDimensionality": [2],
  })


def particles_table(params: dict, ctf: bool, stack_name: str = "noisy.mrcs") -> pd.DataFrame:
  """RELION 3.1 particles block from sampled parameters (one row per image, in order); without
  CTF the defocus columns are left out (so `project` and readers know there is none)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  n = len(p["rot"])
  table = {
      "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
      "rlnAngleRot": p["rot"], "rlnAngleTilt": p["tilt"], "rlnAnglePsi": p["psi"],
      "rlnOriginXAngst": p["origin_x"], "rlnOriginYAngst": p["origin_y"],
  }
  if ctf:
    table.update({"rlnDefocusU": p["defocus_u"], "rlnDefocusV": p["defocus_v"],
                  "rlnDefocusAngle": p["defocus_angle"], "rlnPhaseShift": p["phase_shift"]})
  table["rlnOpticsGroup"] = np.ones(n, np.int64)
  return pd.DataFrame(table)


def _standardize_inplace(stack: np.ndarray, chunk: int = 1024) -> None:
  """stack <- (stack - mean) / std over the whole float32 stack, with float64 statistics
  accumulated in chunks (no float64 copy of the stack)."""
  total = total2 = 0.0
  for start in range(0, len(stack), chunk):
    block = stack[start:start + chunk].astype(np.float64)
    total += block.sum()
    total2 += np.square(block).sum()
  mean = total / stack.size
  var = total2 / stack.size - mean**2
  if not var > 0:
    raise InputError("clean projections are constant (is the map empty or outside the box?)")
  for start in range(0, len(stack), chunk):
    block = stack[start:start + chunk].astype(np.float64)
    stack[start:start + chunk] = (block - mean) / math.sqrt(var)


def standardize(stack: np.ndarray) -> np.ndarray:
  """(stack - mean) / std over the whole stack (float64 statistics), as a new float32 array."""
  out = np.array(stack, dtype=np.float32)
  _standardize_inplace(out)
  return out


def simulate_dataset(source: MapSource, n_images: int, image_size: int, snr: float, seed: int = 0, ctf: bool = True,
                     defocus_range_A: tuple[float, float] = DEFOCUS_RANGE_A, max_shift_A: float = 0.0, *,
                     batch_size: int = 64, log_progress: bool = False, **simulator_options) -> Dataset:
  """A stack of `n_images` (noisy, clean) pairs at `snr` (INTERFACE definition, exact for the stack).

  The clean stack is standardised over itself, then white Gaussian noise of variance
  mean_i(var(clean_i)) / snr is added. Same seed -> same images, whatever `batch_size` (image i
  uses fold_in(key, i)). `simulator_options` go to `Simulator` (astigmatism_A, voltage_kv, ...).
  """
  n_images, snr = int(n_images), float(snr)
  if n_images < 1:
    raise InputError(f"n_images: must be at least 1, got {n_images}")
  if not (math.isfinite(snr) and snr > 0):
    raise InputError(f"snr: must be a positive number, got {snr}")
  sim = Simulator(source, image_size, ctf, defocus_range_A, max_shift_A, calibrate=False, **simulator_options)
  k_params, k_noise = jax.random.split(jax.random.PRNGKey(int(seed)))
  batch_size = max(1, min(int(batch_size), n_images))
  bar = None
  clean = np.empty((n_images, *sim.shape), np.float32)  # raw projections, standardised in place below
  noisy = np.empty((n_images, *sim.shape), np.float32)  # unit noise, turned into noisy images below
  chunks = []
  for start in range(0, n_images, batch_size):  # the last chunk runs past n: same shapes, one compile
    stop = min(start + batch_size, n_images)
    params, images, unit = _dataset_chunk(sim.projector.fvol, k_params, k_noise, start, sim.ranges,
                                          sim.projector.optics, n=batch_size, shape=sim.shape, ctf=sim.ctf)
    clean[start:stop] = np.asarray(images)[: stop - start]
    noisy[start:stop] = np.asarray(unit)[: stop - start]
    chunks.append({k: np.asarray(v)[: stop - start] for k, v in params.items()})
    if bar is not None:
      bar.update(stop - start)
    elif log_progress:  # start the clock after the first batch, which includes compilation
      bar = Progress(n_images, "simulate", "img", start=stop)
      logging.info("simulate: compiled; %d/%d images", stop, n_images)
  params = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  _standardize_inplace(clean)
  signal_var = float(np.mean([np.var(clean[i].astype(np.float64)) for i in range(n_images)]))
  noise_std = math.sqrt(signal_var / snr)
  noisy *= np.float32(noise_std)
  noisy += clean
  return Dataset(noisy=noisy, clean=clean, pixel_size=sim.pixel_size, particles=particles_table(params, ctf),
                 optics=optics_table(sim.pixel_size, image_size, sim.voltage_kv, sim.cs_mm, sim.amplitude_contrast),
                 snr=snr, noise_std=noise_std, source=source.name)


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


# ---------------------------------------------------------------------------- projections of a table


def _column(df: pd.DataFrame, name: str, default: float, n: int) -> np.ndarray:
  if name in df.columns:
    return pd.to_numeric(df[name], errors="raise").to_numpy(np.float64)
  return np.full(n, default, np.float64)


def params_from_table(particles: pd.DataFrame, pixel_size: float) -> dict:
  """RELION columns -> projector parameters (RELION 3.0 pixel origins converted with pixel_size);
  a psi of -999 (RELION's 'unset') is taken as 0."""
  n = len(particles)
  p = {
      "rot": _column(particles, "rlnAngleRot", 0.0, n),
      "tilt": _column(particles, "rlnAngleTilt", 0.0, n),
      "psi": _column(particles, "rlnAnglePsi", 0.0, n),
      "defocus_u": _column(particles, "rlnDefocusU", 0.0, n),
      "defocus_angle": _column(particles, "rlnDefocusAngle", 0.0, n),
      "phase_shift": _column(particles, "rlnPhaseShift", 0.0, n),
  }
  p["psi"] = np.where(p["psi"] == -999.0, 0.0, p["psi"])
  p["defocus_v"] = _column(particles, "rlnDefocusV", 0.0, n) if "rlnDefocusV" in particles else p["defocus_u"]
  for axis in ("X", "Y"):
    if f"rlnOrigin{axis}Angst" in particles.columns:
      p[f"origin_{axis.lower()}"] = _column(particles, f"rlnOrigin{axis}Angst", 0.0, n)
    else:
      p[f"origin_{axis.lower()}"] = _column(particles, f"rlnOrigin{axis}", 0.0, n) * pixel_size
  return {k: v.astype(np.float32) for k, v in p.items()}


def _project_in_batches(projector: Projector, params: dict, n: int, batch_size: int) -> np.ndarray:
  """Runs a projector over n images in fixed-size batches (the last one padded: one compile)."""
  out = None
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    chunk = np.asarray(projector({k: v[idx] for k, v in params.items()}))[: stop - start]
    if out is None:
      out = np.empty((n, *chunk.shape[1:]), np.float32)
    out[start:stop] = chunk
  return out


def project(source: MapSource, particles: pd.DataFrame, optics: pd.DataFrame, image_size: int | None = None, *,
            standardized: bool = True, batch_size: int = 64) -> np.ndarray:
  """Clean projections (N, H, W) float32 of `source` at the poses (and CTF, when the particles
  carry rlnDefocusU) of a RELION table, in row order.

  Each optics group is imaged at its own pixel size, voltage, Cs and amplitude contrast (the map is
  resampled to that pixel size); `image_size` defaults to the optics rlnImageSize. With
  `standardized`, the stack is standardised like `simulate_dataset`'s clean stack (mean 0,
  variance 1 over the stack); otherwise it is in cryojax's units.
  """
  n = len(particles)
  if n == 0:
    raise InputError("project: the particle table is empty")
  groups = (particles["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in particles.columns
            else np.full(n, optics["rlnOpticsGroup"].iloc[0] if "rlnOpticsGroup" in optics.columns else 1))
  ctf = "rlnDefocusU" in particles.columns
  out = None
  for group in pd.unique(groups):
    rows = np.flatnonzero(groups == group)
    if "rlnOpticsGroup" in optics.columns and (optics["rlnOpticsGroup"] == group).any():
      opt = optics[optics["rlnOpticsGroup"] == group].iloc[0]
    else:
      opt = optics.iloc[0]
    pixel_size = next((float(opt[k]) for k in ("rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize")
                       if k in opt.index), None)
    if pixel_size is None or not pixel_size > 0:
      raise InputError(f"optics group {group}: no positive rlnImagePixelSize")
    size = int(image_size or opt.get("rlnImageSize", 0))
    if size < 8:
      raise InputError(f"optics group {group}: image size {size} (give image_size or rlnImageSize)")
    volume = resample_volume(source.volume, source.pixel_size, pixel_size, size)
    projector = Projector(volume, size, pixel_size, ctf=ctf,
                          voltage_kv=float(opt.get("rlnVoltage", VOLTAGE_KV)),
                          cs_mm=float(opt.get("rlnSphericalAberration", SPHERICAL_ABERRATION_MM)),
                          amplitude_contrast=float(opt.get("rlnAmplitudeContrast", AMPLITUDE_CONTRAST)))
    params = {k: v[rows] for k, v in params_from_table(particles, pixel_size).items()}
    images = _project_in_batches(projector, params, len(rows), max(1, min(batch_size, len(rows))))
    if out is None:
      out = np.empty((n, size, size), np.float32)
    if images.shape[1:] != out.shape[1:]:
      raise InputError(f"optics group {group}: image size {size} differs from other groups {out.shape[1]}")
    out[rows] = images
  return standardize(out) if standardized else out
