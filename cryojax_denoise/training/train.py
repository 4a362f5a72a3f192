"""Training of the learned denoisers (conditional GAN, autoencoder, self-supervised) with resume and data
parallelism: the jitted step and denoise functions (one compile cache per process) and the loop.

`train(config, workdir)` trains, checkpoints every `checkpoint_every` steps, logs `metrics.jsonl`, and
resumes from the latest checkpoint in `workdir` (ending at `config.steps` in total). The config lives in
`training.config`, the models in `training.model`, the losses in `training.losses`; their names are
re-exported here (`train.default_config`, `train.resolve`, `train.Learner`, `train.apply_generator`, ...).
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from cryojax_denoise import distributed
from cryojax_denoise.progress import Progress
from cryojax_denoise import sharding as sh
from cryojax_denoise.noise import whiten
from cryojax_denoise.training import checkpoints, data as data_lib, self_supervised as ss
from cryojax_denoise.training.config import (  # noqa: F401  (re-exported: callers use train.X)
    FAITHFUL, KIND_PRESETS, PRESETS, apply_init_config, apply_preset, check_workdir, config_dict,
    default_config, init_dir, launcher_workdir, resolve)
from cryojax_denoise.training.losses import _bce, _reconstruction, learner_step, split_target  # noqa: F401
from cryojax_denoise.training.model import (  # noqa: F401
    Learner, _adam, apply_generator, build_discriminator, build_generator, load_init)

# Config keys that determine the compiled step (architecture, losses, optimiser hyperparameters).
_STEP_KEYS = ("kind", "faithful", "model", "disc", "loss", "l1_weight", "lr_g", "lr_d", "beta1", "beta2",
              "lr_decay", "grad_clip") + ss.CONFIG_KEYS
_compiled: dict = {}


def _cache_key(name: str, config, mesh) -> tuple:
  cfg = config_dict(config)
  keys = _STEP_KEYS + (("steps",) if cfg.get("lr_decay") == "cosine" else ())  # the schedule's length
  return (name, json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True), mesh)


def make_train_step(graphdef, config, mesh):
  """Pure jitted step: (state, noisy, clean, key=None) -> (state, losses); state replicated, batch sharded
  (`key`: the self-supervised masks' PRNG key, e.g. fold_in(key(seed), step)).

  Cached per (architecture, losses, optimiser, mesh): a resumed or repeated run in the same process
  reuses the compiled step (a fresh Learner's graphdef differs only in optax closures).
  """
  key = _cache_key("step", config, mesh)
  if key in _compiled:
    return _compiled[key]
  repl, data = sh.replicated(mesh), sh.batch_sharding(mesh)
  names = ("kind", "loss", "l1_weight") + (ss.CONFIG_KEYS if config.kind == "self_supervised" else ())
  static = ml_collections.ConfigDict({k: config[k] for k in names})

  @partial(jax.jit, in_shardings=(repl, data, data, repl), out_shardings=(repl, repl), donate_argnums=0)
  def jitted(state, noisy, clean, rng):
    learner = nnx.merge(graphdef, state)
    losses = learner_step(learner, noisy, clean, static, rng)
    return nnx.state(learner), losses

  def step(state, noisy, clean, rng=None):
    return jitted(state, noisy, clean, jax.random.key(0) if rng is None else rng)

  _compiled[key] = step
  return step


def make_denoise_fn(graphdef, mesh):
  """Jitted (generator state, noisy (B,H,W) sharded) -> estimate (B,H,W), for validation and inference."""
  key = ("denoise", graphdef, mesh)
  if key in _compiled:
    return _compiled[key]
  repl, data = sh.replicated(mesh), sh.batch_sharding(mesh)

  @partial(jax.jit, in_shardings=(repl, data), out_shardings=data)
  def denoise(state, noisy):
    return apply_generator(nnx.merge(graphdef, state), noisy)

  _compiled[key] = denoise
  return denoise


# ---------------------------------------------------------------------------- loop


def _trim_metrics(path: str, last_step: int) -> None:
  """Drops metrics lines past `last_step` (written by a run killed after its last checkpoint)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [ln for ln in f if ln.strip()]
  kept = []
  for ln in lines:
    try:
      if json.loads(ln).get("step", 0) <= last_step:
        kept.append(ln)
    except json.JSONDecodeError:
      continue  # a line cut by a kill
  from cryojax_denoise.io import atomic_write_text
  atomic_write_text(path, "".join(kept))


def _validation_metrics(denoise, gen_state, val, val_sharding, pad_to: int) -> dict:
  from cryojax_denoise import metrics

  noisy, clean = val
  n = len(noisy)
  padded = np.concatenate([noisy, np.repeat(noisy[-1:], pad_to - n, 0)]) if pad_to > n else noisy
  est = sh.to_host(denoise(gen_state, sh.shard_host_batch(padded, val_sharding)))[:n]
  clean, weight = split_target(np.asarray(clean))
  if weight is not None:  # scored as the loss scores it (`losses.split_target`)
    est, clean = (np.asarray(whiten.apply_filter(a, weight)) for a in (est, clean))
  mse = float(jnp.mean(metrics.mse(jnp.asarray(est), jnp.asarray(clean))))
  psnr = float(jnp.mean(metrics.psnr(jnp.asarray(est), jnp.asarray(clean))))
  return {"val_mse": mse, "val_psnr": psnr}


def train(config, workdir: str, data=None) -> dict:
  """Trains (or resumes) a learned denoiser in `workdir`; returns the last metrics row.

  Writes `workdir/checkpoints/` (orbax, last `keep_checkpoints` kept) and `workdir/metrics.jsonl`
  (one JSON object per logged step: step, losses, steps_per_s, and val_mse/val_psnr when evaluated).
  """
  distributed.initialize(config)
  config = resolve(config)
  mesh = sh.data_mesh()
  sh.check_batch_size(int(config.batch_size), mesh)
  repl, data_sharding = sh.replicated(mesh), sh.batch_sharding(mesh)
  cfg = config_dict(config)

  check_workdir(config, workdir)
  if data is None:  # bad maps/stacks fail here, before anything is written
    data = data_lib.make_data(config, data_sharding)
  distributed.barrier("train: data ready")  # gloo's first collective gives up on peers > 30 s apart
  if config.kind == "self_supervised" and distributed.is_main() and hasattr(data, "noise_record"):
    from cryojax_denoise.training.ss_noise import write_noise_record  # noise.json: what denoise must apply

    write_noise_record(workdir, data.noise_record)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  start = ckpt.latest_step() or 0
  learner = Learner(config, seed=int(config.seed))
  if start:
    ckpt.restore(start, learner.parts(), sharding=repl)
    logging.info("resumed from checkpoint step %d in %s", start, ckpt.directory)
  elif init_dir(config.init):
    load_init(learner.generator, config.init, sharding=repl, zero_head=config.init_head == "zero")
    logging.info("generator initialised from %s", init_dir(config.init))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if distributed.is_main():  # process 0 alone owns metrics.jsonl
    _trim_metrics(metrics_path, start)
  total = int(config.steps)
  if start >= total:
    logging.info("checkpoint step %d already reaches steps=%d; nothing to train", start, total)
    ckpt.close()
    return {"step": start}

  graphdef, state = nnx.split(learner)
  state = jax.device_put(state, repl)
  step_fn = make_train_step(graphdef, config, mesh)
  gen_graphdef = nnx.graphdef(learner.generator)
  denoise = make_denoise_fn(gen_graphdef, mesh)
  val = data.validation()
  n_dev = mesh.devices.size
  val_pad = -(-len(val[0]) // n_dev) * n_dev
  self_sup = config.kind == "self_supervised"
  ss_validation = ss.make_validation(gen_graphdef, config) if self_sup else None
  base_key = jax.random.key(int(config.seed))

  def gen_state(state):
    return state["generator"]

  bar = Progress(total=total, desc=f"train {config.kind}", unit="step", start=start)
  row = {"step": start}
  t_last, s_last = time.perf_counter(), start
  deadline = time.perf_counter() + 60.0 * float(config.time_limit_min) if config.time_limit_min > 0 else None
  with open(metrics_path if distributed.is_main() else os.devnull, "a") as out, distributed.peers_alive("train"):
    for step in range(start, total):
      noisy, clean = data.batch(step)
      state, losses = step_fn(state, noisy, clean, jax.random.fold_in(base_key, step) if self_sup else None)
      done = step + 1
      out_of_time = deadline is not None and time.perf_counter() > deadline
      last = done == total or out_of_time
      if done % config.log_every == 0 or done % config.eval_every == 0 or last:
        losses = {k: float(v) for k, v in jax.device_get(losses).items()}
        if not all(math.isfinite(v) for v in losses.values()):
          raise FloatingPointError(f"non-finite loss at step {done}: {losses}")
        now = time.perf_counter()
        row = {"step": done, **losses, "steps_per_s": (done - s_last) / max(now - t_last, 1e-9)}
        t_last, s_last = now, done
        if done % config.eval_every == 0 or last:
          row.update(ss_validation(gen_state(state), val) if self_sup else
                     _validation_metrics(denoise, gen_state(state), val, data_sharding, val_pad))
        out.write(json.dumps(row) + "\n")
        out.flush()
      if done % config.checkpoint_every == 0 or last:
        nnx.update(learner, state)
        ckpt.save(done, learner.parts(), cfg)
      bar.update(1, extra=" ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
      if out_of_time and done < total:
        logging.info("time limit of %g min reached at step %d of %d; rerun to continue", config.time_limit_min,
                     done, total)
        break
  ckpt.close()
  return row


def finetune(noisy, workdir: str, *, init: str = "general", loss: str = "noise2self", steps: int = 1000,
             batch_size: int = 16, seed: int = 0, noisy2=None, **overrides) -> str:
  """Fits a generator to noisy particles alone; returns the checkpoint dir (for `restore.load_denoiser`).

  noisy: (N, H, W) images in any units (standardised per image); noisy2: a second copy for noise2noise.
  init: "general" (bundled model), "none" (fresh) or a checkpoint dir. `overrides`: other config keys
  (e.g. lr_g=, time_limit_min=, model=). Rerunning on the same workdir resumes up to `steps`.
  """
  c = default_config("self_supervised")
  c.init, c.loss, c.steps, c.batch_size, c.seed = str(init), str(loss), int(steps), int(batch_size), int(seed)
  for key, value in overrides.items():
    c[key] = value
  data = data_lib.NoisyStack(c, arrays=(noisy, noisy2))
  c.image_size = int(data.image_size)
  c.checkpoint_every = min(int(c.checkpoint_every), int(steps))
  train(c, workdir, data=data)
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def experiment(kind: str):
  """`get_config`, `validate`, `run` of the `train_<kind>` experiment (the launcher's module interface)."""

  def get_config() -> ml_collections.ConfigDict:
    return default_config(kind)

  def validate(config, workdir=None) -> None:
    """Checks keys, input stacks and (when resuming) that the workdir's checkpoints match the model."""
    distributed.initialize(config)  # the checks below start JAX (and orbax), which must join the job first
    check_workdir(resolve(config), workdir or launcher_workdir(f"train_{kind}"))

  def run(config, workdir: str) -> None:
    train(config, workdir)

  return get_config, validate, run
