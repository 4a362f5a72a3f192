"""Denoiser registry: every method as `(images (B, H, W) float32, noise_std) -> (B, H, W)`.

>>> from cryojax_denoise import denoisers
>>> den = denoisers.get("ddtf", lam_scale=1.0)     # a batched, jitted kernel with its knob set
>>> out = den(noisy, noise_std=None)             # σ estimated per image when None

`noise_std` is a scalar or a (B,) array in image units; None estimates it with
`noise.estimate_noise_std` (median absolute deviation of the finest diagonal Haar coefficients).
Each method registers itself next to its function (`registry.register`); `REGISTRY[name]` records
its tuned knob, the grid searched by `tuning.tune`, and its default (read from the signature).
Learned methods need a checkpoint: `get("gan", checkpoint=DIR)`; their code is `training/learned.py`,
imported only when one is called (`learned_registry.py`), so this package imports no training code. The modules imported below
register on import; they import JAX but create no arrays (no backend is started).
"""

from cryojax_denoise.denoisers.registry import (REGISTRY, Method, check_params, classical_names, fit, get,
                                                learned_names, names, register)
# Self-registering modules (each `register`s its methods on import):
from cryojax_denoise.denoisers.classical import filters, bm3d, ksvd, ddtf, tv  # noqa: E402,F401
from cryojax_denoise.denoisers.cwf import cwf  # noqa: E402,F401
from cryojax_denoise.denoisers import learned_registry  # noqa: E402,F401

__all__ = ["REGISTRY", "Method", "check_params", "classical_names", "fit", "get", "learned_names", "names", "register"]
