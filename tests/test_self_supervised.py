"""Self-supervised training: init= from a checkpoint, blind-spot J-invariance, neighbour sub-sampling,
smoke fine-tune, resume after SIGKILL, bad noisy stacks.

Tiny generators on 32² images (stride 4), so each test compiles one small step.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise.training import checkpoints, restore, self_supervised as ss, train
from test_training import _env, kill_after_checkpoint_and_rerun  # -O0 XLA, a shared compilation cache, the checkout on PYTHONPATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"widths": (8, 16), "blocks": (1, 0), "output": "linear"}


def _smooth(n, size=32, seed=0, sigma=1.0):
  """(clean, noisy) float32 (n, size, size): low-pass Gaussian fields plus white noise of std `sigma`."""
  rng = np.random.default_rng(seed)
  f = np.fft.fftfreq(size)
  lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.06 ** 2))
  clean = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) * lowpass))
  clean = (clean / clean.std()).astype(np.float32)
  return clean, (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32)


def _config(kind, **over):
  c = train.default_config(kind)
  c.model.widths, c.model.blocks = TINY["widths"], TINY["blocks"]
  c.disc.widths, c.disc.blocks = (8, 16), (1, 1)
  c.batch_size, c.val_size, c.eval_every, c.log_every = 8, 8, 5, 1
  for key, value in over.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
  d = tmp_path_factory.mktemp("stacks")
  clean, noisy = _smooth(48)
  io.write_stack(str(d / "noisy.mrcs"), noisy, 2.0)
  io.write_stack(str(d / "clean.mrcs"), clean, 2.0)
  return str(d / "noisy.mrcs"), str(d / "clean.mrcs")


def _ss_config(noisy="", **over):
  return _config("self_supervised", noisy=noisy, **{"init": "none", "lr_g": 3e-3, **over})


def _params(module):
  return nnx.state(module, nnx.Param).to_pure_dict()


def _generator(widths=(8, 16), blocks=(1, 0), seed=0):
  c = train.default_config("autoencoder")
  c.model.widths, c.model.blocks = widths, blocks
  return train.build_generator(c, seed)


# ---------------------------------------------------------------------------- kernels


def test_blind_spot_is_j_invariant_and_the_plain_network_is_not():
  gen = _generator((4, 8), (1, 0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16)), jnp.float32)
  x_changed = x.at[:, 5, 7].add(10.0)
  for how in ss.REPLACEMENTS:
    out, out_changed = (ss.blind_spot(gen, v, grid=2, how=how) for v in (x, x_changed))
    np.testing.assert_allclose(out[:, 5, 7], out_changed[:, 5, 7], rtol=0, atol=1e-5)
    assert float(jnp.abs(out - out_changed).max()) > 1e-3  # the other pixels do see the change
  # the same check fails for the plain network: its output at (5, 7) follows its input there
  assert float(jnp.abs(gen(x)[:, 5, 7] - gen(x_changed)[:, 5, 7]).min()) > 1e-3
  # training masks: no masked pixel's input value survives, and only masked pixels are scored
  mask = ss.grid_mask(jnp.array([[1, 3], [0, 0]]), (16, 16), 4)
  assert int(mask.sum()) == 2 * 16 and bool(mask[0, 1, 3]) and bool(mask[1, 4, 8]) and not bool(mask[0, 0, 0])
  rep = ss.replacement(x, jax.random.key(1), "mean")
  np.testing.assert_allclose(rep[:, 5, 7], np.mean([x[:, 5 + dy, 7 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                                     if dy or dx], axis=0), rtol=1e-5)
  rep_n = ss.replacement(x, jax.random.key(1), "neighbor")
  assert not bool(jnp.any(rep_n == x))  # a neighbour, never the pixel itself


def _subsample_reference(images, index):
  """NumPy loop: pixel (2i + k // 2, 2j + k % 2) for cell (i, j) with index k."""
  b, h, w = images.shape
  out = np.empty((b, h // 2, w // 2), images.dtype)
  for n in range(b):
    for i in range(h // 2):
      for j in range(w // 2):
        k = int(index[n, i, j])
        out[n, i, j] = images[n, 2 * i + k // 2, 2 * j + k % 2]
  return out


def test_neighbour_subsampling_gives_independent_noise_pairs():
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(32, 64, 64)).astype(np.float32)
  i1, i2 = ss.neighbour_indices(jax.random.key(0), (32, 32, 32))
  i1, i2 = np.asarray(i1), np.asarray(i2)
  # two different pixels of the cell that share an edge (index differs in row or column, not both)
  d = np.abs(i1 - i2)
  assert np.all((d == 1) & (i1 // 2 == i2 // 2) | (d == 2))
  assert len(np.unique(i1)) == 4 and len(np.unique(i2)) == 4
  g1, g2 = (np.asarray(ss.subsample(jnp.asarray(noise), jnp.asarray(i))) for i in (i1, i2))
  np.testing.assert_array_equal(g1[:2], _subsample_reference(noise[:2], i1[:2]))
  corr = np.corrcoef(g1.ravel(), g2.ravel())[0, 1]
  assert abs(corr) < 0.03 and abs(g1.var() - 1) < 0.05, (corr, g1.var())  # 5 standard errors
  # the same statistic detects correlated noise (a 2-pixel box blur): it is not vacuous
  blurred = (noise + np.roll(noise, 1, 1) + np.roll(noise, 1, 2) + np.roll(noise, (1, 1), (1, 2))) / 2
  b1, b2 = (np.asarray(ss.subsample(jnp.asarray(blurred), jnp.asarray(i))) for i in (i1, i2))
  assert np.corrcoef(b1.ravel(), b2.ravel())[0, 1] > 0.3


def test_sub_sampled_images_are_padded_to_the_stride():
  gen = _generator((4, 8), (1, 0))  # stride 4: 36² images give 18² sub-sampled ones, padded to 20²
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 36, 36)), jnp.float32)
  loss, aux = nnx.jit(lambda g, v: ss.loss_fn("neighbor2neighbor")(g, v, v, jax.random.key(0)))(gen, x)
  assert np.isfinite(float(loss)) and float(aux["ss_rec"]) > 0 and float(aux["ss_reg"]) > 0


# ---------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def finetuned(stacks, tmp_path_factory):
  """A from-scratch noise2self fine-tune of 30 steps on the in-memory noisy stack (no clean image)."""
  wd = str(tmp_path_factory.mktemp("ft") / "run")
  noisy = io.read_stack(stacks[0]).data
  out = train.finetune(np.asarray(noisy), wd, init="none", loss="noise2self", steps=30, batch_size=8, seed=0,
                    lr_g=3e-3, eval_every=1, log_every=1, val_size=8, checkpoint_every=10,
                    model=dict(widths=TINY["widths"], blocks=TINY["blocks"], output="linear"))
  return wd, out


@pytest.mark.slow
def test_smoke_finetune_lowers_the_masked_validation_loss(finetuned, stacks, tmp_path):
  wd, ckpt_dir = finetuned
  rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, 31))
  val = [r["val_ss_loss"] for r in rows]
  assert val[-1] < 0.85 * val[0], val
  # a normal generator checkpoint: restore rebuilds it and it denoises raw images in their units
  den = restore.load_denoiser(ckpt_dir, batch_size=8)
  clean, noisy = _smooth(8, seed=5)
  out = den(noisy)
  assert out.shape == noisy.shape and np.mean((out - clean) ** 2) < np.mean((noisy - clean) ** 2)


@pytest.mark.slow
def test_init_from_checkpoint_takes_its_model_and_weights(finetuned, stacks, tmp_path):
  init, _ = finetuned
  c = _ss_config(stacks[0], init=init, steps=1, loss="noise2self", val_size=8, eval_every=1)
  c.model.widths, c.model.blocks = (4, 8, 8), (0, 0, 0)  # replaced by the checkpoint's model
  r = train.resolve(c)
  assert tuple(r.model.widths) == TINY["widths"] and tuple(r.model.blocks) == TINY["blocks"]
  learner = train.Learner(r, seed=3)
  train.load_init(learner.generator, r.init)
  saved, _, _ = restore.load_generator(init)
  jax.tree.map(np.testing.assert_array_equal, _params(learner.generator), _params(saved))
  # one step from it: weights move by about the learning rate (Adam), not from a fresh start
  wd = str(tmp_path / "from_init")
  train.train(c, wd)
  gen, cfg, step = restore.load_generator(wd)
  assert step == 1 and tuple(cfg.model.widths) == TINY["widths"]
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), _params(gen), _params(saved)))
  assert 0 < max(diffs) < 3 * float(c.lr_g)
  for bad, message in (("/nonexistent/ckpt", "not found"), (str(tmp_path), "no checkpoint")):
    with pytest.raises(InputError, match=message):
      train.resolve(_ss_config(stacks[0], init=bad))


