"""Denoiser registry: every method as `(images (B, H, W) float32, noise_std) -> (B, H, W)`.

>>> from cryojax_denoise import denoisers
>>> den = denoisers.get("ddtf", lam_scale=1.0)     # a batched, jitted kernel with its knob set
>>> out = den(noisy, noise_std=None)             # σ estimated per image when None

`noise_std` is a scalar or a (B,) array in image units; None estimates it with
`noise.estimate_noise_std` (median absolute deviation of the finest diagonal Haar coefficients).
`REGISTRY[name]` records the method's tuned knob, the grid searched by `tuning.tune`, and its
default. Learned methods need a checkpoint: `get("gan", checkpoint=DIR)`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from cryojax_denoise.errors import InputError


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered denoiser: `fn(images, noise_std, **params)`, its knob, grid and default value."""
  name: str
  fn: Callable
  knob: str | None
  grid: tuple
  default: object
  description: str
  needs_sigma: bool = True
  learned: bool = False


def _gaussian(images, noise_std=None, **kw):
  from cryojax_denoise.denoisers.filters import gaussian_denoise
  return gaussian_denoise(images, None, **kw)


def _wiener(images, noise_std, **kw):
  from cryojax_denoise.denoisers.filters import wiener_denoise
  return wiener_denoise(images, noise_std, **kw)


def _bm3d(images, noise_std, **kw):
  from cryojax_denoise.denoisers.bm3d import bm3d_denoise
  return bm3d_denoise(images, noise_std, **kw)


def _ksvd(images, noise_std, **kw):
  from cryojax_denoise.denoisers.ksvd import ksvd_denoise
  return ksvd_denoise(images, noise_std, **kw)


def _ddtf(images, noise_std, **kw):
  from cryojax_denoise.denoisers.ddtf import ddtf_denoise
  return ddtf_denoise(images, noise_std, **kw)


def _learned(images, noise_std=None, *, checkpoint=None):
  raise InputError("learned denoisers need checkpoint=DIR (a train_gan/train_autoencoder workdir)")


REGISTRY: dict[str, Method] = {m.name: m for m in [
  Method("gaussian", _gaussian, "width", (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0), 1.5,
         "Gaussian low-pass, kernel std `width` pixels", needs_sigma=False),
  Method("wiener", _wiener, "strength", (0.5, 1.0, 2.0, 4.0), 1.0,
         "Wiener filter from the radially averaged power spectrum; gain S/(S + strength·N)"),
  Method("bm3d", _bm3d, "sigma_scale", (0.75, 1.0, 1.25, 1.5, 2.0), 1.0,
         "BM3D (bm3d package) with σ·sigma_scale, images in parallel processes"),
  Method("ksvd", _ksvd, "C", (0.9, 1.0, 1.15, 1.3, 1.5), 1.15,
         "K-SVD with Batch-OMP, error target C·σ·r, dictionary shared across the batch"),
  Method("ddtf", _ddtf, "lam_scale", (0.7, 0.85, 1.0, 1.1, 1.2, 1.35, 1.5), 1.0,
         "data-driven tight frame (Cai et al. 2014), thresholds lam_scale·(3.4σ, 2.7σ), shared filters"),
  Method("autoencoder", _learned, None, (), None, "convolutional autoencoder (needs checkpoint=DIR)",
         needs_sigma=False, learned=True),
  Method("gan", _learned, None, (), None, "GAN generator (needs checkpoint=DIR)",
         needs_sigma=False, learned=True),
]}


def names() -> list[str]:
  """All registered method names."""
  return list(REGISTRY)


def get(name: str, **params) -> Callable:
  """The denoiser `name` with `params` bound: `den(images (B, H, W), noise_std=None) -> (B, H, W)`."""
  if name not in REGISTRY:
    raise InputError(f"unknown denoiser {name!r}; valid: {', '.join(REGISTRY)}")
  method = REGISTRY[name]
  if method.learned:
    if "checkpoint" not in params or params["checkpoint"] in (None, ""):
      raise InputError(f"denoiser {name!r} needs checkpoint=DIR (a trained workdir)")
    from cryojax_denoise.training.restore import load_denoiser
    return load_denoiser(params["checkpoint"])
  if name not in ("ksvd",):  # ksvd's signature lives in a lazily imported module
    _check_params(method, params)

  def denoise(images, noise_std=None):
    if method.needs_sigma:
      from cryojax_denoise.denoisers.noise import noise_std_or_estimate
      noise_std = noise_std_or_estimate(images, noise_std)
    return method.fn(images, noise_std, **params)

  denoise.__name__ = f"{name}_denoise"
  denoise.__doc__ = f"{method.description}; params {params}"
  return denoise


def _check_params(method: Method, params: dict) -> None:
  from cryojax_denoise.denoisers import bm3d, ddtf, filters
  target = {"gaussian": filters.gaussian_denoise, "wiener": filters.wiener_denoise,
            "bm3d": bm3d.bm3d_denoise, "ddtf": ddtf.ddtf_denoise}[method.name]
  valid = [p.name for p in inspect.signature(target).parameters.values()
           if p.kind == inspect.Parameter.KEYWORD_ONLY]
  bad = sorted(set(params) - set(valid))
  if bad:
    raise InputError(f"unknown parameter(s) {bad} for denoiser {method.name!r}; valid: {', '.join(valid)}")
