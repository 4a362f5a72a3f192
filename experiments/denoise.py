"""Denoises an MRC stack or a RELION STAR particle set with any registered method.

    python launch.py --experiment=denoise --config.method=ddtf \\
        --config.input=particles.star --config.output=out/denoised.mrcs

Writes `output` (default WORKDIR/denoised.mrcs) in the input's units, order and pixel size;
for STAR input also a STAR file beside it (same stem, `.star`) with the same rows and optics,
`rlnImageName` pointing at the new stack. Images stream in batches from memory-mapped stacks,
so memory stays bounded whatever the stack size. The input is never overwritten.

`params=auto` (or `auto,key=value,...`) picks a classical method's knob by Monte-Carlo SURE on
`sure_images` random images (`denoisers/sure.py`) and writes the choice, SURE's estimate of the MSE
and the MSE reduction in dB to `<output stem>.params.json` (and a comment at the top of the STAR
file). It is the default for the methods in `AUTO_BY_DEFAULT` when no params are given;
`params=default` keeps the registry's defaults. Every run logs that estimate for the parameters used: a quality score without
ground truth to compare methods on one's own data.
"""

from __future__ import annotations

import ast
import os
import re

import ml_collections
from absl import logging

from cryojax_denoise import distributed
from cryojax_denoise.errors import InputError



def _learned(method: str) -> bool:
  from cryojax_denoise import denoisers  # the registry module is light: no JAX import yet

  return method in denoisers.REGISTRY and denoisers.REGISTRY[method].learned


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "ddtf"          # any name of cryojax_denoise.denoisers.names()
  c.params = ""              # "key=value,..." (e.g. "width=2.0" for gaussian), "auto" (SURE), "default";
                             # "": auto for AUTO_BY_DEFAULT methods, the registry defaults for the others
  # Noise standard deviation in the input's units; None (default) or 0: estimated per image.
  c.noise_std = ml_collections.config_dict.placeholder(float)
  c.checkpoint = ""          # training workdir (or its checkpoints/) for gan / autoencoder; "": bundled general model
  c.input = ""               # an MRC stack (.mrcs/.mrc) or a RELION STAR file (.star)
  c.output = ""              # .mrcs (or .star for STAR input); default WORKDIR/denoised.mrcs
  c.batch_size = 64          # images per denoiser call
  c.normalize = "mean"       # none | mean | std: what is removed before denoising and restored after
  c.sure_images = 32         # random images for params=auto and the SURE quality score (0: neither)
  c.fit_size = 10000         # dataset-level methods (cwf): pass 1 fits on this many random particles
  distributed.add_config(c)  # distributed, coordinator_address, num_processes, process_id
  return c


# Methods whose knob SURE picks when no params are given: on 20 validation settings (phantom and unseen
# ribosome, CTF on/off, SNR 1-0.05) SURE's choice was never more than 3% worse than the registry default
# and up to 2.2x (gaussian), 1.22x (wiener), 1.35x (ddtf), 1.08x (ksvd) better; bm3d's default was best.
AUTO_BY_DEFAULT = ("gaussian", "wiener", "ddtf", "ksvd")


def params_mode(config) -> tuple[bool, str]:
  """(auto?, the fixed params text) of `config.params` for `config.method` (see AUTO_BY_DEFAULT)."""
  text = config.params
  if not hasattr(text, "items"):
    stripped = (text or "").strip()
    if stripped.lower() == "default":
      return False, ""
    if not stripped and config.method in AUTO_BY_DEFAULT and int(config.sure_images or 0) > 0:
      return True, ""
  return split_auto(text)


def split_auto(text) -> tuple[bool, str]:
  """`"auto,a=1"` -> (True, "a=1"); other params text -> (False, text)."""
  if hasattr(text, "items"):
    return False, text
  head, _, rest = (text or "").strip().partition(",")
  return (True, rest) if head.strip().lower() == "auto" else (False, text)


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


