"""Total-variation denoising: NumPy and scikit-image references, ROF energy, registry wiring."""

import numpy as np
import pytest

from cryojax_denoise import denoisers
from experiments.peers import reference
from cryojax_denoise.denoisers.classical import tv
from cryojax_denoise.errors import InputError


def _images(b=3, size=32, seed=0):
  """Smooth random fields plus unit white noise, (b, size, size) float32."""
  rng = np.random.default_rng(seed)
  smooth = np.cumsum(np.cumsum(rng.standard_normal((b, size, size)), 1), 2) / size
  return (smooth + rng.standard_normal((b, size, size))).astype(np.float32)


def test_matches_numpy_iteration_per_image_weight():
  x = _images()
  sigma = np.array([0.5, 1.0, 2.0], np.float32)
  out = np.asarray(tv.tv_denoise(x, sigma, lam=0.8, n_iter=20))
  ref = reference.tv_denoise_numpy(x, 0.8 * sigma, n_iter=20)
  np.testing.assert_allclose(out, ref, atol=2e-4)
  # vmap = loop: each image alone gives the same result.
  one = np.asarray(tv.tv_denoise(x[1:2], sigma[1], lam=0.8, n_iter=20))
  np.testing.assert_allclose(out[1:2], one, atol=1e-5)


def test_converges_to_scikit_image_minimiser():
  from skimage.restoration import denoise_tv_chambolle

  f = _images(1)[0]
  for w in (0.3, 1.0):
    ours = np.asarray(tv.tv_denoise(f[None], w, lam=1.0, n_iter=2000))[0]
    ref = denoise_tv_chambolle(f.astype(np.float64), weight=w, eps=1e-10, max_num_iter=3000)
    e_ours, e_ref = float(tv.tv_energy(ours, f, w)), float(tv.tv_energy(ref.astype(np.float32), f, w))
    assert e_ours <= e_ref * (1 + 1e-5)  # at least as low a value of the ROF objective
    np.testing.assert_allclose(ours, ref, atol=2e-2)  # flat regions converge slowly (energy is flat there)


def test_energy_decreases_and_zero_weight_is_identity():
  f = _images(1)[0]
  energies = [float(tv.tv_energy(np.asarray(tv.tv_denoise(f[None], 1.0, n_iter=n))[0], f, 1.0)) for n in (5, 50, 500)]
  assert energies[0] > energies[1] > energies[2]
  assert energies[2] < float(tv.tv_energy(f, f, 1.0))
  np.testing.assert_allclose(np.asarray(tv.tv_denoise(f[None], 0.0, n_iter=10))[0], f, atol=1e-6)


def test_scale_free_in_sigma():
  x = _images(2)
  a = np.asarray(tv.tv_denoise(x, 1.0, lam=0.7, n_iter=50))
  b = np.asarray(tv.tv_denoise(10 * x, 10.0, lam=0.7, n_iter=50))
  np.testing.assert_allclose(b, 10 * a, rtol=1e-4, atol=1e-4)


def test_registered_with_default_from_signature():
  m = denoisers.REGISTRY["tv"]
  assert m.knob == "lam" and m.default == 1.0 and m.default in m.grid and not m.learned
  assert "tv" in denoisers.classical_names()
  with pytest.raises(InputError, match="unknown parameter"):
    denoisers.get("tv", lamda=1.0)
  x = _images(2)
  np.testing.assert_allclose(np.asarray(denoisers.get("tv", lam=0.7, n_iter=30)(x, 1.0)),
                             np.asarray(tv.tv_denoise(x, 1.0, lam=0.7, n_iter=30)), atol=1e-6)
