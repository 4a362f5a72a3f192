"""Whitening/colouring, parametric spectra, coloured draws (noise/whiten.py) and methods under coloured
noise (noise/methods.py): CWF with a flat spectrum is today's CWF."""

import jax
import numpy as np
import pytest

from cryojax_denoise.denoisers.cwf import cwf
from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import methods
from cryojax_denoise.noise import spectrum as sp
from cryojax_denoise.noise import whiten as wh

L = 32
RELION31 = {"ratio": 7.0, "kc": 0.117, "n": 3.16}  # plateau fitted to issue 29's relion31 row (fit_family)


def _radial(family="plateau", **p):
  return wh.family_psd(family, sp.shell_frequencies(L // 2 + 1), **(p or RELION31))


@pytest.mark.parametrize("two_d", [False, True])
def test_whiten_colour_round_trip(two_d):
  psd = _radial()
  if two_d:
    psd = wh.psd_grid(psd, (L, L)) * (1 + 0.5 * np.cos(2 * np.pi * np.fft.fftfreq(L))[None, :])
  x = np.random.default_rng(0).standard_normal((4, L, L)).astype(np.float32)
  assert np.allclose(wh.colour(wh.whiten(x, psd), psd), x, atol=1e-5)
  assert np.allclose(wh.whiten(wh.colour(x, psd), psd), x, atol=1e-5)


def test_flat_spectrum_is_identity():
  flat = np.full(L // 2 + 1, 3.0)
  assert np.allclose(wh.whitening_filter(flat, (L, L)), 1.0, atol=1e-6)
  assert wh.psd_flatness(flat) == 1.0


def test_coloured_draw_and_whitening_keep_total_variance():
  """Draws have total variance std² and spectrum ∝ P; whitening them gives white noise of variance std²."""
  psd = _radial()
  n = np.asarray(wh.coloured_noise(jax.random.PRNGKey(1), (2000, L, L), psd, std=2.0))
  assert np.isclose(n.var(), 4.0, rtol=0.01)
  grid = wh.psd_grid(psd, (L, L))
  per = sp.radial_average(np.mean(np.abs(np.fft.fft2(n)) ** 2, 0) / L ** 2)
  assert np.allclose(sp.band_means(per), sp.band_means(sp.radial_average(grid / grid.mean() * 4.0)), rtol=0.04)
  white = np.asarray(wh.whiten(n, psd))
  per_w = sp.band_means(sp.radial_average(np.mean(np.abs(np.fft.fft2(white)) ** 2, 0) / L ** 2))
  assert np.isclose(white.var(), 4.0, rtol=0.01) and np.allclose(per_w, 4.0, rtol=0.04)


def test_family_fits_issue_rows():
  """The plateau family fits the measured rows of issue 29 (rms log error) and recovers its own parameters."""
  for name, tol in (("relion31", 0.13), ("corners320", 0.05), ("reprojection48", 0.08)):
    assert wh.fit_family(wh.ISSUE_BANDS[name], "plateau")["rms"] < tol
  bands = sp.band_means(_radial(ratio=3.0, kc=0.15, n=4.0))
  fit = wh.fit_family(bands, "plateau", n_shells=L // 2 + 1)
  assert np.allclose([fit["ratio"], fit["kc"], fit["n"]], [3.0, 0.15, 4.0], rtol=0.02)
  exp = sp.band_means(_radial("exp", ratio=4.0, k0=0.08))
  fit_exp = wh.fit_family(exp, "exp", n_shells=L // 2 + 1)
  assert np.allclose([fit_exp["ratio"], fit_exp["k0"]], [4.0, 0.08], rtol=0.02)


def test_bad_spectrum_one_line():
  for bad in (np.array([1.0, -1.0, 1.0]), np.ones((5, 5)), np.ones(1)):
    with pytest.raises(InputError) as err:
      wh.psd_grid(bad, (L, L))
    assert "\n" not in str(err.value)


def _particles(rng, n, ctf=True):
  """Clean low-rank steerable images (n, L, L), their CTF-filtered forms and CTF-like radial filters
  with sign changes (defocus-like c·k²)."""
  from tests.test_cwf import _low_rank_set  # noqa: PLC0415
  from cryojax_denoise.denoisers.cwf import steerable as st

  clean = _low_rank_set(rng, n, st.fb_basis(L))
  f = np.fft.fftfreq(L)
  k2 = (f[:, None] ** 2 + f[None, :] ** 2)[None]
  c = rng.uniform(20.0, 60.0, n)[:, None, None]
  h = (-np.sin(np.pi * c * k2 + 0.1) * np.exp(-4 * k2)).astype(np.float32) if ctf else None
  obs = clean if h is None else np.fft.ifft2(np.fft.fft2(clean) * h).real
  return clean, obs.astype(np.float32), h


@pytest.mark.parametrize("with_ctf", [True, False])
def test_cwf_flat_spectrum_is_todays_cwf(with_ctf):
  rng = np.random.default_rng(2)
  _, obs, h = _particles(rng, 100, with_ctf)
  y = obs + 0.5 * rng.standard_normal(obs.shape).astype(np.float32)
  today = np.asarray(cwf.cwf_denoise(y, 0.5, ctf=h))
  flat = np.asarray(methods.fit_coloured("cwf", y, 0.5, h, np.ones(L // 2 + 1))(y, 0.5, h))
  scale = np.abs(today).max()
  tol = 1e-5 if with_ctf else 2e-3  # without CTF the flat W enters as an all-ones CTF (CG path)
  assert np.max(np.abs(flat - today)) < tol * scale
  if with_ctf:  # CTF-free output (modulate=False) is not coloured back
    free = np.asarray(methods.fit_coloured("cwf", y, 0.5, h, np.ones(L // 2 + 1), modulate=False)(y, 0.5, h))
    assert np.max(np.abs(free - np.asarray(cwf.cwf_denoise(y, 0.5, ctf=h, modulate=False)))) < tol * scale


def test_cwf_coloured_beats_white_model():
  """Under relion31-like coloured noise, CWF on whitened particles (W joined to the CTF) has lower MSE
  than CWF with the white-noise model."""
  rng = np.random.default_rng(3)
  clean, obs, h = _particles(rng, 200)
  target = np.fft.ifft2(np.fft.fft2(clean) * h).real
  psd = _radial()
  sigma = np.sqrt(obs.var(axis=(1, 2)).mean() / 0.2)
  y = obs + np.asarray(wh.coloured_noise(jax.random.PRNGKey(4), obs.shape, psd, sigma))
  mse = lambda est: float(np.mean((np.asarray(est) - target) ** 2) / target.var())  # noqa: E731
  white = mse(cwf.cwf_denoise(y, sigma, ctf=h))
  coloured = mse(methods.fit_coloured("cwf", y, sigma, h, psd)(y, sigma, h))
  assert coloured < 0.9 * white, (coloured, white)


@pytest.mark.parametrize("with_ctf", [True, False])
def test_cwf_coloured_fit_stays_streamed(with_ctf):
  """Lazy particles (`budget.Rows`, as `denoise` passes them) are whitened a batch at a time as cwf's fit
  reads them, within `memory_gb`: no read asks for the whole stack, and the output equals the fit on the
  in-memory arrays."""
  from cryojax_denoise.denoisers.cwf import budget as bdg
  from cryojax_denoise.denoisers.cwf.budget import Rows
  from cryojax_denoise.denoisers.cwf.steerable import basis_reach

  rng = np.random.default_rng(5)
  _, obs, h = _particles(rng, 400, with_ctf)
  gb = bdg.min_gb(L, len(obs), reach=basis_reach(L))  # the least cwf accepts: batches well under the stack
  batch = bdg.fit_batch(L, len(obs), gb, reach=basis_reach(L))
  psd = _radial()
  y = obs + np.asarray(wh.coloured_noise(jax.random.PRNGKey(6), obs.shape, psd, 2.0))
  reads = []

  def lazy(a):
    return None if a is None else Rows(lambda rows: reads.append(len(rows)) or a[rows], len(a), a.shape[1:])

  eager = np.asarray(methods.fit_coloured("cwf", y, None, h, psd)(y[:8], None, None if h is None else h[:8]))
  den = methods.fit_coloured("cwf", lazy(y), None, lazy(h), psd, memory_gb=gb)
  assert reads and max(reads) <= batch < len(y)
  streamed = np.asarray(den(y[:8], None, None if h is None else h[:8]))
  np.testing.assert_allclose(streamed, eager, atol=2e-4 * np.abs(eager).max())


def test_whitened_classical_and_bm3d_psd_path():
  """gaussian through whiten/colour lowers its MSE under coloured noise; bm3d's PSD path runs on this
  NumPy (np.trapz guard) and leaves no np.trapz behind."""
  rng = np.random.default_rng(5)
  clean, _, _ = _particles(rng, 16, ctf=False)
  psd = _radial()
  sigma = np.sqrt(clean.var() / 0.5)
  y = clean + np.asarray(wh.coloured_noise(jax.random.PRNGKey(6), clean.shape, psd, sigma))
  mse = lambda est: float(np.mean((np.asarray(est) - clean) ** 2))  # noqa: E731
  white = mse(methods.fit_coloured("wiener", y, sigma, None, None)(y, sigma))
  col = mse(methods.fit_coloured("wiener", y, sigma, None, psd)(y, sigma))
  assert col < white
  had = hasattr(np, "trapz")
  out = methods.bm3d_psd_denoise(y[:2], psd, sigma, workers=1)
  assert out.shape == (2, L, L) and np.all(np.isfinite(out)) and hasattr(np, "trapz") == had

