"""Conditional patch discriminator on (candidate, noisy) pairs, after the cianfrocco-lab model.

The candidate (a clean image or the generator's output) and the noisy input are stacked as two
channels; 4×4 convolutions (stride 2 except the last level) with instance normalisation, ELU and
bottleneck residual blocks reduce them to a map of patch logits, each judging one receptive field.
The original's last two 4×4 convolutions were 'VALID'; ours are 'SAME' so that small images
(32²) still give a logit map. `faithful`: widths (64, 128, 256, 512), blocks (2, 2, 3, 2).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cryojax_denoise.models.generator import ResidualBlock, conv, instance_norm


class PatchDiscriminator(nnx.Module):
  """(candidate (B, H, W), noisy (B, H, W)) -> patch logits (B, H / 2**(len(widths)-1), W / ...)."""

  def __init__(self, widths: Sequence[int] = (32, 64, 128), blocks: Sequence[int] = (1, 1, 1), *,
               rngs: nnx.Rngs):
    widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
    if len(widths) != len(blocks) or not widths:
      raise ValueError(f"widths {widths} and blocks {blocks} must be non-empty and of equal length")
    cins = (2,) + widths[:-1]
    strides = (2,) * (len(widths) - 1) + (1,)
    self.convs = nnx.List([conv(ci, co, 4, s, rngs) for ci, co, s in zip(cins, widths, strides)])
    self.norms = nnx.List([instance_norm(co, rngs) for co in widths])
    self.blocks = nnx.List([nnx.List([ResidualBlock(w, rngs=rngs) for _ in range(b)])
                            for w, b in zip(widths, blocks)])
    self.penultimate = conv(widths[-1], widths[-1], 4, 1, rngs)
    self.penultimate_norm = instance_norm(widths[-1], rngs)
    self.logits = conv(widths[-1], 1, 4, 1, rngs, bias=True)

  def __call__(self, candidate: jax.Array, noisy: jax.Array) -> jax.Array:
    x = jnp.stack([candidate, noisy], axis=-1)
    for conv_, norm, blocks in zip(self.convs, self.norms, self.blocks):
      x = jax.nn.elu(norm(conv_(x)))
      for block in blocks:
        x = block(x)
    x = jax.nn.elu(self.penultimate_norm(self.penultimate(x)))
    return self.logits(x)[..., 0]
