"""Registry, noise estimate, tuning, and every classical method lowering MSE on simulated images."""

import functools

import numpy as np
import pytest

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers import noise
from cryojax_denoise.denoisers.tuning import grid as tuning
from cryojax_denoise.errors import InputError

SIZE, N = 40, 4
CLASSICAL = ("gaussian", "wiener", "bm3d", "ddtf", "ksvd", "tv")


@functools.lru_cache(maxsize=None)
def _clean():
  """N clean, standardised projections of the built-in phantom (with CTF)."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source

  src = load_source(image_size=SIZE)
  return np.asarray(simulate.simulate_dataset(src, N, SIZE, 1.0, seed=3).clean, np.float32)


def _noisy(snr, seed=0):
  """Clean images plus white noise at `snr` (INTERFACE definition) and the noise std."""
  clean = _clean()
  sigma = float(np.sqrt(np.mean(np.var(clean, axis=(1, 2))) / snr))
  rng = np.random.default_rng(seed)
  return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32), clean, sigma


def _mse(x, y):
  return float(np.mean((np.asarray(x, np.float64) - y) ** 2))


# A denoiser must beat the best trivial estimate, min(noisy MSE, signal power): returning the input or all
# zeros (or the image mean) must fail. Measured at these seeds (MSE / trivial): SNR 0.5: 0.20-0.59 (gaussian
# worst); SNR 0.1: 0.62-0.94 (wiener worst, at its default strength), so the margin is per SNR.
MARGIN = {0.5: 0.7, 0.1: 0.97}


def _beats_trivial(out, noisy, clean, snr):
  """True when `out` is closer to `clean` than MARGIN[snr] × the better of the input and all zeros."""
  trivial = min(_mse(noisy, clean), float(np.mean(np.square(np.asarray(clean, np.float64)))))
  return _mse(out, clean) < MARGIN[snr] * trivial


@pytest.mark.parametrize("snr", [0.5, 0.1])
@pytest.mark.parametrize("name", CLASSICAL)
def test_method_lowers_mse(name, snr):
  noisy, clean, sigma = _noisy(snr)
  params = {"workers": 1} if name == "bm3d" else {}
  out = np.asarray(denoisers.get(name, **params)(noisy, np.full(N, sigma, np.float32)))
  assert out.shape == noisy.shape and np.isfinite(out).all()
  assert _beats_trivial(out, noisy, clean, snr), (name, _mse(out, clean))


@pytest.mark.parametrize("snr", [0.5, 0.1])
def test_trivial_denoisers_fail_the_criterion(snr):
  """The check above rejects a do-nothing, an all-zeros and a per-image-mean "denoiser"."""
  noisy, clean, _ = _noisy(snr)
  for out in (noisy, np.zeros_like(noisy), np.broadcast_to(noisy.mean(axis=(1, 2), keepdims=True), noisy.shape)):
    assert not _beats_trivial(out, noisy, clean, snr)


def test_noise_estimate_on_pure_noise():
  rng = np.random.default_rng(1)
  for sigma in (0.5, 3.0):
    est = np.asarray(noise.estimate_noise_std(sigma * rng.standard_normal((4, 64, 64)).astype(np.float32)))
    assert est.shape == (4,)
    np.testing.assert_allclose(est, sigma, rtol=0.1)


def test_noise_estimate_on_simulated_images_and_default_sigma():
  noisy, clean, sigma = _noisy(0.1)
  est = np.asarray(noise.estimate_noise_std(noisy))
  np.testing.assert_allclose(est, sigma, rtol=0.1)
  out = denoisers.get("wiener")(noisy)  # σ estimated
  assert _mse(out, clean) < _mse(noisy, clean)


def test_registry():
  assert set(CLASSICAL + ("autoencoder", "gan")) <= set(denoisers.names())
  for name in CLASSICAL:
    m = denoisers.REGISTRY[name]
    assert m.knob and m.default in m.grid
  with pytest.raises(InputError, match="unknown denoiser"):
    denoisers.get("nope")
  with pytest.raises(InputError, match="unknown parameter"):
    denoisers.get("ddtf", lambda_=2)
  with pytest.raises(InputError, match="checkpoint"):
    denoisers.get("gan", checkpoint="/nonexistent/run")  # no checkpoint: the bundled general model


def test_tune_picks_the_grid_minimum():
  noisy, clean, sigma = _noisy(0.5)
  best, table = tuning.tune("gaussian", noisy, clean, sigma, grid=(0.3, 1.0, 6.0))
  assert [row["width"] for row in table] == [0.3, 1.0, 6.0]
  assert best["width"] == min(table, key=lambda r: r["mse"])["width"]
  assert table[0]["mse"] > table[1]["mse"]  # too little smoothing at SNR 0.5 is worse


def test_tune_times_the_first_value_without_its_compilation():
  """Issue 14: the first grid value's time included compilation (here: a slow first call)."""
  import time

  from cryojax_denoise.denoisers.registry import register

  calls = []

  @register("_slow_first_call", knob="k", grid=(1.0, 2.0))
  def slow_first(images, noise_std, *, k=1.0):
    if not calls:
      time.sleep(0.5)
    calls.append(k)
    return images / k

  try:
    noisy, clean, sigma = _noisy(0.5)
    _, table = tuning.tune("_slow_first_call", noisy, clean, sigma)
    assert table[0]["seconds"] < 0.25 and [row["k"] for row in table] == [1.0, 2.0]
  finally:
    denoisers.REGISTRY.pop("_slow_first_call")


def test_tune_runs_a_host_method_once_per_value():
  """A method registered `compiled=False` (bm3d: no XLA compile) gets no untimed warm-up call."""
  from cryojax_denoise.denoisers.registry import register

  calls = []

  @register("_host", knob="k", grid=(1.0, 2.0), compiled=False)
  def host(images, noise_std, *, k=1.0):
    calls.append(k)
    return images / k

  try:
    noisy, clean, sigma = _noisy(0.5)
    tuning.tune("_host", noisy, clean, sigma)
    assert calls == [1.0, 2.0]
    assert not denoisers.REGISTRY["bm3d"].compiled
  finally:
    denoisers.REGISTRY.pop("_host")


@pytest.mark.slow
def test_bm3d_workers_report_their_cpu_time():
  """bm3d in 2 worker processes = bm3d in this process, and the workers' CPU seconds (which
  `time.process_time` leaves out) add up in `worker_cpu_seconds` for the benchmark's auto cost."""
  from cryojax_denoise.denoisers.classical import bm3d

  noisy, _, sigma = _noisy(0.5)
  before = bm3d.worker_cpu_seconds()
  out, cpu = bm3d.bm3d_denoise_cpu(noisy, sigma, workers=2)
  assert cpu > 0 and bm3d.worker_cpu_seconds() == pytest.approx(before + cpu)
  np.testing.assert_allclose(out, bm3d.bm3d_denoise(noisy, sigma, workers=1), atol=1e-5)
  bm3d.shutdown_pool()
