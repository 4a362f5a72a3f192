"""Training: overfitting, save/restore, resume (rerun and SIGKILL), 4-device sharding, bad inputs.

Tiny models on 32² images from disk pairs (no simulator), so each test compiles one small step.
Subprocesses use XLA's -O0 backend (compiles ~3× faster on CPU) and a shared compilation cache.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise import sharding as sh
from cryojax_denoise.training import checkpoints, restore, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.widths": "(8,16)", "model.blocks": "(1,0)", "disc.widths": "(8,16)", "disc.blocks": "(1,1)",
        "batch_size": "8", "val_size": "8", "eval_every": "5", "log_every": "1"}


def _smooth_pairs(n, size=32, seed=0):
  rng = np.random.default_rng(seed)
  f = np.fft.fftfreq(size)
  lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.06 ** 2))
  clean = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) * lowpass))
  clean = (clean / clean.std()).astype(np.float32)
  noisy = (clean + rng.normal(size=clean.shape)).astype(np.float32)
  return noisy, clean


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  d = tmp_path_factory.mktemp("pairs")
  noisy, clean = _smooth_pairs(48)
  io.write_stack(str(d / "noisy.mrcs"), noisy, 2.0)
  io.write_stack(str(d / "clean.mrcs"), clean, 2.0)
  return str(d / "noisy.mrcs"), str(d / "clean.mrcs")


def _config(kind, pairs, **over):
  c = train.default_config(kind)
  for key, value in TINY.items():
    section, _, name = key.rpartition(".")
    node = c[section] if section else c
    node[name] = eval(value)  # noqa: S307 - literal tuples/ints above
  c.noisy, c.clean = pairs
  for key, value in over.items():
    c[key] = value
  return c


def _env(tmp_cache):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _launch(kind, workdir, pairs, steps, **over):
  args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--experiment=train_{kind}", f"--workdir={workdir}",
          f"--config.noisy={pairs[0]}", f"--config.clean={pairs[1]}", f"--config.steps={steps}"]
  return args + [f"--config.{k}={v}" for k, v in {**TINY, **over}.items()]


def _opt_count(workdir, step):
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "opt_g"))
  adam = tree["opt_state"]["0"] if "0" in tree["opt_state"] else tree["opt_state"][0]
  return int(np.asarray(adam["count"])), adam


# ---------------------------------------------------------------------------- in process


def _fast_config(pairs, **over):
  # One config for all in-process tests, so they share one compiled step.
  return _config("autoencoder", pairs, loss="l2", lr_g=3e-3, **over)


@pytest.mark.slow
def test_tiny_model_overfits_a_fixed_batch(pairs):
  c = train.resolve(_fast_config(pairs))
  graphdef, state = nnx.split(train.Learner(c, seed=0))
  step = train.make_train_step(graphdef, c, sh.data_mesh())
  noisy, clean = _smooth_pairs(8, seed=1)
  losses = []
  for _ in range(120):
    state, out = step(state, jnp.asarray(noisy), jnp.asarray(clean))
    losses.append(float(out["loss"]))
  assert np.all(np.isfinite(losses))
  assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


def test_save_restore_is_bit_identical(pairs, tmp_path):
  c = train.resolve(_fast_config(pairs))
  learner = train.Learner(c, seed=4)
  graphdef, state = nnx.split(learner)
  mesh = sh.data_mesh()
  state, _ = train.make_train_step(graphdef, c, mesh)(state, *map(jnp.asarray, _smooth_pairs(8, seed=2)))
  nnx.update(learner, state)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, learner.parts(), train.config_dict(c))
  ckpt.close()
  gen, cfg, step = restore.load_generator(str(tmp_path))
  assert step == 1 and tuple(cfg.model.widths) == (8, 16)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(learner.generator, nnx.Param).to_pure_dict(),
               nnx.state(gen, nnx.Param).to_pure_dict())
  noisy, _ = _smooth_pairs(8, seed=3)
  den = restore.load_denoiser(str(tmp_path), batch_size=8)
  out = den(noisy[:5])
  assert out.shape == (5, 32, 32) and out.dtype == np.float32
  denoise = train.make_denoise_fn(nnx.graphdef(learner.generator), mesh)
  direct = np.asarray(denoise(nnx.state(learner.generator), sh.shard_host_batch(noisy, sh.batch_sharding(mesh))))
  np.testing.assert_array_equal(out, direct[:5])
  # output in the input's units: scaling and shifting the input maps the output the same way
  np.testing.assert_allclose(den(3 * noisy[:5] + 7), 3 * out + 7, rtol=1e-4, atol=1e-3)
  # sizes that are not a multiple of the stride are padded and cropped back
  assert den(noisy[:3, :30, :28]).shape == (3, 30, 28)


@pytest.mark.slow
def test_rerun_resumes_and_ends_at_total(pairs, tmp_path):
  c = _fast_config(pairs, steps=6, checkpoint_every=3)
  wd = str(tmp_path / "run")
  train.train(c, wd)
  assert checkpoints.Checkpointer(wd, create=False).latest_step() == 6
  c.steps = 9
  train.train(c, wd)
  rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, 10))
  assert "val_mse" in rows[-1] and "val_psnr" in rows[-1] and rows[-1]["steps_per_s"] > 0
  assert _opt_count(wd, 9)[0] == 9
  # the same as an uninterrupted 9-step run (the data stream depends only on (seed, step))
  wd2 = str(tmp_path / "straight")
  train.train(c, wd2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               nnx.state(restore.load_generator(wd)[0], nnx.Param).to_pure_dict(),
               nnx.state(restore.load_generator(wd2)[0], nnx.Param).to_pure_dict())
  assert train.train(c, wd)["step"] == 9  # already at the total: nothing to do


def test_bad_pairs_and_configs(pairs, tmp_path):
  noisy, clean = _smooth_pairs(10)
  io.write_stack(str(tmp_path / "short.mrcs"), clean[:9], 2.0)
  bad = noisy.copy()
  bad[4, 3, 3] = np.nan
  io.write_stack(str(tmp_path / "nan.mrcs"), bad, 2.0)
  io.write_stack(str(tmp_path / "rect.mrcs"), noisy[:, :, :16], 2.0)
  io.write_stack(str(tmp_path / "rect2.mrcs"), clean[:, :, :16], 2.0)
  cases = [((pairs[0], str(tmp_path / "short.mrcs")), "differs"), ((str(tmp_path / "nan.mrcs"), pairs[1]), "NaN"),
           ((str(tmp_path / "rect.mrcs"), str(tmp_path / "rect2.mrcs")), "square"),
           ((pairs[0], str(tmp_path / "missing.mrcs")), "not found")]
  for (n, c_), message in cases:
    with pytest.raises(InputError, match=message):
      train.resolve(_config("gan", (n, c_)))
  with pytest.raises(InputError, match="clean"):
    train.resolve(_config("gan", (pairs[0], "")))
  with pytest.raises(InputError, match="divisible"):
    train.resolve(_config("gan", ("", ""), image_size=42))
  with pytest.raises(InputError, match="snr_range"):
    train.resolve(_config("gan", ("", ""), snr_range=(0.5, 0.1)))
  with pytest.raises(InputError, match="no checkpoint"):
    restore.load_denoiser(str(tmp_path))


def test_star_file_as_noisy_input():
  star = os.path.join(ROOT, "..", "shared", "data", "relion31.star")
  if not os.path.exists(star):
    pytest.skip("shared data not present")
  c = train.resolve(_config("gan", (star, star.replace(".star", ".mrcs"))))
  assert c.image_size == 256


# ---------------------------------------------------------------------------- subprocesses


SHARD_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from cryojax_denoise import sharding as sh
from cryojax_denoise.training import train
assert jax.device_count() == 4, jax.devices()
c = train.default_config("gan")
c.model.widths, c.model.blocks, c.disc.widths, c.disc.blocks = (8, 16), (1, 0), (8, 16), (0, 0)
c.batch_size = 8
rng = np.random.default_rng(0)
clean = rng.normal(size=(8, 32, 32)).astype(np.float32)
noisy = clean + rng.normal(size=clean.shape).astype(np.float32)
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = sh.data_mesh(devices)
  graphdef, state = nnx.split(train.Learner(c, seed=0))
  state = jax.device_put(state, sh.replicated(mesh))
  step = train.make_train_step(graphdef, c, mesh)
  x = sh.shard_host_batch(noisy, sh.batch_sharding(mesh))
  y = sh.shard_host_batch(clean, sh.batch_sharding(mesh))
  assert len(x.sharding.device_set) == len(devices)
  state, losses = step(state, x, y)
  results.append((jax.device_get(state.to_pure_dict()), jax.device_get(losses)))
(s1, l1), (s4, l4) = results
for k in l1:
  np.testing.assert_allclose(l1[k], l4[k], rtol=1e-5)
n = 0
for net, opt in (("generator", "opt_g"), ("discriminator", "opt_d")):
  adam1, adam4 = s1[opt]["opt_state"][0], s4[opt]["opt_state"][0]
  assert int(adam1["count"]) == int(adam4["count"]) == 1
  # Adam's moments are (scaled) gradients and their squares: equal to float tolerance.
  for key in ("mu", "nu"):
    for a, b in zip(jax.tree.leaves(adam1[key]), jax.tree.leaves(adam4[key])):
      assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max() + 1e-12, (key, np.abs(a - b).max(), np.abs(a).max())
  # Parameters: equal wherever the gradient is above rounding level (Adam's first step is
  # lr * sign(gradient), so a gradient of pure rounding noise may flip its sign).
  for p1, p4, mu in zip(jax.tree.leaves(s1[net]), jax.tree.leaves(s4[net]), jax.tree.leaves(adam1["mu"])):
    real = np.abs(mu) > 1e-3 * np.abs(mu).max()
    np.testing.assert_allclose(p1[real], p4[real], rtol=1e-5, atol=1e-6)
    n += 1
assert n > 10
print("SHARDED_OK", {k: float(v) for k, v in l4.items()})
"""