def denoisers_fit_hook(method: str) -> bool:
  """Whether `method` is fitted to the whole stack first (a registry `fit` hook)."""
  from cryojax_denoise import denoisers

  return method in denoisers.REGISTRY and denoisers.REGISTRY[method].fit is not None


def _denoiser(config, params=None):
  from cryojax_denoise import denoisers

  params = dict(parse_params(params_mode(config)[1]) if params is None else params)
  if _learned(config.method):
    params["checkpoint"] = config.checkpoint
  try:
    return denoisers.get(config.method, **params)
  except TypeError as e:
    raise InputError(f"params: {e} (method {config.method})") from None


def _fitted_denoiser(config, table, reader, params=None):
  """Dataset-level methods (a registry `fit` hook, e.g. cwf): pass 1 reads `fit_size` random
  particles (and their CTFs from the STAR file) and fits; returns (den(images, σ, ctf), ctf_of)."""
  import numpy as np

  from cryojax_denoise import denoise_stack, denoisers

  params = dict(parse_params(params_mode(config)[1]) if params is None else params)
  if _learned(config.method):
    params["checkpoint"] = config.checkpoint
  ctf_of = denoise_stack.ctf_rows(table)
  if ctf_of is None and denoisers.REGISTRY[config.method].uses_ctf:
    logging.warning("%s: no CTF metadata (a bare MRC stack or no rlnDefocusU): %s runs with the identity CTF",
                    config.input, config.method)
  n = len(table)
  rows = np.sort(np.random.default_rng(0).choice(n, min(n, int(config.fit_size)), replace=False))
  mean, scale = denoise_stack.normalization(table, reader, config.normalize)
  images = (denoise_stack.read_rows(table, reader, rows) - np.float32(mean)) / np.float32(scale)
  std = None if not config.noise_std else float(config.noise_std) / scale
  logging.info("%s: fitting on %d of %d particles%s", config.method, len(rows), n,
               " with their CTFs" if ctf_of else "")
  try:
    den = denoisers.fit(config.method, images, std, None if ctf_of is None else ctf_of(rows), **params)
  except TypeError as e:
    raise InputError(f"params: {e} (method {config.method})") from None
  if ctf_of is None:
    return (lambda x, s, ctf=None: den(x, s)), None
  return den, ctf_of


def validate(config) -> None:
  """Cheap checks before anything is written; files are checked fully when `run` opens them
  (once: a STAR file may reference 10⁵ stacks), and the launcher removes what it wrote on error."""
  from cryojax_denoise import io

  if not config.input:
    raise InputError("input: give --config.input=STACK.mrcs or PARTICLES.star")
  io.check_input_file(config.input, "input file")
  if config.fit_size < 1:
    raise InputError(f"fit_size: must be at least 1, got {config.fit_size}")
  if config.batch_size < 1:
    raise InputError(f"batch_size: must be at least 1, got {config.batch_size}")
  if config.noise_std is not None and config.noise_std < 0:
    raise InputError(f"noise_std: must be >= 0 (0 = estimate), got {config.noise_std}")
  if config.normalize not in ("none", "mean", "std"):
    raise InputError(f"normalize: {config.normalize!r} is not one of none, mean, std")
  distributed.check_config(config)
  if config.output:
    io.check_not_input(config.output, config.input)
  from cryojax_denoise import denoisers  # the registry module is light: no JAX import yet

  if config.method not in denoisers.names():
    raise InputError(f"method: unknown method {config.method!r}; valid methods: {', '.join(denoisers.names())}")
  auto, rest = params_mode(config)
  parse_params(rest)
  if auto:
    from cryojax_denoise.denoisers.sure_policy import check_tunable

    check_tunable(config.method)
    if config.sure_images < 1:
      raise InputError(f"sure_images: params=auto needs at least 1 image, got {config.sure_images}")
  if _learned(config.method):
    if not config.checkpoint:
      from cryojax_denoise.training.restore import bundled_dir

      if not os.path.isdir(bundled_dir(config.method)):
        raise InputError(f"checkpoint: no bundled general {config.method} model; give --config.checkpoint=DIR")
    elif not os.path.isdir(config.checkpoint):
      raise InputError(f"{config.checkpoint}: checkpoint folder not found")
  elif config.checkpoint:
    learned = [name for name in denoisers.names() if _learned(name)]
    raise InputError(f"checkpoint: method {config.method} takes no checkpoint (only {', '.join(learned)})")


