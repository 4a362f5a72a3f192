"""Simulation: exact SNR, uniform poses, RELION pose convention, seeding, the simulate experiment
and its volume=/structure= routes, and project() reproducing the simulated clean images."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import stats

from cryojax_denoise import io
from cryojax_denoise.data import phantom, simulate
from cryojax_denoise.data.maps import fit_volume, load_source, resample_volume
from cryojax_denoise.data.projector import Projector, project
from cryojax_denoise.data.relion import ParticleParams, relion_angles_from_matrix, relion_matrix
from cryojax_denoise.errors import InputError

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SIZE = 64


@pytest.fixture(scope="module")
def source():
  return load_source(image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def dataset(source):
  return simulate.simulate_dataset(source, 24, SIZE, 0.1, seed=5, max_shift_A=8.0)


def test_phantom_is_a_deterministic_many_domain_molecule():
  atoms = phantom.phantom_atoms(3)
  assert atoms.shape[0] > 2000 and atoms.shape[1] == 3
  np.testing.assert_array_equal(atoms, phantom.phantom_atoms(3))
  assert not np.array_equal(atoms[:100], phantom.phantom_atoms(4)[:100])
  bonds = np.linalg.norm(np.diff(atoms, axis=0), axis=1)
  assert np.median(bonds) == pytest.approx(phantom.BOND_A, abs=1e-6)  # chains of C-alpha spacing
  np.testing.assert_allclose(atoms.mean(axis=0), 0.0, atol=1e-6)
  # Asymmetric: the inertia tensor's principal moments differ.
  moments = np.linalg.eigvalsh(np.cov(atoms.T))
  assert moments[-1] > 1.2 * moments[0]


def test_phantom_fills_about_60_percent_of_the_box(source):
  vol = source.volume
  assert vol.shape == (SIZE, SIZE, SIZE) and vol.dtype == np.float32
  proj = vol.sum(axis=0)
  support = np.argwhere(proj > 0.02 * proj.max())
  extent = (support.max(axis=0) - support.min(axis=0) + 1).max() / SIZE
  assert 0.35 < extent < 0.75
  # Rendering conserves the atoms' total density (unit amplitudes, one per atom).
  assert vol.sum() * source.pixel_size**3 == pytest.approx(len(phantom.phantom_atoms(0)), rel=0.01)


def test_snr_is_exact_and_clean_is_standardised(dataset):
  assert dataset.noisy.shape == dataset.clean.shape == (24, SIZE, SIZE)
  assert dataset.noisy.dtype == dataset.clean.dtype == np.float32
  assert abs(float(dataset.clean.mean())) < 1e-4
  assert float(dataset.clean.astype(np.float64).var()) == pytest.approx(1.0, rel=1e-4)
  assert simulate.measured_snr(dataset.noisy, dataset.clean) == pytest.approx(0.1, rel=0.05)
  assert np.var(dataset.noisy - dataset.clean) == pytest.approx(dataset.noise_std**2, rel=0.05)


def test_simulator_batches_have_the_requested_snr(source):
  sim = simulate.Simulator(source, SIZE, calibration_size=128, calibration_batch=32)
  noisy, clean = sim.batch(jax.random.PRNGKey(0), 32, 0.5)
  assert noisy.shape == clean.shape == (32, SIZE, SIZE) and noisy.dtype == np.float32
  assert abs(float(clean.mean())) < 0.1 and float(clean.var()) == pytest.approx(1.0, rel=0.2)
  assert simulate.measured_snr(noisy, clean) == pytest.approx(0.5, rel=0.1)
  snrs = np.where(np.arange(32) < 16, 0.05, 5.0).astype(np.float32)
  noisy, clean = sim.batch(jax.random.PRNGKey(1), 32, snrs)
  noise_var = np.var(np.asarray(noisy - clean), axis=(1, 2))
  assert noise_var[:16].mean() / noise_var[16:].mean() == pytest.approx(100.0, rel=0.1)
  # Same key -> same batch; another key -> other images.
  again = sim.batch(jax.random.PRNGKey(1), 32, snrs)
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(noisy))
  other = sim.batch(jax.random.PRNGKey(2), 32, snrs)
  assert not np.allclose(np.asarray(other[1]), np.asarray(clean))


def test_poses_are_uniform_on_so3(source):
  sim = simulate.Simulator(source, SIZE, calibrate=False)
  p = sim.sample_params(jax.random.PRNGKey(7), 4000).astype(np.float64)
  rot, tilt, psi = p.rot_in_degrees, p.tilt_in_degrees, p.psi_in_degrees
  assert stats.kstest(np.cos(np.deg2rad(tilt)), stats.uniform(-1, 2).cdf).pvalue > 1e-3
  assert stats.kstest(rot, stats.uniform(-180, 360).cdf).pvalue > 1e-3
  assert stats.kstest(psi, stats.uniform(-180, 360).cdf).pvalue > 1e-3
  # Haar measure: the mean rotation matrix vanishes (each entry has sd 1/sqrt(3 n)).
  mats = relion_matrix(rot, tilt, psi)
  assert np.abs(mats.mean(axis=0)).max() < 5 / np.sqrt(3 * 4000)
  lo, hi = simulate.DEFOCUS_RANGE_A
  du, dv = p.defocus_u_in_angstroms, p.defocus_v_in_angstroms
  assert lo <= ((du + dv) / 2).min() and ((du + dv) / 2).max() <= hi
  assert np.all(du >= dv) and np.all(du - dv <= simulate.ASTIGMATISM_A)


def test_angles_roundtrip_through_the_relion_matrix():
  rng = np.random.default_rng(0)
  rot, tilt, psi = rng.uniform(-180, 180, 50), rng.uniform(1, 179, 50), rng.uniform(-180, 180, 50)
  mats = relion_matrix(rot, tilt, psi)
  back = jax.jit(jax.vmap(relion_angles_from_matrix))(mats.astype(np.float32))
  np.testing.assert_allclose(relion_matrix(*[np.asarray(b) for b in back]), mats, atol=1e-4)


def test_projection_follows_relion_conventions():
  """Gaussian blobs at known map positions r appear at image point (A r)_xy - origin, with A RELION's
  Euler_angles2matrix, x along columns and y along rows, the centre at pixel N // 2."""
  size, px, sigma = SIZE, 2.0, 2.5
  blobs = np.array([[20.0, 0.0, 0.0], [0.0, 12.0, -6.0], [-8.0, -14.0, 16.0]])
  weights = np.array([1.0, 2.0, 3.0])
  vol = phantom.render_atoms(blobs, weights, np.full(3, sigma**2), size, px)
  projector = Projector(vol, size, px, ctf=False)
  rng = np.random.default_rng(1)
  n = 24  # the batch shape of test_project_reproduces_the_clean_images: one compile for both
  params = ParticleParams.zeros(n)._replace(
      rot_in_degrees=rng.uniform(-180, 180, n), tilt_in_degrees=rng.uniform(0, 180, n),
      psi_in_degrees=rng.uniform(-180, 180, n), origin_x_in_angstroms=rng.uniform(-6, 6, n),
      origin_y_in_angstroms=rng.uniform(-6, 6, n)).astype(np.float32)
  images = np.asarray(projector(params))
  coords = (np.arange(size) - size // 2) * px
  for i in range(0, n, 3):
    p = params.take(i)
    a = relion_matrix(p.rot_in_degrees, p.tilt_in_degrees, p.psi_in_degrees)
    xy = blobs @ a.T
    x = xy[:, 0] - p.origin_x_in_angstroms
    y = xy[:, 1] - p.origin_y_in_angstroms
    expected = sum(w * np.exp(-((coords[None, :] - xi) ** 2 + (coords[:, None] - yi) ** 2) / (2 * sigma**2))
                   for w, xi, yi in zip(weights, x, y))
    assert np.corrcoef(images[i].ravel(), expected.ravel())[0, 1] > 0.99


def test_same_seed_same_images(source, dataset):
  again = simulate.simulate_dataset(source, 24, SIZE, 0.1, seed=5, max_shift_A=8.0)
  np.testing.assert_array_equal(again.noisy, dataset.noisy)
  np.testing.assert_array_equal(again.particles["rlnAngleRot"], dataset.particles["rlnAngleRot"])
  other = simulate.simulate_dataset(source, 24, SIZE, 0.1, seed=6, max_shift_A=8.0)
  assert not np.allclose(other.clean, dataset.clean)
  assert not np.allclose(other.particles["rlnAngleTilt"], dataset.particles["rlnAngleTilt"])


def test_project_reproduces_the_clean_images(source, dataset):
  images = project(source, dataset.particles, dataset.optics, SIZE)
  assert images.shape == dataset.clean.shape
  for a, b in zip(images, dataset.clean):
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
  # Without CTF columns the projections are plain (and different).
  plain = project(source, dataset.particles.drop(columns=["rlnDefocusU", "rlnDefocusV"]), dataset.optics, SIZE)
  assert np.corrcoef(plain[0].ravel(), images[0].ravel())[0, 1] < 0.9


def launch(*args):
  return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                        cwd=REPO, timeout=300)