@pytest.mark.slow
def test_sharded_step_equals_single_device(tmp_path):
  env = _env(tmp_path / "cache")
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "SHARDED_OK" in r.stdout, r.stderr[-3000:]


@pytest.fixture(scope="module")
def killed_and_resumed(pairs, tmp_path_factory):
  """A run SIGKILLed after its checkpoint at step >= 10, then rerun on the same workdir."""
  base = tmp_path_factory.mktemp("sigkill")
  wd, env = str(base / "run"), _env(base / "cache")
  args = _launch("autoencoder", wd, pairs, 60, checkpoint_every=5)
  killed_after, rerun = kill_after_checkpoint_and_rerun(args, env, wd)
  return wd, env, killed_after, rerun


def kill_after_checkpoint_and_rerun(args, env, workdir, min_step: int = 10):
  """Starts the training command `args`, SIGKILLs it once a checkpoint of step >= min_step exists in
  `workdir`, then reruns it on the same workdir; returns (last checkpoint step before the kill, rerun)."""
  proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  ckdir, killed_after = os.path.join(workdir, "checkpoints"), None
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    steps = [int(s) for s in os.listdir(ckdir) if s.isdigit()] if os.path.isdir(ckdir) else []
    if steps and max(steps) >= min_step:
      proc.send_signal(signal.SIGKILL)
      killed_after = max(steps)
      break
    time.sleep(0.05)
  proc.wait()
  assert killed_after is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
  return killed_after, subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_with_optimiser_state(killed_and_resumed):
  wd, _, killed_after, rerun = killed_and_resumed
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = [ln for ln in rerun.stderr.splitlines() if "resumed from checkpoint step" in ln]
  assert resumed, rerun.stderr[-3000:]
  start = int(resumed[0].split("resumed from checkpoint step")[1].split()[0])
  assert 10 <= start < 60 and start >= killed_after
  assert checkpoints.Checkpointer(wd, create=False).latest_step() == 60
  count, adam = _opt_count(wd, 60)
  assert count == 60  # a fresh optimiser after the restart would count 60 - start
  assert any(float(np.abs(np.asarray(v)).max()) > 0 for v in jax.tree.leaves(adam["nu"]))
  rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, 61))


@pytest.mark.slow
def test_mismatched_checkpoint_is_one_error_line(killed_and_resumed, pairs):
  wd, env, _, _ = killed_and_resumed
  before = open(os.path.join(wd, "config.json")).read()
  args = _launch("autoencoder", wd, pairs, 70, **{"model.widths": "(8,32)"})
  r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and "does not match" in errors[0] and "model.widths" in errors[0], r.stderr[-2000:]
  assert open(os.path.join(wd, "config.json")).read() == before
  assert checkpoints.Checkpointer(wd, create=False).latest_step() == 60
