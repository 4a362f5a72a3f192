"""CWF (denoisers/cwf/cwf.py) and per-particle CTF grids (data/ctf.py)."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import linalg

from cryojax_denoise import denoisers
from cryojax_denoise.data import ctf as ctf_mod
from cryojax_denoise.denoisers.cwf import cwf, solvers
from cryojax_denoise.denoisers.cwf import steerable as st

L = 16


def _radial_ctfs(n, rng, lo=0.5):
  """(n, L, L) smooth radial filters without zeros, values in [lo, 1]."""
  f = np.fft.fftfreq(L)
  rho = np.hypot(*np.meshgrid(f, f, indexing="ij"))
  c = rng.uniform(1.0, 4.0, n)
  return (lo + (1 - lo) * 0.5 * (1 + np.cos(2 * np.pi * rho[None] * c[:, None, None]))).astype(np.float32)


def _low_rank_set(rng, n, basis, blocks=((0, 2), (1, 1), (3, 1))):
  """Clean images from a known rank-r set of coefficients: mean in block 0 plus r components."""
  a = np.zeros((n, basis.count), np.complex64)
  k_of = np.asarray(basis.k_of)
  mean_idx = np.flatnonzero(k_of == 0)
  a[:, mean_idx] = rng.standard_normal(len(mean_idx))
  for k, r in blocks:
    idx = np.flatnonzero(k_of == k)
    for _ in range(r):
      u = rng.standard_normal(len(idx)) + (1j * rng.standard_normal(len(idx)) if k else 0)
      z = rng.standard_normal(n) + (1j * rng.standard_normal(n) if k else 0)
      a[:, idx] += np.outer(z, u)
  return np.asarray(st.evaluate(basis, jnp.asarray(a)))


def _sample_stats(basis, images):
  """Mean of block 0 and Re sample covariance per block of Ψᴴ x (float64)."""
  b = np.asarray(st.pad(basis, st.expand_t(basis, images)), np.complex128)
  mean = b[:, 0].real.mean(0)
  v = b.copy()
  v[:, 0] -= mean
  return mean, np.einsum("nkp,nkq->kpq", v, v.conj()).real / len(b)


def _reference_fit(basis, images, ctf, noise_var, shrink):
  """NumPy float64 reference of the fit: exact least squares over every particle (Kronecker form)."""
  b = np.asarray(st.pad(basis, st.expand_t(basis, images)), np.complex128)
  h = np.asarray(st.radial_profile(basis, jnp.asarray(ctf)), np.float64)
  g = np.asarray(basis.radial, np.float64)
  m = np.einsum("krp,ir,krq->ikpq", g, h, g)
  n, sizes = len(b), np.asarray(basis.sizes)
  p0 = sizes[0]
  a0 = sum(mi[0] @ mi[0] for mi in m)[:p0, :p0]
  r0 = sum(mi[0] @ bi[0].real for mi, bi in zip(m, b))[:p0]
  mean = np.linalg.solve(a0, r0)
  covs = []
  for k, p in enumerate(sizes):
    mk = m[:, k, :p, :p]
    v = b[:, k, :p].copy()
    if k == 0:
      v -= mk @ mean
    u = np.einsum("ipq,iq->ip", mk, v)
    rhs = (np.einsum("ip,iq->pq", u, u.conj()) / n).real
    pk = mk @ mk
    pbar = pk.mean(0)
    if shrink:
      s = linalg.sqrtm(pbar).real
      w = np.linalg.solve(s, rhs) @ np.linalg.inv(s)
      lam, vec = np.linalg.eigh((w + w.T) / 2)
      gamma, edge = p / n, noise_var * (1 + np.sqrt(p / n)) ** 2
      ell = 0.5 * (lam - noise_var * (gamma - 1) + np.sqrt(np.maximum(
          (lam - noise_var * (gamma - 1)) ** 2 - 4 * noise_var * lam, 0))) - noise_var
      with np.errstate(divide="ignore", invalid="ignore"):
        ell = ell * (1 - noise_var ** 2 * gamma / ell ** 2) / (1 + noise_var * gamma / ell)
      lam = np.where(lam > edge, ell, 0.0)
      rhs = s @ (vec * lam) @ vec.T @ s
    else:
      rhs = rhs - noise_var * pbar
    lhs = np.mean([np.kron(pi, pi) for pi in pk], axis=0)
    c = np.linalg.solve(lhs, rhs.ravel()).reshape(p, p)
    lam, vec = np.linalg.eigh((c + c.T) / 2)
    covs.append((vec * np.maximum(lam, 0)) @ vec.T)
  return mean, covs


@pytest.fixture(scope="module")
def basis():
  return st.fb_basis(L)


@pytest.mark.parametrize("shrink", [False, True])
def test_covariance_matches_numpy_reference(basis, shrink):
  """Mean, noise correction/shrinkage and the CTF least-squares solve = a NumPy float64 reference
  (N <= n_groups: every particle its own CTF group, so the CG solves the exact system)."""
  rng = np.random.default_rng(0)
  n, sigma = 24, 0.3
  clean = _low_rank_set(rng, n, basis)
  ctf = _radial_ctfs(n, rng)
  noisy = np.fft.ifft2(np.fft.fft2(clean) * ctf).real + sigma * rng.standard_normal(clean.shape)
  model = cwf.fit(noisy.astype(np.float32), sigma, ctf, shrink=shrink, n_groups=32, cg_iters=80)
  mean, covs = _reference_fit(basis, noisy.astype(np.float32), ctf, sigma ** 2, shrink)
  cov = np.asarray(model.covariance)
  np.testing.assert_allclose(np.asarray(model.mean)[:len(mean)], mean, atol=2e-3 * np.abs(mean).max())
  scale = max(np.abs(c).max() for c in covs)
  for k, c in enumerate(covs):
    p = len(c)
    np.testing.assert_allclose(cov[k, :p, :p].real, c, atol=3e-3 * scale, err_msg=f"block {k}")


def test_zero_noise_recovers_low_rank_set(basis):
  """σ = 0, no CTF: mean and covariance are the clean set's, each block has the set's rank, and
  the Wiener estimate of a clean image is the image itself (its basis projection)."""
  rng = np.random.default_rng(1)
  clean = _low_rank_set(rng, 40, basis)
  model = cwf.fit(clean, 0.0, None, shrink=False)
  mean, cov = _sample_stats(basis, clean)
  got = np.asarray(model.covariance).real
  np.testing.assert_allclose(np.asarray(model.mean), mean, atol=1e-4 * np.abs(mean).max())
  np.testing.assert_allclose(got, cov, atol=1e-4 * np.abs(cov).max())
  lam = np.linalg.eigvalsh(got)
  ranks = (lam > 1e-2 * lam.max()).sum(-1)  # the grid couples k and k ± 4 weakly (Gram ≈ I to ~5%)
  expected = np.zeros(basis.n_blocks, int)
  expected[0], expected[1], expected[3] = 2, 2, 2  # complex rank-1 components: Re part has rank 2
  np.testing.assert_array_equal(ranks, expected)
  out = np.asarray(cwf.apply(model, clean, 0.0))
  proj = np.asarray(st.evaluate(basis, st.expand_t(basis, clean)))
  np.testing.assert_allclose(out, proj, atol=1e-3 * np.abs(proj).max())


def test_hermitian_keeps_complex_rank(basis):
  """hermitian=True (complex covariance, complex Wiener solves): the complex rank-1 components stay
  rank 1, the covariance is the full complex sample covariance, and clean images are reproduced."""
  rng = np.random.default_rng(1)
  clean = _low_rank_set(rng, 40, basis)
  model = cwf.fit(clean, 0.0, None, shrink=False, hermitian=True)
  b = np.asarray(st.pad(basis, st.expand_t(basis, clean)), np.complex128)
  b[:, 0] -= b[:, 0].real.mean(0)
  cov = np.einsum("nkp,nkq->kpq", b, b.conj()) / len(b)
  got = np.asarray(model.covariance)
  np.testing.assert_allclose(got, cov, atol=1e-4 * np.abs(cov).max())
  lam = np.linalg.eigvalsh(got)
  assert (lam > 1e-2 * lam.max()).sum(-1)[[0, 1, 3]].tolist() == [2, 1, 1]
  out = np.asarray(cwf.apply(model, clean, 0.0))
  proj = np.asarray(st.evaluate(basis, st.expand_t(basis, clean)))
  np.testing.assert_allclose(out, proj, atol=1e-3 * np.abs(proj).max())


def test_zero_noise_with_ctf_recovers_clean_statistics(basis):
  """σ = 0 with distinct CTFs per particle: the CTF-aware estimates match the clean set's
  statistics (up to the angle-averaged CTF's error in the basis)."""
  rng = np.random.default_rng(2)
  yy, xx = np.mgrid[0:L, 0:L] - L // 2
  blobs = []
  for _ in range(60):  # smooth particles inside the disk, random positions and widths
    cx, cy, w = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(1.5, 3)
    blobs.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w)))
  clean = np.stack(blobs).astype(np.float32)
  ctf = _radial_ctfs(len(clean), rng, lo=0.3)
  observed = np.fft.ifft2(np.fft.fft2(clean) * ctf).real.astype(np.float32)
  model = cwf.fit(observed, 0.0, ctf, shrink=False, n_groups=64, cg_iters=80)
  mean, cov = _sample_stats(basis, clean)
  got = np.asarray(model.covariance).real
  err_mean = np.linalg.norm(np.asarray(model.mean) - mean) / np.linalg.norm(mean)
  err_cov = np.linalg.norm(got - cov) / np.linalg.norm(cov)
  naive = cwf.fit(observed, 0.0, None, shrink=False)  # ignoring the CTF is far off
  naive_mean = np.linalg.norm(np.asarray(naive.mean) - mean) / np.linalg.norm(mean)
  naive_cov = np.linalg.norm(np.asarray(naive.covariance).real - cov) / np.linalg.norm(cov)
  print(f"relative errors: mean {err_mean:.3f} (CTF ignored {naive_mean:.3f}), cov {err_cov:.3f} ({naive_cov:.3f})")
  assert err_mean < 0.1 and err_cov < 0.15
  assert naive_mean > 2 * err_mean and naive_cov > 2 * err_cov


