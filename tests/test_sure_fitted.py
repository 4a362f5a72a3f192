"""SURE of dataset-level (fitted) methods (issue 32 item 1): cwf fitted with CTFs and held fixed, probed with
each particle's CTF, equals its exact Jacobian trace; `denoise`'s quality score passes those CTFs; methods SURE
cannot score give a reason instead of a number."""

import numpy as np
import pytest

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure as S
from cryojax_denoise.denoisers.tuning import sure_policy as P
from cryojax_denoise.errors import InputError
from test_sure import _smooth_images


def _ctf_like(n, size, rng):
  """(n, size, size) CTF-like filters on the unshifted FFT grid: sin(0.2 + c·|k|²), sign flips and zeros."""
  f = np.fft.fftfreq(size)
  rho2 = np.add.outer(f ** 2, f ** 2)
  return np.sin(0.2 + rng.uniform(20, 60, n)[:, None, None] * rho2[None]).astype(np.float32)


def test_fitted_cwf_sure_with_ctf_is_its_exact_trace():
  """Issue 32: cwf fitted on a 16² stack with CTFs, then held fixed, is affine in each image (σ given):
  its exact Jacobian trace, probing all 256 basis vectors, equals the MC divergence `method_sure` reads
  with each image's CTF in every call (64 probes: within 3%); SURE from the exact trace is within 2 of
  its standard errors of the true MSE. Probed with ctf=None (as `denoise` did), the divergence is that
  of another function (CTF-free CWF) and misses by over 10%, several times the MC tolerance above (18.5%
  with issue 29's reaching basis and ring-mean CTF profile; over 20% before)."""
  rng = np.random.default_rng(0)
  n, size, sigma = 200, 16, 0.5
  ctf = _ctf_like(n, size, rng)
  clean = np.fft.ifft2(np.fft.fft2(_smooth_images(n, size, seed=1)) * ctf).real.astype(np.float32)
  y = clean + sigma * rng.normal(size=clean.shape).astype(np.float32)
  den = denoisers.fit("cwf", y, sigma, ctf)
  b, c, x = y[:8], ctf[:8], clean[:8]
  calls = []
  probed = lambda im, s, ctf=None: calls.append(ctf is not None) or den(im, s, ctf)  # noqa: E731
  est = P.method_sure("cwf", probed, b, sigma, ctf=c, fitted=True, seed=1)
  assert calls and all(calls)
  out = np.asarray(den(b, sigma, c))
  exact = np.zeros(len(b))  # per-image trace, column by column (one compiled batch shape)
  for j in range(size * size):
    e = np.zeros(size * size, np.float32)
    e[j] = 1
    exact += (np.asarray(den(b + e.reshape(size, size), sigma, c)) - out).reshape(len(b), -1)[:, j]
  exact /= size ** 2  # per pixel
  mc = S.sure(lambda im, s: den(im, s, c), b, sigma, n_probes=64, seed=2)
  assert float(np.mean(mc.div)) == pytest.approx(float(np.mean(exact)), rel=0.03)
  resid = np.mean((b - out) ** 2, axis=(-2, -1))
  true = np.mean((out - x) ** 2, axis=(-2, -1))
  sure_exact = S.sure_from_stats(resid, exact, sigma)
  assert est.mse.shape == (8,) and abs(est.mean - float(np.mean(sure_exact))) < 0.2 * sigma ** 2
  d = sure_exact - true
  assert abs(d.mean()) < 2 * d.std(ddof=1) / np.sqrt(len(d)) + 0.02 * true.mean()
  wrong = S.sure(lambda im, s: den(im, s), b, sigma, n_probes=64, seed=2)
  assert abs(float(np.mean(wrong.div)) / float(np.mean(exact)) - 1) > 0.1


def test_sure_reason_for_methods_it_cannot_score():
  """autoencoder_cwf's per-batch form retrains per call: a reason, no number; every other registered
  method, and autoencoder_cwf fitted, can be scored."""
  assert "retrain" in P.sure_reason("autoencoder_cwf") and P.sure_reason("autoencoder_cwf", fitted=True) == ""
  assert all(P.sure_reason(name, fitted=f) == "" for name in denoisers.names() if name != "autoencoder_cwf"
             for f in (False, True))
  assert isinstance(P.method_sure("autoencoder_cwf", None, np.zeros((2, 8, 8), np.float32)), str)
  with pytest.raises(InputError):
    P.sure_reason("nope")


