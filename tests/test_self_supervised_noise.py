"""Self-supervised training under coloured noise (`noise=white|coloured|auto`, training/ss_noise.py):
the batches of noise=coloured are whitened (their background spectrum is flat within the project's own
flatness tolerance, the raw stack's is not), the workdir's record gives `denoise` the same whitening
filter, noise=white is today's data stream bit for bit, and bad values are one error line.

Tiny stacks (32², a few hundred images) and a tiny generator, one or two training steps.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import decide, spec, spectrum as sp, whiten as wh
from cryojax_denoise.training import data as data_lib, ss_noise, train
from test_training import _env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def _coloured_stack(n=240, seed=0, snr=0.05, psd="issue:relion31"):
  """(noisy, clean) float32 (n, 32, 32): a Gaussian blob (radius ~4 px) jittered by ±2 px, total SNR
  `snr`, plus noise of relion31's measured spectrum (or white for psd="flat")."""
  import jax

  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:SIZE, :SIZE] - SIZE // 2
  shifts = rng.integers(-2, 3, (n, 2))
  clean = np.exp(-((y[None] - shifts[:, :1, None]) ** 2 + (x[None] - shifts[:, 1:, None]) ** 2) / (2 * 3.0 ** 2))
  clean = (clean - clean.mean()) / clean.std()
  profile = spec.resolve(psd)
  key = jax.random.key(seed)
  noise = (np.asarray(wh.coloured_noise(key, (n, SIZE, SIZE), profile)) if profile is not None
           else rng.normal(size=clean.shape))
  noise = noise / noise.std() / np.sqrt(snr)
  return (clean + noise).astype(np.float32), clean.astype(np.float32)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
  d = tmp_path_factory.mktemp("coloured")
  noisy, clean = _coloured_stack()
  io.write_stack(str(d / "noisy.mrcs"), noisy, 5.0)
  return str(d / "noisy.mrcs"), noisy, clean


def _config(noisy, **over):
  c = train.default_config("self_supervised")
  c.noisy, c.init, c.loss = noisy, "none", "noise2self"
  c.model.widths, c.model.blocks, c.model.output = (8, 16), (1, 0), "linear"
  c.batch_size, c.val_size, c.eval_every, c.log_every, c.steps, c.checkpoint_every = 16, 16, 1, 1, 1, 1
  for key, value in over.items():
    c[key] = value
  return c


def test_coloured_batches_are_white_within_tolerance(stack):
  path, noisy, _ = stack
  raw = sp.estimate_spectrum(noisy)
  assert decide.is_coloured(raw) and wh.psd_flatness(raw.radial) > 3.0  # relion31's excess is there
  data = data_lib.NoisyStack(train.resolve(_config(path, noise="coloured")))
  assert data.filter is not None and data.noise_record["decision"] == "coloured"
  batches = np.concatenate([np.asarray(data.batch(step)[0]) for step in range(12)])  # rotated / flipped
  seen = sp.estimate_spectrum(batches, raw.radius_px)
  flat, tol = wh.psd_flatness(seen.radial), 1.0 + decide.flat_tolerance(seen)
  assert flat < tol, (flat, tol, sp.band_means(seen.radial))
  assert not decide.is_coloured(sp.estimate_spectrum(data.validation()[0], raw.radius_px, reject_z=np.inf))
  # the target of noise2self is the (whitened) input itself
  x, target = data.batch(0)
  np.testing.assert_array_equal(np.asarray(x), np.asarray(target))


def test_white_is_todays_data_stream_bit_for_bit(stack):
  path, noisy, _ = stack
  old = _config(path)
  for key in ("noise", "noise_psd", "noise_fit_size"):  # the config before the option existed
    del old[key]
  white = data_lib.NoisyStack(_config(path, noise="white"))
  before = data_lib.NoisyStack(old)
  assert white.filter is None and white.noise_record == {"mode": "white", "decision": "white"}
  for step in (0, 5):
    got = np.asarray(white.batch(step)[0])
    np.testing.assert_array_equal(got, np.asarray(before.batch(step)[0]))
    rng = np.random.default_rng([0, step])  # NumPy reference: the raw rows, rotated and flipped
    idx = np.sort(rng.integers(0, white.n_train, 16))
    rot, flip, _ = (rng.integers(0, k, len(idx)) for k in (4, 2, 2))
    want = np.stack([np.rot90(noisy[i], r)[:, ::-1] if f else np.rot90(noisy[i], r)
                     for i, r, f in zip(idx, rot, flip)])
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(white.validation()[0], noisy[white.n_train:])


