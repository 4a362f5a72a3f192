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
