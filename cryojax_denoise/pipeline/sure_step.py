"""SURE in a denoising run: the knob chosen by SURE (params=auto), the quality score of the parameters
used (no ground truth), and the record written beside the output (`<stack stem>.params.json`)."""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from cryojax_denoise import denoise_stack, io
from cryojax_denoise.errors import InputError
from cryojax_denoise.pipeline.params import Settings


def sure_subset(settings: Settings, table, reader, n_images: int | None = None):
  """(images, σ, scale, rows): `n_images` (default `sure_images`) random rows' images (float32) in the units
  the denoiser sees, their σ (None: estimated) and the scale between those units and the input's."""
  from cryojax_denoise.denoisers.tuning import sure_policy

  rows = sure_policy.subset(len(table), settings.sure_images if n_images is None else n_images)
  images = np.concatenate([denoise_stack.read_batch(table, reader, int(r), int(r) + 1) for r in rows])
  mean, scale = denoise_stack.normalization(table, reader, settings.normalize)
  noise_std = settings.sigma / scale if settings.sigma else None
  return ((images - mean) / scale).astype(np.float32), noise_std, scale, rows


# A fitted method's fit leaves out the rows SURE scores when they are at most this fraction of the stack.
HOLD_OUT_FRACTION = 0.1


def scored_rows(settings: Settings, n: int, gain: bool) -> np.ndarray:
  """The rows of an `n`-particle stack that SURE scores in a run (the quality score's; the output gain's when
  `gain`), sorted; empty when `sure_images` is 0 or they exceed HOLD_OUT_FRACTION of the stack.

  SURE holds a fitted model (cwf, autoencoder_cwf) fixed; fitted on the scored particles too, the model depends
  on their noise and SURE reads low by that dependence (a fit of 936 particles of 64², SNR 0.5, CTF: cwf's SURE
  0.0041 lower on its 64 scored particles than with them left out, their true MSE 0.0002 higher; docs/sure.md).
  Left out of the fit, the fixed-model premise holds exactly."""
  from cryojax_denoise.denoisers.tuning import sure_policy

  if settings.sure_images <= 0:
    return np.zeros(0, np.int64)
  sets = [sure_policy.subset(n, settings.sure_images)]
  if gain:
    sets.append(sure_policy.subset(n, gain_images(settings)))
  rows = np.unique(np.concatenate(sets))
  return rows if len(rows) <= HOLD_OUT_FRACTION * n else np.zeros(0, np.int64)


def summary(est: dict, sigma, scale) -> dict:
  """The SURE part of the record (from `SureEstimate.record()`), in the input's units; logged."""
  mse, se = est["sure_mse"] * scale ** 2, est["sure_se"] * scale ** 2
  logging.info("SURE on %d images: estimated MSE %.4g ± %.2g (%.3g of the signal power), MSE reduction %.2f dB "
               "(σ %.4g)", est["n_images"], mse, se, est["sure_relative"], est["gain_db"], sigma * scale)
  return {"n_images": est["n_images"], "noise_std": sigma * scale, "mse": mse,
          "mse_standard_error": se if se == se else None,  # NaN (under 3 images) is not JSON
          "relative_mse": est["sure_relative"], "gain_db": est["gain_db"]}


