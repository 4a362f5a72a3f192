"""`reconstruct --config.poses=refine`: poses found by projection matching, then the map (gold standard).

    python launch.py --experiment=reconstruct --config.input=particles.star --config.poses=refine \
        --config.initial_model=map.mrc [--config.initial_lowpass_A=30] [--config.align_with=raw|METHOD] \
        [--config.reconstruct_from=raw|METHOD] [--config.angular_steps_deg="(15,10,7.5)"]

Poses in the STAR file are never used for the search (the file needs none); when present they are
the truth that scores the result: fsc.json gains `median_angular_error_deg`, `fraction_within_5deg`
and `median_shift_error_A` beside `resolution_A`, and `history` (one row per round). Writes half1.mrc,
half2.mrc, map.mrc, fsc.json, fsc.png and poses.star (RELION 3.1: the input rows with the estimated
rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst and rlnRandomSubset = half set 1 or 2). A METHOD denoises the
particles once (`params`, `checkpoint`, `noise_std` apply to it) with `experiments.reconstruct`'s
denoiser; the stack it makes is held in memory (N·D² floats).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from cryojax_denoise.errors import InputError

def add_config(c) -> None:
  """The refine keys of the reconstruct config."""
  c.poses = "known"                # known: the STAR file's poses; refine: found by projection matching
  c.initial_model = ""             # refine: starting map (MRC) on the particles' box and pixel size
  c.initial_lowpass_A = 30.0       # refine: the starting map is low-passed to this resolution (Å)
  c.align_with = "raw"             # refine: images to align, raw or a denoiser name
  c.reconstruct_from = "raw"       # refine: images to reconstruct, raw or a denoiser name
  c.angular_steps_deg = (15.0, 10.0, 7.5)  # refine: one round per step (then local refinement to step/4)
  c.exhaustive_rounds = 2          # refine: rounds searching the whole SO(3) grid; later rounds search locally
  c.max_shift_A = 0.0              # refine: origin search radius (Å); 0 = 5% of the box, at least 2 px
  c.align_resolution_A = 0.0       # refine: cap on the matching band (Å), 0 = none (follows the FSC)
  c.particle_radius_A = 0.0        # refine: exhaustive search band = radius · step; 0 = 0.4 · box · pixel size


def validate(config, box: int, pixel_size: float) -> None:
  """Every refine-specific check (run before any output is written)."""
  from cryojax_denoise import denoisers

  if config.poses not in ("known", "refine"):
    raise InputError(f"poses: must be known or refine, got {config.poses!r}")
  if config.poses == "known":
    return
  if config.method:
    raise InputError("method: with poses=refine give align_with= and reconstruct_from= instead")
  for key in ("align_with", "reconstruct_from"):
    value = config[key]
    if value != "raw" and value not in denoisers.names():
      raise InputError(f"{key}: raw or a method ({', '.join(denoisers.names())}), got {value!r}")
  steps = tuple(config.angular_steps_deg)
  if not steps or any(not (0 < float(s) <= 90) for s in steps):
    raise InputError(f"angular_steps_deg: one or more steps in (0, 90] degrees, got {steps}")
  if config.initial_lowpass_A <= 0 or config.max_shift_A < 0 or config.align_resolution_A < 0:
    raise InputError("initial_lowpass_A must be > 0; max_shift_A and align_resolution_A >= 0")
  initial_model(config, box, pixel_size)
  for key in ("align_with", "reconstruct_from"):
    if config[key] != "raw":
      from cryojax_denoise import pipeline

      settings = _settings(config, config[key])
      pipeline.check_settings(settings)
      if not pipeline.has_fit_hook(settings.method):
        pipeline.make_denoiser(settings)  # a misspelled parameter is one error line now, not after alignment


def initial_model(config, box: int, pixel_size: float) -> np.ndarray:
  """The initial map (D, D, D); one InputError when it is missing or not on the particles' grid."""
  from cryojax_denoise import io
  from cryojax_denoise.reconstruction import align

  if not config.initial_model:
    raise InputError("initial_model: poses=refine needs --config.initial_model=MAP.mrc")
  io.check_input_file(config.initial_model, "MRC map")
  vol, size = io.read_volume(config.initial_model)
  align.prepare_reference(vol, size, box, pixel_size, where=config.initial_model)
  return vol


def _settings(config, method: str):
  """The pipeline's `Settings` of denoiser `method` with this config's params (no SURE: sure_images 0)."""
  from cryojax_denoise.pipeline import Settings

  return Settings(method=method, params=config.params, checkpoint=config.checkpoint,
                  noise_std=config.noise_std or None, sure_images=0)


def _with_method(config, method: str):
  import ml_collections

  cfg = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
  cfg.method = method
  if "sure_images" not in cfg:  # the denoise experiment's auto-params switch; reconstruct has none: off
    cfg.sure_images = 0
  return cfg


