"""Registry entries of the learned methods; their code lives in `training/learned.py`.

Each entry is a stub with the loader's signature (the registry reads a method's parameters from it)
that imports `cryojax_denoise.training.learned` by name when called, so importing
`cryojax_denoise.denoisers` imports no training code (layers point one way: training uses
denoisers, never the reverse). `tests/test_imports.py` checks that the stubs' signatures are the
loaders'.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from cryojax_denoise.denoisers.cwf.cwf import MIN_STACK
from cryojax_denoise.denoisers.registry import register

LOADERS = "cryojax_denoise.training.learned"  # imported on first use


def _loader(name: str) -> Callable:
  return getattr(importlib.import_module(LOADERS), name)


@register("autoencoder", needs_sigma=False, learned=True,
          description="convolutional autoencoder (checkpoint=DIR; default: the bundled general model)")
def load_autoencoder(*, checkpoint: str | None = None) -> Callable:
  """The autoencoder trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _loader("load_autoencoder")(checkpoint=checkpoint)


@register("gan", needs_sigma=False, learned=True, description="GAN generator (checkpoint=DIR; default: the bundled general model)")
def load_gan(*, checkpoint: str | None = None) -> Callable:
  """The GAN generator trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _loader("load_gan")(checkpoint=checkpoint)


def fit_autoencoder_cwf(images, noise_std=None, ctf=None, *, checkpoint: str | None = None,
                        finetune_steps: int = 300, cwf: Callable | None = None,
                        whitening: np.ndarray | None = None) -> Callable:
  """Registry `fit` hook of "autoencoder_cwf": CWF fitted on the stack, corrected by the prior="cwf"
  network (fine-tuned on the stack by SURE); see `training.learned.fit_autoencoder_cwf`."""
  return _loader("fit_autoencoder_cwf")(images, noise_std, ctf, checkpoint=checkpoint,
                                        finetune_steps=finetune_steps, cwf=cwf, whitening=whitening)


@register("autoencoder_cwf", needs_sigma=False, learned=True, uses_ctf=True, fit=fit_autoencoder_cwf,
          min_stack=MIN_STACK,  # it corrects the stack's CWF fit: CWF's floor (see denoisers/cwf/cwf.py)
          description="autoencoder correcting the stack's covariance Wiener filter estimate (fitted per dataset; "
                      "checkpoint=DIR; default: the bundled general model)")
def load_autoencoder_cwf(*, checkpoint: str | None = None, finetune_steps: int = 300) -> Callable:
  """`den(images (B, H, W), noise_std=None)`: fitted once on the first images it is given, then reused
  (`training.learned.load_autoencoder_cwf`)."""
  return _loader("load_autoencoder_cwf")(checkpoint=checkpoint, finetune_steps=finetune_steps)
