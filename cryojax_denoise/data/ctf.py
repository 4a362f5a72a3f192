"""Per-particle CTF values on the FFT grid from RELION rows, for denoisers that use the CTF.

    ctf = ctf_grid(particles, optics, image_size, pixel_size)   # (N, H, W) float32, or None

Layout: the unshifted FFT grid of an (H, W) image (np.fft.fftfreq order, rows = ky, columns = kx),
the same as `jnp.fft.fft2(image)`, so `ifft2(fft2(x) * ctf[i])` applies particle i's CTF. Values
are RELION's CTF (its sign and astigmatism angle: cryojax's AstigmaticCTF at
`relion.relion_to_cryojax_ctf(U, V, angle)` times `RELION_CTF_SIGN`; tests/test_ctf_convention.py),
with each particle's optics group's voltage, Cs and amplitude contrast; no envelope. A particles
table without rlnDefocusU has no CTF: `ctf_grid` returns None (the identity).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from cryojax_denoise.data import relion


def has_ctf(particles: pd.DataFrame | None) -> bool:
  """Whether a particles table carries CTF parameters (rlnDefocusU)."""
  return particles is not None and "rlnDefocusU" in particles.columns


@partial(jax.jit, static_argnames=("shape",))
def _grid(defocus_u, defocus_v, angle, phase, voltage_kv, cs_mm, ac, pixel_size, *, shape):
  """(B, H, W) RELION CTF values of B particles (all arguments (B,), Å / degrees / kV / mm)."""
  import cryojax.simulator as cxs
  from cryojax.constants import wavelength_from_kilovolts

  h, w = shape
  ky, kx = jnp.meshgrid(jnp.fft.fftfreq(h), jnp.fft.fftfreq(w), indexing="ij")

  def one(u, v, a, ph, kv, cs, amp, px):
    freqs = jnp.stack([kx, ky], -1) / px
    defocus, astig, cangle = relion.relion_to_cryojax_ctf(u, v, a)
    ctf = cxs.AstigmaticCTF(defocus, astig, cangle, cs)
    return relion.RELION_CTF_SIGN * ctf(freqs, wavelength_from_kilovolts(kv), amplitude_contrast_ratio=amp,
                                        phase_shift=ph)

  return jax.vmap(one)(defocus_u, defocus_v, angle, phase, voltage_kv, cs_mm, ac, pixel_size)


def ctf_params(particles: pd.DataFrame, optics: pd.DataFrame | None, pixel_size: float) -> dict[str, np.ndarray]:
  """Per-particle (N,) float32 arrays: defocus_u/v (Å), defocus_angle, phase_shift (deg), voltage_kv,
  cs_mm, amplitude_contrast (from each row's optics group) and pixel_size (Å)."""
  n = len(particles)
  p = relion.params_from_table(particles, pixel_size)
  groups = relion.particle_groups(particles, optics) if optics is not None and len(optics) else np.ones(n)
  out = {"defocus_u": p.defocus_u_in_angstroms, "defocus_v": p.defocus_v_in_angstroms,
         "defocus_angle": p.defocus_angle_in_degrees, "phase_shift": p.phase_shift_in_degrees}
  for key, column, default in (("voltage_kv", "rlnVoltage", relion.VOLTAGE_KV),
                               ("cs_mm", "rlnSphericalAberration", relion.SPHERICAL_ABERRATION_MM),
                               ("amplitude_contrast", "rlnAmplitudeContrast", relion.AMPLITUDE_CONTRAST)):
    values = np.full(n, default, np.float32)
    if optics is not None and len(optics):
      for g in np.unique(groups):
        values[groups == g] = float(relion.optics_row(optics, g).get(column, default))
    out[key] = values
  out["pixel_size"] = np.full(n, float(pixel_size), np.float32)
  return out


def ctf_grid(particles: pd.DataFrame | None, optics: pd.DataFrame | None, image_size: int, pixel_size: float,
             batch_size: int = 256) -> np.ndarray | None:
  """(N, image_size, image_size) float32 RELION CTF of each particle row, or None without
  rlnDefocusU. Computed in jitted batches of `batch_size` (one compile per shape)."""
  if not has_ctf(particles):
    return None
  p = ctf_params(particles, optics, pixel_size)
  n, size = len(particles), int(image_size)
  out = np.empty((n, size, size), np.float32)
  keys = ("defocus_u", "defocus_v", "defocus_angle", "phase_shift", "voltage_kv", "cs_mm",
          "amplitude_contrast", "pixel_size")
  batch = max(1, min(int(batch_size), n))
  for start in range(0, n, batch):
    stop = min(start + batch, n)
    idx = np.resize(np.arange(start, stop), batch)  # pad the last batch: one shape, one compile
    args = [jnp.asarray(p[k][idx]) for k in keys]
    out[start:stop] = np.asarray(_grid(*args, shape=(size, size)))[: stop - start]
  return out
