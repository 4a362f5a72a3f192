"""Fourier–Bessel basis (denoisers/cwf/steerable.py): size, adjoint, steerability, radial filters."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from cryojax_denoise.denoisers.cwf import steerable as st

L = 24


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "rings"])
def basis(request):
  return st.fb_basis(L, fast=request.param)


def _real_count(basis):
  k = np.asarray(basis.k_of)
  return int((k == 0).sum() + 2 * (k > 0).sum())


@pytest.mark.parametrize("size,aspire_count,aspire_ell_max", [(16, 144, 19), (24, 334, 31)])
def test_truncation_matches_aspire(size, aspire_count, aspire_ell_max):
  """Same functions as ASPIRE 0.14's FFBBasis2D(L): z_kq < π L / 2 (counts printed by ASPIRE)."""
  b = st.fb_basis(size)
  assert _real_count(b) == aspire_count
  assert b.n_blocks - 1 == aspire_ell_max


def test_adjoint(basis):
  """<A c, y> = <c, Aᵀ y> for A = evaluate ∘ from_real, Aᵀ = to_real ∘ expand_t (real form)."""
  rng = np.random.default_rng(0)
  n_real = _real_count(basis)
  c = jnp.asarray(rng.standard_normal((3, n_real)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((3, L, L)), jnp.float32)
  ac = st.evaluate(basis, st.from_real(basis, c))
  aty = st.to_real(basis, st.expand_t(basis, y))
  lhs, rhs = float(jnp.sum(ac * y)), float(jnp.sum(c * aty))
  assert abs(lhs - rhs) < 1e-4 * max(abs(lhs), 1.0)
  np.testing.assert_allclose(st.to_real(basis, st.from_real(basis, c)), c, atol=1e-6)


def _rotate90(x):
  """Image rotated by +90° about pixel (L//2, L//2): new(x, y) = old(y, -x), x = column, y = row."""
  c = L // 2
  yy, xx = np.mgrid[0:L, 0:L]
  return x[:, (c - (xx - c)) % L, (c + (yy - c)) % L]


def test_steerability_90(basis):
  """Rotating by α = 90° multiplies a_k by exp(-i k α) (exact on the pixel grid)."""
  x = np.random.default_rng(1).standard_normal((2, L, L)).astype(np.float32)
  a = np.asarray(st.expand_t(basis, x))
  ar = np.asarray(st.expand_t(basis, _rotate90(x)))
  phase = np.exp(-1j * np.asarray(basis.k_of) * np.pi / 2)
  np.testing.assert_allclose(ar, a * phase, atol=2e-4 * np.abs(a).max())


def test_steerability_any_angle(basis):
  """A smooth image rotated by 33°: coefficients turn by exp(-i k α) up to sampling error."""
  alpha = np.deg2rad(33.0)
  yy, xx = np.mgrid[0:L, 0:L] - L // 2
  blobs = [(3.0, 2.0, 1.0), (-4.0, 1.0, -0.7), (1.0, -5.0, 0.5)]

  def image(angle):
    xr = np.cos(angle) * xx + np.sin(angle) * yy  # old coordinates of each new pixel
    yr = -np.sin(angle) * xx + np.cos(angle) * yy
    return sum(w * np.exp(-((xr - bx) ** 2 + (yr - by) ** 2) / 4.0) for bx, by, w in blobs)[None]

  a = np.asarray(st.expand_t(basis, image(0.0).astype(np.float32)))
  ar = np.asarray(st.expand_t(basis, image(alpha).astype(np.float32)))
  expected = a * np.exp(-1j * np.asarray(basis.k_of) * alpha)
  assert np.linalg.norm(ar - expected) < 0.02 * np.linalg.norm(a)
  assert np.linalg.norm(ar - a) > 0.3 * np.linalg.norm(a)  # the rotation did change them


def test_radial_filter_blocks(basis):
  """h ≡ 1 gives M_k = I; a radial grid filter's profile is its values at the nodes; applying a
  smooth radial filter on the grid ≈ M_k on the coefficients."""
  m = np.asarray(st.ctf_blocks(basis, jnp.ones((1, basis.radial.shape[1]))))[0]
  for k, p in enumerate(np.asarray(basis.sizes)):
    np.testing.assert_allclose(m[k, :p, :p], np.eye(p), atol=1e-5)
  f = np.fft.fftfreq(L)
  rho = np.hypot(*np.meshgrid(f, f, indexing="ij"))
  filt = np.exp(-((rho / 0.2) ** 2)).astype(np.float32)[None]
  h = np.asarray(st.radial_profile(basis, jnp.asarray(filt)))[0]
  nodes = (np.polynomial.legendre.leggauss(L)[0] + 1) / 4
  np.testing.assert_allclose(h, np.exp(-((nodes / 0.2) ** 2)), atol=0.02)
  yy, xx = np.mgrid[0:L, 0:L] - L // 2
  x = np.exp(-((xx - 2.0) ** 2 + (yy + 1.0) ** 2) / 6.0).astype(np.float32)[None]
  filtered = np.fft.ifft2(np.fft.fft2(x) * filt).real.astype(np.float32)
  a = st.pad(basis, st.expand_t(basis, x))
  lhs = np.asarray(st.pad(basis, st.expand_t(basis, filtered)))
  rhs = np.asarray(jnp.einsum("kpq,bkq->bkp", st.ctf_blocks(basis, jnp.asarray(h)[None])[0], a))
  assert np.linalg.norm(lhs - rhs) < 0.05 * np.linalg.norm(lhs)



def test_radial_profile_keeps_a_ctf_that_oscillates_within_a_pixel():
  """A radial chirp like a CTF at 1.5 Å/px and 1.5 µm defocus (phase 0.097 r², r in grid px: up to 6 rad
  per px at the edge): its profile at the nodes is the chirp itself (ring means of the grid at its distinct
  radii, interpolated in radius). Bilinear interpolation along circles, the previous form, kept an rms of
  0.67 / 0.37 / 0.16 of it at 8-16 / 16-24 / 24-32 px (corpus molecule 3 with CTF: 1.17x ASPIRE's MSE)."""
  size = 64
  f = np.fft.fftfreq(size) * size
  chirp = lambda r: np.cos(0.0968 * r ** 2 + 0.1)  # noqa: E731
  grid = chirp(np.hypot(*np.meshgrid(f, f, indexing="ij"))).astype(np.float32)[None]
  h = np.asarray(st.radial_profile(st.fb_basis(size), jnp.asarray(grid)))[0]
  nodes = (np.polynomial.legendre.leggauss(size)[0] + 1) / 4 * size  # radii of the nodes, grid px
  assert np.abs(h - chirp(nodes)).max() < 0.08
  for lo in (0, 8, 16, 24):
    band = (nodes >= lo) & (nodes < lo + 8)
    assert np.sqrt(np.mean(h[band] ** 2) / np.mean(chirp(nodes[band]) ** 2)) > 0.97


def _numpy_fb(size):
  """float64 reference: the FB functions on the disk pixels (H*W, count) and their k."""
  R, c = size / 2, size // 2
  yy, xx = np.mgrid[0:size, 0:size]
  x, y = (xx - c).ravel(), (yy - c).ravel()
  r, th = np.hypot(x, y), np.arctan2(y, x)
  cols, ks = [], []
  for k in range(4 * size):
    z = st.bessel_zeros(k, np.pi * R)
    if len(z) == 0:
      break
    f = special.jv(k, np.outer(r, z) / R) * np.exp(1j * k * th)[:, None] * (r < R)[:, None]
    cols.append(f / np.linalg.norm(f, axis=0))
    ks += [k] * len(z)
  return np.concatenate(cols, 1), np.array(ks)


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 33])
def test_rings_transform_matches_numpy(size):
  """The orbit transform (fb_rings) equals the dense float64 matrix: Ψᴴx, Re Ψ(w a), and a
  truncated synthesis from blocks k < k1."""
  fast = st.fb_basis(size, fast=True)
  psi, ks = _numpy_fb(size)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, size, size))
  a_ref = x.reshape(2, -1) @ psi.conj()
  a = np.asarray(st.expand_t(fast, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(a, a_ref, atol=1e-5 * np.abs(a_ref).max())
  coef = rng.standard_normal(a_ref.shape) + 1j * rng.standard_normal(a_ref.shape)
  w = np.where(ks == 0, 1.0, 2.0)
  img_ref = (psi @ (w * coef).T).real.T.reshape(2, size, size)
  img = np.asarray(st.evaluate(fast, jnp.asarray(coef, jnp.complex64)))
  np.testing.assert_allclose(img, img_ref, atol=1e-5 * np.abs(img_ref).max())
  k1 = 5
  part = np.asarray(st.evaluate_blocks(fast, st.pad(fast, jnp.asarray(coef, jnp.complex64))[:, :k1]))
  part_ref = (psi @ (np.where(ks < k1, w, 0.0) * coef).T).real.T.reshape(2, size, size)
  np.testing.assert_allclose(part, part_ref, atol=1e-5 * np.abs(part_ref).max())
  dense = st.fb_basis(size, fast=False)
  np.testing.assert_allclose(st.expand_blocks(dense, x.astype(np.float32)), st.expand_blocks(fast, x.astype(np.float32)),
                             atol=1e-5 * np.abs(a_ref).max())


def test_bessel_table_zeros_and_closed_form_profiles_match_scipy():
  """The basis's fast pieces against scipy: J_k by the FFT table + Hermite interpolation, the zeros
  bracketed on it, and the closed-form (Lommel) radial profiles against Gauss–Legendre quadrature."""
  R = 40.0
  bound = np.pi * R
  table = st.bessel_table(int(np.ceil(bound)), bound)
  rng = np.random.default_rng(0)
  for k in (0, 1, 7, 60, 125):
    x = rng.uniform(0, bound, 4000)
    np.testing.assert_allclose(st.bessel_interp(*table, k, x), special.jv(k, x), rtol=0, atol=5e-8)
  for k in range(int(bound) + 2):
    np.testing.assert_allclose(st.bessel_zeros(k, bound, table), st.bessel_zeros(k, bound), rtol=1e-12)
  rho = np.linspace(0.0, 0.5, 37)
  t, w = np.polynomial.legendre.leggauss(600)
  r, w = (t + 1) * R / 2, w * R / 2
  for k in (0, 3, 40):
    z = st.bessel_zeros(k, bound)
    norms = rng.uniform(1, 2, len(z))
    quad = 2 * np.pi * (special.jv(k, 2 * np.pi * np.outer(rho, r)) * (w * r)) @ (special.jv(k, np.outer(r, z) / R) / norms)
    np.testing.assert_allclose(st._radial_profiles(k, z, norms, R, rho), quad, rtol=0, atol=1e-8 * np.abs(quad).max())
