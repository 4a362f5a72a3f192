"""Flax NNX networks of the learned denoisers: the pix2pix generator, the bias-free U-Net and the patch discriminator."""

from cryojax_denoise.models.discriminator import PatchDiscriminator
from cryojax_denoise.models.generator import Generator, ResidualBlock, host_init
from cryojax_denoise.models.registry import ARCHITECTURES, register
from cryojax_denoise.models.unet import UNet

__all__ = ["Generator", "PatchDiscriminator", "ResidualBlock", "host_init", "UNet", "ARCHITECTURES", "register"]