def test_record_gives_denoise_the_training_filter(stack, tmp_path):
  from cryojax_denoise.noise.stack import stack_noise
  from cryojax_denoise.streaming import open_particles

  path, noisy, _ = stack
  wd = str(tmp_path / "coloured")
  train.train(_config(path, noise="coloured"), wd)
  with open(os.path.join(wd, ss_noise.NOISE_RECORD)) as f:
    record = json.load(f)
  assert record["decision"] == "coloured" and record["whitened"] and record["groups"]["all"]["coloured"]
  psd_file = record["noise_psd"]
  assert psd_file == os.path.join(os.path.abspath(wd), ss_noise.NOISE_PSD) and os.path.isfile(psd_file)
  trained_with = data_lib.NoisyStack(train.resolve(_config(path, noise="coloured"))).filter
  # denoise --config.noise=coloured --config.noise_psd=<record> whitens with exactly this filter,
  # and so does denoise --config.noise=coloured measuring the same stack itself
  via_file, _ = stack_noise(open_particles(path), io.ImageReader(), "coloured", psd_file)
  measured, _ = stack_noise(open_particles(path), io.ImageReader(), "coloured")
  for psd in (via_file, measured):
    np.testing.assert_array_equal(wh.whitening_filter(psd, psd.shape), trained_with)
  # what denoise finds from checkpoint=WORKDIR or WORKDIR/checkpoints (ss_noise.saved_noise)
  for where in (wd, os.path.join(wd, "checkpoints")):
    assert ss_noise.saved_noise(where)["noise_psd"] == psd_file
  assert ss_noise.saved_noise(str(tmp_path)) is None
  # the in-memory path (train.finetune) whitens with the same spectrum
  arrays = data_lib.NoisyStack(_config("", noise="coloured"), arrays=(noisy, None))
  np.testing.assert_allclose(arrays.filter, trained_with, rtol=1e-4)
  # resuming under another noise decision is refused; noise=white records white, writes no spectrum
  with pytest.raises(InputError, match="noise=coloured"):
    train.train(_config(path, noise="white", steps=2), wd)
  wd_white = str(tmp_path / "white")
  train.train(_config(path, noise="white"), wd_white)
  with open(os.path.join(wd_white, ss_noise.NOISE_RECORD)) as f:
    assert json.load(f) == {"mode": "white", "decision": "white", "whitened": False}
  assert not os.path.exists(os.path.join(wd_white, ss_noise.NOISE_PSD))
  assert ss_noise.saved_noise(wd_white) == {"mode": "white", "decision": "white", "whitened": False}
  # denoise with such a checkpoint and the default noise=white applies it whitened with the training spectrum
  from cryojax_denoise import pipeline

  out = pipeline.denoise_particles(path, method="autoencoder", checkpoint=wd, sure_images=8,
                                   output=str(tmp_path / "den" / "denoised.mrcs"))
  assert out["noise"]["decision"] == "coloured" and "alpha" in out["output_gain"]
  plain = pipeline.denoise_particles(path, method="autoencoder", checkpoint=wd_white, sure_images=8,
                                     output=str(tmp_path / "den_white" / "denoised.mrcs"))
  assert "noise" not in plain and "output_gain" not in plain


def test_auto_keeps_white_noise_white(tmp_path):
  noisy, _ = _coloured_stack(psd="flat", seed=1)
  data = data_lib.NoisyStack(_config("", noise="auto"), arrays=(noisy, None))
  assert data.filter is None and data.noise_record["decision"] == "white"


def test_bad_noise_values(stack, tmp_path):
  path = stack[0]
  bad = tmp_path / "bad.txt"
  bad.write_text("1.0 -2.0 3.0\n")
  for over, message in ((dict(noise="pink"), "config.noise"), (dict(noise_psd=str(bad)), "positive"),
                        (dict(noise_psd=str(tmp_path / "none.npy")), "no such file")):
    with pytest.raises(InputError, match=message):
      train.train(_config(path, **over), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
  with pytest.raises(InputError, match="single-channel"):
    data_lib.NoisyStack(_config("", noise="coloured"), arrays=(np.zeros((40, 4, 16, 16), np.float32), None))
  args = [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=train_self_supervised",
          f"--workdir={tmp_path / 'launched'}", f"--config.noisy={path}", "--config.noise=pink"]
  r = subprocess.run(args, env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert r.returncode != 0 and len(errors) == 1 and "config.noise" in errors[0], r.stderr[-2000:]
  assert not (tmp_path / "launched").exists()


def test_noise_check_script_sees_the_correlation_whitening_removes(tmp_path, capsys):
  """scripts/self_supervised_noise_check.py (docs/finetuning.md's correlation table and MSEs)."""
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import self_supervised_noise_check as check
  finally:
    sys.path.pop(0)
  noisy, clean = _coloured_stack(n=200, seed=2)
  io.write_stack(str(tmp_path / "noisy.mrcs"), noisy, 5.0)
  io.write_stack(str(tmp_path / "clean.mrcs"), clean, 5.0)
  out = check.main(["check", "acf", str(tmp_path)])
  assert out["raw"]["lag 1"] > 0.15 and out["raw"]["pixel vs mean of 8"] > 0.3
  assert abs(out["whitened"]["lag 1"]) < 0.03 and abs(out["whitened"]["pixel vs mean of 8"]) < 0.03
  assert "whitened" in capsys.readouterr().out
  relative = check.main(["check", "mse", str(tmp_path / "noisy.mrcs"), str(tmp_path / "clean.mrcs")])
  np.testing.assert_allclose(relative, ((noisy - clean) ** 2).mean() / clean.var(), rtol=1e-6)
