"""`noise_psd=` specifications for `simulate` / `snr_sweep` / `denoise`, resolved to a spectrum.

  flat (or empty)                      white noise: None
  exp:ratio=4,k0=0.08                  parametric family (`whiten.FAMILIES`), unset parameters default
  plateau:ratio=6,kc=0.13,n=6
  issue:relion31                       a measured row of issue 29 (`whiten.ISSUE_BANDS`), through its
                                       0.05-cycle band means at the band centres
  FILE.txt | FILE.npy                  radial (S,) on shells 0 … 0.5 cycles/px, or 2D (H, W)
  from:STACK.mrcs                      measured on the stack's background (`spectrum.estimate_spectrum`,
                                       mask radius from its mean image)

The result is a radial PSD (S,) or a 2D (H, W) array; its scale is irrelevant to `simulate` (the total
noise variance is set by the SNR, INTERFACE.md), absolute for a measured stack.
"""

from __future__ import annotations

import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import spectrum as sp
from cryojax_denoise.noise import whiten as wh


def issue_profile(name: str, n_shells: int = 129) -> np.ndarray:
  """Radial PSD through a row of issue 29's table (band means at band centres, linear between)."""
  if name not in wh.ISSUE_BANDS:
    raise InputError(f"noise_psd: unknown measured spectrum issue:{name} (known: {', '.join(wh.ISSUE_BANDS)})")
  bands = np.asarray(wh.ISSUE_BANDS[name], np.float64)
  centres = (np.arange(len(bands)) + 0.5) * sp.BAND_WIDTH
  return np.interp(sp.shell_frequencies(n_shells), centres, bands)


def _params(text: str, spec: str) -> dict:
  out = {}
  for item in filter(None, text.split(",")):
    key, sep, value = item.partition("=")
    try:
      out[key.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise InputError(f"noise_psd: {spec!r}: expected name=value pairs, got {item!r}")
  return out


def resolve(spec: str | None, n_shells: int = 129):
  """The spectrum a `noise_psd=` string names (see the module docstring): None for white noise."""
  spec = (spec or "flat").strip()
  if spec == "flat":
    return None
  kind, _, rest = spec.partition(":")
  if kind in wh.FAMILIES:
    params = _params(rest, spec)
    unknown = set(params) - set(wh.FAMILIES[kind])
    if unknown:
      raise InputError(f"noise_psd: {spec!r}: unknown parameter(s) {', '.join(sorted(unknown))} "
                       f"(a {kind} spectrum takes {', '.join(wh.FAMILIES[kind])})")
    return wh.family_psd(kind, sp.shell_frequencies(n_shells), **params)
  if kind == "issue":
    return issue_profile(rest, n_shells)
  if kind == "from":
    from cryojax_denoise.io import read_stack

    stack = read_stack(rest)
    return sp.estimate_spectrum(np.asarray(stack.data, np.float32), where=f"noise_psd from:{rest}").radial
  if spec.endswith((".txt", ".npy", ".dat")):
    from cryojax_denoise.noise.decide import load_psd_file

    return load_psd_file(spec)
  raise InputError(f"noise_psd: {spec!r} is not flat, exp:…, plateau:…, issue:NAME, a .txt/.npy file or from:STACK")
