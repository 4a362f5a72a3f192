"""`noise=auto|white|coloured` for a particle set: spectra per optics group / micrograph, the decision,
and the record written to the params JSON. Library functions the `denoise` pipeline calls.

Flatness tolerance (auto): the spectrum is called coloured when its 0.05-cycle band means differ by
more than a factor 1 + tol, tol = max(FLAT_FLOOR, FLAT_Z · √2 · max band SE). The band SEs are the
estimator's own (`spectrum.band_se`: the spread of the spectra of 8 groups of the images); the ratio
of two band means of white noise then has relative std ≈ √2·SE, and FLAT_Z = 5 puts a white stack's
max/min above the tolerance with probability < 45 pairs × P(|z| > 5) ≈ 3e-5 (if the SEs were exact; from
8 groups they scatter by ~25%). Measured on white noise, 3 seeds each (max/min, threshold 1 + tol):
1,000 images of 64², mask radius 24: 1.01-1.02 vs 1.10 (the floor); radius 31 (corners only): 1.03-1.06
vs 1.16-1.26; 50 images of 64²: 1.08-1.11 vs 1.25-1.40; 5 images of 256² (corners): 1.05-1.14 vs 1.55-1.56.
FLAT_FLOOR = 0.1: spectra within ±5% of flat are left alone (whitening changes little there), while the
mildest measured real spectrum (issue 29, 320² corners row) has max/min 3.4 and relion31's 6.8-8.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging as log

from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import spectrum as sp
from cryojax_denoise.noise import whiten as wh

FLAT_FLOOR = 0.1
FLAT_Z = 5.0
MIN_PER_MICROGRAPH = 200   # fewer particles on a micrograph: it uses its optics group's spectrum
MODES = ("auto", "white", "coloured")


def flat_tolerance(spec: sp.NoiseSpectrum) -> float:
  """tol such that max/min band ratio > 1 + tol calls the spectrum coloured."""
  se = float(np.max(spec.band_se)) if np.all(np.isfinite(spec.band_se)) else np.inf
  return max(FLAT_FLOOR, FLAT_Z * np.sqrt(2.0) * se)


def is_coloured(spec: sp.NoiseSpectrum) -> bool:
  """Whether a measured spectrum departs from flat by more than its tolerance."""
  return wh.psd_flatness(spec.radial) > 1.0 + flat_tolerance(spec)


def load_psd_file(path: str) -> np.ndarray:
  """A known spectrum from `path`: .npy or text, radial (S,) on shells 0 … 0.5 cycles/px or 2D (H, W)."""
  if not os.path.isfile(path):
    raise InputError(f"noise_psd: {path}: no such file")
  try:
    psd = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=1)
  except (ValueError, OSError) as err:
    raise InputError(f"noise_psd: {path}: not a spectrum file ({str(err).splitlines()[0]})") from None
  psd = np.asarray(psd, np.float64)
  if psd.ndim not in (1, 2) or psd.size < 2 or not np.all(np.isfinite(psd)) or np.any(psd <= 0):
    raise InputError(f"noise_psd: {path}: a spectrum must be positive and finite, radial (S >= 2) or 2D")
  return psd


def group_keys(particles, optics=None, min_per_micrograph: int = MIN_PER_MICROGRAPH) -> np.ndarray:
  """Spectrum key of each particle (N,) str: 'group:G/micrograph:M' for micrographs with at least
  `min_per_micrograph` particles, else 'group:G' (the whole optics group); 'all' without a table."""
  if particles is None:
    return None
  n = len(particles)
  group = (particles["rlnOpticsGroup"].astype(str).to_numpy() if "rlnOpticsGroup" in particles.columns
           else np.full(n, "1"))
  keys = np.array([f"group:{g}" for g in group], dtype=object)
  if "rlnMicrographName" in particles.columns:
    mic = particles["rlnMicrographName"].astype(str).to_numpy()
    names, inverse, counts = np.unique(mic, return_inverse=True, return_counts=True)
    big = counts[inverse] >= min_per_micrograph
    keys[big] = [f"{k}/micrograph:{m}" for k, m in zip(keys[big], mic[big])]
  return keys


def estimate_by_group(images, particles=None, radius_px=None, *, min_per_micrograph: int = MIN_PER_MICROGRAPH,
                      where: str = "noise spectrum") -> tuple[np.ndarray, dict]:
  """Spectra of a (N, H, W) set: (key of each particle (N,), {key: NoiseSpectrum}); see `group_keys`."""
  x = np.asarray(images, np.float32)
  keys = group_keys(particles, min_per_micrograph=min_per_micrograph)
  if keys is None:
    keys = np.full(len(x), "all", dtype=object)
  radius = sp.estimate_mask_radius(x) if radius_px is None else float(radius_px)
  spectra = {}
  for k in np.unique(keys):  # a group's spectrum pools all its particles, its micrographs' too
    sel = keys == k if "/" in k else np.array([kk == k or kk.startswith(k + "/") for kk in keys])
    spectra[k] = sp.estimate_spectrum(x[sel], radius, where=f"{where} ({k})")
  return keys, spectra


def choose(mode: str, images, particles=None, *, psd_file: str | None = None, radius_px=None,
           anisotropic: bool = False) -> tuple:
  """The noise model of a particle set: (keys (N,), {key: PSD (H, W)}) or None for white, and the record.

  `mode`: 'white' (no estimate), 'coloured' (whiten with the measured or given spectrum), 'auto'
  (measure; whiten when any group's spectrum is not flat within its tolerance). `psd_file` gives a
  known spectrum instead of measuring (then 'auto' means 'coloured' unless it is flat to 1%).
  The record (JSON-ready) holds the decision, flatness, tolerance and the radial spectra. The PSDs are
  the radial profiles on the grid (isotropic: per-mode noise of the 2D estimate is ~26% with a
  corners-only mask on 1,000 images of 64², the radial one's under 1% per band), the 2D estimates when
  `anisotropic`."""
  if mode not in MODES:
    raise InputError(f"config.noise: {mode!r} is not one of {', '.join(MODES)}")
  x = np.asarray(images, np.float32)
  n, h, w = x.shape
  record = {"mode": mode}
  if mode == "white" and psd_file is None:
    record["decision"] = "white"
    return None, record
  if psd_file is not None:
    psd = load_psd_file(psd_file)
    flat = wh.psd_flatness(psd)
    coloured = mode == "coloured" or (mode == "auto" and flat > 1.01)
    record.update(source=psd_file, flatness=flat, decision="coloured" if coloured else "white",
                  radial_psd=[float(v) for v in (sp.radial_average(psd) if psd.ndim == 2 else psd)])
    grid = wh.psd_grid(psd, (h, w))
    return ((np.full(n, "all", dtype=object), {"all": grid}) if coloured else None), record
  keys, spectra = estimate_by_group(x, particles, radius_px)
  groups = {}
  for k, s in spectra.items():
    groups[k] = {"flatness": wh.psd_flatness(s.radial), "tolerance": 1.0 + flat_tolerance(s),
                 "coloured": bool(is_coloured(s)), "radius_px": s.radius_px, "n_used": s.n_used,
                 "n_rejected": s.n_rejected, "radial_psd": [float(v) for v in s.radial]}
  coloured = mode == "coloured" or any(g["coloured"] for g in groups.values())
  record.update(source="estimated", decision="coloured" if coloured else "white", groups=groups,
                flatness=max(g["flatness"] for g in groups.values()))
  log.info("noise=%s: %s (flatness %s)", mode, record["decision"],
           ", ".join(f"{k} {g['flatness']:.2f} vs tol {g['tolerance']:.2f}" for k, g in groups.items()))
  if not coloured:
    return None, record
  return (keys, {k: s.psd2d if anisotropic else wh.psd_grid(s.radial, (h, w)) for k, s in spectra.items()}), record


def apply_by_group(fn, images, model, *args, **kw):
  """fn(images[sel], psd, *args, **kw) for each spectrum's particles, reassembled (N, ...); `model` as
  `choose` returns it (None: fn(images, None, ...))."""
  if model is None:
    return fn(images, None, *args, **kw)
  keys, psds = model
  out = None
  for k, psd in psds.items():
    sel = np.flatnonzero(keys == k)
    part = np.asarray(fn(np.asarray(images)[sel], psd, *args, **kw))
    if out is None:
      out = np.empty((len(keys), *part.shape[1:]), part.dtype)
    out[sel] = part
  return out
