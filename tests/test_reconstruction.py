"""3D reconstruction with known poses: conventions, accuracy against the truth, half-map FSC, experiment."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cryojax.simulator as cxs
from cryojax_denoise import io
from cryojax_denoise.reconstruction import fourier, fsc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APIX = 4.0
OPTICS = pd.DataFrame(dict(rlnOpticsGroup=[1], rlnVoltage=[300.0], rlnSphericalAberration=[2.7],
                           rlnAmplitudeContrast=[0.1], rlnImagePixelSize=[APIX], rlnImageSize=[32],
                           rlnImageDimensionality=[2]))


def _blobs(d: int, seed: int = 0) -> np.ndarray:
  """An asymmetric map of Gaussian blobs (D, D, D), zero near the box edge."""
  rng = np.random.default_rng(seed)
  x = np.arange(d) - d // 2
  zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
  vol = np.zeros((d, d, d), np.float32)
  for _ in range(12):
    c, s = rng.uniform(-d / 4, d / 4, 3), rng.uniform(1.0, 2.5)
    vol += rng.uniform(0.5, 1.5) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * s * s))
  return vol


def _table(n: int, seed: int, ctf: bool, max_shift: float) -> pd.DataFrame:
  """A RELION particles table with uniform random poses, origins (Å) and astigmatic defocus."""
  rng = np.random.default_rng(seed)
  t = pd.DataFrame(dict(rlnAngleRot=rng.uniform(-180, 180, n), rlnAngleTilt=np.rad2deg(np.arccos(rng.uniform(-1, 1, n))),
                        rlnAnglePsi=rng.uniform(-180, 180, n), rlnOriginXAngst=rng.uniform(-max_shift, max_shift, n),
                        rlnOriginYAngst=rng.uniform(-max_shift, max_shift, n), rlnOpticsGroup=1))
  if ctf:
    du = rng.uniform(10000, 25000, n)
    t["rlnDefocusU"], t["rlnDefocusV"], t["rlnDefocusAngle"] = du, du - rng.uniform(0, 1500, n), rng.uniform(0, 180, n)
  return t


def _project(vol: np.ndarray, table: pd.DataFrame, ctf: bool) -> np.ndarray:
  """Projections with cryojax at RELION poses (angles negated, offset = −origin), optional CTF."""
  d = vol.shape[0]
  volume = cxs.FourierVoxelGridVolume.from_real_voxel_grid(jnp.asarray(vol), pad_scale=2)
  config = cxs.BasicImageConfig((d, d), APIX, 300.0)

  def one(rot, tilt, psi, ox, oy, du, dv, ang):
    pose = cxs.EulerAnglePose(offset_x_in_angstroms=-ox, offset_y_in_angstroms=-oy, phi_angle=-rot,
                              theta_angle=-tilt, psi_angle=-psi)
    theory = None
    if ctf:
      theory = cxs.ContrastTransferTheory(cxs.AstigmaticCTF(
          defocus_in_angstroms=(du + dv) / 2, astigmatism_in_angstroms=du - dv, astigmatism_angle=ang,
          spherical_aberration_in_mm=2.7), amplitude_contrast_ratio=0.1)
    return cxs.make_image_model(volume, config, pose, theory).simulate()

  cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
  args = [table[c].to_numpy() for c in cols]
  args += [table[c].to_numpy() for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")] if ctf else \
      [np.zeros(len(table))] * 3
  return np.asarray(jax.jit(jax.vmap(one))(*(jnp.asarray(a, jnp.float32) for a in args)), np.float32)


@pytest.fixture(scope="module")
def truth():
  return _blobs(32)


@pytest.fixture(scope="module")
def ctf_data(truth):
  table = _table(3000, seed=1, ctf=True, max_shift=8.0)
  return table, _project(truth, table, ctf=True)


def test_relion_matrix_is_cryojax_rotation_with_negated_angles():
  rng = np.random.default_rng(0)
  rot, tilt, psi = rng.uniform(-180, 180, (3, 5))
  a = fourier.relion_matrices(rot, tilt, psi)
  for i in range(5):
    pose = cxs.EulerAnglePose(phi_angle=-rot[i], theta_angle=-tilt[i], psi_angle=-psi[i])
    np.testing.assert_allclose(a[i], np.asarray(pose.rotation.as_matrix()), atol=1e-5)
    np.testing.assert_allclose(a[i] @ a[i].T, np.eye(3), atol=1e-12)


def test_clean_ctf_free_reconstruction_matches_truth(truth):
  table = _table(2000, seed=0, ctf=False, max_shift=0.0)
  images = _project(truth, table, ctf=False)
  vol = fourier.reconstruct(images, table, OPTICS, APIX)
  curve = fsc.fsc_curve(vol, truth, mask=False)
  worst = fsc.fsc_at(curve, APIX, 4 * APIX)  # up to half Nyquist
  print("CTF-free FSC vs truth per shell:", np.round(curve, 3), "min to half Nyquist:", worst)
  assert worst >= 0.9
  # Wrong handedness (angles not negated) must fail: the test can tell conventions apart.
  mirrored = table.assign(rlnAngleRot=-table.rlnAngleRot, rlnAngleTilt=-table.rlnAngleTilt,
                          rlnAnglePsi=-table.rlnAnglePsi)
  bad = fourier.reconstruct(images[:500], mirrored[:500], OPTICS, APIX)
  assert fsc.fsc_at(fsc.fsc_curve(bad, truth, mask=False), APIX, 4 * APIX) < 0.5


def test_ctf_and_shifts_corrected(truth, ctf_data):
  table, images = ctf_data
  vol = fourier.reconstruct(images, table, OPTICS, APIX)
  curve = fsc.fsc_curve(vol, truth, mask=False)
  worst = fsc.fsc_at(curve, APIX, 4 * APIX)
  print("CTF + shifts FSC vs truth per shell:", np.round(curve, 3), "min to half Nyquist:", worst)
  assert worst >= 0.8
  # Ignoring the CTF or the origins must be visibly worse.
  n = 1000
  no_ctf = fourier.reconstruct(images[:n], table[:n], OPTICS, APIX, ctf=False)
  assert fsc.fsc_at(fsc.fsc_curve(no_ctf, truth, mask=False), APIX, 4 * APIX) < 0.5
  unshifted = table[:n].assign(rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
  bad = fourier.reconstruct(images[:n], unshifted, OPTICS, APIX)
  assert fsc.fsc_at(fsc.fsc_curve(bad, truth, mask=False), APIX, 4 * APIX) < 0.8


def test_batches_and_padding_do_not_change_the_map(truth, ctf_data):
  table, images = ctf_data
  a = fourier.reconstruct(images[:37], table[:37], OPTICS, APIX, batch_size=8)
  b = fourier.reconstruct(images[:37], table[:37], OPTICS, APIX, batch_size=64)
  np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())


def test_fsc_basics(truth):
  c = fsc.fsc_curve(truth, truth)
  np.testing.assert_allclose(c, 1.0, atol=1e-5)
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((2, 32, 32, 32)).astype(np.float32)
  c = fsc.fsc_curve(noise[0], noise[1])
  assert np.abs(c[4:]).max() < 0.25
  assert fsc.fsc_resolution(c, APIX, 0.143) > 4 * APIX
  assert fsc.fsc_resolution(np.ones(17), APIX) == pytest.approx(2 * APIX)


def test_half_map_resolution_worsens_as_snr_falls(ctf_data):
  table, clean = ctf_data
  n = 1500
  clean = clean[:n] / clean[:n].std()
  rng = np.random.default_rng(5)
  noise = rng.standard_normal(clean.shape).astype(np.float32)
  res = {}
  for snr in (1.0, 0.05, 0.005):
    out = fourier.half_map_resolution(clean + noise / np.sqrt(snr), table[:n], OPTICS, APIX, seed=0)
    res[snr] = out["resolution_A"]
    assert len(out["fsc"]) == len(out["freq"]) == 17
  print("half-map FSC 0.143 resolution (Å) by SNR:", res)
  assert res[1.0] < res[0.05] < res[0.005]
  assert res[1.0] < 3 * APIX


def test_half_maps_split_and_full_map(ctf_data, truth):
  table, images = ctf_data
  maps = fourier.half_maps(images[:400], table[:400], OPTICS, APIX, seed=3)
  assert maps.split.sum() == 200 and set(np.unique(maps.split)) == {0, 1}
  again = fourier.random_halves(400, 3)
  np.testing.assert_array_equal(maps.split, again)
  for v in (maps.half1, maps.half2, maps.full):
    assert v.shape == (32, 32, 32) and v.dtype == np.float32
  c_full = fsc.fsc_at(fsc.fsc_curve(maps.full, truth), APIX, 4 * APIX)
  c_half = fsc.fsc_at(fsc.fsc_curve(maps.half1, truth), APIX, 4 * APIX)
  assert c_full >= c_half - 1e-3


def test_experiment_writes_maps_and_fsc(tmp_path, truth, ctf_data):
  table, images = ctf_data
  n = 600
  rng = np.random.default_rng(0)
  noisy = images[:n] / images[:n].std() + rng.standard_normal(images[:n].shape).astype(np.float32)
  io.write_stack(str(tmp_path / "particles.mrcs"), noisy, APIX)
  io.write_volume(str(tmp_path / "truth.mrc"), truth, APIX)
  parts = table[:n].copy()
  parts["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
  io.write_star(str(tmp_path / "particles.star"), OPTICS, parts)
  work = tmp_path / "run"
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=reconstruct", f"--workdir={work}",
         f"--config.star={tmp_path / 'particles.star'}", f"--config.reference={tmp_path / 'truth.mrc'}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  for name in ("half1.mrc", "half2.mrc", "map.mrc", "fsc.json", "fsc.png", "config.json"):
    assert (work / name).exists(), name
  vol, size = io.read_volume(str(work / "map.mrc"))
  assert vol.shape == (32, 32, 32) and size == pytest.approx(APIX)
  result = json.loads((work / "fsc.json").read_text())
  assert len(result["freq_per_A"]) == len(result["fsc"]) == 17
  assert 2 * APIX <= result["resolution_A"] < 8 * APIX
  assert 2 * APIX <= result["reference_resolution_A"] < 8 * APIX
  # Bad input: one error line, exit 2, nothing written.
  bad = tmp_path / "bad"
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=reconstruct",
                        f"--workdir={bad}", f"--config.star={tmp_path / 'missing.star'}"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 2 and "missing.star" in out.stderr and not bad.exists()