def denoise(config, method: str, images, particles, optics, pixel_size: float) -> np.ndarray:
  """The stack denoised by `method`, in memory: dataset-level methods (a registry `fit` hook, e.g. cwf)
  are fitted once on the whole standardised stack with the particles' CTFs (as `denoise` and the sweep
  run them); others go through the reconstruct experiment's batch transform. The one place to repoint
  when the denoiser pipeline moves."""
  from cryojax_denoise import denoisers
  from experiments.reconstruct import _transform

  out = np.empty(images.shape, np.float32)
  if denoisers.REGISTRY[method].fit is None:
    fn = _transform(_with_method(config, method), images)
    for start in range(0, len(images), 256):
      out[start:start + 256] = fn(np.asarray(images[start:start + 256], np.float32))
    return out
  from cryojax_denoise.data.ctf import ctf_grid

  stack = np.asarray(images[0:len(images)], np.float32)
  mean, scale = float(stack.mean()), float(stack.std()) or 1.0
  stack = (stack - mean) / scale
  std = config.noise_std / scale if config.noise_std > 0 else None
  ctf = ctf_grid(particles, optics, stack.shape[-1], pixel_size) if config.ctf else None
  den = denoisers.fit(method, stack, std, ctf, **_settings(config, method).mode()[1])
  for start in range(0, len(stack), 256):
    sl = slice(start, start + 256)
    out[sl] = np.asarray(den(stack[sl], std, None if ctf is None else ctf[sl]), np.float32) * scale + mean
  return out


def denoise_halves(config, method: str, images, particles, optics, pixel_size: float) -> np.ndarray:
  """`denoise` run on each half set of `refine`'s split apart (same seed), so that nothing a denoiser
  learns from the data (cwf's covariance, a batch's dictionary) crosses between the halves and the
  half-map FSC stays gold-standard."""
  from cryojax_denoise.reconstruction import fourier, refine

  split = fourier.random_halves(len(images), int(config.seed))
  out = np.empty(images.shape, np.float32)
  for h in (0, 1):
    rows = np.flatnonzero(split == h)
    out[rows] = denoise(config, method, refine.RowsView(images, rows), particles.iloc[rows].reset_index(drop=True),
                        optics, pixel_size)
  return out


def true_poses(particles, pixel_size: float):
  """(matrices (N, 3, 3), origins (N, 2) Å) from the STAR rows, or None without pose columns."""
  from cryojax_denoise.reconstruction import refine

  return refine.table_poses(particles, pixel_size)


def poses_table(star, particles, poses, split, config, workdir: str):
  """The input rows with the estimated poses, rlnRandomSubset and image names valid from `workdir`."""
  table = particles.copy().drop(columns=["rlnOriginX", "rlnOriginY"], errors="ignore")
  table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = poses.rot, poses.tilt, poses.psi
  table["rlnOriginXAngst"], table["rlnOriginYAngst"] = poses.origin_x_A, poses.origin_y_A
  table["rlnRandomSubset"] = np.asarray(split) + 1
  base = os.path.dirname(os.path.abspath(star.path))
  if config.stack:
    stack = config.stack if os.path.isabs(config.stack) else os.path.join(base, config.stack)
    table["rlnImageName"] = [f"{i + 1:06d}@{os.path.relpath(stack, workdir)}" for i in range(len(table))]
  else:
    def fix(name: str) -> str:
      idx, _, path = str(name).partition("@")
      return f"{idx}@{os.path.relpath(os.path.join(base, path), workdir)}" if path else name
    table["rlnImageName"] = [fix(v) for v in table["rlnImageName"]]
  return table


def stacks(config, images, particles, optics, pixel_size: float, made: dict | None = None) -> dict:
  """{"raw": images, METHOD: its denoised stack} for `align_with` and `reconstruct_from`. `made` (a
  caller's cache, updated) lets two runs share one denoised stack: `denoise_halves` depends only on the
  method, its settings and the split seed, not on the mode it serves."""
  made = {} if made is None else made
  made.setdefault("raw", images)  # read a batch at a time; denoised stacks are held in memory
  for key in ("align_with", "reconstruct_from"):
    if config[key] not in made:
      logging.info("refine: denoising %d particles with %s, each half set on its own", len(images), config[key])
      made[config[key]] = denoise_halves(config, config[key], images, particles, optics, pixel_size)
  return made


