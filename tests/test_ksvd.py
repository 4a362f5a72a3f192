"""Batch-OMP against scikit-learn, batching = loops, and K-SVD denoising (small, fixed seeds)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp_gram

from cryojax_denoise.denoisers.classical import ksvd, omp

# One static configuration for every K-SVD call below, so it compiles once.
SMALL = dict(n_iter=2, n_train=2048, max_atoms=6)


def _random_problem(seed, n=64, N=256, P=120):
  rng = np.random.default_rng(seed)
  D = rng.standard_normal((n, N))
  D /= np.linalg.norm(D, axis=0)
  # signals: sparse combinations plus noise, so supports are meaningful
  X = np.zeros((P, n))
  for p in range(P):
    atoms = rng.choice(N, 5, replace=False)
    X[p] = D[:, atoms] @ (rng.uniform(0.5, 2.0, 5) * rng.choice([-1, 1], 5))
  X += 0.1 * rng.standard_normal(X.shape)
  return D, X


def _support(result, p):
  return set(np.asarray(result.indices[p, :int(result.n_atoms[p])]).tolist())


@pytest.mark.parametrize("seed", [0, 1])
def test_omp_matches_sklearn_supports_error_target(seed):
  D, X = _random_problem(seed)
  G, DtX, norms = D.T @ D, X @ D, np.sum(X * X, axis=1)
  tol = np.random.default_rng(seed + 10).uniform(0.05, 0.5, len(X)) * norms
  res = omp.batch_omp(jnp.asarray(G, jnp.float32), jnp.asarray(DtX, jnp.float32), 16,
                      jnp.asarray(tol, jnp.float32), jnp.asarray(norms, jnp.float32), chunk_size=32)
  assert res.indices.shape == (len(X), 16)
  assert int(res.n_atoms.max()) < 16 and int(res.n_atoms.min()) >= 1   # the error target decided
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for p in range(len(X)):
      ref = orthogonal_mp_gram(G, DtX[p], tol=tol[p], norms_squared=np.array([norms[p]]))
      assert _support(res, p) == set(np.flatnonzero(ref)), p
      k = int(res.n_atoms[p])
      np.testing.assert_allclose(np.asarray(res.coefs[p, :k]), ref[np.asarray(res.indices[p, :k])],
                                 rtol=1e-3, atol=1e-4)
  # residual energies are what they claim and meet the target
  recon = np.asarray(omp.reconstruct(jnp.asarray(D, jnp.float32), res))
  np.testing.assert_allclose(np.sum((X - recon) ** 2, axis=1), np.asarray(res.residual_sq), rtol=1e-3,
                             atol=1e-3)
  assert np.all(np.asarray(res.residual_sq) <= tol * (1 + 1e-5))


def test_omp_matches_sklearn_fixed_number_of_atoms():
  D, X = _random_problem(2)
  G, DtX, norms = D.T @ D, X @ D, np.sum(X * X, axis=1)
  # ε² = -inf: no target, exactly max_atoms atoms (same compiled kernel as the test above)
  res = omp.batch_omp(jnp.asarray(G, jnp.float32), jnp.asarray(DtX, jnp.float32), 16,
                      jnp.full(len(X), -np.inf, np.float32), jnp.asarray(norms, jnp.float32), chunk_size=32)
  ref = orthogonal_mp_gram(G, DtX.T, n_nonzero_coefs=16)           # (N, P)
  assert np.all(np.asarray(res.n_atoms) == 16)
  for p in range(len(X)):
    assert _support(res, p) == set(np.flatnonzero(ref[:, p])), p
  dense = np.asarray(omp.dense_codes(res, G.shape[0]))
  np.testing.assert_allclose(dense, ref.T, atol=1e-3)


def test_omp_zero_atoms_when_target_met_and_batching_equals_loop():
  D, X = _random_problem(3, P=40)
  Dj, Xj = jnp.asarray(D, jnp.float32), jnp.asarray(X, jnp.float32)
  norms = np.sum(X * X, axis=1)
  eps = np.where(np.arange(len(X)) % 3 == 0, 1.01 * norms, 0.1 * norms)   # every 3rd: nothing to code
  G, dtx = Dj.T @ Dj, Xj @ Dj
  nrm, ep = jnp.asarray(norms, jnp.float32), jnp.asarray(eps, jnp.float32)
  # vmap over groups of 10 signals (each group sorted and chunked by 4) = a loop over the groups
  run = lambda d, e, n: omp.batch_omp(G, d, 8, e, n, chunk_size=4)
  vm = jax.vmap(run)(dtx.reshape(4, 10, -1), ep.reshape(4, 10), nrm.reshape(4, 10))
  n_atoms = []
  for g in range(4):
    sl = slice(10 * g, 10 * g + 10)
    lp = run(dtx[sl], ep[sl], nrm[sl])
    np.testing.assert_array_equal(np.asarray(vm.indices[g]), np.asarray(lp.indices))
    np.testing.assert_array_equal(np.asarray(vm.n_atoms[g]), np.asarray(lp.n_atoms))
    np.testing.assert_allclose(np.asarray(vm.coefs[g]), np.asarray(lp.coefs), atol=1e-5)
    n_atoms.append(np.asarray(lp.n_atoms))
  n_atoms = np.concatenate(n_atoms)
  assert np.all((n_atoms == 0) == (norms <= eps))
  assert np.all(n_atoms[norms > eps] >= 1)


def test_overcomplete_dct():
  D = ksvd.overcomplete_dct(8, 256)
  assert D.shape == (64, 256)
  np.testing.assert_allclose(np.linalg.norm(D, axis=0), 1.0, atol=1e-6)
  np.testing.assert_allclose(D[:, 0], 1 / 8, atol=1e-6)                   # the DC atom
  np.testing.assert_allclose(D[:, 1:].mean(axis=0), 0.0, atol=1e-6)      # all others zero-mean
  assert np.linalg.matrix_rank(D) == 64


def test_atom_update_reduces_error_and_keeps_unit_norm():
  """One atom per group is Rubinstein's sequential approximate K-SVD: every atom's power-iteration
  update is a least-squares step, so the total error cannot grow; the residual stays exact."""
  rng = np.random.default_rng(4)
  D0 = jnp.asarray(ksvd.overcomplete_dct(8, 64))
  X = jnp.asarray(rng.standard_normal((600, 64)) @ rng.standard_normal((64, 64)) * 0.2, jnp.float32)
  X = X - X.mean(axis=1, keepdims=True)
  codes = omp.omp_encode(D0, X, 4)
  before = float(jnp.sum((X - omp.reconstruct(D0, codes)) ** 2))
  D1, gamma, resid = ksvd._update_atoms(jax.random.key(0), D0, X, codes, 1)
  np.testing.assert_allclose(np.asarray(resid), np.asarray(X - gamma @ D1.T), atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(D1), axis=0), 1.0, atol=1e-5)
  assert float(jnp.sum(resid ** 2)) < 0.95 * before
  # supports are kept: an update never adds an atom to a patch
  assert np.all((np.asarray(gamma) != 0) <= (np.asarray(omp.dense_codes(codes, 64)) != 0))


def _smooth_images(B, n, seed=0):
  """Standardised sums of Gaussian blobs (B, n, n)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:n, :n] / n
  out = np.zeros((B, n, n))
  for b in range(B):
    for _ in range(10):
      cx, cy, s, a = rng.uniform(.2, .8), rng.uniform(.2, .8), rng.uniform(.03, .12), rng.uniform(-1, 2)
      out[b] += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
  return ((out - out.mean()) / out.std()).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _denoised(snr):
  """Two smooth 32² images at `snr`, different σ per image, denoised with per-image dictionaries."""
  clean = _smooth_images(2, 32)
  sigma = np.sqrt(np.mean(np.var(clean, axis=(1, 2))) / snr) * np.array([1.0, 1.2], np.float32)
  noisy = clean + sigma[:, None, None] * np.random.default_rng(1).standard_normal(clean.shape)
  noisy = noisy.astype(np.float32)
  out, info = ksvd.ksvd_denoise(noisy, sigma, shared=False, return_info=True, **SMALL)
  return noisy, clean, sigma, np.asarray(out), info


