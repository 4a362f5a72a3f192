"""Parameters of a denoising run: the `params` text, the auto (SURE) policy and the registry facts.

`params` is "key=value,..." (e.g. "width=2.0"), "auto" or "auto,key=value,..." (SURE picks the
method's knob), "default" (the registry's defaults), a dict, or "" (auto for `AUTO_BY_DEFAULT`
methods, the defaults for the others).
"""

from __future__ import annotations

import ast
import dataclasses
import re

from cryojax_denoise.errors import InputError

# Methods whose knob SURE picks when no params are given: on 20 validation settings (phantom and unseen
# ribosome, CTF on/off, SNR 1-0.05) SURE's choice was never more than 3% worse than the registry default
# and up to 2.2x (gaussian), 1.22x (wiener), 1.35x (ddtf), 1.08x (ksvd) better; bm3d's default was best.
AUTO_BY_DEFAULT = ("gaussian", "wiener", "ddtf", "ksvd")
NORMALIZE = ("none", "mean", "std")
OUTPUT_GAIN = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a denoising run depends on (the `denoise` experiment's config keys of the same names).

  method: a registry name; params: see the module docstring; noise_std: σ in the input's units (None
  or 0: estimated per image); checkpoint: a learned method's model ("": the bundled one); batch_size:
  images per call; normalize: none | mean | std, what is removed before denoising and restored after;
  sure_images: random images for params=auto and the SURE quality score (0: neither); fit_size: a
  dataset-level method (cwf) is fitted on this many random particles; noise: auto | white | coloured,
  whether to whiten with the stack's background noise spectrum (`noise/stack.py`); noise_psd: a known
  spectrum file (.txt/.npy, radial 0..0.5 cycles/px or 2D) instead of estimating it; memory_gb: the
  dataset-level fit's memory budget in GB (None: half the machine's, `denoisers.cwf.budget`);
  output_gain: auto | on | off, whether outputs are scaled by SURE's MSE-optimal gain α in [0, 1]
  (`sure_step.output_gain`; auto: under coloured noise, where methods otherwise pass more noise than signal).
  """
  method: str = "ddtf"
  params: object = ""
  noise_std: float | None = None
  checkpoint: str = ""
  batch_size: int = 64
  normalize: str = "mean"
  sure_images: int = 32
  fit_size: int = 10000
  noise: str = "white"
  noise_psd: str = ""
  memory_gb: float | None = None
  output_gain: str = "auto"

  @classmethod
  def from_config(cls, config) -> "Settings":
    return cls(**{f.name: config.get(f.name, f.default) for f in dataclasses.fields(cls)})

  @property
  def sigma(self) -> float | None:
    """The given noise std, None when it is to be estimated."""
    return float(self.noise_std) if self.noise_std else None

  def facts(self) -> dict:
    """{key: value}: what a part's images depend on (`distributed`'s resume fingerprint)."""
    return dataclasses.asdict(self)

  def mode(self) -> tuple[bool, dict]:
    """(auto?, the parameters given by value)."""
    auto, rest = params_mode(self.method, self.params, self.sure_images)
    return auto, parse_params(rest)


def gain_applies(output_gain: str, psd) -> bool:
  """Whether SURE's output gain is applied under `output_gain` (auto | on | off), given the noise model's
  spectrum `psd` (None: white): auto applies it under coloured noise only."""
  return output_gain == "on" or (output_gain == "auto" and psd is not None)


def params_mode(method: str, params, sure_images: int = 32) -> tuple[bool, object]:
  """(auto?, the fixed params text or dict) of `params` for `method` (see AUTO_BY_DEFAULT)."""
  if not hasattr(params, "items"):
    stripped = (params or "").strip()
    if stripped.lower() == "default":
      return False, ""
    if not stripped and method in AUTO_BY_DEFAULT and int(sure_images or 0) > 0:
      return True, ""
  return split_auto(params)


def split_auto(text) -> tuple[bool, object]:
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


def fixed_params(method: str, params, sure_images: int = 32) -> dict:
  """The parameters given by value (what remains of `params` after "auto"), as a dict."""
  return parse_params(params_mode(method, params, sure_images)[1])


def is_learned(method: str) -> bool:
  """Whether `method` loads a trained model (takes `checkpoint=`)."""
  from cryojax_denoise import denoisers  # registry only: no JAX array, no training code

  return method in denoisers.REGISTRY and denoisers.REGISTRY[method].learned


def has_fit_hook(method: str) -> bool:
  """Whether `method` is fitted to the whole stack first (a registry `fit` hook, e.g. cwf)."""
  from cryojax_denoise import denoisers

  return method in denoisers.REGISTRY and denoisers.REGISTRY[method].fit is not None
