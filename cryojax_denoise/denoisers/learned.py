"""Learned denoisers in the registry: each loads a trained model from `checkpoint=DIR`.

The models and their training live in `cryojax_denoise.models` / `cryojax_denoise.training`;
here they are only named, so `denoisers.get("gan", checkpoint=DIR)` works like any other method.
"""

from __future__ import annotations

from typing import Callable

from cryojax_denoise.denoisers.registry import register


def _load(checkpoint: str | None, kind: str) -> Callable:
  from cryojax_denoise.training.restore import load_denoiser

  return load_denoiser(checkpoint or None, kind=kind)


@register("autoencoder", needs_sigma=False, learned=True,
          description="convolutional autoencoder (checkpoint=DIR; default: the bundled general model)")
def load_autoencoder(*, checkpoint: str | None = None) -> Callable:
  """The autoencoder trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _load(checkpoint, "autoencoder")


@register("gan", needs_sigma=False, learned=True, description="GAN generator (checkpoint=DIR; default: the bundled general model)")
def load_gan(*, checkpoint: str | None = None) -> Callable:
  """The GAN generator trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _load(checkpoint, "gan")


def fit_autoencoder_cwf(images, noise_std=None, ctf=None, *, checkpoint: str | None = None) -> Callable:
  """Registry `fit` hook of "autoencoder_cwf": covariance Wiener filtering fitted on `images` (N, H, W)
  with their CTFs (`denoisers.cwf`), then the prior="cwf" network, which corrects each particle's CWF
  estimate; returns `den(images (B, H, W), noise_std=None, ctf=None) -> (B, H, W)`, CTF-modulated like cwf."""
  import numpy as np

  from cryojax_denoise.denoisers.registry import fit
  from cryojax_denoise.errors import InputError

  net = _load(checkpoint, "autoencoder_cwf")
  if net.config.model.get("prior") != "cwf":
    raise InputError(f"{checkpoint}: not a prior=cwf model (train it with --config.preset=general_cwf); "
                     "use method=autoencoder for it")
  cwf = fit("cwf", images, noise_std, ctf)

  def denoise(batch, noise_std=None, ctf=None):
    return net(batch, prior=np.asarray(cwf(batch, noise_std, ctf)))

  return denoise


@register("autoencoder_cwf", needs_sigma=False, learned=True, uses_ctf=True, fit=fit_autoencoder_cwf,
          description="autoencoder correcting the stack's covariance Wiener filter estimate (fitted per dataset; "
                      "checkpoint=DIR; default: the bundled general model)")
def load_autoencoder_cwf(*, checkpoint: str | None = None) -> Callable:
  """`den(images (B, H, W), noise_std=None)` that fits CWF on the images it is given (no CTF) and corrects
  it; for a stack with CTFs use the fitted form, `denoisers.fit("autoencoder_cwf", stack, σ, ctf)`."""

  def denoise(images, noise_std=None):
    return fit_autoencoder_cwf(images, noise_std, None, checkpoint=checkpoint)(images, noise_std)

  return denoise
