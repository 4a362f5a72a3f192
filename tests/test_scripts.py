"""Smoke tests of `scripts/`: each script behind published numbers runs end to end on tiny arguments and
prints what its docs say; `update_test_line.py` writes README's test sentence from pytest's summary.

The Python scripts run in this process (their `main()` with `sys.argv` set) on stacks made small by
capping the images they simulate, so their own code paths (argument parsing, the settings they share
through `validate_sure`, the package calls) are what runs. The shell scripts run as users run them.
"""

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _script(name, monkeypatch):
  """The script module `scripts/NAME.py` (a fresh import, so patched attributes do not leak)."""
  monkeypatch.syspath_prepend(str(SCRIPTS))
  sys.modules.pop(name, None)
  return importlib.import_module(name)


def _run(module, monkeypatch, *args):
  monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, args)])
  return module.main(sys.argv) if module.main.__code__.co_argcount else module.main()


@pytest.fixture
def small_validation(monkeypatch):
  """`validate_sure`'s stacks with 40 simulated images per setting instead of 2,560 (same maps, 64², seeds)."""
  vs = _script("validate_sure", monkeypatch)
  monkeypatch.setattr(vs, "SIMULATED", 40)
  monkeypatch.setattr(vs, "n_simulated", lambda n, n_estimate: max(n, 40))
  return vs


def _cap_simulation(monkeypatch, cap):
  """`simulate.simulate_dataset` making at most `cap` images (the scripts ask for 64 test and 1,000 fit ones)."""
  from cryojax_denoise.data import simulate

  full = simulate.simulate_dataset

  def capped(src, n_images, *args, **kw):
    return full(src, min(n_images, cap), *args, **kw)

  monkeypatch.setattr(simulate, "simulate_dataset", capped)


# ---- update_test_line.py ------------------------------------------------------------------------------

FAKE_RUN = """\
........................................................................ [ 30%]
............................................s........................... [ 60%]
============================= slowest 15 durations =============================
90.03s call     tests/test_benchmark.py::test_tiny_benchmark_writes_both_files
244 passed, 1 skipped, 3 warnings in 631.23s (0:10:31)
"""


def test_update_test_line_parses_and_rewrites(tmp_path, monkeypatch):
  utl = _script("update_test_line", monkeypatch)
  assert utl.parse_summary(FAKE_RUN) == ({"passed": 244, "skipped": 1, "warnings": 3}, 631.23)
  assert utl.parse_summary("==== 12 passed in 3.20s ====\n") == ({"passed": 12}, 3.2)
  line = utl.sentence({"passed": 244, "skipped": 1, "warnings": 3}, 631.23, "b810440", "2-core CPU")
  assert line == "Last full run: 244 passed, 1 skipped in 10 min 31 s on commit b810440 (2-core CPU)."
  with pytest.raises(ValueError, match="did not pass"):
    utl.sentence(*utl.parse_summary("2 failed, 242 passed in 600.00s (0:10:00)"), "abc")
  with pytest.raises(ValueError, match="no pytest summary"):
    utl.parse_summary("collected 0 items\n")

  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- tests -->old sentence<!-- /tests -->\nrest\n")
  log = tmp_path / "pytest.log"
  log.write_text(FAKE_RUN)
  assert utl.main([str(log), "--readme", str(readme), "--commit", "abc1234", "--note", "test"]) == 0
  assert readme.read_text() == ("intro\n<!-- tests -->Last full run: 244 passed, 1 skipped in 10 min 31 s on "
                                "commit abc1234 (test).<!-- /tests -->\nrest\n")
  log.write_text("1 failed, 243 passed in 631.23s (0:10:31)\n")
  assert utl.main([str(log), "--readme", str(readme), "--commit", "x"]) == 2
  assert "abc1234" in readme.read_text()  # a failed run leaves README as it was


def test_readme_holds_one_marked_test_line():
  text = (ROOT / "README.md").read_text()
  assert text.count("<!-- tests -->") == 1 and text.count("<!-- /tests -->") == 1
  line = text.split("<!-- tests -->")[1].split("<!-- /tests -->")[0]
  assert re.match(r"Last full run: \d+ passed.* in (\d+ min )?\d+ s on commit [0-9a-f]{7,}", line), line


# ---- the SURE validation scripts (docs/sure.md) -------------------------------------------------------

@pytest.mark.slow
def test_validate_sure(small_validation, tmp_path, monkeypatch, capsys):
  out = tmp_path / "v.jsonl"
  _run(small_validation, monkeypatch, out, "gaussian", 8, "0.5", "phantom", "1", 16)
  row = json.loads(out.read_text())
  assert (row["method"], row["set"], row["snr"], row["tune_images"]) == ("gaussian", "phantom", 0.5, 8)
  assert row["choice_ratio"] >= 1.0 and row["estimate_images"] >= 16
  assert 0.5 < row["estimate_ratio"] < 2.0 and 0.5 < row["grid_estimate_ratio"] < 2.0
  assert "phantom ctf=True snr=0.5 gaussian: sure" in capsys.readouterr().out