def test_bare_stack_equals_all_ones_ctf(basis):
  rng = np.random.default_rng(3)
  noisy = (_low_rank_set(rng, 30, basis) + 0.5 * rng.standard_normal((30, L, L))).astype(np.float32)
  bare = np.asarray(cwf.cwf_denoise(noisy, 0.5))
  ones = np.asarray(cwf.cwf_denoise(noisy, 0.5, np.ones_like(noisy)))
  np.testing.assert_allclose(bare, ones, atol=1e-4 * np.abs(bare).max())


def test_shrinker_is_aspires():
  """ASPIRE's frobenius_norm rule written out: below the MP edge 0, above the debiased spike."""
  lam = np.array([0.5, 1.9, 2.5, 5.0, 20.0])
  s2, gamma = 1.0, 0.2
  got = np.asarray(solvers.shrink_eigenvalues(jnp.asarray(lam), s2, gamma))
  assert got[0] == got[1] == 0.0  # edge (1 + √0.2)² = 2.09
  a = lam[2:] - s2 * (gamma - 1)
  ell = 0.5 * (a + np.sqrt(a * a - 4 * s2 * lam[2:])) - s2
  np.testing.assert_allclose(got[2:], ell * (1 - s2 ** 2 * gamma / ell ** 2) / (1 + s2 * gamma / ell), rtol=1e-5)


