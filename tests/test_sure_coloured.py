"""SURE under stationary coloured noise (denoisers/tuning/sure.py, issue 29): PSD grids and coloured probes,
a flat PSD = white SURE, and SURE unbiased over noise draws against the true MSE (and against the exact
trace tr(ΣA) of a linear filter) where the white formula is not."""

import numpy as np
import pytest

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure as S
from cryojax_denoise.denoisers.tuning import sure_policy as P
from cryojax_denoise.denoisers.classical.filters import gaussian_denoise
from cryojax_denoise.errors import InputError

SIZE = 32


def _excess_profile(n=33, excess=5.0, width=0.1):
  """Radial PSD (n,) on 0 … 0.5 cycles/px, 1 + `excess`·exp(−(r/width)²): ~6× the high band's power
  below 0.1 cycles/px, like relion31's measured spectrum (issue 29, table row 1)."""
  r = np.linspace(0, 0.5, n)
  return 1.0 + excess * np.exp(-(r / width) ** 2)


def _smooth_images(n, size=SIZE, seed=0):
  rng = np.random.default_rng(seed)
  x = np.asarray(gaussian_denoise(rng.normal(size=(n, size, size)).astype(np.float32), width=2.0))
  return (x / x.std()).astype(np.float32)


def _noise(rng, shape, psd2d):
  return S._colour(rng.normal(size=shape), psd2d)


def test_psd_grid_and_coloured_noise_have_the_given_spectrum():
  """A radial profile lands on the FFT grid at |k| (0 at DC, the profile's last value at Nyquist);
  noise coloured with it has that PSD (per-frequency power / pixels) and variance mean PSD; a flat
  PSD colours nothing; bad spectra are InputErrors."""
  prof = _excess_profile()
  p = S.psd_grid(prof, (SIZE, SIZE))
  assert p.shape == (SIZE, SIZE) and p[0, 0] == pytest.approx(prof[0]) and p[SIZE // 2, 0] == pytest.approx(prof[-1])
  assert p[0, 3] == pytest.approx(np.interp(3 / SIZE, np.linspace(0, 0.5, len(prof)), prof))
  n = _noise(np.random.default_rng(0), (2000, SIZE, SIZE), p)
  measured = np.mean(np.abs(np.fft.fft2(n)) ** 2, axis=0) / SIZE ** 2
  assert np.max(np.abs(measured / p - 1)) < 0.15 and abs(np.mean(measured / p) - 1) < 0.01
  assert np.var(n) == pytest.approx(p.mean(), rel=0.01)
  b = S.probes(3, 2, (4, SIZE, SIZE))
  np.testing.assert_allclose(S.probes(3, 2, (4, SIZE, SIZE), np.full((SIZE, SIZE), 2.0)), b, atol=1e-5)
  asym = np.random.default_rng(1).uniform(1, 2, (SIZE, SIZE))
  sym = S.psd_grid(asym, (5, SIZE, SIZE))
  np.testing.assert_allclose(sym, np.roll(sym[::-1, ::-1], (1, 1), axis=(0, 1)))
  for bad in (-prof, np.ones((8, 8)), [1.0], [np.nan, 1.0]):
    with pytest.raises(InputError):
      S.psd_grid(bad, (SIZE, SIZE))


def test_flat_psd_is_white_sure():
  """noise_psd = σ² everywhere gives the white estimate with noise_std = σ (same probes, same σ)."""
  y = _smooth_images(4) + 0.5 * np.random.default_rng(2).normal(size=(4, SIZE, SIZE)).astype(np.float32)
  den = denoisers.get("wiener", strength=1.0)
  white = S.sure(den, y, 0.5, eps=0.05, seed=3)
  flat = S.sure(den, y, noise_psd=np.full((SIZE, SIZE), 0.25), eps=0.05, seed=3)
  np.testing.assert_allclose(flat.mse, white.mse, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(flat.sigma, 0.5)


def _draws(n_draws, psd2d, seed=4):
  x = _smooth_images(4)
  rng = np.random.default_rng(seed)
  y = (x[None] + _noise(rng, (n_draws, *x.shape), psd2d)).reshape(-1, SIZE, SIZE).astype(np.float32)
  return np.tile(x, (n_draws, 1, 1)), y


def _per_draw(values, n_draws):
  return np.asarray(values, np.float64).reshape(n_draws, -1).mean(axis=1)


@pytest.mark.parametrize("name,params,psd_scale", [("gaussian", {"width": 1.5}, 0.5),
                                                    ("wiener", {"strength": 1.0}, 0.5)])
def test_coloured_sure_is_unbiased_over_noise_draws(name, params, psd_scale):
  """Over 192 coloured noise draws (4 images each), mean SURE = mean true MSE within 3 standard errors
  of the per-draw differences (and 3%), white and coloured; the white formula with the same total
  variance misses by far more. For the linear gaussian the MC trace term matches the exact
  tr(ΣA)/N = mean_k PSD_k a_k (a_k its frequency response) within 2%."""
  n_draws = 192
  p = psd_scale * S.psd_grid(_excess_profile(), (SIZE, SIZE))
  den = denoisers.get(name, **params)
  for psd in (np.full_like(p, p.mean()), p):  # white, then coloured (the same total variance)
    x, y = _draws(n_draws, psd)
    est = S.sure(den, y, noise_psd=psd, eps=0.01, keep_output=True)
    true = np.mean((est.output - x) ** 2, axis=(-2, -1))
    d = _per_draw(est.mse - true, n_draws)
    se = d.std(ddof=1) / np.sqrt(n_draws)
    assert abs(d.mean()) < 3 * se and abs(est.mean / true.mean() - 1) < 0.03, (name, d.mean(), se, true.mean())
  white_formula = S.sure(den, y, float(np.sqrt(p.mean())), eps=0.01)
  assert abs(white_formula.mean / true.mean() - 1) > 0.1 or abs(white_formula.mean - true.mean()) > 10 * se
  if name == "gaussian":  # frequency response a_k of the filter, from its impulse response
    delta = np.zeros((1, SIZE, SIZE), np.float32)
    delta[0, 0, 0] = 1
    a = np.fft.fft2(np.asarray(gaussian_denoise(delta, width=1.5))[0]).real
    exact = np.mean(p * a)  # tr(ΣA) / N
    mc = float(np.mean(est.div)) * p.mean()  # div = tr(G J G)/N with G² = Σ/σ², σ² = mean PSD
    assert mc == pytest.approx(exact, rel=0.02)


def test_sure_tune_with_psd_chooses_and_estimates():
  """`sure_tune(noise_psd=)`: coloured probes and σ from the PSD; the chosen gaussian width's true MSE
  within 5% of the grid's best and its estimate within 10% of its true MSE on these images."""
  p = 0.6 * S.psd_grid(_excess_profile(), (SIZE, SIZE))
  x, y = _draws(24, p, seed=7)
  params, table = P.sure_tune("gaussian", y, noise_psd=p, clean=x, n_images=32, n_estimate=64)
  chosen = next(r for r in table if r["width"] == params["width"])
  assert chosen["mse"] <= 1.05 * min(r["mse"] for r in table)
  assert chosen["estimate"]["sure_mse"] == pytest.approx(chosen["estimate"]["mse"], rel=0.1)
  assert chosen["warning"] == ""
