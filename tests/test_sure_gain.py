"""SURE's output gain (`sure.output_gain`, issue 29): α = (⟨f, y⟩ − tr(Σ J_f)) / ‖f‖² estimates the
MSE-optimal scalar gain of a denoiser's output without clean images, white and coloured noise; the gained
output of a method that passes more noise than signal falls back below the signal power; α is taken from a
lower confidence bound of the ratio, so an uncertain estimate errs toward a blank image."""

import json

import numpy as np
import pytest

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure as S

SIZE = 32


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  x = np.asarray(denoisers.get("gaussian", width=2.0)(rng.normal(size=(n, SIZE, SIZE)).astype(np.float32)))
  return (x / x.std()).astype(np.float32)


def _low_frequency_psd(variance):
  """PSD (SIZE, SIZE) with 6× the high band's power below ~0.1 cycles/px (issue 29's relion31 shape)."""
  r = np.linspace(0, 0.5, 33)
  p = S.psd_grid(1.0 + 5.0 * np.exp(-(r / 0.1) ** 2), (SIZE, SIZE))
  return p * variance / p.mean()


@pytest.mark.parametrize("coloured", [False, True])
def test_gain_matches_the_oracle_and_its_sure_the_true_mse(coloured):
  """gaussian (width 1) at SNR 0.05 passes its pass band's noise: MSE above the signal power. SURE's α is
  within 0.05 of the oracle ⟨f, x⟩/‖f‖², the gained output's MSE is below the signal power, and SURE's
  estimate of that MSE is within 10% of the true one (white noise and low-frequency coloured noise)."""
  x = _images(128)
  variance = 1.0 / 0.05
  psd = _low_frequency_psd(variance) if coloured else np.full((SIZE, SIZE), variance)
  y = (x + S._colour(np.random.default_rng(1).normal(size=x.shape), psd)).astype(np.float32)
  den = denoisers.get("gaussian", width=1.0)
  est = S.sure(den, y, noise_psd=psd, eps=0.01, keep_output=True)
  f = est.output.astype(np.float64)
  assert np.mean((f - x) ** 2) > np.mean(x.astype(np.float64) ** 2)  # worse than a blank image
  oracle = float(np.sum(f * x) / np.sum(f * f))
  point, _ = S.output_gain(y, f, est, z=0.0)
  assert 0.0 <= point < 1.0 and point == pytest.approx(oracle, abs=0.05)
  alpha, mse = S.output_gain(y, f, est)  # the lower bound: below the point estimate, still well above 0
  assert 0.5 * point < alpha < point
  for a, m in ((alpha, mse), (point, S.output_gain(y, f, est, z=0.0)[1])):
    true = np.mean((a * f - x) ** 2)
    assert true < np.mean(x.astype(np.float64) ** 2)
    assert float(np.mean(m)) == pytest.approx(true, rel=0.1)


def test_the_gain_bound_keeps_a_thresholding_method_at_or_below_a_blank_image():
  """ddtf (hard thresholds at 1.5× its default) at SNR 0.02 under low-frequency coloured noise, 64 images
  of 32²: its output holds a few % of signal against ⟨f, y⟩, so SURE's point estimate of α can land far
  above the optimum; on one of three noise draws it does, and α·f is worse than a blank image. The lower
  bound (the ratio less 2 standard errors) keeps every draw at or below a blank image."""
  from cryojax_denoise.noise.methods import wrap

  x = _images(64, seed=5)
  psd = _low_frequency_psd(1.0 / 0.02)
  den = wrap(denoisers.get("ddtf", lam_scale=1.5), psd, "ddtf", {"lam_scale": 1.5})
  blank = np.mean(x.astype(np.float64) ** 2)
  point, bound = [], []
  for seed in range(3):
    y = (x + S._colour(np.random.default_rng(seed).normal(size=x.shape), psd)).astype(np.float32)
    est = S.sure(den, y, noise_psd=psd, eps=S.eps_for("ddtf"), keep_output=True)
    f = est.output.astype(np.float64)
    for out, z in ((point, 0.0), (bound, S.GAIN_Z)):
      out.append(np.mean((S.output_gain(y, f, est, z=z)[0] * f - x) ** 2) / blank)
  assert max(point) > 1.005
  assert max(bound) <= 1.0 + 1e-6


