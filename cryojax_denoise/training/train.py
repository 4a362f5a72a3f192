"""Training of the learned denoisers (conditional GAN and autoencoder) with resume and data parallelism.

`default_config(kind)` is the one config both experiments (and the SNR sweep) start from;
`train(config, workdir)` trains, checkpoints every `checkpoint_every` steps, logs `metrics.jsonl`, and
resumes from the latest checkpoint in `workdir` (ending at `config.steps` in total).

Losses (on per-image standardised images, see `training.data`):
  GAN (pix2pix, as the cianfrocco-lab model): D minimises ½[BCE(D(clean, noisy), 1) + BCE(D(G(noisy), noisy), 0)];
  G minimises BCE(D(G(noisy), noisy), 1) + λ·mean|G(noisy) − clean|, λ = `l1_weight` (100).
  Autoencoder: the generator alone with mean |·| (`loss="l1"`) or mean squared (`loss="l2"`) error.
Both use Adam with β1 = 0.5 (learning rates `lr_g`, `lr_d`).
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
import optax
from absl import logging
from flax import nnx

from cryojax_denoise.errors import InputError
from cryojax_denoise.models import Generator, PatchDiscriminator, UNet, host_init
from cryojax_denoise.progress import Progress
from cryojax_denoise.training import checkpoints, data as data_lib, self_supervised as ss, sharding as sh

# The cianfrocco-lab model's sizes, used when `faithful=True`.
FAITHFUL = {"model.widths": (64, 128, 256, 512, 512, 512), "model.blocks": (3, 3, 3, 3, 2, 0),
            "model.output": "tanh", "disc.widths": (64, 128, 256, 512), "disc.blocks": (2, 2, 3, 2)}


def default_config(kind: str = "gan") -> ml_collections.ConfigDict:
  """Defaults for `kind` in ("gan", "autoencoder", "self_supervised"); every key can be overridden from the
  command line."""
  if kind not in ("gan", "autoencoder", "self_supervised"):
    raise ValueError(f"kind must be 'gan', 'autoencoder' or 'self_supervised', got {kind!r}")
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.preset = ""                # "general": the bundled general model's recipe (PRESETS), for keys left at default
  c.steps = 2000               # total optimisation steps (a rerun resumes and stops here)
  c.batch_size = 16            # global batch, sharded over all devices
  c.image_size = 64            # simulated box (px); stacks from disk set their own
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.eval_every = 100           # validation MSE/PSNR every N steps (and at the end)
  c.log_every = 20             # loss lines in metrics.jsonl every N steps
  c.val_size = 64              # held-out validation images
  c.val_snr = 0.1              # SNR of the simulated validation batch
  c.snr = 0.0                  # > 0: train at this fixed SNR; 0: draw per image from snr_range
  c.snr_range = (0.01, 1.0)    # log-uniform SNR range (one model for all SNRs)
  c.seed = 0
  c.faithful = False           # True: the original's widths, blocks and tanh output (FAITHFUL)
  # Narrower and shallower than the original (FAITHFUL) so it trains in minutes on a CPU.
  # arch "pix2pix": the cianfrocco-lab generator (models/generator.py); "unet": the bias-free U-Net
  # (models/unet.py; uses widths, blocks, odd, prior).
  c.model = ml_collections.ConfigDict({"arch": "pix2pix", "widths": (16, 32, 64, 64), "blocks": (1, 1, 1, 0),
                                       "output": "linear", "noise_channel": False, "odd": False,
                                       "prior": "none"})
  c.disc = ml_collections.ConfigDict({"widths": (16, 32, 64), "blocks": (1, 1, 1)})
  c.loss = "l1"                # autoencoder loss: "l1" or "l2"
  c.l1_weight = 100.0          # GAN: λ of the L1 term
  c.lr_g = 4e-4
  c.lr_d = 1.5e-4
  c.beta1 = 0.5
  c.beta2 = 0.999
  c.lr_decay = "none"          # "cosine": learning rates decay to 5% over `steps` (set steps to the budget)
  c.grad_clip = 0.0            # > 0: clip each update's gradients to this global norm
  # Training pairs from disk instead of simulation (e.g. particles and their make_pairs projections).
  c.noisy = ""
  c.clean = ""
  # "simulate": one map (below); "corpus": the molecule family of `data.corpus` (a pool of `pool_size`
  # maps, each serving `pool_refresh` steps), for models meant for molecules they never saw.
  c.data = "simulate"
  c.pool_size = 256
  c.pool_refresh = 4000
  # Passed to the simulator: map or model (default: built-in phantom), pixel size (Å), CTF on/off.
  c.volume = ""
  c.structure = ""
  c.pixel_size = 0.0
  c.ctf = True
  c.distributed = False        # call jax.distributed.initialize() (multi-host)
  # Starting weights of the generator: "" / "none" (fresh), "general" (the bundled general model) or a
  # checkpoint dir; the model section (widths, blocks, ...) is then taken from that checkpoint.
  c.init = ""
  if kind == "self_supervised":
    ss.add_config(c)
  c.time_limit_min = 0.0       # > 0: checkpoint and stop after this many minutes (rerun to continue)
  return c


# The general model's recipe (`--config.preset=general`): the molecule corpus over SNR 0.02–2, a
# noise-level input channel, a Wiener-filtered input that the network corrects, both polarities (odd by
# construction at inference), MSE loss.
PRESETS = {
    "general": {"data": "corpus", "image_size": 64, "batch_size": 16, "steps": 6000, "snr_range": (0.02, 2.0),
                "val_snr": 0.1, "loss": "l2", "checkpoint_every": 250, "eval_every": 250,
                "lr_decay": "cosine", "grad_clip": 1.0, "model.blocks": (2, 2, 2, 0),
                "model.noise_channel": True, "model.odd": True, "model.prior": "wiener"},
}
# Per-kind additions: the general GAN starts from the bundled general autoencoder (pix2pix fine-tuning).
KIND_PRESETS = {("general", "gan"): {"init": "general", "steps": 500}}


def apply_preset(c, kind: str) -> None:
  """Fills the preset's values into `c` in place, for every key the user left at its default."""
  if not c.get("preset"):
    return
  if c.preset not in PRESETS:
    raise InputError(f"config.preset: unknown preset {c.preset!r}; valid: {', '.join(PRESETS)}")
  default = default_config(kind)
  for key, value in {**PRESETS[c.preset], **KIND_PRESETS.get((c.preset, kind), {})}.items():
    parts = key.split(".")
    node, base = c, default
    for part in parts[:-1]:
      node, base = node[part], base[part]
    if node[parts[-1]] == base[parts[-1]]:
      node[parts[-1]] = value