def test_bad_noisy_stacks_write_nothing(stacks, tmp_path):
  clean, noisy = _smooth(12)
  bad = noisy.copy()
  bad[4, 3, 3] = np.nan
  io.write_stack(str(tmp_path / "nan.mrcs"), bad, 2.0)
  io.write_stack(str(tmp_path / "rect.mrcs"), noisy[:, :, :16], 2.0)
  io.write_stack(str(tmp_path / "few.mrcs"), noisy[:8], 2.0)
  cases = [(dict(noisy=str(tmp_path / "nan.mrcs")), "NaN"), (dict(noisy=str(tmp_path / "rect.mrcs")), "square"),
           (dict(noisy=str(tmp_path / "few.mrcs")), "fewer than one batch"),
           (dict(noisy=stacks[0], loss="noise2noise"), "noisy2"), (dict(noisy=stacks[0], loss="n2v"), "loss"),
           (dict(noisy=stacks[0], noisy2=str(tmp_path / "rect.mrcs"), loss="noise2noise"), "shape"),
           (dict(noisy=stacks[0], clean=stacks[1]), "clean"), (dict(noisy=""), "noisy")]
  for over, message in cases:
    wd = tmp_path / "out"
    with pytest.raises(InputError, match=message):
      train.train(_ss_config(**over), str(wd))
    assert not wd.exists(), over
  with pytest.raises(InputError, match="NaN"):
    train.finetune(bad, str(tmp_path / "out"), init="none")
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- subprocesses