def test_the_bound_measures_the_ratio_not_how_much_signal_each_image_carries():
  """The bound's standard error is the ratio estimator's: per-image terms exactly proportional to their
  denominators give the ratio itself, however unequal the images; and with particles whose signal spans 10×
  (gaussian width 1, SNR 0.5, coloured) the bound costs under 0.1 in α where the spread of the per-image
  ⟨f, x⟩ estimates (the sum's standard error) costs 0.2."""
  denoms = np.geomspace(1.0, 100.0, 16)
  assert S._bounded_weight(0.7 * denoms, denoms, S.GAIN_Z) == pytest.approx(0.7)
  x = _images(64, seed=7) * np.geomspace(0.3, 3.0, 64)[:, None, None]
  x = (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)
  psd = _low_frequency_psd(1.0 / 0.5)
  y = (x + S._colour(np.random.default_rng(1).normal(size=x.shape), psd)).astype(np.float32)
  est = S.sure(denoisers.get("gaussian", width=1.0), y, noise_psd=psd, eps=0.01, keep_output=True)
  f = est.output.astype(np.float64)
  point, bound = S.output_gain(y, f, est, z=0.0)[0], S.output_gain(y, f, est)[0]
  terms = np.sum(f * y, axis=(1, 2)) - np.square(est.sigma) * est.div * y[0].size
  by_sum = (terms.sum() - S.GAIN_Z * np.sqrt(len(terms)) * np.std(terms, ddof=1)) / np.sum(f * f)
  assert point - 0.1 < bound < point and point - by_sum > 0.2


def test_gain_of_a_good_denoiser_is_near_one_and_keeps_sure():
  """At high SNR a tuned filter needs no gain (α ≈ 1); with α = 1 `output_gain`'s MSE is SURE's own."""
  x = _images(32, seed=2)
  y = (x + 0.3 * np.random.default_rng(3).normal(size=x.shape)).astype(np.float32)
  den = denoisers.get("gaussian", width=1.0)
  est = S.sure(den, y, 0.3, eps=0.01, keep_output=True)
  alpha, mse = S.output_gain(y, est.output, est)
  assert alpha > 0.9
  if alpha == 1.0:
    np.testing.assert_allclose(mse, est.mse, rtol=1e-4, atol=1e-6)


def test_denoise_applies_the_gain_under_coloured_noise(tmp_path):
  """`denoise` with output_gain=auto under coloured noise writes α·f (mean-removed units) with SURE's α in (0, 1),
  records it, and lands below a blank image where the ungained output (output_gain=off) is above it; under
  white noise auto applies no gain; a bad value is one InputError."""
  import mrcfile

  from cryojax_denoise import pipeline
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source
  from cryojax_denoise.errors import InputError
  from cryojax_denoise.noise import spec

  ds = simulate.simulate_dataset(load_source(image_size=SIZE), 160, SIZE, snr=0.05, seed=5, ctf=True,
                                 noise_psd=spec.resolve("issue:relion31"))
  files = simulate.write_dataset(ds, str(tmp_path / "sim"))
  clean = mrcfile.read(files["clean.mrcs"]).astype(np.float64)
  out, records = {}, {}
  for gain in ("off", "auto"):
    path = str(tmp_path / gain / "denoised.mrcs")
    records[gain] = pipeline.denoise_particles(files["noisy.mrcs"], method="gaussian", params="width=0.6",
                                               noise="coloured", output_gain=gain, output=path)
    out[gain] = mrcfile.read(path).astype(np.float64)
  alpha = records["auto"]["output_gain"]["alpha"]
  assert 0.0 < alpha < 0.9 and "output_gain" not in records["off"]
  offset = out["auto"] - alpha * out["off"]  # (1 - α)·(the stack mean the denoiser removed)
  assert np.std(offset) < 1e-4 * np.std(out["off"])
  blank = np.mean((clean - clean.mean()) ** 2)
  mse = {k: np.mean((v - clean) ** 2) for k, v in out.items()}
  assert mse["off"] > blank > mse["auto"], (mse, blank)
  with open(records["auto"]["outputs"]["params_json"]) as f:
    assert json.load(f)["output_gain"]["alpha"] == pytest.approx(alpha)
  white = pipeline.denoise_particles(files["noisy.mrcs"], method="gaussian", params="width=0.6", noise="white",
                                     output=str(tmp_path / "white" / "denoised.mrcs"))
  assert "output_gain" not in white
  with pytest.raises(InputError, match="output_gain"):
    pipeline.denoise_particles(files["noisy.mrcs"], method="gaussian", output_gain="maybe",
                               output=str(tmp_path / "bad" / "denoised.mrcs"))


