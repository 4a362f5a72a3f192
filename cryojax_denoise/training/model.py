"""Models of a training run: the generator and discriminator built from the config, their optimisers
(`Learner`), starting weights from an `init` checkpoint, and the generator applied in raw units.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from cryojax_denoise.models import ARCHITECTURES, Generator, PatchDiscriminator, UNet, host_init
from cryojax_denoise.training import checkpoints, data as data_lib
from cryojax_denoise.training.checkpoints import init_dir


def build_generator(config, seed: int = 0, abstract: bool = False) -> Generator | UNet:
  """The generator of `config` (architecture `model.arch` from `models.ARCHITECTURES`, host-initialised);
  `abstract` gives shapes only, to restore into."""
  m = config.model
  arch = ARCHITECTURES[m.get("arch", "pix2pix")]

  def create():
    return arch.build(m, nnx.Rngs(seed))

  return nnx.eval_shape(create) if abstract else host_init(create, seed, arch.kernels)


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


def load_init(generator: Generator, init: str, sharding=None, zero_head: bool = False) -> None:
  """Overwrites `generator`'s parameters in place with those of the `init` checkpoint (no-op for none);
  `zero_head` then zeroes the output layer, so a prior-correcting generator starts as its prior."""
  path = init_dir(init)
  if path is None:
    return
  ckpt = checkpoints.Checkpointer(path, create=False)
  try:
    ckpt.restore(ckpt.latest_step(), {"generator": generator}, sharding=sharding)
  finally:
    ckpt.close()
  if zero_head:
    for _, param in nnx.iter_graph(generator.head):
      if isinstance(param, nnx.Param):
        param.set_value(param[...] * 0.0)  # keeps the parameter's sharding


def split_inputs(inputs: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """Network inputs (B, H, W) noisy images, or (B, C, H, W): noisy images, their prior estimates (prior="cwf"
  models) and, for SURE fine-tuning (C = 4), a probe b and the prior's response W b -> (noisy, prior or None)."""
  return (inputs[:, 0], inputs[:, 1]) if inputs.ndim == 4 else (inputs, None)


def probe_inputs(inputs: jax.Array) -> tuple[jax.Array, jax.Array] | None:
  """(b, W b) of (B, 4, H, W) SURE inputs (see `split_inputs`), else None."""
  return (inputs[:, 2], inputs[:, 3]) if inputs.ndim == 4 and inputs.shape[1] == 4 else None


def call_generator(generator: Generator, x: jax.Array, prior: jax.Array | None = None) -> jax.Array:
  """generator(x) on standardised images, with the standardised prior estimate when it takes one."""
  return generator(x) if prior is None else generator(x, prior)


def apply_generator(generator: Generator, noisy: jax.Array) -> jax.Array:
  """Denoises raw images in their own units (standardise → network → map back): `noisy` (B, H, W), or
  (B, 2, H, W) with each image's prior estimate (e.g. CWF) for prior="cwf" models, standardised by the
  noisy image's mean and std. An `odd` model is applied as (g(x) − g(−x)) / 2 (the prior negated with
  the image), so both contrast polarities get the same answer up to sign."""
  noisy, prior = split_inputs(noisy)
  x, mean, std = data_lib.standardise(noisy)
  p = None if prior is None else (prior - mean) / std
  y = call_generator(generator, x, p)
  if generator.odd:
    y = 0.5 * (y - call_generator(generator, -x, None if p is None else -p))
  return data_lib.destandardise(y, mean, std)