def run(config, workdir: str) -> None:
  from cryojax_denoise import denoise_stack, io

  distributed.initialize(config)
  reader = io.ImageReader()
  table = denoise_stack.open_particles(config.input, reader)  # file problems surface before JAX loads
  outputs = denoise_stack.output_paths(table, config.output, workdir)
  auto, _ = params_mode(config)
  record = distributed.share(_choose_params, config, table, reader) if auto else None  # process 0's
  ctf_of = None
  if denoisers_fit_hook(config.method):
    denoiser, ctf_of = _fitted_denoiser(config, table, reader, record["params"] if auto else None)
  else:
    denoiser = _denoiser(config, record["params"] if auto else None)
  logging.info("denoise %s: %d images of %dx%d (%.4g Å/px) with %s -> %s%s", config.input, len(table),
               *table.shape, table.pixel_size, config.method, outputs.stack,
               f" + {outputs.star}" if outputs.star else "")
  if record is None and config.sure_images > 0 and distributed.is_main():
    try:  # only a logged score: a method SURE cannot call this way (e.g. one needing CTFs) still denoises
      _quality(config, table, reader, denoiser, ctf_of)
    except InputError:
      raise
    except Exception as e:  # noqa: BLE001
      logging.warning("no SURE quality score for %s: %s", config.method, e)
  distributed.denoise(config, table, denoiser, outputs, reader, ctf_of)  # one process: denoise_stack.denoise
  if auto and distributed.is_main():  # the record of the choice; without auto the score is only logged
    _write_record(record, outputs)
  logging.info("wrote %s%s", outputs.stack, f" and {outputs.star}" if outputs.star else "")


def _sure_subset(config, table, reader, n_images=None):
  """`n_images` (default `sure_images`) random images in the units the denoiser sees, their σ (None:
  estimated), scale."""
  import numpy as np

  from cryojax_denoise import denoise_stack
  from cryojax_denoise.denoisers import sure_policy

  rows = sure_policy.subset(len(table), config.sure_images if n_images is None else n_images)
  images = np.concatenate([denoise_stack.read_batch(table, reader, int(r), int(r) + 1) for r in rows])
  mean, scale = 0.0, 1.0
  if config.normalize != "none":
    mean, std = denoise_stack.sample_stats(table, reader)
    scale = std if config.normalize == "std" and std > 0 else 1.0
  noise_std = config.noise_std / scale if config.noise_std else None
  return ((images - mean) / scale).astype(np.float32), noise_std, scale


def _summary(est: dict, sigma, scale) -> dict:
  """The SURE part of the record (from `SureEstimate.record()`), in the input's units; logged."""
  mse, se = est["sure_mse"] * scale ** 2, est["sure_se"] * scale ** 2
  logging.info("SURE on %d images: estimated MSE %.4g ± %.2g (%.3g of the signal power), MSE reduction %.2f dB "
               "(σ %.4g)", est["n_images"], mse, se, est["sure_relative"], est["gain_db"], sigma * scale)
  return {"n_images": est["n_images"], "noise_std": sigma * scale, "mse": mse,
          "mse_standard_error": se if se == se else None,  # NaN (under 3 images) is not JSON
          "relative_mse": est["sure_relative"], "gain_db": est["gain_db"]}


