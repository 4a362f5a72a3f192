"""Generator architectures by name (`config.model.arch`): a new network is one file whose factory carries
`@register("name")`, plus its import in `models/__init__.py`."""

from __future__ import annotations

from typing import Callable, NamedTuple


class Architecture(NamedTuple):
  build: Callable   # (model config section, nnx.Rngs) -> module mapping (B, H, W) -> (B, H, W)
  kernels: str      # `host_init` rule for its kernels: "normal" (N(0, 0.02²)) or "he" (no normalisation)


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, kernels: str = "normal"):
  """Registers `factory(model_config, rngs)` as architecture `name`."""

  def decorate(factory):
    ARCHITECTURES[name] = Architecture(factory, kernels)
    return factory

  return decorate
