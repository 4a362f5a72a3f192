"""The main job end to end on the smoke preset: structure, sanity, determinism, reconstruction."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("gaussian", "wiener", "bm3d", "ksvd", "ddtf", "tv", "cwf", "autoencoder", "gan")
UNSEEN = os.path.join(ROOT, "..", "shared", "data", "ribosome70S_65.mrc")
SNRS = (1.0, 0.5, 0.2, 0.1, 0.05)

pytestmark = pytest.mark.slow  # end-to-end runs of launch.py (see pyproject's markers)


def sweep(workdir, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=snr_sweep", f"--workdir={workdir}",
         "--config.preset=smoke", *overrides]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


# The smoke preset with 4 test images per SNR in tuning batches of 2 (the preset: 8 in batches of 4): every
# method still meets every test set and SNR; the rows' means are over 4 × 32² pixels.
SMALL = ("--config.n_test=4", "--config.n_tune=2")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  return workdir, sweep(workdir, *SMALL)


def _row(rows, method, snr, test_set="phantom"):
  return next(r for r in rows if r["method"] == method and r["snr"] == pytest.approx(snr) and r["test_set"] == test_set)


def test_smoke_results_structure_and_sanity(smoke):
  workdir, rows = smoke
  keys = {"method", "snr", "mse", "psnr", "ssim", "frc_resolution_A", "seconds_per_image", "n_images"}
  sets = ["phantom"] + (["ribosome70S"] if os.path.exists(UNSEEN) else [])
  coloured = ["ribosome70S (relion31 noise)"] if os.path.exists(UNSEEN) else []  # the smoke preset: SNR 0.05
  assert sorted({r["test_set"] for r in rows}) == sorted(sets + coloured)
  for m in METHODS:
    for test_set in coloured:
      assert {r["snr"] for r in rows if r["test_set"] == test_set and r["method"] == m} == {0.05}
      assert _row(rows, m, 0.05, test_set)["mse"] < _row(rows, "noisy", 0.05, test_set)["mse"]
      assert 0.0 <= _row(rows, m, 0.05, test_set)["output_gain"] <= 1.0  # output_gain=auto: the coloured set only
  assert not any(name.startswith("train_") for name in os.listdir(workdir))  # general models: no training
  for test_set in sets:
    for snr in SNRS:
      noisy = _row(rows, "noisy", snr, test_set)
      assert noisy["mse"] == pytest.approx(1.0 / snr, rel=0.10)
      for m in METHODS:
        r = _row(rows, m, snr, test_set)
        assert keys <= set(r) and "output_gain" not in r
        assert all(np.isfinite(r[k]) for k in keys - {"method"})
        assert r["mse"] < noisy["mse"], f"{m} does not beat noisy at SNR {snr} on {test_set}: {r['mse']}"
  for name in ("mse_vs_snr.png", "examples.png"):
    with open(workdir / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread
    assert imread(str(workdir / name)).shape[0] > 100
  text = (workdir / "report.md").read_text()
  assert "Ranking at SNR 0.05" in text and "GAN vs autoencoder" in text and "Learned vs classical" in text
  assert all(f"## Test set: {s}" in text for s in sets + coloured)
  assert len((workdir / "results.csv").read_text().strip().splitlines()) == len(rows) + 1


def test_same_seed_same_numbers_and_reconstruction(smoke, tmp_path):
  """A second run (fewer methods, one SNR, the phantom only, with 3D reconstructions from 100 particles)
  reproduces the first run's rows."""
  _, rows = smoke
  again = sweep(tmp_path / "again", *SMALL, "--config.methods=('ddtf','gan')", "--config.snrs=(0.1,)",
                "--config.test_volume=", "--config.reconstruct=True", "--config.n_reconstruct=100")
  for m in ("noisy", "ddtf", "gan"):
    a, b = _row(rows, m, 0.1), _row(again, m, 0.1)
    for k in ("mse", "psnr", "ssim", "frc_resolution_A"):
      assert a[k] == pytest.approx(b[k], rel=1e-5), (m, k)
    assert np.isfinite(b["fsc_resolution_A"]) and b["fsc_resolution_A"] > 0


def test_coloured_set_gives_autoencoder_cwf_its_coloured_noise_model():
  """Under a spectrum the sweep's autoencoder_cwf row uses the model `denoise --config.noise=coloured` uses
  (trained on whitened coloured-noise datasets), unless a checkpoint is named; other rows keep theirs."""
  import ml_collections
  from experiments import snr_sweep
  from cryojax_denoise.training import learned, restore

  white = restore.bundled_dir("autoencoder_cwf")
  config = ml_collections.ConfigDict({"autoencoder_cwf_checkpoint": ""})
  assert snr_sweep.model_for("autoencoder_cwf", white, config, psd=None) == white
  assert snr_sweep.model_for("autoencoder_cwf", white, config, psd=True) == restore.bundled_dir(learned.COLOURED_KIND)
  assert snr_sweep.model_for("autoencoder", "A", config, psd=True) == "A"
  config.autoencoder_cwf_checkpoint = "mine"
  assert snr_sweep.model_for("autoencoder_cwf", "mine", config, psd=True) == "mine"