def resolve(config) -> ml_collections.ConfigDict:
  """A copy with the preset and `faithful` sizes applied and the image size of disk stacks filled in;
  validates keys."""
  c = ml_collections.ConfigDict(config.to_dict())
  apply_preset(c, c.kind)
  if c.faithful:
    for key, value in FAITHFUL.items():
      section, name = key.split(".")
      c[section][name] = value
  apply_init_config(c)
  for key in ("steps", "batch_size", "image_size", "checkpoint_every", "val_size", "eval_every", "log_every"):
    if int(c[key]) < 1:
      raise InputError(f"config.{key}: must be a positive integer, got {c[key]}")
  if c.kind == "autoencoder" and c.loss not in ("l1", "l2"):
    raise InputError(f"config.loss: must be 'l1' or 'l2', got {c.loss!r}")
  if len(c.model.widths) != len(c.model.blocks) or not len(c.model.widths):
    raise InputError(f"config.model: widths {tuple(c.model.widths)} and blocks {tuple(c.model.blocks)} "
                     "must be non-empty and of equal length")
  if c.get("lr_decay", "none") not in ("none", "cosine"):
    raise InputError(f"config.lr_decay: must be 'none' or 'cosine', got {c.lr_decay!r}")
  if c.model.get("arch", "pix2pix") not in ("pix2pix", "unet"):
    raise InputError(f"config.model.arch: must be 'pix2pix' or 'unet', got {c.model.arch!r}")
  if c.model.output not in ("linear", "tanh"):
    raise InputError(f"config.model.output: must be 'linear' or 'tanh', got {c.model.output!r}")
  if c.kind == "gan" and (len(c.disc.widths) != len(c.disc.blocks) or not len(c.disc.widths)):
    raise InputError(f"config.disc: widths {tuple(c.disc.widths)} and blocks {tuple(c.disc.blocks)} "
                     "must be non-empty and of equal length")
  if c.kind == "self_supervised":
    ss.check_config(c)  # any image size: the self-supervised losses pad to the stride
  else:
    data_lib.check_pair_config(c)
  if c.noisy and c.clean:
    noisy, _ = data_lib.read_pairs(c.noisy, c.clean)
    c.image_size = int(noisy.data.shape[1])
  stride = build_generator(c, abstract=True).stride
  if c.image_size % stride and c.kind != "self_supervised":
    raise InputError(f"config.image_size: {c.image_size} px is not divisible by the generator's total stride "
                     f"{stride} (2**len(model.widths), 2**(len − 1) for the U-Net)")
  data_lib.check_snr_config(c)
  return c