def test_method_sure_of_a_gained_linear_method_scales_its_known_divergence():
  """A linear method scored by its exact (registered) divergence: with its output scaled by α
  (`scale_output`, the sweep's gained rows), `method_sure(scale=α)` reads α·div and the SURE of α·f."""
  from cryojax_denoise.denoisers.tuning import sure_policy as P

  x = _images(16, seed=4)
  y = (x + 0.5 * np.random.default_rng(5).normal(size=x.shape)).astype(np.float32)
  den, alpha = denoisers.get("gaussian", width=1.0), 0.6
  plain = P.method_sure("gaussian", den, y, 0.5, width=1.0)
  gained = P.method_sure("gaussian", P.scale_output(den, alpha), y, 0.5, scale=alpha, width=1.0)
  np.testing.assert_allclose(gained.div, alpha * plain.div, rtol=1e-6)
  f = alpha * np.asarray(den(y, 0.5), np.float64)
  exact = np.mean((y - f) ** 2, axis=(-2, -1)) - 0.25 + 2 * 0.25 * alpha * plain.div
  np.testing.assert_allclose(gained.mse, exact, rtol=1e-4, atol=1e-6)


def test_blend_weight_applies_a_correction_that_helps_and_drops_one_that_hurts():
  """`sure.blend_weight` (autoencoder_cwf's weight on its network's correction of CWF): from a base that
  over-smooths (gaussian width 2), the correction to a better filter (width 1) is applied (β near the oracle,
  the blend at least as good as either); a correction that mostly lets noise back in (halfway to y, far worse
  than the base) is applied only as far as it helps: β small and below the oracle, the blend no worse than
  the base."""
  x = _images(64, seed=4)
  y = (x + np.random.default_rng(5).normal(size=x.shape)).astype(np.float32)
  base = S.sure(denoisers.get("gaussian", width=2.0), y, 1.0, eps=0.01, keep_output=True)
  good = S.sure(denoisers.get("gaussian", width=1.0), y, 1.0, eps=0.01, keep_output=True)
  bad = S.sure(lambda im, s: np.asarray(denoisers.get("gaussian", width=2.0)(im, s)) * 0.5 + 0.5 * im, y, 1.0,
               eps=0.01, keep_output=True)
  mse = lambda f: float(np.mean((f - x) ** 2))  # noqa: E731
  b, g, w = (e.output.astype(np.float64) for e in (base, good, bad))
  beta = S.blend_weight(y, base, good)
  oracle = float(np.sum((x - b) * (g - b)) / np.sum((g - b) ** 2))
  assert 0.5 < beta <= 1.0 and beta == pytest.approx(min(oracle, 1.0), abs=0.15)
  assert mse(b + beta * (g - b)) <= 1.01 * min(mse(b), mse(g))
  assert mse(w) > 1.5 * mse(b)
  beta = S.blend_weight(y, base, bad)
  oracle = float(np.sum((x - b) * (w - b)) / np.sum((w - b) ** 2))
  assert 0.0 <= beta <= oracle < 0.5
  assert mse(b + beta * (w - b)) <= mse(b)
