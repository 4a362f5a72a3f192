"""The cryojax projector: images of a Fourier voxel map at RELION-unit parameters, with RELION's CTF.

Conventions (poses, origins, CTF sign and angle) are RELION's; see `data/relion.py`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cryojax_denoise.data.maps import resample_volume
from cryojax_denoise.data.relion import (AMPLITUDE_CONTRAST, RELION_CTF_SIGN, SPHERICAL_ABERRATION_MM, VOLTAGE_KV,
                                         ParticleParams, optics_row, params_from_table,
                                         particle_groups, relion_to_cryojax_ctf)
from cryojax_denoise.errors import InputError
from cryojax_denoise.io.star import pixel_size_of


def _project_one(fvol, p: ParticleParams, optics: dict, *, shape: tuple[int, int], ctf: bool) -> jax.Array:
  """cryojax image (H, W) of the Fourier voxel map at one particle's parameters `p` (scalar fields);
  `optics` holds pixel_size (Å), voltage_kv, cs_mm and amplitude_contrast as (traced) scalars."""
  import cryojax.simulator as cxs

  pose = cxs.EulerAnglePose(-p.origin_x_in_angstroms, -p.origin_y_in_angstroms, -p.rot_in_degrees,
                            -p.tilt_in_degrees, -p.psi_in_degrees)
  config = cxs.BasicImageConfig(shape, optics["pixel_size"], optics["voltage_kv"])
  integrator = cxs.FourierSliceExtraction()
  if ctf:
    defocus, astigmatism, angle = relion_to_cryojax_ctf(p.defocus_u_in_angstroms, p.defocus_v_in_angstroms,
                                                        p.defocus_angle_in_degrees)
    transfer = cxs.ContrastTransferTheory(
        cxs.AstigmaticCTF(defocus, astigmatism, angle, optics["cs_mm"]),
        amplitude_contrast_ratio=optics["amplitude_contrast"], phase_shift=p.phase_shift_in_degrees)
    model = cxs.make_image_model(fvol, config, pose, transfer, volume_integrator=integrator)
    return RELION_CTF_SIGN * model.simulate()  # RELION's CTF (see data/relion.py)
  model = cxs.make_image_model(fvol, config, pose, volume_integrator=integrator)
  return model.simulate()


def _project_many(fvol, params: ParticleParams, optics: dict, shape: tuple[int, int], ctf: bool) -> jax.Array:
  return jax.vmap(lambda p: _project_one(fvol, p, optics, shape=shape, ctf=ctf))(params)


# One compile per (batch size, image shape, ctf) for the whole process; the map and the optics are traced.
_project_jit = jax.jit(_project_many, static_argnames=("shape", "ctf"))


def _fourier_volume(volume: jax.Array):
  """cryojax FourierVoxelGridVolume (linear interpolation, deconvolved) of a real (D, D, D) map."""
  import cryojax.simulator as cxs

  return cxs.FourierVoxelGridVolume.from_real_voxel_grid(volume)


def _optics(pixel_size: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> dict:
  return {k: jnp.float32(v) for k, v in dict(pixel_size=pixel_size, voltage_kv=voltage_kv, cs_mm=cs_mm,
                                             amplitude_contrast=amplitude_contrast).items()}


class Projector:
  """Jitted, vmapped cryojax projection of one map: `projector(params)` with `ParticleParams` of (B,)
  arrays -> (B, H, W) float32 in cryojax's units.

  The map must already be on the image grid (`fit_volume`/`resample_volume`), at `pixel_size`.
  Compiles once per (B, image size, ctf) per process.
  """

  def __init__(self, volume: np.ndarray, image_size: int, pixel_size: float, *, ctf: bool = True,
               voltage_kv: float = VOLTAGE_KV, cs_mm: float = SPHERICAL_ABERRATION_MM,
               amplitude_contrast: float = AMPLITUDE_CONTRAST):
    self.image_size, self.pixel_size, self.ctf = int(image_size), float(pixel_size), bool(ctf)
    self.fvol = _fourier_volume(jnp.asarray(volume, jnp.float32))
    self.optics = _optics(pixel_size, voltage_kv, cs_mm, amplitude_contrast)

  def __call__(self, params: ParticleParams) -> jax.Array:
    params = ParticleParams(*(jnp.asarray(v, jnp.float32) for v in params))
    return _project_jit(self.fvol, params, self.optics, shape=(self.image_size, self.image_size), ctf=self.ctf)


def _project_in_batches(projector: Projector, params: ParticleParams, n: int, batch_size: int) -> np.ndarray:
  """Runs a projector over n images in fixed-size batches (the last one padded: one compile)."""
  out = None
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    chunk = np.asarray(projector(params.take(idx)))[: stop - start]
    if out is None:
      out = np.empty((n, *chunk.shape[1:]), np.float32)
    out[start:stop] = chunk
  return out


def project(source, particles: pd.DataFrame, optics: pd.DataFrame, image_size: int | None = None, *,
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
  groups = particle_groups(particles, optics)
  ctf = "rlnDefocusU" in particles.columns
  out = None
  for group in pd.unique(groups):
    rows = np.flatnonzero(groups == group)
    size = int(image_size or optics_size(optics, group))
    if size < 8:
      raise InputError(f"optics group {group}: image size {size} (give image_size or rlnImageSize)")
    projector, pixel_size = group_projector(source, optics, group, size, ctf)
    params = params_from_table(particles, pixel_size).take(rows)
    images = _project_in_batches(projector, params, len(rows), max(1, min(batch_size, len(rows))))
    if out is None:
      out = np.empty((n, size, size), np.float32)
    if images.shape[1:] != out.shape[1:]:
      raise InputError(f"optics group {group}: image size {size} differs from other groups {out.shape[1]}")
    out[rows] = images
  if standardized:
    return standardize(out)
  return out


def optics_size(optics: pd.DataFrame, group) -> int:
  """rlnImageSize of an optics group (0 when absent)."""
  return int(optics_row(optics, group).get("rlnImageSize", 0))


def group_projector(source, optics: pd.DataFrame, group, image_size: int, ctf: bool = True):
  """(Projector, pixel size Å) of `source` imaged with optics group `group`: the map resampled to
  the group's pixel size on an `image_size` grid, the group's voltage, Cs and amplitude contrast.
  Used by `project`, `denoise_stack.RowProjector` (make_pairs) and the reconstruction."""
  opt = optics_row(optics, group)
  pixel_size = pixel_size_of(opt, f"optics group {group}")
  volume = resample_volume(source.volume, source.pixel_size, pixel_size, image_size)
  projector = Projector(volume, image_size, pixel_size, ctf=ctf,
                        voltage_kv=float(opt.get("rlnVoltage", VOLTAGE_KV)),
                        cs_mm=float(opt.get("rlnSphericalAberration", SPHERICAL_ABERRATION_MM)),
                        amplitude_contrast=float(opt.get("rlnAmplitudeContrast", AMPLITUDE_CONTRAST)))
  return projector, pixel_size


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