def test_denoise_quality_probes_a_fitted_method_with_each_particles_ctf(tmp_path, monkeypatch):
  """`denoise`'s SURE quality score of cwf on a STAR file (`pipeline.sure_step.quality`) passes the scored
  particles' own CTFs to every probed call of the fitted model (probed with ctf=None, the score is that of a
  CTF-free CWF: 3.1× the true MSE at SNR 0.1, docs/sure_notes.md); a reason from `sure_reason` is an error."""
  import mrcfile

  from cryojax_denoise import denoise_stack, io
  from cryojax_denoise.data import relion
  from cryojax_denoise.pipeline import sure_step
  from cryojax_denoise.pipeline.params import Settings
  from cryojax_denoise.pipeline.run import fit_denoiser

  rng = np.random.default_rng(5)
  n, size = 40, 16
  noisy = (_smooth_images(n, size) + 0.5 * rng.standard_normal((n, size, size))).astype(np.float32)
  with mrcfile.new(tmp_path / "p.mrcs", noisy) as m:
    m.voxel_size = 4.0
  du = rng.uniform(10000, 20000, n)
  params = relion.ParticleParams.zeros(n, np.float64)._replace(defocus_u_in_angstroms=du,
                                                               defocus_v_in_angstroms=du - 100)
  io.write_star(str(tmp_path / "p.star"), relion.optics_table(4.0, size),
                relion.particles_table(params, True, "p.mrcs"))
  settings = Settings(method="cwf", noise_std=0.5, sure_images=8, fit_size=40)
  reader = io.ImageReader()
  table = denoise_stack.open_particles(str(tmp_path / "p.star"), reader)
  den, ctf_of = fit_denoiser(settings, table, reader)
  seen = []
  monkeypatch.setattr(P, "method_sure", lambda name, d, images, std, *, ctf, fitted, **k: seen.append(
      (ctf, fitted)) or S.sure(lambda y, s: d(y, s, ctf), images, std))
  record = sure_step.quality(settings, table, reader, den, ctf_of)
  assert seen[0][1] and np.array_equal(seen[0][0], ctf_of(P.subset(n, 8))) and record["sure"]["n_images"] == 8
  monkeypatch.setattr(P, "method_sure", lambda *a, **k: "a reason")
  with pytest.raises(ValueError, match="a reason"):
    sure_step.quality(settings, table, reader, den, ctf_of)


def test_fit_leaves_out_the_particles_sure_scores(tmp_path, monkeypatch):
  """`denoise` fits a dataset-level method on particles SURE does not score (its fixed-model premise holds:
  fitted on them too, cwf's SURE read low by the fit's dependence on their noise); the output gain's particles
  too when it applies; on a stack where they would be over a tenth, the fit keeps every particle."""
  import importlib

  import mrcfile

  import cryojax_denoise.noise.methods as M
  from cryojax_denoise import denoise_stack, io
  from cryojax_denoise.pipeline import sure_step
  from cryojax_denoise.pipeline.params import Settings

  R = importlib.import_module("cryojax_denoise.pipeline.run")  # the module (the package exports `run`, a function)
  rng = np.random.default_rng(3)
  fitted = []
  monkeypatch.setattr(M, "fit_coloured", lambda name, images, *a, **k: fitted.append(len(images)) or
                      (lambda y, s, ctf=None: y))
  seen = {}
  inputs = R._fit_inputs
  monkeypatch.setattr(R, "_fit_inputs", lambda table, reader, rows, *a: seen.update(rows=rows) or
                      inputs(table, reader, rows, *a))
  reader = io.ImageReader()
  for n, gain, held in ((400, False, 32), (2000, True, None), (200, False, 0)):
    mrcfile.write(tmp_path / f"p{n}.mrcs", rng.standard_normal((n, 8, 8)).astype(np.float32), overwrite=True)
    table = denoise_stack.open_particles(str(tmp_path / f"p{n}.mrcs"), reader)
    settings = Settings(method="cwf", noise_std=1.0, sure_images=32, fit_size=10_000,
                        output_gain="on" if gain else "off")
    R.fit_denoiser(settings, table, reader)
    scored = set(P.subset(n, 32)) | (set(P.subset(n, sure_step.GAIN_IMAGES)) if gain else set())
    rows = set(seen["rows"].tolist())
    assert len(rows) == len(seen["rows"]) == fitted[-1]
    if held == 0:  # 32 of 200 scored: over a tenth, nothing left out
      assert rows == set(range(n))
    else:
      assert not rows & scored and rows | scored == set(range(n))
      assert held is None or len(rows) == n - held
