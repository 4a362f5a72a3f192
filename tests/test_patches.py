"""Patch extraction and its adjoint: exactness, coverage, chunked operator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryojax_denoise.denoisers.classical import patches as pt


@pytest.mark.parametrize("shape,r,stride", [((20, 17), 5, 1), ((21, 16), 4, 3), ((16, 16), 8, 8)])
def test_adjoint_identity(shape, r, stride):
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape)
  y = jax.random.normal(ky, (pt.num_patches(shape, r, stride), r * r))
  lhs = jnp.vdot(pt.extract_patches(x, r, stride), y)
  rhs = jnp.vdot(x, pt.patches_adjoint(y, shape, r, stride))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_patch_content_and_counts():
  img = jnp.arange(7 * 9, dtype=jnp.float32).reshape(7, 9)
  p = pt.extract_patches(img, 3, 2)
  ny, nx = pt.grid_shape((7, 9), 3, 2)
  assert (ny, nx) == (3, 4)  # starts y 0,2,4 ; x 0,2,4,6
  np.testing.assert_array_equal(p[nx + 1].reshape(3, 3), img[2:5, 2:5])
  counts = pt.patch_counts((7, 9), 3, 2)
  ones = pt.patches_adjoint(jnp.ones_like(p), (7, 9), 3, 2)
  np.testing.assert_array_equal(counts, ones)
  assert counts.min() >= 1
  np.testing.assert_allclose(pt.overlap_average(p, (7, 9), 3, 2), img, rtol=1e-6)


def test_map_patches_matches_unchunked_and_jits():
  img = jax.random.normal(jax.random.key(1), (23, 19))
  fn = lambda q: jnp.tanh(q) * 2.0
  full = pt.patches_adjoint(fn(pt.extract_patches(img, 4, 2)), img.shape, 4, 2)
  chunked = jax.jit(lambda im: pt.map_patches(fn, im, 4, 2, block_rows=3))(img)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-5)
  batch = jnp.stack([img, 2 * img])
  vm = jax.vmap(lambda im: pt.map_patches(fn, im, 4, 2, block_rows=3))(batch)
  np.testing.assert_allclose(vm[0], full, rtol=1e-5, atol=1e-5)


def test_sample_patches_are_patches():
  imgs = np.asarray(jax.random.normal(jax.random.key(2), (3, 12, 12)))
  b, y, x = (np.asarray(a) for a in pt.sample_positions(jax.random.key(3), imgs.shape, 4, 50))
  assert b.max() < 3 and y.max() <= 8 and x.max() <= 8
  s = np.asarray(pt.gather_patches(jnp.asarray(imgs), b, y, x, 4))
  want = np.stack([imgs[bi, yi:yi + 4, xi:xi + 4].reshape(-1) for bi, yi, xi in zip(b, y, x)])
  np.testing.assert_array_equal(s, want)


@pytest.mark.parametrize("shape,r,stride", [((20, 17), 5, 1), ((21, 16), 4, 3), ((16, 16), 8, 8), ((64, 40), 8, 2)])
def test_patch_counts_is_the_outer_product_of_1d_coverages(shape, r, stride):
  ref = np.zeros(shape, np.float32)  # the plain double loop over the patch grid
  for y in pt.grid_starts(shape[0], r, stride):
    for x in pt.grid_starts(shape[1], r, stride):
      ref[y:y + r, x:x + r] += 1.0
  counts = pt.patch_counts(shape, r, stride)
  assert counts.dtype == np.float32
  np.testing.assert_array_equal(counts, ref)
