"""The denoiser registry: each method registers itself next to its function.

>>> from cryojax_denoise.denoisers.registry import register
>>> @register("tv", knob="lam", grid=(0.5, 1.0, 2.0), description="total variation")
... def tv_denoise(images, noise_std, *, lam=1.0, n_iter=100): ...

A classical method is `fn(images (B, H, W) float32, noise_std (B,) or None, **params) -> (B, H, W)`;
its parameters are its keyword-only arguments, the knob's default is read from the signature.
A learned method (`learned=True`) is a loader `fn(*, checkpoint, ...) -> denoiser`.
This module imports nothing heavy (no JAX): the launcher and config validation use it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from cryojax_denoise.errors import InputError


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered denoiser: `fn`, its tuned knob, the grid `tuning.tune` searches and its default.

  `needs_sigma`: `get` passes a (B,) noise std (estimated when None); `learned`: `fn` loads a
  trained model from `checkpoint=`; `uses_ctf`: the method takes per-particle CTFs; `fit`: an
  optional `fit(images, noise_std, **params) -> state` for methods fitted to a whole stack;
  `divergence`: for a linear shift-invariant method, `divergence(h, w, **params) -> float`, its
  exact divergence per pixel on h × w images (the trace of its matrix over h·w), which SURE then
  uses instead of probing (`sure.py`); `min_stack`: for a dataset-level method, the fewest
  particles its fit needs (the pipeline refuses fewer, and warns below twice that); `compiled`:
  False for a method that runs on the host (no XLA compile), whose first call `tuning.tune` need not
  warm up.
  """
  name: str
  fn: Callable
  knob: str | None = None
  grid: tuple = ()
  default: object = None
  description: str = ""
  needs_sigma: bool = True
  learned: bool = False
  uses_ctf: bool = False
  fit: Callable | None = None
  divergence: Callable | None = None
  min_stack: int = 0
  compiled: bool = True

  @property
  def params(self) -> list[str]:
    """The method's parameter names (the keyword-only arguments of `fn`)."""
    return keyword_params(self.fn)

  @property
  def defaults(self) -> dict:
    """{parameter: default value} read from `fn`'s signature."""
    return {p.name: p.default for p in inspect.signature(self.fn).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


REGISTRY: dict[str, Method] = {}


def keyword_params(fn: Callable) -> list[str]:
  """Keyword-only parameter names of `fn` (through `jax.jit` and `functools.wraps`)."""
  return [p.name for p in inspect.signature(fn).parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]


def register(name: str, *, knob: str | None = None, grid: tuple = (), description: str = "",
             needs_sigma: bool = True, learned: bool = False, uses_ctf: bool = False,
             fit: Callable | None = None, divergence: Callable | None = None, min_stack: int = 0,
             compiled: bool = True) -> Callable:
  """Decorator adding `fn` to `REGISTRY` as `name`; returns `fn` unchanged.

  `knob` must be a keyword-only argument of `fn` with a default (the method's default value);
  `description` defaults to the first line of `fn`'s docstring.
  """
  def decorate(fn: Callable) -> Callable:
    default = None
    if knob is not None:
      param = inspect.signature(fn).parameters.get(knob)
      if param is None or param.kind != inspect.Parameter.KEYWORD_ONLY or param.default is inspect.Parameter.empty:
        raise TypeError(f"register({name!r}): knob {knob!r} is not a keyword-only argument with a default")
      default = param.default
    desc = description or (inspect.getdoc(fn) or name).splitlines()[0]
    REGISTRY[name] = Method(name, fn, knob, tuple(grid), default, desc, needs_sigma, learned, uses_ctf, fit,
                            divergence, int(min_stack), bool(compiled))
    return fn

  return decorate


def names() -> list[str]:
  """All registered method names, in registration order."""
  return list(REGISTRY)


def method(name: str) -> Method:
  """`REGISTRY[name]`, or an InputError naming the valid methods."""
  if name not in REGISTRY:
    raise InputError(f"unknown denoiser {name!r}; valid: {', '.join(REGISTRY)}")
  return REGISTRY[name]


def check_params(name: str, params: dict, also=()) -> None:
  """InputError when `params` holds a name that is not a parameter of method `name` (or in `also`)."""
  valid = method(name).params
  bad = sorted(set(params) - set(valid) - set(also))
  if bad:
    raise InputError(f"unknown parameter(s) {bad} for denoiser {name!r}; valid: {', '.join(valid)}")


def get(name: str, **params) -> Callable:
  """The denoiser `name` with `params` bound: `den(images (B, H, W), noise_std=None) -> (B, H, W)`.

  `noise_std` is a scalar or (B,) in image units; None estimates it per image for methods that
  need it. Learned methods take `checkpoint=DIR` (default: the bundled general model).
  """
  m = method(name)
  check_params(name, params)
  if m.learned:
    params = {**params, "checkpoint": params.get("checkpoint") or None}  # None: the bundled general model
    return m.fn(**params)

  def denoise(images, noise_std=None):
    if m.needs_sigma:
      from cryojax_denoise.denoisers.noise import noise_std_or_estimate
      noise_std = noise_std_or_estimate(images, noise_std)
    return m.fn(images, noise_std, **params)

  denoise.__name__ = f"{name}_denoise"
  denoise.__doc__ = f"{m.description}; params {params}"
  return denoise


def fit(name: str, images, noise_std=None, ctf=None, **params) -> Callable:
  """The dataset-level form of any method: `den(images (B, H, W), noise_std=None, ctf=None)`.

  Methods with a `fit` hook (dataset-level, e.g. "cwf") are fitted once on `images` (N, H, W) with
  their CTFs `ctf` ((N, H, W) on the unshifted FFT grid, RELION's sign; None = identity) and `den`
  applies that fit to any batch with its own CTFs. Other methods ignore the fitting set and the
  CTF: `den` is `get(name, **params)`. So the sweep and `denoise` call every method one way.
  Keyword-only arguments of the `fit` hook itself (e.g. autoencoder_cwf's `cwf=`, a CWF already
  fitted on the same images) are accepted here too.
  """
  m = method(name)
  if m.fit is None:
    den = get(name, **params)

    def denoise(images, noise_std=None, ctf=None):
      del ctf
      return den(images, noise_std)

    denoise.__name__ = den.__name__
    return denoise
  check_params(name, params, also=keyword_params(m.fit))
  return m.fit(images, noise_std, ctf, **params)


def classical_names() -> list[str]:
  """Registered methods that need no training."""
  return [n for n, m in REGISTRY.items() if not m.learned]


def learned_names() -> list[str]:
  """Registered methods that load a trained model."""
  return [n for n, m in REGISTRY.items() if m.learned]