@pytest.mark.slow
def test_sure_grows(small_validation, monkeypatch, capsys):
  _run(_script("sure_grows", monkeypatch), monkeypatch, "gaussian", "phantom:1:0.5")
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert row["method"] == "gaussian" and len(row["table"]) == 7 and isinstance(row["grows"], bool)
  assert all(r["z_above_best"] >= 0 for r in row["table"])


@pytest.mark.slow
def test_sure_knob_difference(small_validation, monkeypatch, capsys):
  _run(_script("sure_knob_difference", monkeypatch), monkeypatch, "gaussian", "phantom", 1, 0.5, 1.0, 3.0, 8, 2)
  out = capsys.readouterr().out
  assert "gaussian phantom ctf=True snr=0.5, 8 images x 2 probes: SURE" in out and "true" in out


@pytest.mark.slow
def test_sure_probe_step(small_validation, tmp_path, monkeypatch):
  out = tmp_path / "p.jsonl"
  _run(_script("sure_probe_step", monkeypatch), monkeypatch, out, "gaussian", "phantom", 1, 0.5, 8, "0.04,0.07", 2)
  row = json.loads(out.read_text())
  assert set(row["eps"]) == {"0.04", "0.07"} and row["n"] == 8
  assert all(0.5 < e["sure_ratio_true_sigma"] < 2.0 for e in row["eps"].values())


@pytest.mark.slow
def test_sure_sigma_check(small_validation, monkeypatch, capsys):
  _run(_script("sure_sigma_check", monkeypatch), monkeypatch, "phantom:1:1")
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and all(line.startswith("phantom:1:1 n=") for line in lines)
  tail = [float(re.search(r"tail ([+-][\d.]+)", line).group(1)) for line in lines]
  assert all(abs(t) < 0.2 for t in tail)  # σ̂² within 20% of σ² on 40 images


# ---- the learned-model evaluations (docs/general_models.md) -------------------------------------------

def _map(tmp_path):
  from cryojax_denoise import io
  from test_make_pairs import _blob_map

  path = tmp_path / "map.mrc"
  io.write_volume(str(path), _blob_map(), 4.0)
  return str(path)


def _mses(line):
  return {k: float(v) for k, v in re.findall(r"(\S+) ([\d.]+)(?=\s|$)", line.split(": ", 1)[1])}


@pytest.mark.slow
def test_eval_unseen(tmp_path, monkeypatch, capsys):
  mod = _script("eval_unseen", monkeypatch)
  _cap_simulation(monkeypatch, 24)
  _run(mod, monkeypatch, "general", "0.5", "gaussian,cwf", _map(tmp_path), 4.0)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("SNR 0.5: ")
  mse = _mses(line)
  assert set(mse) == {"gaussian", "cwf", "general"}
  assert all(0 < v < 2.0 for v in mse.values())  # the noisy images' MSE is 2 (standardised clean, SNR 0.5)


