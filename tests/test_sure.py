"""Monte-Carlo SURE (denoisers/tuning/sure.py, sure_policy.py): divergence = exact trace for a linear filter, unbiased
over noise draws, NumPy reference, jitted grid = Python loop, knob choice, and `params=auto`."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure as S
from cryojax_denoise.denoisers.tuning import sure_policy as P
from cryojax_denoise.denoisers.classical.filters import gaussian_denoise
from test_io import ROOT


def _smooth_images(n, size=32, seed=0):
  """Band-limited random images (B, size, size), unit variance: a stand-in for particles."""
  rng = np.random.default_rng(seed)
  x = np.asarray(gaussian_denoise(rng.normal(size=(n, size, size)).astype(np.float32), width=2.0))
  return (x / x.std()).astype(np.float32)


def _gauss(images, sigma, width):
  return gaussian_denoise(images, width=width)


def test_divergence_of_gaussian_filter_is_its_trace():
  """For f(y) = A y, div f = tr A: the MC estimate over 32 images × 16 probes within 2%."""
  size, width = 32, 1.5
  basis = np.eye(size * size, dtype=np.float32).reshape(-1, size, size)
  columns = np.asarray(gaussian_denoise(basis, width=width)).reshape(size * size, -1)
  trace = float(np.trace(columns))  # exact: the filter matrix built column by column
  y = _smooth_images(32, size) + np.random.default_rng(1).normal(size=(32, size, size)).astype(np.float32)
  sigma = np.ones(32, np.float32)
  probes = S.probes(0, 16, y.shape)
  _, div, _ = S.grid_stats(_gauss, y, sigma, [width], probes, 0.1 * sigma)
  assert div.shape == (1, 32)
  assert abs(float(np.mean(div)) * size ** 2 / trace - 1) < 0.02, (float(np.mean(div)), trace)


def test_known_divergence_of_gaussian_is_its_trace_and_replaces_the_probes(monkeypatch):
  """The gaussian's registered divergence = the trace of its matrix (built column by column, odd and
  even sizes) over the pixels; SURE with it = SURE with 16 probes (the MC error of that: 0.1% here);
  `sure_tune` then makes no probed calls; methods that are not linear register none."""
  for (h, w), width in (((12, 9), 0.75), ((16, 16), 2.0)):
    basis = np.eye(h * w, dtype=np.float32).reshape(-1, h, w)
    trace = float(np.trace(np.asarray(gaussian_denoise(basis, width=width)).reshape(h * w, -1)))
    assert S.known_divergence("gaussian", (5, h, w), width=width) == pytest.approx(trace / (h * w), rel=1e-5)
  assert S.known_divergence("gaussian", (32, 32)) == S.known_divergence("gaussian", (32, 32), width=1.5)
  assert S.known_divergence("wiener", (32, 32)) is None and S.known_divergence("ddtf", (32, 32)) is None
  y = _smooth_images(16) + np.random.default_rng(11).normal(size=(16, 32, 32)).astype(np.float32)
  den = denoisers.get("gaussian", width=1.0)
  exact = S.sure(den, y, 1.0, div=S.known_divergence("gaussian", y.shape, width=1.0))
  probed = S.sure(den, y, 1.0, eps=0.01, n_probes=16)
  assert exact.mean == pytest.approx(probed.mean, rel=0.01)
  assert np.all(exact.div == np.float32(S.known_divergence("gaussian", y.shape, width=1.0)))
  calls = []
  grid_stats = S.grid_stats
  monkeypatch.setattr(P, "grid_stats", lambda fn, im, sg, v, probes, *a, **k: calls.append(len(probes)) or grid_stats(
      fn, im, sg, v, probes, *a, **k))
  params, table = P.sure_tune("gaussian", np.concatenate([y] * 8), n_images=16, n_estimate=64)
  chosen = next(row for row in table if row["width"] == params["width"])
  assert calls and set(calls) == {0} and chosen["estimate"]["n_images"] == 64


def _reference_sure(images, den, sigma, probes, eps):
  """NumPy MC-SURE, image by image and probe by probe."""
  out = np.asarray(den(images), np.float64)
  est = []
  for i, (y, f, s) in enumerate(zip(images.astype(np.float64), out, sigma)):
    div = np.mean([np.sum(b[i] * (np.asarray(den(images + eps * s * b), np.float64)[i] - f)) / (eps * s)
                   for b in probes])
    est.append(np.mean((y - f) ** 2) - s ** 2 + 2 * s ** 2 * div / y.size)
  return np.array(est)


def test_sure_matches_numpy_reference_and_loop_path():
  """`sure` (jitted) = a NumPy loop; a non-jit-able (NumPy) denoiser takes the loop path, same result."""
  x = _smooth_images(4)
  y = x + 0.5 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  den = denoisers.get("wiener", strength=1.0)
  est = S.sure(den, y, 0.5, eps=0.05, n_probes=2, seed=3)
  probes = S.probes(3, 2, y.shape)
  ref = _reference_sure(y, lambda im: den(im, 0.5), np.full(4, 0.5), probes, 0.05)
  np.testing.assert_allclose(est.mse, ref, rtol=2e-3, atol=2e-4)
  numpy_den = lambda im, s: np.asarray(den(np.asarray(im), s))  # np.asarray of a tracer: not jit-able
  assert not S.is_jittable(lambda im, s, v: numpy_den(im, s), y, np.full(4, 0.5), 0.0)
  loop = S.sure(numpy_den, y, 0.5, eps=0.05, n_probes=2, seed=3)
  np.testing.assert_allclose(loop.mse, est.mse, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,params", [("gaussian", {"width": 1.5}), ("wiener", {"strength": 1.0})])
def test_sure_is_unbiased_over_noise_draws(name, params):
  """Mean SURE over 256 noise draws = mean true MSE (linear Gaussian; Wiener's gain depends on y)."""
  x = _smooth_images(4)
  sigma = 0.7
  rng = np.random.default_rng(4)
  y = (x[None] + sigma * rng.normal(size=(256, *x.shape))).astype(np.float32).reshape(-1, 32, 32)
  est = S.sure(denoisers.get(name, **params), y, sigma, eps=0.01, keep_output=True)
  true = np.mean((est.output - np.tile(x, (256, 1, 1))) ** 2)
  assert abs(est.mean / true - 1) < 0.03, (est.mean, true)
  assert est.gain_db == pytest.approx(10 * np.log10(sigma ** 2 / est.mean))


def test_band_noise_std_and_tuning_choice():
  """σ from the high band within 1%; SURE picks the Gaussian width whose true MSE is within 5% of
  the best on the grid, and its estimate is within 10% of that true MSE."""
  x = _smooth_images(32, 64, seed=5)
  sigma = 1.5
  y = x + sigma * np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
  assert abs(S.tail_corrected_noise_std(y) / sigma - 1) < 0.01
  params, table = P.sure_tune("gaussian", y, clean=x, n_images=32)
  best = min(row["mse"] for row in table)
  chosen = next(row for row in table if row["width"] == params["width"])
  assert chosen["mse"] <= 1.05 * best
  assert abs(chosen["sure_mse"] / chosen["mse"] - 1) < 0.1
  assert [row["width"] for row in table] == list(denoisers.REGISTRY["gaussian"].grid)
  assert chosen["sure_relative"] == pytest.approx(chosen["sure_mse"] / S.signal_power(y[P.subset(32)], sigma), rel=0.05)


@pytest.mark.slow
def test_estimate_of_the_chosen_knob_on_more_images():
  """The chosen row's "estimate": SURE of the chosen width on all 100 images (the 32 tuned on and the
  68 others in one batch), within 10% of those images' true MSE; jitted = NumPy loop path; new images
  in equal batches of at most `chunk` (100 = 4 × 25 for chunk 32, 90 = 3 × 30 for chunk 30); a stack
  under twice the tuning subset reports the grid's own numbers."""
  x = _smooth_images(100)
  y = x + 0.8 * np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
  params, table = P.sure_tune("gaussian", y, clean=x, n_images=32, n_estimate=128)
  chosen = next(row for row in table if row["width"] == params["width"])
  est = chosen["estimate"]
  assert est["n_images"] == 100 and abs(est["sure_mse"] / est["mse"] - 1) < 0.1, est
  kw = dict(chunk=68, n_estimate=68, eps=S.eps_for("gaussian"), clean=x)
  jitted = P.estimate_chosen(_gauss, y, None, params["width"], **kw)
  loop_fn = lambda im, s, v: np.asarray(_gauss(np.asarray(im), s, v))  # noqa: E731 (NumPy: no compile)
  loop = P.estimate_chosen(loop_fn, y, None, params["width"], **kw)
  assert jitted["n_images"] == 68
  sizes = [P.estimate_chosen(loop_fn, y, None, 1.0, chunk=c, n_estimate=n)["n_images"]
           for c, n in ((32, 128), (30, 90))]
  assert sizes == [100, 90]
  for k in ("sure_mse", "mse", "gain_db"):
    assert loop[k] == pytest.approx(jitted[k], rel=1e-3), k
  _, small = P.sure_tune("gaussian", y[:48], clean=x[:48], n_images=32)
  row = min(small, key=lambda r: r["sure_mse"])
  assert {k: row["estimate"][k] for k in ("n_images", "sure_mse", "sure_relative", "gain_db", "mse")} == {
      "n_images": 32, "sure_mse": row["sure_mse"], "sure_relative": row["sure_relative"], "gain_db": row["gain_db"],
      "mse": row["mse"]}
  assert 0 < row["estimate"]["relative_se"] < 0.2
  grown = [P.estimate_chosen(_gauss, y, None, 1.5, chunk=16, n_estimate=32, n_max=96, se_target=t, budget=b, clean=x)
           for t, b in ((1.0, 10.0), (1e-6, 10.0), (1e-6, 2.0))]
  # grows a batch at a time while SE > target, to n_max or as far as the budget goes (2 × 100 / 5 calls: 40 -> 32)
  assert [g["n_images"] for g in grown] == [32, 96, 32]
  assert grown[1]["relative_se"] < grown[0]["relative_se"]


@pytest.mark.slow
def test_standard_error_matches_the_spread_over_noise_draws():
  """SURE's reported standard error (σ from the same images' high band, `standard_error`) = the sd of
  SURE − true MSE over 40 noise draws of the same 48 images, within the ±25% that 40 draws resolve
  (measured: sd / SE 0.99; 1.31 with an SE that leaves out the error of σ² itself)."""
  x = _smooth_images(48, 32, seed=9)
  rng = np.random.default_rng(10)
  errors, ses = [], []
  for r in range(40):
    y = (x + 3.0 * rng.normal(size=x.shape)).astype(np.float32)
    est = S.sure(denoisers.get("gaussian", width=2.0), y, None, eps=S.eps_for("gaussian"), keep_output=True, seed=r)
    errors.append(est.mean - np.mean((est.output - x) ** 2))
    ses.append(est.standard_error)
  assert 0.75 < np.std(errors) / np.mean(ses) < 1.25, (np.std(errors), np.mean(ses))


def test_choose_reads_the_knob_off_a_parabola():
  """`choose`: raw argmin without `fit`; with it the grid value nearest the minimum of a parabola in
  log(value) through the 5 values around the argmin, so a jittered minimum is not taken at face value;
  the argmin where that parabola is concave or bottoms outside those 5 values."""
  values = (0.7, 0.85, 1.0, 1.1, 1.2, 1.35, 1.5)
  x = np.log(values)
  smooth = (x - np.log(1.2)) ** 2 + 1.0
  jitter = smooth + np.array([0, 0, 0, -0.02, 0.015, 0, 0])  # noise makes 1.1 the raw argmin
  assert P.choose(values, jitter) == 3 and P.choose(values, jitter, fit=True) == 4
  assert P.choose(values, smooth, fit=True) == 4
  concave = -(x - np.log(1.0)) ** 2
  assert P.choose(values, concave, fit=True) == int(np.argmin(concave))
  outside = [2.985, 1.244, 0.645, 0.676, 0.705, 0.637, 0.727]  # DDTF, SNR 0.05: the window's parabola bottoms at 0.85
  assert P.choose(values, outside, fit=True) == 5
  assert "ddtf" in P.FIT_CHOICE and "ksvd" not in P.FIT_CHOICE


def test_tuning_subset_grows_while_another_value_is_within_two_standard_errors():
  """`sure_tune` adds `n_images` at a time while another value's SURE is within `SIGNIFICANCE` paired
  standard errors of the lowest (widths 1 and 1.25 here, 0.8 of them apart on 16 images), up to
  `n_tune_max` and the call budget; two clearly different widths stop at the first subset."""
  x = _smooth_images(96, 32, seed=14)
  y = x + 1.0 * np.random.default_rng(15).normal(size=x.shape).astype(np.float32)
  kw = dict(n_images=16, n_estimate=16, clean=x)
  _, near = P.sure_tune("gaussian", y, grid=(1.0, 1.25), n_tune_max=64, **kw)
  _, far = P.sure_tune("gaussian", y, grid=(0.5, 4.0), n_tune_max=64, **kw)
  _, capped = P.sure_tune("gaussian", y, grid=(1.0, 1.25), n_tune_max=64, tune_budget=0.3, **kw)  # 96·0.3/2 = 14 < 16: the first subset only
  _, first = P.sure_tune("gaussian", y, grid=(1.0, 1.25), n_tune_max=16, **kw)
  _, big = P.sure_tune("gaussian", y, grid=(1.0, 1.25), n_tune_max=64, tune_budget=0.3, stack_size=960, **kw)
  assert [t[0]["n_images"] for t in (near, far, capped, first, big)] == [32, 16, 16, 16, 32]  # big: budget of 960
  z = lambda t: max(r["z_above_best"] for r in t)  # noqa: E731 (the other value's, of two)
  assert z(first) < P.SIGNIFICANCE < z(near) and z(far) > P.SIGNIFICANCE
  lowest = min(near, key=lambda r: r["sure_mse"])
  assert lowest["z_above_best"] == 0.0 and max(r["z_above_best"] for r in near) > 0
  assert abs(near[0]["sure_mse"] / near[0]["mse"] - 1) < 0.1


def test_keep_default_methods_leave_their_default_only_when_sure_resolves_it(monkeypatch):
  """A `KEEP_DEFAULT` method keeps its registered default (gaussian: width 1.5 here) while that value's
  SURE is within `significance` paired standard errors of the lowest (width 1.0's, 3.96 of them below it
  on these 16 images), and takes SURE's lowest beyond; bm3d keeps its sigma_scale=1 this way."""
  assert "bm3d" in P.KEEP_DEFAULT and "ddtf" not in P.KEEP_DEFAULT
  x = _smooth_images(96, 32, seed=14)
  y = x + 1.0 * np.random.default_rng(15).normal(size=x.shape).astype(np.float32)
  kw = dict(grid=(1.0, 1.5), n_images=16, n_estimate=16, n_tune_max=16)
  assert P.sure_tune("gaussian", y, significance=5.0, **kw)[0]["width"] == 1.0  # not a KEEP_DEFAULT method
  monkeypatch.setattr(P, "KEEP_DEFAULT", ("gaussian",))
  assert denoisers.REGISTRY["gaussian"].default == 1.5
  params, table = P.sure_tune("gaussian", y, **kw)
  assert params["width"] == 1.0 and 2.0 < table[1]["z_above_best"] < 5.0 and table[0]["default_kept"] is False
  params, table = P.sure_tune("gaussian", y, significance=5.0, **kw)
  assert params["width"] == 1.5 and "estimate" in table[1] and "estimate" not in table[0]
  assert table[1]["default_kept"] is True


def test_difference_se_matches_the_spread_over_noise_draws():
  """`difference_se` of SURE(width 1) − SURE(width 1.5) on the same 48 images matches the sd of
  that difference's error (− the true MSE difference) over 40 noise draws within the ±25% they resolve."""
  x = _smooth_images(48, 32, seed=12)
  rng = np.random.default_rng(13)
  errors, ses = [], []
  dens = [denoisers.get("gaussian", width=w) for w in (1.0, 1.5)]  # one object each: compiled once
  for r in range(40):
    y = (x + 2.0 * rng.normal(size=x.shape)).astype(np.float32)
    a, b = (S.sure(den, y, None, eps=S.eps_for("gaussian"), keep_output=True, seed=r) for den in dens)
    true = np.mean((a.output - x) ** 2) - np.mean((b.output - x) ** 2)
    errors.append(np.mean(a.mse - b.mse) - true)
    ses.append(S.difference_se(a, b))
  assert 0.75 < np.mean(ses) / np.std(errors) < 1.25, (np.std(errors), np.mean(ses))  # measured 0.88


def test_reliability_notes():
  assert P.reliability(np.full(4, 1.0), np.full(4, 1.01), 0.1, 1.0) == ""
  assert "disagree" in P.reliability(np.full(4, 1.2), np.full(4, 1.0), 0.1, 1.0)
  assert "<= 0" in P.reliability(np.full(4, 1.0), np.full(4, 1.0), -0.1, 1.0)


@pytest.mark.slow
def test_denoise_params_auto_writes_choice(tmp_path):
  """`denoise params=auto` on a STAR file: the knob SURE chose is used, recorded in
  <stem>.params.json and in a comment line that RELION-style readers skip."""
  import json

  import pandas as pd
  import starfile

  from cryojax_denoise import io

  x = _smooth_images(8)
  y = x + 0.8 * np.random.default_rng(7).normal(size=x.shape).astype(np.float32) + 5.0
  io.write_stack(str(tmp_path / "in.mrcs"), y, 2.0)
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnVoltage": [300.0]})
  particles = pd.DataFrame({"rlnImageName": [f"{i}@in.mrcs" for i in range(1, 9)], "rlnOpticsGroup": [1] * 8})
  io.write_star(str(tmp_path / "in.star"), optics, particles)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=denoise",
                         f"--workdir={tmp_path / 'w'}", "--config.method=gaussian", "--config.params=auto",
                         f"--config.input={tmp_path / 'in.star'}", f"--config.output={tmp_path / 'out.star'}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads((tmp_path / "out.params.json").read_text())
  width = record["params"]["width"]
  assert record["auto"] and width in denoisers.REGISTRY["gaussian"].grid and len(record["grid"]) == 7
  assert record["sure"]["n_images"] == 8 and record["sure"]["gain_db"] > 0
  assert min(r["sure_mse"] for r in record["grid"]) == record["sure"]["mse"]
  assert min(r["z_above_best"] for r in record["grid"]) == 0.0 and record["sure_tuning_images"] == 8
  assert record["default_kept"] is False  # gaussian is not a KEEP_DEFAULT method
  stack = io.read_stack(str(tmp_path / "out.mrcs"), mmap=False)
  np.testing.assert_allclose(np.asarray(stack.data), np.asarray(gaussian_denoise(y - y.mean(), width=width)) + y.mean(),
                             atol=1e-3)
  assert (tmp_path / "out.star").read_text().startswith("# cryojax-denoise: method gaussian")
  assert len(starfile.read(str(tmp_path / "out.star"))["particles"]) == 8


def test_auto_for_learned_method_is_one_error_line(tmp_path):
  from cryojax_denoise import io
  from test_io import random_stack

  io.write_stack(str(tmp_path / "in.mrcs"), random_stack(n=4), 2.0)
  (tmp_path / "ckpt").mkdir()
  out = tmp_path / "out.mrcs"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=denoise",
                         f"--workdir={tmp_path / 'w'}", "--config.method=autoencoder", "--config.params=auto",
                         f"--config.checkpoint={tmp_path / 'ckpt'}", f"--config.input={tmp_path / 'in.mrcs'}",
                         f"--config.output={out}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and "auto" in lines[0], proc.stderr
  assert not out.exists()

