"""CWF's basis disk reaching past the image edge (`steerable.fb_basis(reach=)`, `steerable.basis_reach`; issue
29: on the inscribed disk cwf trailed ASPIRE on molecules with signal at the rim): the transform, every fit
path of the registered cwf (one shot, streamed within `memory_gb`, Fourier-cropped above `max_box`), and the
gain."""

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.cwf import budget, cwf
from cryojax_denoise.denoisers.cwf import steerable as st


def _blobs(n, size, radius, rng):
  """(n, size, size) float32: 6 Gaussian blobs (σ 2–4 px) per image, centres uniform at distance <= `radius`
  from the centre pixel, scaled to unit mean power."""
  y, x = np.mgrid[:size, :size] - size // 2
  out = np.zeros((n, size, size))
  for i in range(n):
    r, phi = radius * np.sqrt(rng.uniform(size=6)), rng.uniform(0, 2 * np.pi, 6)
    for cx, cy, s in zip(r * np.cos(phi), r * np.sin(phi), rng.uniform(2, 4, 6)):
      out[i] += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
  return (out / np.sqrt(np.mean(out ** 2))).astype(np.float32)


def test_reach_orbits_equal_dense_matrix_and_zero_reach_is_the_exact_basis():
  """The orbit transform of a reaching basis (orbits partly off the grid) is its dense matrix's map, and
  it is the inscribed-disk basis padded: with reach 0 the counts are ASPIRE's (64²: 1253 functions)."""
  x = np.random.default_rng(0).standard_normal((2, 48, 48)).astype(np.float32)
  fast, dense = st.fb_basis(48, fast=True, reach=3.0), st.fb_basis(48, fast=False, reach=3.0)
  a, b = np.asarray(st.expand_blocks(fast, x)), np.asarray(st.expand_blocks(dense, x))
  np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max())
  np.testing.assert_allclose(np.asarray(st.evaluate_blocks(fast, jnp.asarray(b))),
                             np.asarray(st.evaluate_blocks(dense, jnp.asarray(b))), atol=2e-5 * np.abs(x).max())
  assert fast.count > st.fb_basis(48).count and fast.shape == (48, 48)
  assert st.basis_reach(64) == 4.0


def test_reach_recovers_the_rim_and_keeps_centred_sets():
  """Signal up to the image edge: the reaching basis (registered cwf) is clearly closer to the clean images
  than the inscribed disk, whose estimate is 0 on and past the rim; signal well inside the disk: both
  within 2%."""
  rng = np.random.default_rng(1)
  L, n, sigma = 32, 300, 1.0
  for radius, check in ((15.0, lambda new, old: new < 0.85 * old), (7.0, lambda new, old: abs(new / old - 1) < 0.02)):
    clean = _blobs(n, L, radius, rng)
    noisy = clean + sigma * rng.standard_normal(clean.shape).astype(np.float32)
    new = float(np.mean((np.asarray(cwf.cwf_denoise(noisy, sigma)) - clean) ** 2))
    old = float(np.mean((np.asarray(cwf.cwf_denoise(noisy, sigma, reach=0.0)) - clean) ** 2))
    assert check(new, old), (radius, new, old)


def test_every_registered_fit_path_uses_the_reaching_basis():
  """`denoisers.fit("cwf")` (`fit_denoiser`) fits on the reaching basis of its working box: one shot,
  streamed in budgeted batches (the same fit), and Fourier-cropped above `max_box` (the cropped box's
  reach); `cwf.fit` keeps the inscribed disk unless asked (autoencoder_cwf's prior, `cwf_corpus.PRIOR_REACH`)."""
  rng = np.random.default_rng(2)
  L, n = 40, 60
  clean = _blobs(n, L, 18.0, rng)
  noisy = clean + rng.standard_normal(clean.shape).astype(np.float32)
  count = lambda den: int(den.model.basis.sizes.sum())  # noqa: E731
  whole = cwf.fit_denoiser(noisy, 1.0)
  assert whole.reach == st.basis_reach(L) == 2.5 and count(whole) == st.fb_basis(L, reach=2.5).count
  reach = st.basis_reach(L)
  memory_gb = (budget.fixed_bytes(L, n, reach=reach) + 30.5 * budget.per_particle_bytes(L, reach=reach)) / budget.GB
  assert budget.fit_batch(L, n, memory_gb, n_groups=1, reach=reach) == 30 < budget.fit_batch(L, n, memory_gb, n_groups=1)
  reads = []
  rows = budget.Rows(lambda r: reads.append(len(r)) or noisy[r], n, (L, L))
  streamed = cwf.fit_denoiser(rows, 1.0, memory_gb=memory_gb, n_groups=1)
  assert max(reads) == 30 and count(streamed) == count(whole)  # batches sized for the reaching basis
  np.testing.assert_allclose(np.asarray(streamed.model.covariance), np.asarray(whole.model.covariance),
                             rtol=0, atol=1e-5 * np.abs(np.asarray(whole.model.covariance)).max())
  cropped = cwf.fit_denoiser(noisy, 1.0, max_box=32)
  assert cropped.box == 32 and cropped.reach == 2.0 and count(cropped) == st.fb_basis(32, reach=2.0).count
  assert cropped(noisy[:4], 1.0).shape == (4, L, L)
  assert int(cwf.fit(noisy, 1.0).basis.sizes.sum()) == st.fb_basis(L).count
  assert cwf.fit_denoiser(noisy, 1.0, reach=0.0).reach == 0.0