def choose_params(settings: Settings, table, reader, psd=None) -> dict:
  """params=auto: SURE's choice of the knob on the subset (`sure_policy.sure_tune`); the record for the JSON.
  With a noise spectrum `psd` ((H, W), the denoiser's units) SURE is coloured (probes of that covariance) and
  scores each knob's whitened denoiser (`noise.methods.wrap`), the one that is then applied."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers.tuning import sure, sure_policy

  # The knob is chosen on `sure_images`; its MSE is then estimated on N_ESTIMATE, up to N_ESTIMATE_MAX while its
  # standard error is above SE_TARGET (on 32 images SURE's error is those images' realised noise, 10-25% of the
  # MSE at SNR <= 0.1).
  n_images = max(settings.sure_images, sure_policy.N_ESTIMATE_MAX)
  images, noise_std, scale, _ = sure_subset(settings, table, reader, n_images)
  fixed = settings.mode()[1]
  knob = denoisers.REGISTRY[settings.method].knob
  def wrap(den, value):
    from cryojax_denoise.noise.methods import wrap as whitened

    return whitened(den, psd, settings.method, {**fixed, knob: value})
  try:
    params, rows = sure_policy.sure_tune(settings.method, images, noise_std, n_images=settings.sure_images,
                                         stack_size=len(table), noise_psd=psd, wrap=None if psd is None else wrap, **fixed)
  except TypeError as e:
    raise InputError(f"params: {e} (method {settings.method})") from None
  best = next(r for r in rows if r[knob] == params[knob])
  if best["warning"]:
    logging.warning("SURE may be unreliable here: %s", best["warning"])
  sigma = float(sure.sigmas(images, noise_std if psd is None else sure.psd_std(psd, images.shape))[1].mean())
  kept = best["default_kept"]
  logging.info("params=auto: %s=%s%s (grid %s on %d images, SURE MSE %s, standard errors above the lowest %s)", knob,
               params[knob], " (default kept)" if kept else "", [r[knob] for r in rows], best["n_images"],
               [round(r["sure_mse"] * scale ** 2, 4) for r in rows], [round(r["z_above_best"], 1) for r in rows])
  return {"method": settings.method, "params": params, "auto": True, "warning": best["warning"],
          "sure": summary(best["estimate"], sigma, scale),
          "grid": [{knob: r[knob], "sure_mse": r["sure_mse"] * scale ** 2, "gain_db": r["gain_db"],
                    "z_above_best": r["z_above_best"]} for r in rows], "sure_tuning_images": best["n_images"],
          "default_kept": kept}


def quality(settings: Settings, table, reader, denoiser, ctf_of=None, psd=None) -> dict:
  """SURE's estimate of the MSE for the parameters used (any method, learned ones too): the record.
  A fitted method (registry `fit` hook) is probed with its model held fixed and, with `ctf_of` (rows -> CTFs),
  the subset's own CTFs in every call (`sure_policy.method_sure`). ValueError with the one-line reason where
  SURE cannot be applied (`sure_policy.sure_reason`). `psd`: the noise spectrum ((H, W), the denoiser's
  units; None: white): SURE under that covariance."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers.tuning import sure_policy

  images, noise_std, scale, rows = sure_subset(settings, table, reader)
  params = settings.mode()[1]
  est = sure_policy.method_sure(settings.method, denoiser, images, noise_std,
                                ctf=None if ctf_of is None else ctf_of(np.asarray(rows)), noise_psd=psd,
                                fitted=denoisers.REGISTRY[settings.method].fit is not None, **params)
  if isinstance(est, str):
    raise ValueError(est)
  return {"method": settings.method, "params": params, "auto": False,
          "sure": summary(est.record(), float(est.sigma.mean()), scale)}


# Images the output gain α is estimated on: its error is that of ⟨f, n⟩ − tr(ΣJ_f) over them (more than the
# 32 of the quality score; α multiplies every output).
GAIN_IMAGES = 128


def gain_images(settings: Settings) -> int:
  """How many random images the output gain α is estimated on: max(`sure_images`, GAIN_IMAGES)."""
  return max(settings.sure_images, GAIN_IMAGES)


def output_gain(settings: Settings, table, reader, denoiser, ctf_of=None, psd=None, params: dict | None = None):
  """SURE's MSE-optimal output gain α in [0, 1] of the denoiser as applied: {"alpha", "n_images", "sure" (the
  gained output's SURE record, input units), "relative_mse_without_gain"}, α from
  max(`sure_images`, GAIN_IMAGES) random images (`sure_policy.gained_method`). ValueError with the reason where
  SURE cannot be applied. Under coloured noise a method can pass more noise than signal (the excess sits where
  the signal is): α then takes its output back below the signal power. `params`: those applied (default
  the settings' own)."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.denoisers.tuning import sure_policy

  images, noise_std, scale, rows = sure_subset(settings, table, reader, gain_images(settings))
  out = sure_policy.gained_method(settings.method, denoiser, images, noise_std,
                                  ctf=None if ctf_of is None else ctf_of(np.asarray(rows)), noise_psd=psd,
                                  fitted=denoisers.REGISTRY[settings.method].fit is not None,
                                  **(settings.mode()[1] if params is None else params))
  if isinstance(out, str):
    raise ValueError(out)
  _, alpha, before, after = out
  logging.info("output gain: α = %.3f on %d images (SURE's relative MSE %.3g without it)", alpha, len(images),
               before.relative)
  return {"alpha": alpha, "n_images": len(images), "relative_mse_without_gain": before.relative,
          "sure": summary(after.record(), float(after.sigma.mean()), scale)}


def auto_note(record: dict) -> str:
  if not record["auto"]:
    return ""
  return " (params=auto, chosen by SURE)" if record.get("grid") else " (params=auto: no knob to choose)"


def write_record(record: dict, outputs) -> str:
  """`<stack stem>.params.json`, and the same facts as a comment at the top of the STAR file; its path."""
  path = os.path.splitext(outputs.stack)[0] + ".params.json"
  io.atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
  if outputs.star:
    s = record.get("sure")
    with open(outputs.star) as f:
      text = f.read()
    comment = f"# cryojax-denoise: method {record['method']}, params {record['params']}{auto_note(record)}"
    if "noise" in record:
      comment += f"; noise model {record['noise']['decision']}"
    if "alpha" in record.get("output_gain", {}):
      comment += f"; output gain {record['output_gain']['alpha']:.3f}"
    if s:
      se = "" if s["mse_standard_error"] is None else f" ± {s['mse_standard_error']:.2g}"
      comment += (f"; SURE on {s['n_images']} images: MSE {s['mse']:.5g}{se}, relative {s['relative_mse']:.4g}, "
                  f"MSE reduction {s['gain_db']:.2f} dB")
    comment += "\n"
    io.atomic_write_text(outputs.star, comment + text)
  logging.info("wrote %s", path)
  return path