def _choose_params(config, table, reader) -> dict:
  """params=auto: SURE's choice of the knob on the subset (`sure_policy.choose`); the record for the JSON."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers import sure, sure_policy

  # The knob is chosen on `sure_images`; its MSE is then estimated on N_ESTIMATE, up to N_ESTIMATE_MAX while its
  # standard error is above SE_TARGET (on 32 images SURE's error is those images' realised noise, 10-25% of the
  # MSE at SNR <= 0.1).
  images, noise_std, scale = _sure_subset(config, table, reader, max(config.sure_images, sure_policy.N_ESTIMATE_MAX))
  fixed = parse_params(params_mode(config)[1])
  knob = denoisers.REGISTRY[config.method].knob
  try:
    params, rows = sure_policy.sure_tune(config.method, images, noise_std, n_images=config.sure_images,
                                         stack_size=len(table), **fixed)
  except TypeError as e:
    raise InputError(f"params: {e} (method {config.method})") from None
  best = next(r for r in rows if r[knob] == params[knob])
  if best["warning"]:
    logging.warning("SURE may be unreliable here: %s", best["warning"])
  sigma = float(sure.sigmas(images, noise_std)[1].mean())
  kept = best["default_kept"]
  logging.info("params=auto: %s=%s%s (grid %s on %d images, SURE MSE %s, standard errors above the lowest %s)", knob,
               params[knob], " (default kept)" if kept else "", [r[knob] for r in rows], best["n_images"],
               [round(r["sure_mse"] * scale ** 2, 4) for r in rows], [round(r["z_above_best"], 1) for r in rows])
  return {"method": config.method, "params": params, "auto": True, "warning": best["warning"],
          "sure": _summary(best["estimate"], sigma, scale),
          "grid": [{knob: r[knob], "sure_mse": r["sure_mse"] * scale ** 2, "gain_db": r["gain_db"],
                    "z_above_best": r["z_above_best"]} for r in rows], "sure_tuning_images": best["n_images"],
          "default_kept": kept}


def _quality(config, table, reader, denoiser, ctf_of=None) -> dict:
  """SURE's estimate for the given parameters (any method, learned ones too); a fitted method (registry `fit`
  hook) is probed with its model fixed and each scored particle's CTF in every call (`sure_policy.method_sure`)."""
  from cryojax_denoise.denoisers import sure_policy

  images, noise_std, scale = _sure_subset(config, table, reader)
  rows = sure_policy.subset(len(table), config.sure_images)  # the rows `_sure_subset` read
  params = parse_params(params_mode(config)[1])
  ctf = None if ctf_of is None else ctf_of(rows)
  est = sure_policy.method_sure(config.method, denoiser, images, noise_std, ctf=ctf,
                                fitted=denoisers_fit_hook(config.method), **params)
  if isinstance(est, str):
    logging.warning("no SURE quality score for %s: %s", config.method, est)
    return {"method": config.method, "params": params, "auto": False, "sure": None, "sure_reason": est}
  return {"method": config.method, "params": params, "auto": False,
          "sure": _summary(est.record(), float(est.sigma.mean()), scale)}


def _write_record(record: dict, outputs) -> None:
  """`<stack stem>.params.json`, and the same facts as a comment at the top of the STAR file."""
  import json

  from cryojax_denoise import io

  path = os.path.splitext(outputs.stack)[0] + ".params.json"
  io.atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
  if outputs.star:
    s = record["sure"]
    with open(outputs.star) as f:
      text = f.read()
    se = "" if s["mse_standard_error"] is None else f" ± {s['mse_standard_error']:.2g}"
    comment = (f"# cryojax-denoise: method {record['method']}, params {record['params']}"
               f"{' (params=auto, chosen by SURE)' if record['auto'] else ''}; SURE on {s['n_images']} images: "
               f"MSE {s['mse']:.5g}{se}, relative {s['relative_mse']:.4g}, MSE reduction {s['gain_db']:.2f} dB\n")
    io.atomic_write_text(outputs.star, comment + text)
  logging.info("wrote %s", path)
