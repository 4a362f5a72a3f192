"""Particle parameters in the reconstruction kernel's form: RELION columns (poses, origins, CTF, optics
per particle) as a `ParticleParams` of flat (N,) float32 arrays, ready to stream through the jitted
back-projection of `reconstruction.fourier` (see its docstring for the conventions).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cryojax.constants import wavelength_from_kilovolts

from cryojax_denoise.data.relion import relion_matrix, relion_to_cryojax_ctf
from cryojax_denoise.errors import InputError


# ---------------------------------------------------------------------------- poses and CTF


class ParticleParams(NamedTuple):
  """Per-particle arrays (N,) or (N, ...) that the insertion kernel needs.

  rows: (N, 2, 3) first two rows of A (map directions of the image x and y axes);
  shift: (N, 2) centring shift (x, y) in Å = rlnOriginX/YAngst; defocus, astigmatism (Å),
  angle (deg) in cryojax's convention (`relion_to_cryojax_ctf`), cs (mm), wavelength (Å), ac (amplitude contrast), phase (deg); ctf: (N,) 1 where the
  CTF is applied, 0 where the particle is CTF-free.
  """

  rows: np.ndarray
  shift: np.ndarray
  defocus: np.ndarray
  astigmatism: np.ndarray
  angle: np.ndarray
  cs: np.ndarray
  wavelength: np.ndarray
  ac: np.ndarray
  phase: np.ndarray
  ctf: np.ndarray


def _column(df: pd.DataFrame, key: str, default=None, where: str = "particles") -> np.ndarray:
  if key in df.columns:
    values = pd.to_numeric(df[key], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(values).all():
      raise InputError(f"{where}: column {key} has missing or non-numeric values")
    return values
  if default is None:
    raise InputError(f"{where}: missing column {key}")
  return np.full(len(df), float(default))


def particle_params(particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float,
                    ctf: bool | None = None) -> ParticleParams:
  """Reads poses, origins and CTF parameters of a RELION particles table (+ optics table).

  `ctf=None` applies the CTF when the table has rlnDefocusU; `ctf=False` ignores it (CTF-free
  images); `ctf=True` requires it. Origins default to 0 (rlnOriginXAngst, or rlnOriginX in
  pixels for RELION 3.0 tables). Raises InputError naming the missing column.
  """
  n = len(particles)
  if n == 0:
    raise InputError("particles: table is empty")
  rot = _column(particles, "rlnAngleRot")
  tilt = _column(particles, "rlnAngleTilt")
  psi = _column(particles, "rlnAnglePsi")
  psi = np.where(psi == -999.0, 0.0, psi)  # RELION's "unset"
  a = relion_matrix(rot, tilt, psi)
  if "rlnOriginXAngst" in particles.columns or "rlnOriginYAngst" in particles.columns:
    sx = _column(particles, "rlnOriginXAngst", 0.0)
    sy = _column(particles, "rlnOriginYAngst", 0.0)
  else:
    sx = _column(particles, "rlnOriginX", 0.0) * pixel_size
    sy = _column(particles, "rlnOriginY", 0.0) * pixel_size
  has_ctf = "rlnDefocusU" in particles.columns
  use_ctf = has_ctf if ctf is None else bool(ctf)
  if use_ctf:
    du = _column(particles, "rlnDefocusU")
    dv = _column(particles, "rlnDefocusV", None) if "rlnDefocusV" in particles.columns else du
    angle = _column(particles, "rlnDefocusAngle", 0.0)
    phase = _column(particles, "rlnPhaseShift", 0.0)
    per = _optics_per_particle(particles, optics)
    volt = _column(per, "rlnVoltage", where="optics")
    cs = _column(per, "rlnSphericalAberration", where="optics")
    ac = _column(per, "rlnAmplitudeContrast", where="optics")
    if (volt <= 0).any():
      raise InputError("optics: rlnVoltage must be positive")
    if ((ac < 0) | (ac >= 1)).any():
      raise InputError("optics: rlnAmplitudeContrast must be in [0, 1)")
    wavelength = np.asarray(jax.vmap(wavelength_from_kilovolts)(jnp.asarray(volt, jnp.float32)), np.float64)
  else:
    du = dv = angle = phase = np.zeros(n)
    cs, wavelength, ac = np.zeros(n), np.full(n, 0.02), np.zeros(n)
  f32 = lambda v: np.asarray(v, np.float32)
  defocus, astigmatism, angle = relion_to_cryojax_ctf(du, dv, angle)
  return ParticleParams(rows=f32(a[:, :2, :]), shift=f32(np.stack([sx, sy], -1)), defocus=f32(defocus),
                        astigmatism=f32(astigmatism), angle=f32(angle), cs=f32(np.maximum(cs, 0.0)),
                        wavelength=f32(wavelength), ac=f32(ac), phase=f32(phase),
                        ctf=np.full(n, 1.0 if use_ctf else 0.0, np.float32))


def _optics_per_particle(particles: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
  """Optics columns broadcast to one row per particle (by rlnOpticsGroup); particle columns win."""
  keys = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
  if all(k in particles.columns for k in keys):
    return particles
  if optics is None or len(optics) == 0:
    raise InputError("optics: table missing; the CTF needs rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast")
  if "rlnOpticsGroup" in particles.columns and "rlnOpticsGroup" in optics.columns and len(optics) > 1:
    groups = pd.to_numeric(particles["rlnOpticsGroup"]).to_numpy()
    table = optics.set_index(pd.to_numeric(optics["rlnOpticsGroup"]).to_numpy())
    missing = set(groups) - set(table.index)
    if missing:
      raise InputError(f"optics: no optics group {sorted(missing)[0]} for some particles")
    return table.loc[groups].reset_index(drop=True)
  return pd.concat([optics.iloc[[0]]] * len(particles), ignore_index=True)
