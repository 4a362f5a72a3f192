"""Our CTF is RELION's: defocus U at rlnDefocusAngle from +kx (x = column, y = row), RELION's sign.

Reference: RELION's CTF written out in NumPy, independent of cryojax and of our helper:
  ΔF(φ) = (U+V)/2 + (U−V)/2 · cos(2(φ − angle)), φ = atan2(ky, kx),
  γ = π λ ΔF k² − π/2 Cs λ³ k⁴ + atan(Q/√(1−Q²)) + phase shift,  CTF = sin(γ)
(RELION's ctf.h: −(√(1−Q²)·sin a − Q·cos a), a = π λ (−ΔF) k² + π/2 Cs λ³ k⁴ − phase shift,
ΔF(φ) with φ = atan2(Y, X), X from the column index, Y from the row index). λ is cryojax's (it differs from
RELION's 12.2643247/√(V(1 + 0.978466e-6 V)) by 3e-5 relative, which shifts the phase at high
frequency by ~0.01 rad; checked separately), so the comparisons test geometry and sign.
Checked for the cryojax CTF we build, the reconstruction's CTF and the simulator's images.
"""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cryojax.simulator as cxs
from cryojax.constants import wavelength_from_kilovolts
from cryojax_denoise.data.projector import Projector
from cryojax_denoise.data.relion import ParticleParams, RELION_CTF_SIGN, relion_to_cryojax_ctf
from cryojax_denoise.reconstruction import fourier

U, V, CS, KV, AC = 21000.0, 16000.0, 2.7, 300.0, 0.1
ANGLES = (0.0, 30.0, 90.0, 137.0)
LAMBDA = float(wavelength_from_kilovolts(KV))  # Å


def _relion_ctf(kx, ky, u, v, angle_deg, cs_mm=CS, ac=AC, phase_deg=0.0):
  """RELION's CTF at frequencies (kx, ky) in 1/Å (NumPy, float64)."""
  lam = LAMBDA
  k2 = kx**2 + ky**2
  dfoc = 0.5 * (u + v) + 0.5 * (u - v) * np.cos(2.0 * (np.arctan2(ky, kx) - np.deg2rad(angle_deg)))
  gamma = (np.pi * lam * dfoc * k2 - 0.5 * np.pi * cs_mm * 1e7 * lam**3 * k2**2
           + np.arctan(ac / np.sqrt(1.0 - ac**2)) + np.deg2rad(phase_deg))
  return np.sin(gamma)


def test_wavelength_is_relions():
  volts = KV * 1e3
  relion = 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))
  assert abs(LAMBDA / relion - 1.0) < 1e-4


def _grid(n, pixel_size):
  """(ky, kx) of an (n, n) image's full FFT: rows are ky, columns kx, in 1/Å."""
  f = np.fft.fftfreq(n, pixel_size)
  return np.meshgrid(f, f, indexing="ij")


def _zero_crossings(values):
  return int(np.sum(np.diff(np.sign(values)) != 0))


@pytest.mark.parametrize("angle", ANGLES)
def test_helper_gives_relion_ctf(angle):
  """cryojax AstigmaticCTF at relion_to_cryojax_ctf(U, V, angle), times RELION_CTF_SIGN, is
  RELION's CTF at every frequency (not only its zeros), with and without a phase shift."""
  n, px = 64, 1.5
  ky, kx = _grid(n, px)
  freqs = jnp.asarray(np.stack([kx, ky], -1), jnp.float32)
  defocus, astig, cangle = relion_to_cryojax_ctf(U, V, angle)
  for phase in (0.0, 40.0):
    ours = RELION_CTF_SIGN * np.asarray(cxs.AstigmaticCTF(defocus, astig, cangle, CS)(
        freqs, LAMBDA, amplitude_contrast_ratio=AC, phase_shift=phase))
    ref = _relion_ctf(kx, ky, U, V, angle, phase_deg=phase)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    # Without the mapping (angle passed straight, cryojax's sign) it is not RELION's CTF.
    raw = np.asarray(cxs.AstigmaticCTF(defocus, astig, angle, CS)(
        freqs, LAMBDA, amplitude_contrast_ratio=AC, phase_shift=phase))
    assert np.abs(raw - ref).max() > 0.5