def test_registry_forms(basis):
  rng = np.random.default_rng(4)
  noisy = (_low_rank_set(rng, 20, basis) + 0.5 * rng.standard_normal((20, L, L))).astype(np.float32)
  ctf = _radial_ctfs(20, rng)
  per_batch = np.asarray(denoisers.get("cwf")(noisy, 0.5))
  assert per_batch.shape == noisy.shape and np.isfinite(per_batch).all()
  assert denoisers.REGISTRY["cwf"].uses_ctf
  den = denoisers.fit("cwf", noisy, 0.5, ctf)
  np.testing.assert_allclose(np.asarray(den(noisy[:5], 0.5, ctf[:5])),
                             np.asarray(cwf.apply(den.model, noisy, 0.5, ctf))[:5], atol=1e-5)
  gauss = denoisers.fit("gaussian", noisy, None, ctf, width=1.0)
  np.testing.assert_allclose(np.asarray(gauss(noisy, None, ctf)), np.asarray(denoisers.get("gaussian", width=1.0)(noisy)))


def test_ctf_grid_is_relions():
  """ctf_grid = RELION's CTF formula (NumPy) on the unshifted FFT grid, rows ky, columns kx;
  no rlnDefocusU: None."""
  from cryojax.constants import wavelength_from_kilovolts

  n, px = 32, 2.0
  particles = pd.DataFrame({"rlnDefocusU": [21000.0, 15000.0], "rlnDefocusV": [16000.0, 14000.0],
                            "rlnDefocusAngle": [30.0, 120.0], "rlnPhaseShift": [0.0, 20.0], "rlnOpticsGroup": [1, 1]})
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                         "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [px]})
  got = ctf_mod.ctf_grid(particles, optics, n, px)
  f = np.fft.fftfreq(n, px)
  ky, kx = np.meshgrid(f, f, indexing="ij")
  lam, k2 = float(wavelength_from_kilovolts(300.0)), kx ** 2 + ky ** 2
  for i, row in particles.iterrows():
    u, v, a = row.rlnDefocusU, row.rlnDefocusV, np.deg2rad(row.rlnDefocusAngle)
    df = 0.5 * (u + v) + 0.5 * (u - v) * np.cos(2 * (np.arctan2(ky, kx) - a))
    gamma = (np.pi * lam * df * k2 - 0.5 * np.pi * 2.7e7 * lam ** 3 * k2 ** 2 + np.arctan(0.1 / np.sqrt(1 - 0.01))
             + np.deg2rad(row.rlnPhaseShift))
    np.testing.assert_allclose(got[i], np.sin(gamma), atol=2e-3)
  assert ctf_mod.ctf_grid(particles.drop(columns=["rlnDefocusU"]), optics, n, px) is None