def _check_workdir(workdir: pathlib.Path, n: int, size: int, snr: float, pixel_size: float | None = None):
  clean = io.read_stack(str(workdir / "clean.mrcs"))
  noisy = io.read_stack(str(workdir / "noisy.mrcs"))
  star = io.read_star(str(workdir / "particles.star"))  # checks every rlnImageName resolves
  assert clean.data.shape == noisy.data.shape == (n, size, size)
  assert clean.pixel_size == pytest.approx(noisy.pixel_size, rel=1e-6) and clean.pixel_size > 0
  assert star.pixel_size() == pytest.approx(clean.pixel_size, rel=1e-4)
  if pixel_size is not None:
    assert clean.pixel_size == pytest.approx(pixel_size, rel=1e-4)
  assert len(star) == n and int(star.optics["rlnImageSize"].iloc[0]) == size
  np.testing.assert_array_equal(io.star_images(star), np.asarray(noisy.data))
  assert simulate.measured_snr(np.asarray(noisy.data), np.asarray(clean.data)) == pytest.approx(snr, rel=0.05)
  for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU",
                 "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"):
    assert column in star.particles.columns
  for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
    assert column in star.optics.columns


@pytest.mark.parametrize("psd", [None, "issue:relion31"])
def test_streamed_simulation_writes_the_in_memory_stacks(source, dataset, tmp_path, psd):
  """`write_simulation` (two passes, one batch in memory, batches of 5 against the fixture's 64) writes the
  images, poses and SNR of `simulate_dataset` + `write_dataset`, white and coloured noise."""
  from cryojax_denoise.noise import spec

  noise_psd = None if psd is None else spec.resolve(psd)
  ref = dataset if psd is None else simulate.simulate_dataset(source, 24, SIZE, 0.1, seed=5, max_shift_A=8.0,
                                                              noise_psd=noise_psd)
  out = simulate.write_simulation(str(tmp_path), source, 24, SIZE, 0.1, seed=5, max_shift_A=8.0, batch_size=5,
                                  noise_psd=noise_psd)
  for name, want in (("clean.mrcs", ref.clean), ("noisy.mrcs", ref.noisy)):
    np.testing.assert_allclose(np.asarray(io.read_stack(str(tmp_path / name)).data), want, rtol=0, atol=2e-5)
  assert out["noise_std"] == pytest.approx(ref.noise_std, rel=1e-9)
  assert out["measured_snr"] == pytest.approx(simulate.measured_snr(ref.noisy, ref.clean), rel=1e-5)
  star = io.read_star(str(tmp_path / "particles.star"))
  for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnOriginXAngst"):
    np.testing.assert_allclose(star.particles[column].to_numpy(float), ref.particles[column].to_numpy(float),
                               rtol=1e-6, atol=1e-4)