@pytest.mark.parametrize("snr", [0.5, 0.1])
def test_ksvd_lowers_mse_unit_atoms_and_reports_zero_atom_patches(snr):
  noisy, clean, _, out, info = _denoised(snr)
  assert out.shape == noisy.shape and np.isfinite(out).all()
  mse = lambda x: float(np.mean((x - clean) ** 2))
  assert mse(out) < 0.3 * mse(noisy), (mse(out), mse(noisy))
  D = np.asarray(info.dictionary)
  assert D.shape == (2, 64, 256)
  np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, atol=1e-4)
  assert not np.allclose(D[0], ksvd.overcomplete_dct(8, 256))         # learning changed it
  zero = np.asarray(info.zero_atom_fraction)
  assert zero.shape == (2,) and np.all((zero >= 0) & (zero <= 1))
  assert np.all(np.asarray(info.mean_atoms) <= SMALL["max_atoms"])
  if snr == 0.1:
    assert np.all(zero > 0.5)          # most patches are below the noise target: DC only


def test_ksvd_per_image_outputs_depend_only_on_their_image():
  """Per-image mode is a loop over images (lax.map, same seed for each): reordering the batch
  reorders the outputs exactly (a literal B=1 loop would only add a compile to this test)."""
  noisy, _, sigma, both, _ = _denoised(0.5)
  swapped = np.asarray(ksvd.ksvd_denoise(noisy[::-1], sigma[::-1], shared=False, **SMALL))
  np.testing.assert_allclose(swapped[::-1], both, atol=1e-5)
  assert not np.allclose(both[0], both[1])
