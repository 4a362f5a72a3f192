"""make_pairs on a simulated STAR file reproduces the simulator's clean images."""


import mrcfile
import numpy as np
import pytest

from cryojax_denoise import denoise_stack, io
from test_io import files_under


def _corr(a, b):
  a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
  b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
  return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _blob_map(size=32, n_blobs=40, seed=0):
  """A small asymmetric map: Gaussian blobs (σ 1.5 voxels) within 9 voxels of the centre."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.mgrid[:size, :size, :size], -1) - size // 2
  centres = rng.normal(scale=4.0, size=(n_blobs, 3)).clip(-9, 9)
  vol = sum(np.exp(-np.sum((grid - c) ** 2, -1) / (2 * 1.5 ** 2)) for c in centres)
  return vol.astype(np.float32)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
  """12 noisy 32² particles with CTF and shifts (SNR 1) simulated from a map, their STAR file."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source

  d = tmp_path_factory.mktemp("pairs")
  io.write_volume(str(d / "map.mrc"), _blob_map(), 4.0)
  source = load_source(volume=str(d / "map.mrc"), image_size=32)
  ds = simulate.simulate_dataset(source, n_images=12, image_size=32, snr=1.0, seed=1, max_shift_A=6.0,
                                 batch_size=12)
  simulate.write_dataset(ds, str(d / "sim"))
  return d, ds


@pytest.mark.slow
def test_make_pairs_reproduces_simulated_clean_images(simulated, tmp_path):
  """The experiment's run (in-process: one cryojax compile fewer than a subprocess) on the
  simulated STAR file; the launcher path of make_pairs is exercised by test_bad_input."""
  from experiments import make_pairs

  d, ds = simulated
  assert np.abs(ds.particles["rlnOriginXAngst"]).max() > 1.0  # shifts are exercised
  assert ds.particles["rlnDefocusU"].std() > 100  # and per-particle CTFs
  config = make_pairs.get_config()
  config.input, config.volume, config.batch_size = str(d / "sim" / "particles.star"), str(d / "map.mrc"), 12
  config.noisy_copy = True
  make_pairs.validate(config)
  make_pairs.run(config, str(tmp_path / "w"))
  with mrcfile.open(str(tmp_path / "w" / "clean.mrcs")) as mrc:
    clean = np.array(mrc.data)
    assert mrc.voxel_size.x == pytest.approx(ds.pixel_size)
  assert clean.shape == ds.clean.shape
  corr = _corr(clean, ds.clean)
  print("make_pairs correlation with the simulator's clean images: min", corr.min(), "mean", corr.mean())
  assert corr.min() >= 0.99
  # Least squares puts the targets in the particles' units: residual to the noisy images is the noise.
  resid = np.var(ds.noisy - clean) / ds.noise_std ** 2
  assert 0.8 < resid < 1.1
  assert files_under(tmp_path / "w") == ["clean.mrcs", "noisy.mrcs"]
  with mrcfile.open(str(tmp_path / "w" / "noisy.mrcs")) as mrc:
    np.testing.assert_array_equal(mrc.data, ds.noisy)  # aligned training pairs


def test_fit_scale_offset_recovers_affine_map():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(4, 16, 16)).astype(np.float32)
  a, b = np.array([0.5, 2.0, -1.0, 3.0], np.float32), np.array([10.0, -2.0, 0.0, 1.0], np.float32)
  x = a[:, None, None] * p + b[:, None, None]
  fitted, a_hat, b_hat = denoise_stack.fit_scale_offset(p, x)
  np.testing.assert_allclose(a_hat, a, rtol=1e-4)
  np.testing.assert_allclose(b_hat, b, atol=1e-4)
  np.testing.assert_allclose(fitted, x, atol=1e-4)
  _, a0, b0 = denoise_stack.fit_scale_offset(np.zeros_like(p), x)  # a flat model: just the mean
  np.testing.assert_allclose(a0, 0.0)
  np.testing.assert_allclose(b0, x.mean(axis=(1, 2)), rtol=1e-5)
