"""RELION conventions: Euler angles, CTF mapping to cryojax, optics groups and pixel sizes, tables.

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

The pixel size of an optics group is read by `io.star.pixel_size_of` (io owns STAR columns); the
projector of an optics group is `data.projector.group_projector`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd


VOLTAGE_KV = 300.0
SPHERICAL_ABERRATION_MM = 2.7
AMPLITUDE_CONTRAST = 0.07


class ParticleParams(NamedTuple):
  """Per-particle imaging parameters in RELION's units and conventions (module docstring): each field a
  (N,) array, or a scalar inside a vmapped kernel. A NamedTuple, hence a JAX pytree (jit, vmap and
  tree_map take it whole). Optics (voltage, Cs, amplitude contrast, pixel size) are per optics group
  and travel apart. `reconstruction.fourier.ParticleParams` is the reconstruction's kernel form of these
  (rotation rows, cryojax's CTF parameters)."""

  rot_in_degrees: jax.Array | np.ndarray         # rlnAngleRot
  tilt_in_degrees: jax.Array | np.ndarray        # rlnAngleTilt
  psi_in_degrees: jax.Array | np.ndarray         # rlnAnglePsi
  origin_x_in_angstroms: jax.Array | np.ndarray  # rlnOriginXAngst: the particle sits at -origin from the centre
  origin_y_in_angstroms: jax.Array | np.ndarray  # rlnOriginYAngst
  defocus_u_in_angstroms: jax.Array | np.ndarray   # rlnDefocusU
  defocus_v_in_angstroms: jax.Array | np.ndarray   # rlnDefocusV
  defocus_angle_in_degrees: jax.Array | np.ndarray  # rlnDefocusAngle (U's direction from +kx towards +ky)
  phase_shift_in_degrees: jax.Array | np.ndarray    # rlnPhaseShift

  @classmethod
  def zeros(cls, n: int, dtype=np.float32) -> ParticleParams:
    """N particles at the reference pose, no origin shift, zero defocus and phase shift."""
    return cls(*(np.zeros(int(n), dtype) for _ in cls._fields))

  def take(self, index) -> ParticleParams:
    """The particles at `index` (an index array, slice or boolean mask), every field alike."""
    return type(self)(*(v[index] for v in self))

  def astype(self, dtype) -> ParticleParams:
    """Every field as a NumPy array of `dtype` (device arrays are copied to the host)."""
    return type(self)(*(np.asarray(v, dtype) for v in self))


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



# ---------------------------------------------------------------------------- optics groups


def optics_row(optics: pd.DataFrame, group) -> pd.Series:
  """The optics row of `group` (the first row when the table has no such group)."""
  if "rlnOpticsGroup" in optics.columns and (optics["rlnOpticsGroup"] == group).any():
    return optics[optics["rlnOpticsGroup"] == group].iloc[0]
  return optics.iloc[0]


def particle_groups(particles: pd.DataFrame, optics: pd.DataFrame) -> np.ndarray:
  """Optics group of each particle row (the optics table's first group when rows carry none)."""
  if "rlnOpticsGroup" in particles.columns:
    return particles["rlnOpticsGroup"].to_numpy()
  return np.full(len(particles), optics["rlnOpticsGroup"].iloc[0] if "rlnOpticsGroup" in optics.columns else 1)


# ---------------------------------------------------------------------------- tables


def optics_table(pixel_size: float, image_size: int, voltage_kv: float = VOLTAGE_KV,
                 cs_mm: float = SPHERICAL_ABERRATION_MM, amplitude_contrast: float = AMPLITUDE_CONTRAST) -> pd.DataFrame:
  """RELION 3.1 optics block with one group."""
  return pd.DataFrame({
      "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [float(voltage_kv)],
      "rlnSphericalAberration": [float(cs_mm)], "rlnAmplitudeContrast": [float(amplitude_contrast)],
      "rlnImagePixelSize": [float(pixel_size)], "rlnImageSize": [int(image_size)], "rlnImageDimensionality": [2],
  })


def particles_table(params: ParticleParams, ctf: bool, stack_name: str = "noisy.mrcs") -> pd.DataFrame:
  """RELION 3.1 particles block from sampled parameters (one row per image, in order); without
  CTF the defocus columns are left out (so `project` and readers know there is none)."""
  p = params.astype(np.float64)
  n = len(p.rot_in_degrees)
  table = {
      "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
      "rlnAngleRot": p.rot_in_degrees, "rlnAngleTilt": p.tilt_in_degrees, "rlnAnglePsi": p.psi_in_degrees,
      "rlnOriginXAngst": p.origin_x_in_angstroms, "rlnOriginYAngst": p.origin_y_in_angstroms,
  }
  if ctf:
    table.update({"rlnDefocusU": p.defocus_u_in_angstroms, "rlnDefocusV": p.defocus_v_in_angstroms,
                  "rlnDefocusAngle": p.defocus_angle_in_degrees, "rlnPhaseShift": p.phase_shift_in_degrees})
  table["rlnOpticsGroup"] = np.ones(n, np.int64)
  return pd.DataFrame(table)


def _column(df: pd.DataFrame, name: str, default: float, n: int) -> np.ndarray:
  if name in df.columns:
    return pd.to_numeric(df[name], errors="raise").to_numpy(np.float64)
  return np.full(n, default, np.float64)


def params_from_table(particles: pd.DataFrame, pixel_size: float) -> ParticleParams:
  """RELION columns -> (N,) float32 parameters (RELION 3.0 pixel origins converted with `pixel_size`,
  Å); a psi of -999 (RELION's 'unset') is taken as 0; no rlnDefocusV: astigmatism-free (V = U)."""
  n = len(particles)
  psi = _column(particles, "rlnAnglePsi", 0.0, n)
  defocus_u = _column(particles, "rlnDefocusU", 0.0, n)
  origin = []
  for axis in ("X", "Y"):
    if f"rlnOrigin{axis}Angst" in particles.columns:
      origin.append(_column(particles, f"rlnOrigin{axis}Angst", 0.0, n))
    else:
      origin.append(_column(particles, f"rlnOrigin{axis}", 0.0, n) * pixel_size)
  return ParticleParams(
      rot_in_degrees=_column(particles, "rlnAngleRot", 0.0, n),
      tilt_in_degrees=_column(particles, "rlnAngleTilt", 0.0, n),
      psi_in_degrees=np.where(psi == -999.0, 0.0, psi),
      origin_x_in_angstroms=origin[0], origin_y_in_angstroms=origin[1],
      defocus_u_in_angstroms=defocus_u,
      defocus_v_in_angstroms=_column(particles, "rlnDefocusV", 0.0, n) if "rlnDefocusV" in particles else defocus_u,
      defocus_angle_in_degrees=_column(particles, "rlnDefocusAngle", 0.0, n),
      phase_shift_in_degrees=_column(particles, "rlnPhaseShift", 0.0, n),
  ).astype(np.float32)