def _launch(workdir, noisy, steps, **over):
  args = {"noisy": noisy, "init": "none", "loss": "neighbor2neighbor", "steps": steps, "model.widths": "(8,16)",
          "model.blocks": "(1,0)", "batch_size": 8, "val_size": 8, "eval_every": 5, "log_every": 1, **over}
  return [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=train_self_supervised",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in args.items()]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes(stacks, tmp_path):
  wd, env = str(tmp_path / "run"), _env(tmp_path / "cache")
  args = _launch(wd, stacks[0], 40, checkpoint_every=5)
  killed_after, rerun = kill_after_checkpoint_and_rerun(args, env, wd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = [ln for ln in rerun.stderr.splitlines() if "resumed from checkpoint step" in ln]
  assert resumed and int(resumed[0].split("resumed from checkpoint step")[1].split()[0]) >= killed_after
  assert checkpoints.Checkpointer(wd, create=False).latest_step() == 40
  rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, 41)) and "val_ss_loss" in rows[-1]
  # a bad stack through the launcher: one error line, nothing written
  clean, noisy = _smooth(12)
  noisy[2, 1, 1] = np.inf
  io.write_stack(str(tmp_path / "inf.mrcs"), noisy, 2.0)
  r = subprocess.run(_launch(str(tmp_path / "bad"), str(tmp_path / "inf.mrcs"), 5), env=env, capture_output=True,
                     text=True, timeout=300)
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert r.returncode != 0 and len(errors) == 1 and "NaN or Inf" in errors[0], r.stderr[-2000:]
  assert not (tmp_path / "bad").exists()