def refine_stacks(config, made: dict, params, pixel_size: float, truth=None):
  """`refine.refine` of the config's stacks (`stacks`) from its initial model: a `RefineResult`."""
  import jax

  from cryojax_denoise import sharding
  from cryojax_denoise.reconstruction import refine

  raw = made["raw"]
  box = raw.shape[-1]
  start = initial_model(config, box, pixel_size)
  max_shift = config.max_shift_A or max(2.0, 0.05 * box) * pixel_size
  logging.info("refine %d particles of %d² at %.4g Å/px: align %s, reconstruct %s, steps %s°, shifts ≤ %.3g Å",
               len(raw), box, pixel_size, config.align_with, config.reconstruct_from,
               tuple(config.angular_steps_deg), max_shift)
  return refine.refine(made[config.reconstruct_from], params, start, pixel_size,
                       align_images=made[config.align_with], steps_deg=tuple(config.angular_steps_deg),
                       exhaustive_rounds=int(config.exhaustive_rounds),
                       initial_lowpass_A=float(config.initial_lowpass_A), max_shift_A=float(max_shift),
                       seed=int(config.seed), pad=int(config.pad), reg=float(config.reg),
                       align_resolution_A=float(config.align_resolution_A) or None,
                       particle_radius_A=float(config.particle_radius_A) or None,
                       truth=truth, log=lambda line: logging.info("refine: %s", line),
                       mesh=sharding.data_mesh() if jax.device_count() > 1 else None)  # batches over devices


def summary(config, result, truth, reference, pixel_size: float) -> dict:
  """fsc.json's content: the half-map FSC and its 0.143 resolution, pose errors against `truth` and the
  map's FSC 0.5 resolution against `reference` when given, and the per-round history."""
  from cryojax_denoise.reconstruction import fsc, refine

  box = result.full.shape[0]
  curve = fsc.fsc_curve(result.half1, result.half2, mask=config.mask)
  freq = fsc.shell_frequencies(box, pixel_size)
  out = {"n_particles": len(result.split),
         "n_half": [int((result.split == 0).sum()), int((result.split == 1).sum())],
         "box": box, "pixel_size": pixel_size, "poses": "refine", "align_with": config.align_with,
         "reconstruct_from": config.reconstruct_from, "method": None,
         "mask": "soft sphere" if config.mask else "none", "freq_per_A": [float(v) for v in freq],
         "fsc": [float(v) for v in curve], "resolution_A": fsc.fsc_resolution(curve, pixel_size, 0.143)}
  if truth is not None:
    out.update(refine.pose_errors(result.poses, *truth))
  if reference is not None:
    ref_curve = fsc.fsc_curve(result.full, reference, mask=config.mask)
    out["fsc_reference"] = [float(v) for v in ref_curve]
    out["reference_resolution_A"] = fsc.fsc_resolution(ref_curve, pixel_size, 0.5)
  out["history"] = result.history
  return out


def run(config, workdir: str, star, images, particles, pixel_size: float, reference) -> None:
  """Refines, then writes the maps, fsc.json, fsc.png and poses.star (process 0 only)."""
  from cryojax_denoise import distributed, io
  from cryojax_denoise.reconstruction import align

  params = align.ctf_params(particles, star.optics, pixel_size, None if config.ctf else False)
  made = stacks(config, images, particles, star.optics, pixel_size)
  truth = true_poses(particles, pixel_size)
  result = refine_stacks(config, made, params, pixel_size, truth)
  if not distributed.is_main():
    return
  for name, vol in (("half1.mrc", result.half1), ("half2.mrc", result.half2), ("map.mrc", result.full)):
    io.write_volume(os.path.join(workdir, name), vol, pixel_size)
  io.write_star(os.path.join(workdir, "poses.star"), star.optics,
                poses_table(star, particles, result.poses, result.split, config, workdir))
  out = summary(config, result, truth, reference, pixel_size)
  io.atomic_write_text(os.path.join(workdir, "fsc.json"), json.dumps(out, indent=2) + "\n")
  _plot(os.path.join(workdir, "fsc.png"), out["freq_per_A"], out["fsc"], out)
  logging.info("refine: half-map FSC 0.143 %.2f Å%s; wrote half1.mrc, half2.mrc, map.mrc, poses.star, fsc.json in %s",
               out["resolution_A"], f", median angular error {out['median_angular_error_deg']:.2f}°"
               if truth is not None else "", workdir)


def _plot(path: str, freq, curve, out: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from cryojax_denoise import io

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(freq, curve, label=f"half maps, refined poses (0.143: {out['resolution_A']:.2f} Å)")
  ax.axhline(0.143, color="gray", ls=":", lw=1)
  if "fsc_reference" in out:
    ax.plot(freq, out["fsc_reference"], label=f"map vs reference (0.5: {out['reference_resolution_A']:.2f} Å)")
    ax.axhline(0.5, color="gray", ls="--", lw=1)
  ax.set_xlabel("spatial frequency (1/Å)")
  ax.set_ylabel("FSC")
  ax.set_ylim(-0.1, 1.05)
  title = f"{out['n_particles']} particles, poses refined (align {out['align_with']}, map {out['reconstruct_from']})"
  if "median_angular_error_deg" in out:
    title += f"\nmedian angular error {out['median_angular_error_deg']:.2f}°"
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with io.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, format="png")
  plt.close(fig)