def init_dir(init: str) -> str | None:
  """The checkpoint folder named by `config.init` ("" / "none": None; "general": the bundled model)."""
  init = str(init or "").strip()
  if init.lower() in ("", "none"):
    return None
  if init == "general":
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained",
                        "autoencoder_general")
    if not os.path.isdir(path):
      raise InputError(f"config.init=general: the bundled general model is not installed ({path})")
    return path
  if not os.path.isdir(init):
    raise InputError(f"config.init: checkpoint folder {init} not found (use general, none or a training workdir)")
  return init


def apply_init_config(c) -> None:
  """Copies the model section (and `faithful`) of the `init` checkpoint's config into `c` in place."""
  path = init_dir(c.get("init", ""))
  if path is None:
    return
  _, saved = checkpoints.saved_config(path)
  if not isinstance(saved.get("model"), dict):
    raise InputError(f"config.init: {path} has no model section in its saved config")
  c.model = ml_collections.ConfigDict(saved["model"])
  c.faithful = bool(saved.get("faithful", False))


def load_init(generator: Generator, init: str, sharding=None) -> None:
  """Overwrites `generator`'s parameters in place with those of the `init` checkpoint (no-op for none)."""
  path = init_dir(init)
  if path is None:
    return
  ckpt = checkpoints.Checkpointer(path, create=False)
  try:
    ckpt.restore(ckpt.latest_step(), {"generator": generator}, sharding=sharding)
  finally:
    ckpt.close()


def check_workdir(config, workdir: str) -> None:
  """Raises InputError (before anything is written) when `workdir` holds checkpoints of another model."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path) or not os.listdir(path):
    return
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  try:
    step = ckpt.latest_step()
    if step is not None:
      checkpoints.check_compatible(ckpt.read_meta(step).get("config", {}), config_dict(config), ckpt.directory)
  finally:
    ckpt.close()


def launcher_workdir(experiment: str) -> str:
  """The launcher's `--workdir` (default runs/EXPERIMENT), for `validate` hooks called without it."""
  from absl import flags

  workdir = flags.FLAGS.workdir if "workdir" in flags.FLAGS and flags.FLAGS.is_parsed() else None
  return workdir or os.path.join("runs", experiment)


def experiment(kind: str):
  """`get_config`, `validate`, `run` of the `train_<kind>` experiment (the launcher's module interface)."""

  def get_config() -> ml_collections.ConfigDict:
    return default_config(kind)

  def validate(config, workdir=None) -> None:
    """Checks keys, input stacks and (when resuming) that the workdir's checkpoints match the model."""
    check_workdir(resolve(config), workdir or launcher_workdir(f"train_{kind}"))

  def run(config, workdir: str) -> None:
    train(config, workdir)

  return get_config, validate, run


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


# ---------------------------------------------------------------------------- model and steps


def build_generator(config, seed: int = 0, abstract: bool = False) -> Generator | UNet:
  """The generator of `config` (`model.arch`, host-initialised); `abstract` gives shapes only, to restore
  into."""
  m = config.model
  widths, blocks, output = tuple(m.widths), tuple(m.blocks), str(m.output)
  noise_channel, odd, prior = bool(m.get("noise_channel", False)), bool(m.get("odd", False)), m.get("prior", "none")
  arch = m.get("arch", "pix2pix")

  def create():
    if arch == "unet":
      return UNet(widths, blocks, odd, prior, rngs=nnx.Rngs(seed))
    return Generator(widths, blocks, output, noise_channel, odd, prior, rngs=nnx.Rngs(seed))

  return nnx.eval_shape(create) if abstract else host_init(create, seed, "he" if arch == "unet" else "normal")


def build_discriminator(config, seed: int = 0) -> PatchDiscriminator:
  d = config.disc
  widths, blocks = tuple(d.widths), tuple(d.blocks)
  return host_init(lambda: PatchDiscriminator(widths, blocks, rngs=nnx.Rngs(seed)), seed)


