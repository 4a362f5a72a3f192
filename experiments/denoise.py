"""Denoises an MRC stack or a RELION STAR particle set with any registered method.

    python launch.py --experiment=denoise --config.method=ddtf \\
        --config.input=particles.star --config.output=out/denoised.mrcs

Writes `output` (default WORKDIR/denoised.mrcs) in the input's units, order and pixel size;
for STAR input also a STAR file beside it (same stem, `.star`) with the same rows and optics,
`rlnImageName` pointing at the new stack. Images stream in batches from memory-mapped stacks,
so memory stays bounded whatever the stack size. The input is never overwritten.
"""

from __future__ import annotations

import ast
import os
import re

import ml_collections
from absl import logging

from cryojax_denoise.errors import InputError



def _learned(method: str) -> bool:
  from cryojax_denoise import denoisers  # the registry module is light: no JAX import yet

  return method in denoisers.REGISTRY and denoisers.REGISTRY[method].learned


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "ddtf"          # any name of cryojax_denoise.denoisers.names()
  c.params = ""              # method parameters, "key=value,key=value" (e.g. "width=2.0" for gaussian)
  # Noise standard deviation in the input's units; None (default) or 0: estimated per image.
  c.noise_std = ml_collections.config_dict.placeholder(float)
  c.checkpoint = ""          # training workdir (or its checkpoints/) for gan / autoencoder
  c.input = ""               # an MRC stack (.mrcs/.mrc) or a RELION STAR file (.star)
  c.output = ""              # .mrcs (or .star for STAR input); default WORKDIR/denoised.mrcs
  c.batch_size = 64          # images per denoiser call
  c.normalize = "mean"       # none | mean | std: what is removed before denoising and restored after
  return c


def parse_params(text) -> dict:
  """`"a=1,b=(2,3),c=name"` -> {"a": 1, "b": (2, 3), "c": "name"}; a dict-like config passes through."""
  if hasattr(text, "items"):
    return dict(text.items())
  text = (text or "").strip()
  if not text:
    return {}
  params = {}
  for item in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
    if "=" not in item:
      raise InputError(f"params: {item.strip()!r} is not key=value (use \"key=value,key=value\")")
    key, value = (part.strip() for part in item.split("=", 1))
    if not key.isidentifier():
      raise InputError(f"params: {key!r} is not a parameter name")
    try:
      params[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      params[key] = value
  return params


def _denoiser(config):
  from cryojax_denoise import denoisers

  params = parse_params(config.params)
  if _learned(config.method):
    params["checkpoint"] = config.checkpoint
  try:
    return denoisers.get(config.method, **params)
  except TypeError as e:
    raise InputError(f"params: {e} (method {config.method})") from None


def validate(config) -> None:
  """Cheap checks before anything is written; files are checked fully when `run` opens them
  (once: a STAR file may reference 10⁵ stacks), and the launcher removes what it wrote on error."""
  from cryojax_denoise import io

  if not config.input:
    raise InputError("input: give --config.input=STACK.mrcs or PARTICLES.star")
  io.check_input_file(config.input, "input file")
  if config.batch_size < 1:
    raise InputError(f"batch_size: must be at least 1, got {config.batch_size}")
  if config.noise_std is not None and config.noise_std < 0:
    raise InputError(f"noise_std: must be >= 0 (0 = estimate), got {config.noise_std}")
  if config.normalize not in ("none", "mean", "std"):
    raise InputError(f"normalize: {config.normalize!r} is not one of none, mean, std")
  if config.output:
    io.check_not_input(config.output, config.input)
  from cryojax_denoise import denoisers  # the registry module is light: no JAX import yet

  if config.method not in denoisers.names():
    raise InputError(f"method: unknown method {config.method!r}; valid methods: {', '.join(denoisers.names())}")
  parse_params(config.params)
  if _learned(config.method):
    if not config.checkpoint:
      raise InputError(f"checkpoint: method {config.method} needs --config.checkpoint=TRAINING_WORKDIR")
    if not os.path.isdir(config.checkpoint):
      raise InputError(f"{config.checkpoint}: checkpoint folder not found")
  elif config.checkpoint:
    learned = [name for name in denoisers.names() if _learned(name)]
    raise InputError(f"checkpoint: method {config.method} takes no checkpoint (only {', '.join(learned)})")


def run(config, workdir: str) -> None:
  from cryojax_denoise import denoise_stack, io

  reader = io.ImageReader()
  table = denoise_stack.open_particles(config.input, reader)  # file problems surface before JAX loads
  outputs = denoise_stack.output_paths(table, config.output, workdir)
  denoiser = _denoiser(config)
  logging.info("denoise %s: %d images of %dx%d (%.4g Å/px) with %s -> %s%s", config.input, len(table),
               *table.shape, table.pixel_size, config.method, outputs.stack,
               f" + {outputs.star}" if outputs.star else "")
  denoise_stack.denoise(table, denoiser, outputs, batch_size=config.batch_size,
                        noise_std=config.noise_std or None, normalize=config.normalize, reader=reader)
  logging.info("wrote %s%s", outputs.stack, f" and {outputs.star}" if outputs.star else "")