def test_denoise_star_uses_each_particles_ctf(tmp_path, basis):
  """denoise with method=cwf on a STAR file: fit on fit_size particles with their CTFs (pass 1),
  each batch with its own CTFs (pass 2); a bare MRC stack runs with the identity CTF."""
  import mrcfile

  from cryojax_denoise import io
  from cryojax_denoise.data import relion
  from experiments import denoise

  rng = np.random.default_rng(5)
  n = 60  # at least denoisers.cwf.cwf.MIN_STACK particles
  noisy = (_low_rank_set(rng, n, basis) + 0.5 * rng.standard_normal((n, L, L))).astype(np.float32)
  with mrcfile.new(tmp_path / "p.mrcs", noisy) as m:
    m.voxel_size = 4.0
  du = rng.uniform(10000, 20000, n)
  params = relion.ParticleParams.zeros(n, np.float64)._replace(defocus_u_in_angstroms=du,
                                                               defocus_v_in_angstroms=du - 100)
  io.write_star(str(tmp_path / "p.star"), relion.optics_table(4.0, L), relion.particles_table(params, True, "p.mrcs"))
  outs = {}
  for name in ("p.star", "p.mrcs"):
    config = denoise.get_config()
    config.method, config.input, config.sure_images, config.fit_size = "cwf", str(tmp_path / name), 0, 30
    config.output, config.batch_size, config.noise_std = str(tmp_path / f"out_{name[2:]}.mrcs"), 16, 0.5
    denoise.run(config, str(tmp_path))
    outs[name] = mrcfile.read(config.output)
    assert outs[name].shape == noisy.shape and np.isfinite(outs[name]).all()
  assert (tmp_path / "out_star.star").exists()
  assert np.abs(outs["p.star"] - outs["p.mrcs"]).max() > 0.1 * np.abs(outs["p.mrcs"]).max()


_TWO_DEVICE_SCRIPT = """
import sys, numpy as np, jax
from cryojax_denoise.denoisers.cwf import cwf
assert len(jax.local_devices()) == 2
d = np.load(sys.argv[1])
model = cwf.fit(d["x"], 0.7, d["ctf"], batch_size=15)  # 15 -> 16 rows: the padded last row is masked out
out = cwf.apply(model, d["x"], 0.7, d["ctf"], batch_size=15)
np.save(sys.argv[2], np.asarray(out))
"""


@pytest.mark.slow
def test_two_devices_shard_batches_and_agree_with_one(tmp_path):
  """On 2 (host) devices the fit's and the Wiener step's batches are sharded over both; same result."""
  import os
  import subprocess
  import sys

  rng = np.random.default_rng(7)
  x = rng.standard_normal((40, 48, 48)).astype(np.float32) + 0.5 * _radial_ctfs(40, rng)[:, :48, :48].mean()
  f = np.fft.fftfreq(48)
  rho = np.hypot(*np.meshgrid(f, f, indexing="ij"))
  ctf = (0.6 + 0.4 * np.cos(2 * np.pi * rho[None] * rng.uniform(1, 4, 40)[:, None, None])).astype(np.float32)
  yy, xx = np.mgrid[:48, :48] - 24
  x += (3 * np.exp(-(xx ** 2 + (yy / 2) ** 2) / 60.0)).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x, ctf=ctf)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                     capture_output=True, text=True, timeout=300, cwd=root, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  one = np.asarray(cwf.apply(cwf.fit(x, 0.7, ctf, batch_size=15), x, 0.7, ctf, batch_size=15))
  two = np.load(tmp_path / "out.npy")
  assert np.abs(one).max() > 0.1
  np.testing.assert_allclose(two, one, rtol=0, atol=2e-3 * np.abs(one).max())
