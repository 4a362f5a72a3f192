"""The sweep's methods on one test set: each registry method as `denoise` runs it under the set's noise model
(σ estimated on whitened images under a spectrum, dataset-level methods fitted on noisy fitting particles,
SURE's knob choice and output gain from noisy images alone). `snr_sweep.run` composes these per (set, SNR)."""

from __future__ import annotations

import numpy as np
from absl import logging

from cryojax_denoise import denoisers


def registry_name(row_name: str) -> str:
  """'autoencoder_specialist' -> 'autoencoder', 'ddtf_sure' -> 'ddtf': the registry method behind a sweep row."""
  return row_name.removesuffix("_specialist").removesuffix("_sure")


def sure_rows(config, methods) -> list[str]:
  """With tuning=both, a `<name>_sure` row for each classical method that has a knob to tune."""
  if config.tuning != "both" or not config.tune:
    return []
  return [f"{m}_sure" for m in methods if m in denoisers.classical_names() and denoisers.REGISTRY[m].knob
          and denoisers.REGISTRY[m].fit is None]


def sure_tune(name: str, noisy, sigma, config, psd=None, wrap=None) -> tuple[dict, dict]:
  """The knob SURE picks on the noisy test images (under the noise spectrum `psd`, scoring `wrap`'s
  whitened denoiser, when given), and SURE's estimate (relative MSE), its standard error and warning."""
  from cryojax_denoise.denoisers.tuning import sure_policy

  params, table = sure_policy.sure_tune(name, noisy, sigma if config.sigma == "true" else None, noise_psd=psd, wrap=wrap)
  knob = denoisers.REGISTRY[name].knob
  best = next(r for r in table if r[knob] == params[knob])  # the chosen row (DDTF: a parabola's minimum)
  est = best["estimate"]
  return params, {"sure_mse": est["sure_relative"], "sure_se": est["sure_relative"] * est["relative_se"],
                  "sure_warning": best["warning"]}


def gained(name: str, fn, ds, config, psd, fitted: bool, params: dict):
  """`fn` scaled by SURE's output gain α (`sure_policy.gained_method`) estimated on the first
  `gain_images` noisy particles of `ds` (the fitting set: other poses than the test set) alone, as
  `denoise --config.output_gain` does on a stack; the row's {"output_gain": α, "sure_gained_mse": SURE's
  relative MSE of α·fn on them} ({} and fn where SURE cannot be applied)."""
  from cryojax_denoise.denoisers.tuning import sure_policy
  k = min(len(ds.noisy), int(config.gain_images))
  given = noise_std(ds.noisy[:k], ds.clean[:k]) if config.sigma == "true" and psd is None else None
  ctf = ctf_of(ds, config, k) if fitted else None
  out = sure_policy.gained_method(name, fn, ds.noisy[:k], given, ctf=ctf, noise_psd=psd,
                                  fitted=fitted, **{key: v for key, v in params.items() if key != "checkpoint"})
  if isinstance(out, str):
    logging.warning("%s: no output gain (%s)", name, out)
    return fn, {}
  scaled, alpha, _, after = out
  return scaled, {"output_gain": alpha, "sure_gained_mse": after.relative}


def sure_quality(name: str, fn, ds, sigma, config, psd, ctf, fitted: bool, params: dict, gain: float = 1.0) -> dict:
  """SURE's estimate of the relative MSE of `fn` as applied (a method with no knob to tune: dataset-level,
  learned; `gain` the output gain `fn` includes) on the noisy test images alone, the number `denoise` logs:
  {"sure_mse", "sure_se", "sure_warning"} for the report's SURE table ({} where SURE cannot be applied)."""
  from cryojax_denoise.denoisers.tuning import sure_policy

  given = sigma if config.sigma == "true" and psd is None else None
  est = sure_policy.method_sure(name, fn, ds.noisy, given, ctf=ctf, noise_psd=psd, fitted=fitted, scale=gain,
                                **{key: v for key, v in params.items() if key != "checkpoint"})
  if isinstance(est, str):
    logging.warning("%s: no SURE estimate (%s)", name, est)
    return {}
  rec = est.record()
  return {"sure_mse": rec["sure_relative"], "sure_se": rec["sure_relative"] * rec["relative_se"], "sure_warning": ""}


def noise_std(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
  """The realised noise σ per image (known exactly in simulation)."""
  return np.std(noisy - clean, axis=(1, 2)).astype(np.float32)


def sigma_for(config, ds, psd=None) -> np.ndarray:
  """σ per image for the classical methods, as `config.sigma` says; under a noise spectrum `psd` the
  estimate is taken on the whitened images (whitening keeps the total noise variance)."""
  if config.sigma == "true":
    return noise_std(ds.noisy, ds.clean)
  from cryojax_denoise.denoisers.noise import estimate_noise_std
  from cryojax_denoise.noise import whiten

  noisy = ds.noisy if psd is None else np.asarray(whiten.whiten(ds.noisy, psd))
  return np.asarray(estimate_noise_std(noisy), np.float32)


def ctf_of(ds, config, n: int | None = None) -> np.ndarray | None:
  """The first `n` (None: every) particles' CTFs (n, H, W) on the FFT grid from the dataset's RELION table
  (None without CTF)."""
  from cryojax_denoise.data import ctf

  if not config.ctf:
    return None
  particles = ds.particles if n is None else ds.particles.iloc[:n]
  return ctf.ctf_grid(particles, ds.optics, config.image_size, float(ds.pixel_size))


def fitted_method(name: str, config, fit_ds, params=None, fits=None, psd=None):
  """A dataset-level method (registry `fit` hook, e.g. cwf, autoencoder_cwf) fitted to the noisy images of
  `fit_ds`, on whitened particles under a noise spectrum `psd` (noise/methods.py). `fits` {registry name:
  fitted denoiser} of this `fit_ds` is updated; under white noise autoencoder_cwf is offered its "cwf",
  which it reuses as its base, and as its prior when that is the registered cwf (`learned.prior_reach_px`)."""
  from cryojax_denoise.noise.methods import fit_coloured

  base, fits = registry_name(name), {} if fits is None else fits
  extra = {"cwf": fits["cwf"]} if base == "autoencoder_cwf" and "cwf" in fits and psd is None else {}
  fn = fit_coloured(base, fit_ds.noisy, sigma_for(config, fit_ds, psd), ctf_of(fit_ds, config), psd,
                    **(params or {}), **extra)
  fits.setdefault(base, fn)
  return fn


def spectrum(fit_ds) -> np.ndarray:
  """The noise PSD (H, W) estimated from the fitting particles' background, as `denoise
  --config.noise=coloured` estimates it (noise/decide.py)."""
  from cryojax_denoise.noise import decide

  model, _ = decide.choose("coloured", fit_ds.noisy)
  return next(iter(model[1].values()))


