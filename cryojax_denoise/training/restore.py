"""Rebuilds a trained generator from a checkpoint as a denoiser callable.

`load_denoiser(DIR)` reads the config saved with the latest checkpoint in DIR (a training workdir or
its `checkpoints/` folder), rebuilds the generator, restores its parameters (replicated over the local
devices) and returns `denoise(images (B, H, W), noise_std=None) -> (B, H, W) float32` in the input's
units. Images are standardised per image (see `training.data`), processed in fixed-size batches
sharded over the devices (the last batch padded, so one compilation serves any stack length), and
images whose size is not a multiple of the generator's stride are reflect-padded and cropped back.
The model is blind: `noise_std` is accepted for the common denoiser interface and not used. A
prior="cwf" model also takes `prior=` (B, H, W): each image's dataset-level estimate (CWF).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from cryojax_denoise.errors import InputError
from cryojax_denoise import sharding as sh
from cryojax_denoise.training import checkpoints
from cryojax_denoise.training.train import build_generator, make_denoise_fn


PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


def bundled_dir(kind: str = "autoencoder") -> str:
  """The folder of the general model shipped with the package: `pretrained/<kind>_general/`
  (trained by `launch.py --experiment=train_<kind> --config.preset=general`, see README)."""
  return os.path.join(PRETRAINED, f"{kind}_general")


def load_generator(directory: str | None = None, mesh=None, kind: str = "autoencoder"):
  """(generator with restored parameters, saved config, step) from the latest checkpoint in `directory`
  (None: the bundled general model of `kind`)."""
  if not directory:
    directory = bundled_dir(kind)
    if not os.path.isdir(directory):
      raise InputError(f"no bundled general {kind} model at {directory}; give checkpoint=DIR")
  step, cfg = checkpoints.saved_config(directory)
  config = ml_collections.ConfigDict(cfg)
  for key in ("model",):
    if key not in config:
      raise InputError(f"{directory}: checkpoint config has no '{key}' section")
  try:
    generator = build_generator(config, abstract=True)
  except (ValueError, TypeError) as e:
    raise InputError(f"{directory}: checkpoint config cannot build a generator ({e})") from None
  mesh = sh.data_mesh(jax.local_devices()) if mesh is None else mesh
  ckpt = checkpoints.Checkpointer(directory, create=False)
  try:
    ckpt.restore(step, {"generator": generator}, sharding=sh.replicated(mesh))
  finally:
    ckpt.close()
  return generator, config, step


def load_denoiser(directory: str | None = None, batch_size: int = 64, kind: str = "autoencoder"):
  """A batched, jitted, device-sharded denoiser from the trained generator in `directory` (None: the
  bundled general model of `kind`)."""
  mesh = sh.data_mesh(jax.local_devices())
  generator, config, _ = load_generator(directory, mesh, kind)
  n_dev = mesh.devices.size
  chunk = max(n_dev, -(-int(batch_size) // n_dev) * n_dev)
  graphdef, state = nnx.split(generator)
  denoise_fn = make_denoise_fn(graphdef, mesh)
  data_sharding = sh.batch_sharding(mesh)
  stride = generator.stride
  needs_prior = config.model.get("prior") == "cwf"

  def denoise(images, noise_std=None, prior=None):
    del noise_std  # blind model
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
      return denoise(images[None], prior=None if prior is None else np.asarray(prior)[None])[0]
    if images.ndim != 3:
      raise InputError(f"expected images (B, H, W), got shape {images.shape}")
    if needs_prior != (prior is not None):
      raise InputError(f"{directory or 'the bundled model'}: this model {'needs' if needs_prior else 'takes no'} "
                       "prior estimates (prior=, e.g. the stack's CWF estimates)")
    n, h, w = images.shape
    if prior is not None:
      if np.shape(prior) != images.shape:
        raise InputError(f"prior estimates of shape {np.shape(prior)} for images of shape {images.shape}")
      images = np.stack([images, np.asarray(prior, np.float32)], axis=1)  # (B, 2, H, W): see apply_generator
    ph, pw = -h % stride, -w % stride
    out = np.empty((n, h, w), np.float32)
    for start in range(0, n, chunk):
      block = images[start:start + chunk]
      m = len(block)
      if ph or pw:
        pad = ((0, 0),) * (block.ndim - 2) + ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        block = np.pad(block, pad, mode="reflect")
      if m < chunk:
        block = np.concatenate([block, np.repeat(block[-1:], chunk - m, 0)])
      est = np.asarray(denoise_fn(state, sh.shard_host_batch(block, data_sharding)))
      out[start:start + m] = est[:m, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
    return out

  denoise.config = config
  return denoise


def export_generator(workdir: str, dest: str) -> str:
  """Writes the generator of `workdir`'s latest checkpoint (no optimiser state: ~1/3 the size) to
  `dest/checkpoints/<step>/` with its saved config, plus `dest/metrics.jsonl` when the run has one.
  This is how a trained general model becomes the bundled one:
  `restore.export_generator("runs/general_autoencoder", restore.bundled_dir("autoencoder"))`."""
  import shutil

  if os.path.exists(dest):
    raise InputError(f"{dest}: already exists (export never overwrites)")
  generator, config, step = load_generator(workdir)
  ckpt = checkpoints.Checkpointer(dest, keep=1)
  try:
    ckpt.save(step, {"generator": generator}, config.to_dict())
  finally:
    ckpt.close()
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    shutil.copyfile(metrics, os.path.join(dest, "metrics.jsonl"))
  return dest