def test_defocus_u_along_kx_at_angle_zero():
  """At rlnDefocusAngle 0 the larger defocus U acts along kx (columns): more CTF zeros along
  the kx axis than along ky, out to 1/4 Å⁻¹ (finely sampled lines, no aliasing)."""
  k = np.linspace(0.0, 0.25, 2048)
  zero = np.zeros_like(k)
  assert _zero_crossings(_relion_ctf(k, zero, U, V, 0.0)) > _zero_crossings(_relion_ctf(zero, k, U, V, 0.0))
  lines = np.concatenate([np.stack([k, zero], -1), np.stack([zero, k], -1)])  # (kx, ky): x axis, then y axis
  params = fourier.particle_params(_table(0.0), _optics(1.0), 1.0)
  ours = np.asarray(fourier._ctf_values(_one(params), jnp.asarray(lines, jnp.float32)))
  along_x, along_y = _zero_crossings(ours[:2048]), _zero_crossings(ours[2048:])
  assert along_x > along_y + 5, (along_x, along_y)


def _table(angle, n=1):
  return pd.DataFrame({"rlnAngleRot": [0.0] * n, "rlnAngleTilt": [0.0] * n, "rlnAnglePsi": [0.0] * n,
                       "rlnDefocusU": [U] * n, "rlnDefocusV": [V] * n, "rlnDefocusAngle": [angle] * n,
                       "rlnOpticsGroup": [1] * n})


def _optics(px, size=32):
  return pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [KV], "rlnSphericalAberration": [CS],
                       "rlnAmplitudeContrast": [AC], "rlnImagePixelSize": [px], "rlnImageSize": [size],
                       "rlnImageDimensionality": [2]})


def _one(params):
  return fourier.ParticleParams(*(np.asarray(f)[0] for f in params))


@pytest.mark.parametrize("angle", ANGLES)
def test_reconstruction_ctf_is_relion(angle):
  """The CTF the reconstruction corrects with (particle_params -> _ctf_values) is RELION's."""
  n, px = 64, 1.5
  ky, kx = _grid(n, px)
  params = fourier.particle_params(_table(angle), _optics(px), px)
  ours = np.asarray(fourier._ctf_values(_one(params), jnp.asarray(np.stack([kx, ky], -1).reshape(-1, 2),
                                                                  jnp.float32))).reshape(n, n)
  np.testing.assert_allclose(ours, _relion_ctf(kx, ky, U, V, angle), atol=2e-3)


def test_simulated_images_carry_relion_ctf():
  """End to end, in image axes: FFT(projection with CTF) / FFT(projection without) of the
  simulator's Projector (used by simulate_dataset, Simulator, project and make_pairs) is
  RELION's CTF on the (H, W) image's frequency grid, rows = ky, columns = kx."""
  n, px = 24, 2.0
  rng = np.random.default_rng(0)
  volume = rng.normal(size=(n, n, n)).astype(np.float32)
  k = len(ANGLES)
  params = ParticleParams.zeros(k)._replace(
      rot_in_degrees=np.array([10.0, 50.0, 120.0, 200.0], np.float32),
      tilt_in_degrees=np.array([20.0, 80.0, 100.0, 150.0], np.float32),
      defocus_u_in_angstroms=np.full(k, U, np.float32), defocus_v_in_angstroms=np.full(k, V, np.float32),
      defocus_angle_in_degrees=np.array(ANGLES, np.float32))
  opts = dict(voltage_kv=KV, cs_mm=CS, amplitude_contrast=AC)
  with_ctf = np.asarray(Projector(volume, n, px, ctf=True, **opts)(params), np.float64)
  without = np.asarray(Projector(volume, n, px, ctf=False, **opts)(params), np.float64)
  ky, kx = _grid(n, px)
  inside = np.hypot(kx, ky) < 0.8 * 0.5 / px  # away from the Nyquist row/column
  for i, angle in enumerate(ANGLES):
    fw, fo = np.fft.fft2(with_ctf[i]), np.fft.fft2(without[i])
    ok = inside & (np.abs(fo) > 0.05 * np.abs(fo).max())
    assert ok.sum() > 100
    ratio = np.real(fw[ok] / fo[ok])
    np.testing.assert_allclose(ratio, _relion_ctf(kx, ky, U, V, angle)[ok], atol=1e-2, err_msg=f"angle {angle}")