@pytest.mark.slow
def test_simulate_experiment_writes_three_files(tmp_path):
  workdir = tmp_path / "w"
  r = launch("--experiment=simulate", f"--workdir={workdir}", "--config.n_images=16", "--config.image_size=64",
             "--config.snr=0.1")
  assert r.returncode == 0, r.stderr[-2000:]
  _check_workdir(workdir, 16, 64, 0.1)
  assert (workdir / "config.json").exists()


def test_simulate_experiment_rejects_bad_input_before_writing(tmp_path):
  from experiments import simulate as experiment

  config = experiment.get_config()
  config.snr = 0.0
  with pytest.raises(InputError, match="snr"):
    experiment.validate(config)
  config = experiment.get_config()
  config.volume = str(tmp_path / "missing.mrc")
  with pytest.raises(InputError, match="missing.mrc"):
    experiment.validate(config)
  with pytest.raises(InputError, match="not a readable PDB/mmCIF"):
    (tmp_path / "junk.cif").write_text("this is not a model\n")
    load_source(structure=str(tmp_path / "junk.cif"), image_size=32)
  assert not (tmp_path / "w").exists()


def _run_experiment(workdir, **overrides):
  from experiments import simulate as experiment

  config = experiment.get_config()
  config.update(overrides)
  experiment.validate(config)
  experiment.run(config, str(workdir))


@pytest.mark.skipif(not (DATA / "ribosome70S_65.mrc").exists(), reason="shared data not available")
def test_volume_route_with_the_ribosome(tmp_path):
  _run_experiment(tmp_path, volume=str(DATA / "ribosome70S_65.mrc"), pixel_size=5.0, n_images=24, image_size=SIZE,
                  snr=0.1)
  _check_workdir(tmp_path, 24, SIZE, 0.1, pixel_size=5.0)


@pytest.mark.skipif(not (DATA / "8zpm.cif").exists(), reason="shared data not available")
def test_structure_route_with_an_mmcif_model(tmp_path):
  _run_experiment(tmp_path, structure=str(DATA / "8zpm.cif"), n_images=24, image_size=SIZE, snr=0.1)
  _check_workdir(tmp_path, 24, SIZE, 0.1)
  clean = io.read_stack(str(tmp_path / "clean.mrcs"))
  assert 2.0 < clean.pixel_size < 5.0  # the ~130 Å model fills ~60% of the 64 px box


def test_fit_volume_keeps_pixel_size_or_resamples_whole_map():
  vol = np.zeros((65, 65, 65), np.float32)
  vol[12:52, 12:52, 12:52] = 1.0
  fitted, px = fit_volume(vol, 5.0, 64)  # only an empty slice is cut
  assert fitted.shape == (64, 64, 64) and px == 5.0 and fitted.sum() == vol.sum()
  small, px_small = fit_volume(vol, 5.0, 32)  # cropping would cut density: resample
  assert small.shape == (32, 32, 32) and px_small == pytest.approx(5.0 * 66 / 32)
  assert small.sum() * px_small**3 == pytest.approx(vol.sum() * 5.0**3, rel=1e-3)
  fine = resample_volume(vol, 5.0, 2.5, 96)
  assert fine.shape == (96, 96, 96) and fine.sum() * 2.5**3 == pytest.approx(vol.sum() * 5.0**3, rel=1e-3)
