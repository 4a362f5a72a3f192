"""The denoising generator, after the cianfrocco-lab GAN-for-Cryo-EM-image-denoising model.

A pix2pix-style encoder-decoder (Tan et al., bioRxiv 256792): each level halves the image with a 4×4
stride-2 convolution followed by bottleneck residual blocks; the decoder doubles it back with 4×4
stride-2 transposed convolutions, adds the encoder's (normalised, pre-activation) feature map of the
same size (an additive skip, not a concatenation) and runs the same number of residual blocks.
Activations are ELU. The original used batch norm with a batch of one image at training and at test
time, i.e. per-image (instance) normalisation; we use instance normalisation explicitly, so every image
is processed independently of its batch-mates (and of how the batch is sharded).

`faithful` settings: widths (64, 128, 256, 512, 512, 512), residual blocks (3, 3, 3, 3, 2, 0), tanh
output. Our standardised data is not confined to [-1, 1], so the improved default has a linear output
(and, for CPU budgets, is narrower). Images must be divisible by 2**len(widths).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cryojax_denoise.models.registry import register

# The original initialised weights with N(0, 0.02); we keep that.
_INIT = nnx.initializers.normal(0.02)
_EPS = 1e-5  # TF batch_norm epsilon of the original


def host_init(factory: Callable[[], nnx.Module], seed: int, kernels: str = "normal") -> nnx.Module:
  """Builds `factory()` with parameters drawn on the host by numpy: convolution kernels N(0, 0.02²)
  (`kernels="normal"`) or He-normal N(0, 2/fan_in) (`kernels="he"`, for networks without normalisation;
  a 4×4 stride-2 transposed kernel has fan_in 4·cin per output), biases 0, normalisation scales 1 (the
  same distributions as the modules' own initialisers).

  Why: XLA:CPU takes tens of seconds to compile JAX's threefry random initialisers, whether eager or
  jitted; building the module abstractly (`nnx.eval_shape`, no compilation) and filling it with numpy
  is instant, and gives bit-identical initial weights on every platform.
  """
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1])) // (4 if tuple(leaf.shape[:2]) == (4, 4) else 1)
      std = 0.02 if kernels == "normal" else math.sqrt(2.0 / fan_in)
      return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)
    if name == "bias":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    raise ValueError(f"host_init: no rule for parameter {jax.tree_util.keystr(path)}")

  values = jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


PRIORS = ("none", "wiener", "cwf")


def estimated_sigma(images: jax.Array) -> jax.Array:
  """(B,) noise std of each image (Haar MAD, `denoisers.noise`), without gradients."""
  from cryojax_denoise.denoisers.noise import estimate_noise_std

  return jax.lax.stop_gradient(estimate_noise_std(images))


def wiener_prior(images: jax.Array, sigma: jax.Array | None = None) -> jax.Array:
  """The `prior="wiener"` input channel (B, H, W): each image Wiener-filtered (radial power spectrum) at
  its noise std `sigma` (default: `estimated_sigma`), without gradients: the networks learn a correction."""
  from cryojax_denoise.denoisers.classical.filters import wiener_denoise

  sigma = estimated_sigma(images) if sigma is None else sigma
  return jax.lax.stop_gradient(wiener_denoise(images, sigma))


def instance_norm(features: int, rngs: nnx.Rngs) -> nnx.InstanceNorm:
  """Per-image, per-channel normalisation over (H, W) with a learned scale and bias."""
  return nnx.InstanceNorm(features, epsilon=_EPS, rngs=rngs)


def conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs, bias: bool = False) -> nnx.Conv:
  """A 'SAME' convolution; no bias by default, since every one but the last is followed by a norm
  (whose shift makes a bias redundant: its gradient is rounding noise, which Adam would amplify)."""
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=bias,
                  kernel_init=_INIT, rngs=rngs)


# Tap of the 4-tap kernel axis used by (output phase, 3×3 offset) of a stride-2 transposed
# convolution with 'SAME' padding; 4 marks "no tap" (a zero row appended to the kernel).
_UP_TAPS = np.array([[0, 2, 4], [4, 1, 3]])


class UpConv(nnx.Module):
  """4×4 stride-2 transposed convolution ('SAME'), computed as a 3×3 convolution to 4 phases + depth-to-space.

  Same parameters and the same output as `nnx.ConvTranspose(cin, cout, (4, 4), strides=(2, 2),
  padding="SAME")` (checked in tests): output pixel (2m + a, 2n + b) only sees input pixels m-1..m+1,
  so each of the 4 phases (a, b) is a 3×3 convolution with taps of the 4×4 kernel (zeros elsewhere).
  Why: XLA:CPU computes the kernel gradient of a transposed convolution ~40× slower than this.
  """

  def __init__(self, cin: int, cout: int, *, bias: bool = False, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_INIT(rngs.params(), (4, 4, cin, cout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel[...]
    cin, cout = k.shape[2], k.shape[3]
    kp = jnp.pad(k, ((0, 1), (0, 1), (0, 0), (0, 0)))
    w = kp[_UP_TAPS[:, :, None, None], _UP_TAPS[None, None, :, :]]      # (a, dy, b, dx, cin, cout)
    w = w.transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, cin, 4 * cout)       # (dy, dx, cin, (a, b, cout))
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bsz, h, wd, _ = y.shape
    y = y.reshape(bsz, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(bsz, 2 * h, 2 * wd, cout)
    return y if self.bias is None else y + self.bias[...]


class ResidualBlock(nnx.Module):
  """Bottleneck identity block: 1×1 (C→C/4), 4×4 (C/4→C/4), 1×1 (C/4→C), each normalised; ELU(x + f(x))."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    mid = max(channels // 4, 1)
    self.conv_a, self.norm_a = conv(channels, mid, 1, 1, rngs), instance_norm(mid, rngs)
    self.conv_b, self.norm_b = conv(mid, mid, 4, 1, rngs), instance_norm(mid, rngs)
    self.conv_c, self.norm_c = conv(mid, channels, 1, 1, rngs), instance_norm(channels, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.elu(self.norm_a(self.conv_a(x)))
    h = jax.nn.elu(self.norm_b(self.conv_b(h)))
    h = self.norm_c(self.conv_c(h))
    return jax.nn.elu(x + h)


class Generator(nnx.Module):
  """Maps noisy images (B, H, W) to denoised images (B, H, W), H and W divisible by 2**len(widths).

  Args:
    widths: channels at each level, from the first stride-2 convolution down to the bottleneck.
    blocks: residual blocks at each level (same count in the encoder and the decoder).
    output: "linear" (default, for standardised data) or "tanh" (the original's, for data in [-1, 1]).
    noise_channel: append the input's estimated noise std (Haar MAD, `denoisers.noise`) as a constant
      second input channel (FFDNet-style), so one model adapts its smoothing to every SNR.
    prior: "none", or "wiener": the input's Wiener-filtered image (radial power spectrum, estimated σ;
      `denoisers.filters.wiener_denoise`) is a further input channel and the network predicts a
      correction to it (output = Wiener + network), so training starts from a sound linear estimate;
      "cwf": the same with a dataset-level estimate given by the caller (`prior=`, standardised like the
      images; e.g. covariance Wiener filtering fitted on the whole stack, `training.cwf_corpus`).
    odd: mark the model as trained for both contrast polarities; `training.train.apply_generator` then
      returns (g(x) − g(−x)) / 2, which is odd by construction: f(−x) = −f(x).
  """

  def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), blocks: Sequence[int] = (2, 2, 2, 0),
               output: str = "linear", noise_channel: bool = False, odd: bool = False, prior: str = "none", *,
               rngs: nnx.Rngs):
    widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
    if len(widths) != len(blocks) or not widths:
      raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length")
    if output not in ("linear", "tanh"):
      raise ValueError(f"output must be 'linear' or 'tanh', got {output!r}")
    self.output, self.depth = output, len(widths)
    if prior not in PRIORS:
      raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    self.noise_channel, self.odd, self.prior = bool(noise_channel), bool(odd), prior
    cins = (1 + int(self.noise_channel) + int(prior != "none"),) + widths[:-1]
    self.down = nnx.List([conv(ci, co, 4, 2, rngs) for ci, co in zip(cins, widths)])
    self.down_norm = nnx.List([instance_norm(co, rngs) for co in widths])
    self.down_blocks = nnx.List([nnx.List([ResidualBlock(w, rngs=rngs) for _ in range(b)])
                                 for w, b in zip(widths, blocks)])
    # Decoder level i (i = depth-2 .. 0) upsamples level i+1's features to widths[i] and adds skip i.
    self.up = nnx.List([UpConv(widths[i + 1], widths[i], rngs=rngs) for i in range(self.depth - 1)])
    self.up_norm = nnx.List([instance_norm(widths[i], rngs) for i in range(self.depth - 1)])
    self.up_blocks = nnx.List([nnx.List([ResidualBlock(widths[i], rngs=rngs) for _ in range(blocks[i])])
                               for i in range(self.depth - 1)])
    self.head = UpConv(widths[0], 1, bias=True, rngs=rngs)

  @property
  def stride(self) -> int:
    return 2 ** self.depth

  def __call__(self, images: jax.Array, prior: jax.Array | None = None) -> jax.Array:
    """(B, H, W) standardised images (and, for prior="cwf", their (B, H, W) prior estimate) -> (B, H, W)."""
    _, h, w = images.shape
    if h % self.stride or w % self.stride:
      raise ValueError(f"image size {h}×{w} is not divisible by the generator's total stride {self.stride}")
    if (prior is None) == (self.prior == "cwf"):
      raise ValueError(f"a prior={self.prior!r} generator is called with{'out' if prior is None else ''} a "
                       "prior estimate")
    x = images[..., None]
    sigma = estimated_sigma(images) if self.noise_channel or self.prior == "wiener" else None
    if self.noise_channel:
      x = jnp.concatenate([x, jnp.broadcast_to(sigma[:, None, None, None], x.shape)], axis=-1)
    base = None
    if self.prior == "wiener":
      base = wiener_prior(images, sigma)
    elif self.prior == "cwf":
      base = jax.lax.stop_gradient(prior)
    if base is not None:
      x = jnp.concatenate([x, base[..., None]], axis=-1)
    skips = []
    for conv_, norm, blocks in zip(self.down, self.down_norm, self.down_blocks):
      e = norm(conv_(x))
      skips.append(e)
      x = jax.nn.elu(e)
      for block in blocks:
        x = block(x)
    for i in reversed(range(self.depth - 1)):
      x = jax.nn.elu(self.up_norm[i](self.up[i](x)) + skips[i])
      for block in self.up_blocks[i]:
        x = block(x)
    y = self.head(x)[..., 0]
    y = jnp.tanh(y) if self.output == "tanh" else y
    return y if base is None else base + y


@register("pix2pix")
def from_config(m, rngs: nnx.Rngs) -> Generator:
  """The generator of a `config.model` section (widths, blocks, output, noise_channel, odd, prior)."""
  return Generator(tuple(m.widths), tuple(m.blocks), str(m.get("output", "linear")),
                   bool(m.get("noise_channel", False)), bool(m.get("odd", False)), m.get("prior", "none"),
                   rngs=rngs)
