"""Flax NNX networks of the learned denoisers: the U-Net-like generator and the patch discriminator."""

from cryojax_denoise.models.discriminator import PatchDiscriminator
from cryojax_denoise.models.generator import Generator, ResidualBlock, host_init

__all__ = ["Generator", "PatchDiscriminator", "ResidualBlock", "host_init"]
