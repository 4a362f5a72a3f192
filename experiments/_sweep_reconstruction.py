"""The sweep's Figure-4 rows: 3D reconstructions from denoised particles per method and SNR, at the true poses
(`reconstruct=True|known`) and, with `reconstruct=refine`, from poses refined on the denoised particles."""

from __future__ import annotations

import time

import numpy as np

from cryojax_denoise import denoisers
from cryojax_denoise.errors import InputError
from cryojax_denoise.evaluation import evaluate
from cryojax_denoise.progress import Progress
from experiments._sweep_methods import registry_name, sigma_for

RECONSTRUCT_MODES = {False: "", "": "", "false": "", "none": "", True: "known", "true": "known",
                     "known": "known", "refine": "refine"}


def reconstruct_mode(config) -> str:
  """"" (no reconstruction), "known" (true poses) or "refine" (true poses, then estimated ones)."""
  value = config.reconstruct
  key = value.strip().lower() if isinstance(value, str) else value
  if isinstance(key, (bool, str)) and key in RECONSTRUCT_MODES:
    return RECONSTRUCT_MODES[key]
  raise InputError(f"reconstruct: True, False, known or refine, got {value!r}")


def add_reconstruction(rows, config, methods, snrs, checkpoints, chosen, dataset, seed, notes, set_name,
                       source) -> None:
  """Adds `fsc_resolution_A` (half-map FSC 0.143, true poses) per (method, SNR) from denoised particles;
  with reconstruct=refine also the estimated-pose scores of `refined` (`fsc_resolution_refined_A`, ...).

  Denoising n_reconstruct particles reports its own progress; the ETA counts each remaining
  method's measured cost (its seconds per image on the test set) and the measured time per map."""
  from cryojax_denoise.reconstruction import fourier

  n, refine = config.n_reconstruct, reconstruct_mode(config) == "refine"
  cost = {(r["method"], r["snr"]): r.get("seconds_per_image", 0.0) for r in rows if r.get("test_set") == set_name}
  items = [(snr, name) for snr in snrs for name in ["noisy"] + methods]
  map_seconds: list[float] = []

  def remaining_s(k: int) -> float:
    per_map = float(np.mean(map_seconds)) if map_seconds else 0.0
    return sum((2 if refine else 1) * n * cost.get((name, snr), 0.0) + per_map for snr, name in items[k + 1:])

  bar = Progress(total=len(items), desc="reconstruct", unit="maps", every_s=1.0)
  for k, (snr, name) in enumerate(items):
    if name == "noisy":
      ds = dataset(n, snr, seed)
      sigma = sigma_for(config, ds)
      images, fn = ds.noisy, None
    else:
      learned = (name, snr) in checkpoints
      params = {"checkpoint": checkpoints[name, snr]} if learned else dict(chosen.get((f"{set_name}: {name}", snr), {}))
      inner = Progress(total=n, desc=f"reconstruct: denoising with {name} @ SNR {snr:g}", unit="img", every_s=10.0)
      fn = denoisers.get(registry_name(name), **params)
      images = evaluate.apply_batched(fn, ds.noisy, sigma, config.n_tune, on_batch=inner.update)
    t0 = time.perf_counter()
    res = fourier.half_map_resolution(images, ds.particles, ds.optics, float(ds.pixel_size), seed=config.seed)
    row = next(r for r in rows if r["method"] == name and r["snr"] == snr and r["test_set"] == set_name)
    row["fsc_resolution_A"] = float(res["resolution_A"])
    if refine:
      row.update(refined(config, ds, source, fn, sigma))
    map_seconds.append(time.perf_counter() - t0)
    extra = f"{name} @ SNR {snr:g}: {row['fsc_resolution_A']:.1f} Å"
    if refine:
      extra += f", refined {row['fsc_resolution_refined_A']:.1f} Å ({row['median_angular_error_deg']:.1f}°)"
    bar.update(1, extra=extra, remaining_s=remaining_s(k))
  notes.append(f"3D reconstructions from {config.n_reconstruct} particles per SNR (known poses and CTF), "
               "half maps split at random; resolution where their FSC falls below 0.143.")
  if refine:
    notes.append("Estimated-pose rows (`*_refined_*`, angular errors): each half set denoised on its own, poses "
                 "found on the denoised particles by projection matching against the test map low-passed to "
                 f"30 Å, refined over gold-standard half sets at steps {tuple(config.refine_steps_deg)}°, the map "
                 "from the denoised particles; 'vs truth' is the refined map against the test map (FSC 0.5).")


def refined(config, ds, source, fn, sigma) -> dict:
  """Estimated-pose scores of `ds` denoised by `fn` (None: raw), each half set of the refinement's split
  denoised on its own so that the half maps stay independent: `reconstruction.refine.refine_scores`."""
  from cryojax_denoise.reconstruction import fourier, refine

  images = ds.noisy
  if fn is not None:
    split = fourier.random_halves(len(images), int(config.seed))
    images = np.empty(ds.noisy.shape, np.float32)
    for h in (0, 1):
      rows = np.flatnonzero(split == h)
      images[rows] = evaluate.apply_batched(fn, ds.noisy[rows], sigma[rows], config.n_tune)
  if source.volume.shape[0] != images.shape[-1] or abs(float(source.pixel_size) - float(ds.pixel_size)) > 1e-6:
    raise InputError(f"reconstruct=refine: the test map is {source.volume.shape[0]}³ at {source.pixel_size} Å, "
                     f"the particles {images.shape[-1]}² at {ds.pixel_size} Å")
  box, pixel_size = images.shape[-1], float(ds.pixel_size)
  out = refine.refine_scores(images, ds.particles, ds.optics, pixel_size, source.volume,
                             truth_map=source.volume, seed=int(config.seed), ctf=None if config.ctf else False,
                             steps_deg=tuple(float(v) for v in config.refine_steps_deg), initial_lowpass_A=30.0,
                             max_shift_A=max(2.0, 0.05 * box) * pixel_size)  # reconstruct's default search
  return {"fsc_resolution_refined_A": out["resolution_A"], "reference_resolution_refined_A": out["reference_resolution_A"],
          "median_angular_error_deg": out["median_angular_error_deg"], "fraction_within_5deg": out["fraction_within_5deg"]}