@pytest.mark.slow
def test_eval_sure_finetune(monkeypatch, capsys):
  mod = _script("eval_sure_finetune", monkeypatch)
  _cap_simulation(monkeypatch, 24)
  monkeypatch.setattr(mod, "IMAGE_SIZE", 32)  # 32² particles instead of 64²
  _run(mod, monkeypatch, "0.5", 2, "phantom", 0)
  mse = _mses(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(mse) == {"cwf", "autoencoder_cwf", "sure_finetuned"} and all(np.isfinite(v) for v in mse.values())


@pytest.mark.slow
def test_corpus_rate(monkeypatch, capsys):
  """`corpus_rate.py STEPS` with a pool of 4 maps instead of 256, batches of 4 images of 32² instead of 16 of
  64² and a two-level generator (the preset's other settings kept): the script's two rates are what is
  checked, not their values."""
  mod = _script("corpus_rate", monkeypatch)
  resolve = mod.train.resolve

  def small_pool(config):
    c = resolve(config)
    c.pool_size, c.image_size, c.batch_size = 4, 32, 4
    c.model.widths, c.model.blocks = (8, 16), (1, 0)
    return c

  monkeypatch.setattr(mod.train, "resolve", small_pool)
  _run(mod, monkeypatch, 2)
  m = re.search(r"corpus ([\d.]+) batches/s, training ([\d.]+) steps/s", capsys.readouterr().out)
  assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0


def test_coloured_oracle_is_the_pixel_space_linear_mmse(monkeypatch):
  """`coloured_oracle.oracle` (Hartley basis, diagonal CTF and noise) equals the linear-MMSE estimate
  c + Hμ + H C Hᵀ (H C Hᵀ + Σ)⁻¹ (y − c − Hμ) written with dense pixel-space matrices: H the circular
  convolution by an even CTF, Σ the covariance of stationary noise of an even spectrum."""
  mod = _script("coloured_oracle", monkeypatch)
  rng = np.random.default_rng(0)
  n = 8
  even = lambda a: (a + np.roll(a[::-1, ::-1], 1, axis=(0, 1))) / 2  # noqa: E731  a(k) = a(−k)
  h = even(rng.normal(size=(n, n)))
  psd = even(rng.uniform(0.5, 2.0, size=(n, n)))
  basis = np.eye(n * n).reshape(-1, n, n)
  conv = lambda f: np.stack([np.fft.ifft2(np.fft.fft2(e) * f).real.ravel() for e in basis], axis=1)  # noqa: E731
  H, sigma = conv(h), conv(psd)
  T = np.stack([mod.hartley(e).ravel() for e in basis], axis=1)  # symmetric, its own inverse
  np.testing.assert_allclose(T @ T, np.eye(n * n), atol=1e-12)
  a = rng.normal(size=(n * n, n * n))
  cov_h, mean_h = a @ a.T / n, rng.normal(size=n * n)
  cov, mean = T @ cov_h @ T, T @ mean_h
  c = 0.3
  y = rng.normal(size=(n, n))
  r = y.ravel() - c - H @ mean
  hch = H @ cov @ H.T
  want = c + H @ mean + hch @ np.linalg.solve(hch + sigma, r)
  got = mod.oracle(y[None], h[None], psd, mean_h, cov_h, c)[0]
  np.testing.assert_allclose(got.ravel(), want, rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_coloured_oracle(tmp_path, monkeypatch, capsys):
  """The script end to end on 60 particles of 16²: the oracle is at least as good as cwf, on average, and
  both lose under the coloured spectrum at the same total SNR."""
  mod = _script("coloured_oracle", monkeypatch)
  out = tmp_path / "o.jsonl"
  _run(mod, monkeypatch, out, "--volume", _map(tmp_path), "--pixel_size", 4.0, "--size", 16, "--n", 60,
       "--n_score", 16, "--n_cov", 3000, "--snrs", 0.1, "--spectra", "issue:reprojection48")
  rows = {r["spectrum"]: r for r in map(json.loads, out.read_text().splitlines())}
  assert set(rows) == {"white", "issue:reprojection48"}
  assert all(r["oracle"] < r["cwf"] < 1.5 for r in rows.values())
  assert "issue:reprojection48: coloured / white oracle" in capsys.readouterr().out


# ---- the shell scripts, run as users run them (docs/distributed.md, docs/general_models.md) -------------

def _bash(script, *args, env=(), timeout=600):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", **dict(env))
  return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
def test_scale_denoise(tmp_path):
  r = _bash("scale_denoise.sh", tmp_path / "w", env={"N": "512"})  # 2 batches of 256: one per process
  assert r.returncode == 0, r.stderr[-2000:]
  assert re.search(r"one process: [\d.]+ s wall; two processes: [\d.]+ s wall", r.stdout), r.stdout
  assert "identical: True" in r.stdout


# The general-model trainings of the shell scripts below: 32² and a two-level generator and discriminator
# (the preset's networks compile for ~25 s each on 2 cores, its 64² data is 4x the pixels); the same
# settings in both tests, so the second one finds the first one's kernels in the session's compilation cache.
SMALL_GENERAL = ("--config.pool_size=2", "--config.image_size=32", "--config.batch_size=4", "--config.val_size=2",
                 "--config.model.widths=(8,16)", "--config.model.blocks=(1,0)", "--config.disc.widths=(8,16)",
                 "--config.disc.blocks=(1,1)")


@pytest.mark.slow
def test_accelerator_check(tmp_path):
  r = _bash("accelerator_check.sh", tmp_path / "acc", env={"SIZES": "32", "N_IMAGES": "4", "BATCH": "2",
                                                          "TRAIN_STEPS": "2", "TRAIN_ARGS": " ".join(SMALL_GENERAL)})
  assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-2000:])
  summary = (tmp_path / "acc" / "summary.md").read_text()
  for what in ("ddtf denoise", "ksvd denoise", "general autoencoder denoise", "autoencoder train step",
               "general-model training"):
    assert what in summary, summary


@pytest.mark.slow
def test_train_general(tmp_path):
  """The four trainings and exports of `train_general.sh` (2 steps each at 32², small networks, one CWF
  dataset; the coloured-noise model's is coloured)."""
  root = tmp_path / "general"
  r = _bash("train_general.sh", root, 2, 2, *SMALL_GENERAL, "--config.cwf_datasets=1", "--config.cwf_keep=4",
            "--config.eval_every=2", "--config.checkpoint_every=2", "--config.log_every=1", env={"CWF_STEPS": "2"})
  assert r.returncode == 0, r.stderr[-3000:]
  from cryojax_denoise.training import restore

  for name in ("autoencoder_general", "gan_general", "autoencoder_cwf_general", "autoencoder_cwf_coloured_general"):
    den = restore.load_denoiser(str(root / "export" / name))
    assert den.config.steps == 2, name
  assert restore.load_denoiser(str(root / "export" / "autoencoder_cwf_general")).config.model.prior == "cwf"
  coloured = restore.load_denoiser(str(root / "export" / "autoencoder_cwf_coloured_general")).config
  assert coloured.model.prior == "cwf" and coloured.cwf_loss_domain == "original" and coloured.cwf_coloured == 0.75
