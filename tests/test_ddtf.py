"""DDTF: orthogonal filters, agreement with the NumPy reference, vmap = loop, denoising works."""

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.classical import ddtf
from experiments.peers import reference
from cryojax_denoise.denoisers.classical import patches as pt


def _smooth_batch(n=3, size=32, snr=0.5, seed=0):
  """Band-limited random images (var 1) plus white noise of variance 1/snr."""
  rng = np.random.default_rng(seed)
  f = np.fft.rfft2(rng.standard_normal((n, size, size)))
  k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
  clean = np.fft.irfft2(f * np.exp(-k2 / (2 * 0.06 ** 2)), s=(size, size))
  clean = ((clean - clean.mean()) / clean.std()).astype(np.float32)
  noisy = clean + np.sqrt(1 / snr) * rng.standard_normal(clean.shape).astype(np.float32)
  return noisy, clean


def test_dct_filters_orthonormal_with_constant_dc():
  d = ddtf.dct_filters(8)
  np.testing.assert_allclose(d.T @ d, np.eye(64), atol=1e-5)
  np.testing.assert_allclose(d[:, 0], 1 / 8, atol=1e-7)


def test_learned_filters_stay_orthogonal_and_keep_dc():
  noisy, _ = _smooth_batch(4, 32)
  x = pt.sample_patches(jax.random.key(0), jnp.asarray(noisy), 8, 3000)
  d = np.asarray(ddtf.learn_filters(x, jnp.full((3000,), 3.4 * np.sqrt(2.0)), 10), np.float64)
  np.testing.assert_allclose(d.T @ d, np.eye(64), atol=1e-4)
  np.testing.assert_allclose(d[:, 0], 1 / 8, atol=1e-6)
  assert np.abs(d - ddtf.dct_filters(8)).max() > 1e-2  # learning moved the filters


def test_matches_numpy_reference():
  noisy, _ = _smooth_batch(3, 32)
  sigma = np.array([1.3, 1.4, 1.5], np.float32)
  kw = dict(n_patches=2000, n_iter=6, stride=3, seed=1)
  ours = np.asarray(ddtf.ddtf_denoise(noisy, sigma, **kw))
  pos = [np.asarray(a) for a in pt.sample_positions(jax.random.key(1), noisy.shape, 8, 2000)]
  ref = reference.ddtf_denoise_numpy(noisy, sigma, pos, n_iter=6, stride=3)
  np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_vmap_per_image_equals_loop():
  noisy, _ = _smooth_batch(3, 32)
  sigma = np.array([1.2, 1.4, 1.6], np.float32)
  kw = dict(n_patches=1500, n_iter=5, stride=2)
  batched = np.asarray(ddtf.ddtf_denoise(noisy, sigma, shared=False, **kw))
  loop = np.stack([np.asarray(ddtf.ddtf_denoise(im[None], s, **kw))[0] for im, s in zip(noisy, sigma)])
  np.testing.assert_allclose(batched, loop, atol=1e-5)


def test_zero_threshold_is_identity_and_dc_option():
  noisy, _ = _smooth_batch(2, 32)
  d = jnp.asarray(ddtf.dct_filters(8))
  out = ddtf.apply_filters(jnp.asarray(noisy), d, jnp.zeros(2), 3)
  np.testing.assert_allclose(out, noisy, atol=1e-4)
  # a huge threshold leaves nothing, or only the patch means (an 8×8 box average) with threshold_dc=False
  zero = ddtf.apply_filters(jnp.asarray(noisy), d, jnp.full(2, 1e6), 8)
  np.testing.assert_allclose(zero, 0.0, atol=1e-6)
  means = np.asarray(ddtf.apply_filters(jnp.asarray(noisy), d, jnp.full(2, 1e6), 8, threshold_dc=False))
  want = np.broadcast_to(noisy[:, :8, :8].mean(axis=(1, 2))[:, None, None], (2, 8, 8))
  np.testing.assert_allclose(means[:, :8, :8], want, atol=1e-5)
