"""cryojax-denoise: denoising cryo-EM particle images with JAX."""

__version__ = "0.1.0"