def _adam(config, lr: float):
  """Adam (β1, β2 from config) at `lr`, constant or cosine-decayed to 5% over `config.steps`, after
  gradient clipping to global norm `grad_clip` when > 0."""
  if config.get("lr_decay", "none") == "cosine":
    lr = optax.cosine_decay_schedule(float(lr), int(config.steps), alpha=0.05)
  adam = optax.adam(lr, config.beta1, config.beta2)
  clip = float(config.get("grad_clip", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


class Learner(nnx.Module):
  """The trained objects of one run: generator (+ discriminator) and their Adam optimisers."""

  def __init__(self, config, seed: int = 0):
    self.kind = config.kind
    self.generator = build_generator(config, seed)
    self.opt_g = nnx.Optimizer(self.generator, _adam(config, config.lr_g), wrt=nnx.Param)
    if config.kind == "gan":
      self.discriminator = build_discriminator(config, seed + 1)
      self.opt_d = nnx.Optimizer(self.discriminator, _adam(config, config.lr_d), wrt=nnx.Param)

  def parts(self) -> dict[str, nnx.Object]:
    names = ("generator", "opt_g") + (("discriminator", "opt_d") if self.kind == "gan" else ())
    return {n: getattr(self, n) for n in names}


def _bce(logits: jax.Array, label: float) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def _reconstruction(pred, target, loss: str) -> jax.Array:
  return jnp.mean(jnp.abs(pred - target)) if loss == "l1" else jnp.mean((pred - target) ** 2)


def learner_step(learner: Learner, noisy: jax.Array, clean: jax.Array, config, key=None) -> dict:
  """One optimisation step in place on raw (noisy, clean) (B, H, W); returns scalar losses.
  Self-supervised: `clean` is the second noisy copy (or noisy itself); `key` draws masks/sub-samplings."""
  x, mean, std = data_lib.standardise(noisy)
  y = (clean - mean) / std
  if learner.kind == "self_supervised":
    loss_fn = ss.loss_fn(config.loss, config)
    (loss, aux), grads = nnx.value_and_grad(lambda g: loss_fn(g, x, y, key), has_aux=True)(learner.generator)
    learner.opt_g.update(learner.generator, grads)
    return {"loss": loss, **aux}
  if learner.kind == "autoencoder":
    def g_loss(gen):
      return _reconstruction(gen(x), y, config.loss)
    loss, grads = nnx.value_and_grad(g_loss)(learner.generator)
    learner.opt_g.update(learner.generator, grads)
    return {"loss": loss}

  fake = jax.lax.stop_gradient(learner.generator(x))

  def d_loss(disc):
    return 0.5 * (_bce(disc(y, x), 1.0) + _bce(disc(fake, x), 0.0))

  loss_d, grads_d = nnx.value_and_grad(d_loss)(learner.discriminator)
  learner.opt_d.update(learner.discriminator, grads_d)
  disc = learner.discriminator

  def g_loss(gen):
    pred = gen(x)
    adv = _bce(disc(pred, x), 1.0)
    l1 = jnp.mean(jnp.abs(pred - y))
    return adv + config.l1_weight * l1, (adv, l1)

  (loss_g, (adv, l1)), grads_g = nnx.value_and_grad(g_loss, has_aux=True)(learner.generator)
  learner.opt_g.update(learner.generator, grads_g)
  return {"loss_g": loss_g, "loss_d": loss_d, "adv": adv, "l1": l1}


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


def apply_generator(generator: Generator, noisy: jax.Array) -> jax.Array:
  """Denoises raw (B, H, W) images in their own units (standardise → network → map back); an `odd`
  model is applied as (g(x) − g(−x)) / 2, so both contrast polarities get the same answer up to sign."""
  x, mean, std = data_lib.standardise(noisy)
  y = 0.5 * (generator(x) - generator(-x)) if generator.odd else generator(x)
  return data_lib.destandardise(y, mean, std)


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
  est = np.asarray(denoise(gen_state, sh.shard_host_batch(padded, val_sharding)))[:n]
  mse = float(jnp.mean(metrics.mse(jnp.asarray(est), jnp.asarray(clean))))
  psnr = float(jnp.mean(metrics.psnr(jnp.asarray(est), jnp.asarray(clean))))
  return {"val_mse": mse, "val_psnr": psnr}


def train(config, workdir: str, data=None) -> dict:
  """Trains (or resumes) a learned denoiser in `workdir`; returns the last metrics row.

  Writes `workdir/checkpoints/` (orbax, last `keep_checkpoints` kept) and `workdir/metrics.jsonl`
  (one JSON object per logged step: step, losses, steps_per_s, and val_mse/val_psnr when evaluated).
  """
  sh.initialize_distributed(bool(config.distributed))
  config = resolve(config)
  mesh = sh.data_mesh()
  sh.check_batch_size(int(config.batch_size), mesh)
  repl, data_sharding = sh.replicated(mesh), sh.batch_sharding(mesh)
  cfg = config_dict(config)

  check_workdir(config, workdir)
  if data is None:  # bad maps/stacks fail here, before anything is written
    data = data_lib.make_data(config, data_sharding)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  start = ckpt.latest_step() or 0
  learner = Learner(config, seed=int(config.seed))
  if start:
    ckpt.restore(start, learner.parts(), sharding=repl)
    logging.info("resumed from checkpoint step %d in %s", start, ckpt.directory)
  elif init_dir(config.init):
    load_init(learner.generator, config.init, sharding=repl)
    logging.info("generator initialised from %s", init_dir(config.init))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
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
  with open(metrics_path, "a") as out:
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
        if jax.process_index() == 0:
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
