"""SURE's tuning policy: a method's knob chosen on its grid by Monte-Carlo SURE on noisy images alone
(`sure_tune`, `choose`), and SURE's estimate of the chosen knob's MSE (`estimate_chosen`); the
estimator itself is `sure.py`, the measurements behind the constants `docs/sure_notes.md`.

    params, table = sure_tune("ddtf", noisy)             # knob with the lowest SURE on the grid
    params, table = sure_tune("wiener", noisy, noise_psd=psd)   # stationary coloured noise

A jit-able denoiser is evaluated for the whole grid of knob values compiled (vmapped over the grid
on accelerators, one value at a time on CPU), reducing each image to its SURE terms inside; one
that is not (bm3d) is looped. The knob is chosen on `N_IMAGES` random images, more while two
values are within `SIGNIFICANCE` paired standard errors; SURE's estimate of the chosen knob's MSE
is then made on `N_ESTIMATE` or more (`estimate_chosen`): its error is set by the number of images
(the realised noise), not by σ.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.tuning.sure import (EPS, N_PROBES, SureEstimate, above_best, band_power, eps_for, grid_stats,
                                            known_divergence, noise_std_or_estimate, probes, psd_std, sigmas,
                                            signal_power, standard_error, sure, sure_from_stats,
                                            tail_corrected_noise_std)
from cryojax_denoise.errors import InputError

FIT_CHOICE = ("ddtf",)  # `choose` fits a parabola: SURE jitters along the grid (docs/sure_notes.md, "Parabola choice")
KEEP_DEFAULT = ("bm3d",)  # design default kept unless beaten (docs/sure_notes.md, "Registered default kept")
# Tuning subset: N_IMAGES, grown while another value is within SIGNIFICANCE paired standard errors of the lowest,
# up to N_TUNE_MAX images and TUNE_BUDGET × the stack in calls (docs/sure_notes.md, "Growing the tuning subset").
SIGNIFICANCE = 2.0
N_TUNE_MAX = 128
TUNE_BUDGET = 1.0
N_IMAGES = 32      # images drawn from a stack to tune on
# The chosen knob's estimate: N_ESTIMATE images, grown while its standard error is above SE_TARGET of it, up to
# N_ESTIMATE_MAX and ESTIMATE_BUDGET × the stack in calls, new images in batches of up to ESTIMATE_BATCH
# (docs/sure_notes.md, "The estimate of the chosen knob").
N_ESTIMATE = 128
N_ESTIMATE_MAX = 512
SE_TARGET = 0.03
ESTIMATE_BUDGET = 0.5
ESTIMATE_BATCH = 96


@functools.lru_cache(maxsize=None)
def knob_function(name: str, fixed: tuple = ()) -> Callable:
  """`fn(images, sigma, value)`: registry method `name` with its knob = value and `fixed` params
  ((key, value) pairs); one object per (name, fixed), so the compiled grid is reused."""
  from cryojax_denoise import denoisers

  knob = denoisers.REGISTRY[name].knob

  def fn(images, sigma, value):
    return denoisers.get(name, **{knob: value}, **dict(fixed))(images, sigma)

  return fn


def subset(n: int, n_images: int = N_IMAGES, seed: int = 0) -> np.ndarray:
  """Sorted random rows (at most `n_images`) of a stack of `n` images: the tuning subset."""
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=min(n, n_images), replace=False))


def check_tunable(name: str) -> None:
  """InputError unless `name` is a registered method with a knob that SURE can choose."""
  from cryojax_denoise import denoisers

  method = denoisers.REGISTRY.get(name)
  if method is None:
    raise InputError(f"unknown denoiser {name!r}; valid: {', '.join(denoisers.names())}")
  if method.learned:
    raise InputError(f"params=auto: {name} is a learned method with no knob to choose; "
                     f"auto works with {', '.join(n for n, m in denoisers.REGISTRY.items() if m.knob)}")
  if method.knob is None or not method.grid:
    raise InputError(f"params=auto: method {name} has no tunable knob")
  if getattr(method, "fit", None) is not None:
    raise InputError(f"params=auto: {name} is fitted to the whole stack; SURE tuning takes per-batch methods")


def sure_tune(name: str, noisy, noise_std=None, *, sure_std=None, grid=None, n_images: int = N_IMAGES,
              n_estimate: int = N_ESTIMATE, n_estimate_max: int = N_ESTIMATE_MAX, se_target: float = SE_TARGET,
              estimate_budget: float = ESTIMATE_BUDGET, seed: int = 0, eps: float | None = None,
              n_probes: int = N_PROBES, clean=None, grid_batch: int | None = None,
              estimate_batch: int = ESTIMATE_BATCH, n_tune_max: int = N_TUNE_MAX, tune_budget: float = TUNE_BUDGET,
              significance: float = SIGNIFICANCE, stack_size: int | None = None, noise_psd=None,
              wrap: Callable | None = None, **fixed) -> tuple[dict, list[dict]]:
  """Chooses `REGISTRY[name].knob` on the grid by SURE on noisy images alone (`choose`: the lowest,
  or for `FIT_CHOICE` methods the minimum of a parabola through it; for `KEEP_DEFAULT` methods the
  registered default while its SURE is within `significance` paired standard errors of the lowest).

  The grid is run on `n_images` random images (seeded), then on `n_images` more at a time while the
  SURE of any other value is within `significance` paired standard errors of the lowest (`above_best`), up to
  `n_tune_max` images and while all of them cost at most `tune_budget` × the stack's images in calls
  (the first `n_images` always run). `stack_size`: the images of the stack `noisy` was drawn from, for
  both budgets (None: `noisy` is the stack).

  `noisy` (B, H, W), `noise_std` scalar or (B,) (None: estimated, `sure_std` for SURE's σ, see
  `sigmas`); `noise_psd` the stationary noise's PSD (`sure.psd_grid`): coloured probes, σ from it
  (`sure.sigmas`); `eps` None: `eps_for(name)`; a method with a `known_divergence` is not probed
  under white noise (`n_probes` ignored). `wrap(den, value)` -> the denoiser actually applied for knob
  `value` (e.g. whitened for coloured noise, `noise.methods.wrap`): SURE scores that one. Like
  `tuning.tune`, returns ({knob: best, **fixed}, table), one row
  per grid value: {knob: v, "sure_mse": image units, "sure_relative", "gain_db", "seconds",
  "warning": `reliability` note or "", "n_images" tuned on, "z_above_best": paired standard errors
  above the lowest SURE}, and, when `clean` (B, H, W) is given (for validation
  only), the true "mse" of the same outputs. The chosen row also holds "default_kept" (`KEEP_DEFAULT`
  overrode `choose`) and "estimate", the number to report, with its standard error: SURE of the
  chosen knob alone on `n_estimate` random images, grown to at most `n_estimate_max` while its
  standard error is above `se_target` of it (within `estimate_budget`; `estimate_chosen`, new images
  in batches of up to `estimate_batch`) when the stack has at least twice the tuning subset, the
  grid's own numbers otherwise.
  """
  check_tunable(name)
  from cryojax_denoise import denoisers

  knob = denoisers.REGISTRY[name].knob
  eps = eps_for(name) if eps is None else eps
  values = tuple(denoisers.REGISTRY[name].grid if grid is None else grid)
  if not values:
    raise InputError(f"empty tuning grid for {name!r}")
  noisy = np.asarray(noisy, np.float32)
  if noise_std is None and noise_psd is not None:
    noise_std = psd_std(noise_psd, noisy.shape)
  given = None if noise_std is None else np.broadcast_to(np.asarray(noise_std, np.float32), len(noisy))
  rows = subset(len(noisy), n_images, seed)
  exact = [None if noise_psd is not None or wrap is not None else known_divergence(name, noisy.shape, **{knob: v},
                                                                                   **fixed) for v in values]
  n_probes = 0 if exact[0] is not None else n_probes
  fn = knob_function(name, tuple(sorted(fixed.items())))
  if wrap is not None:
    base = fn

    def fn(images, sigma, value):
      return wrap(lambda x, s: base(x, s, value), value)(images, sigma)
  rest = np.setdiff1d(np.arange(len(noisy)), rows)
  order = np.concatenate([rows, rest[np.random.default_rng(seed + 2).permutation(len(rest))]])  # growth draws
  calls = len(values) * (1 + n_probes)  # denoiser calls per tuning image
  stack = len(noisy) if stack_size is None else stack_size
  n_stop = min(max(n_tune_max, len(rows)), len(noisy), max(len(rows), int(tune_budget * stack / calls)))
  t0, stats, n = time.perf_counter(), [], 0
  while True:
    batch = order[n:n + len(rows)]
    den_sigma_b, sigma_b = sigmas(noisy[batch], None if given is None else given[batch], sure_std)
    b = probes(seed + (2 + n if n else 0), n_probes, noisy[batch].shape, noise_psd)
    stats.append(grid_stats(fn, noisy[batch], den_sigma_b, values, b, eps * sigma_b,
                            None if clean is None else np.asarray(clean, np.float32)[batch], grid_batch))
    n += len(batch)
    tuned = order[:n]
    resid, div = (np.concatenate([st[i] for st in stats], axis=1) for i in (0, 1))
    mse = None if clean is None else np.concatenate([st[2] for st in stats], axis=1)
    if n_probes == 0:
      div = np.repeat(np.asarray(exact, np.float32)[:, None], n, axis=1)
    images = noisy[tuned]
    den_sigma, sigma = sigmas(images, None if given is None else given[tuned], sure_std)
    power = signal_power(images, sigma)
    band = None if noise_psd is not None else np.asarray(band_power(images))  # σ known: no σ̂ in the error
    ests = [SureEstimate(sure_from_stats(resid[g], div[g], sigma), sigma, power, band=band, div=div[g])
            for g in range(len(values))]
    z = above_best(ests)
    if n + len(rows) > n_stop or len(values) < 2 or not np.sort(z)[1] < significance:
      break
  seconds = (time.perf_counter() - t0) / len(values)
  table = []
  for g, (v, est) in enumerate(zip(values, ests)):
    row = {knob: v, "sure_mse": est.mean, "sure_relative": est.relative, "gain_db": est.gain_db,
           "seconds": seconds, "n_images": n, "z_above_best": z[g]}
    if clean is not None:
      row["mse"] = float(np.mean(mse[g]))
    table.append(row)
  g = lowest = choose(values, [r["sure_mse"] for r in table], name in FIT_CHOICE)
  default = denoisers.REGISTRY[name].default
  if name in KEEP_DEFAULT and default in values and z[values.index(default)] < significance:
    g = values.index(default)
  best = table[g]
  best["default_kept"] = g != lowest
  note = reliability(den_sigma, sigma, best["sure_mse"], power)
  for row in table:
    row["warning"] = note
  best["estimate"] = {**ests[g].record(), **({"mse": best["mse"]} if clean is not None else {})}
  if min(n_estimate, len(noisy)) >= 2 * len(rows):
    done = (tuned, resid[g], div[g], None if mse is None else mse[g], band)
    best["estimate"] = estimate_chosen(fn, noisy, noise_std, best[knob], chunk=estimate_batch, n_estimate=n_estimate,
                                       n_max=n_estimate_max, se_target=se_target, budget=estimate_budget,
                                       seed=seed, sure_std=sure_std, eps=eps, n_probes=n_probes, clean=clean,
                                       done=done, div=exact[g], stack_size=stack, noise_psd=noise_psd)
  return {knob: best[knob], **fixed}, table


def estimate_chosen(fn: Callable, noisy, noise_std, value, *, chunk: int, n_estimate: int = N_ESTIMATE,
                    n_max: int = N_ESTIMATE_MAX, se_target: float = SE_TARGET, budget: float = ESTIMATE_BUDGET,
                    seed: int = 0, sure_std=None, eps: float = EPS, n_probes: int = N_PROBES, clean=None,
                    done=None, div: float | None = None, stack_size: int | None = None, noise_psd=None) -> dict:
  """SURE of `fn(images, sigma, value)` (one knob value) on random images of `noisy` (B, H, W): first
  `n_estimate`, then one more batch at a time while the standard error exceeds `se_target` of the
  estimate, up to `n_max`, the stack, and new images whose (1 + `n_probes`) calls each add up to at
  most `budget` × the stack's images. New images go in equal batches of at most `chunk` (one
  compiled shape; batch methods learn once per batch, so fewer, larger calls cost less; a remainder
  is left out); `done` = (rows, resid, div, mse, band) of images already probed at this value
  (`grid_stats`' terms and `noise.band_power`) are counted, not rerun; `div` the exact divergence
  per pixel, when known (no probes: `n_probes` is then 0); `stack_size` the budget's stack (None:
  `noisy`); `noise_psd` as in `sure_tune` (σ from it, coloured probes). Returns `SureEstimate.record()`
  (+ the true "mse" of the same images with `clean`).

  Its error is mostly the realised noise, not σ's (docs/sure_notes.md, "The estimate of the chosen knob").
  """
  noisy = np.asarray(noisy, np.float32)
  if noise_std is None and noise_psd is not None:
    noise_std = psd_std(noise_psd, noisy.shape)
  n_probes = 0 if div is not None else n_probes
  stack_std = None if noise_std is None else np.broadcast_to(np.asarray(noise_std, np.float32), len(noisy))
  done_rows, stats = (np.zeros(0, int), []) if done is None else (np.asarray(done[0]), [tuple(done[1:4])])
  n_done = n = len(done_rows)
  rest = np.setdiff1d(np.arange(len(noisy)), done_rows)
  order = np.concatenate([done_rows, rest[np.random.default_rng(seed + 1).permutation(len(rest))]])  # as taken
  n_new = max(0, min(n_estimate, len(noisy)) - n_done)
  chunk = n_new // -(-n_new // chunk) if n_new else chunk  # as many equal batches of at most `chunk` as fit
  n_first = n_done + n_new // chunk * chunk
  stack = len(noisy) if stack_size is None else stack_size
  n_stop = min(max(n_max, n_estimate), len(noisy), max(n_first, n_done + int(budget * stack / (1 + n_probes))))
  bands = [np.asarray(done[4])] if n_done else []
  terms = lambda i: np.concatenate([st[i] for st in stats])  # noqa: E731 (per-image resid, div, mse so far)

  @functools.lru_cache(maxsize=None)
  def pooled(k):  # SURE's σ pooled over the first k images (given: per image)
    r = order[:k]
    if stack_std is not None:
      return stack_std[r]
    return np.full(k, tail_corrected_noise_std(noisy[r]) if sure_std is None else sure_std, np.float32)

  def sure_sigma(k):  # while growing, σ of the first n_first images (probe step and growth test); at the end all k
    return pooled(k) if stack_std is not None or k <= n_first else np.resize(pooled(n_first), k)

  while n < n_first or (n + chunk <= n_stop and n + chunk <= len(order)):
    if n >= n_first:  # grow only while the standard error is above its target
      values = sure_from_stats(terms(0), terms(1), sure_sigma(n))
      band = None if noise_psd is not None else np.concatenate(bands)
      if not standard_error(values, band, terms(1)) > se_target * values.mean():
        break
    new = order[n:n + chunk]
    given = None if stack_std is None else stack_std[new]
    den_sigma = np.asarray(noise_std_or_estimate(jnp.asarray(noisy[new]), given))
    b = probes(seed + 1 + n, n_probes, (chunk, *noisy.shape[1:]), noise_psd)
    step = eps * (stack_std[new] if stack_std is not None else np.full(chunk, sure_sigma(n_first)[0], np.float32))
    resid, mc_div, mse = grid_stats(fn, noisy[new], den_sigma, [value], b, step,
                                    None if clean is None else np.asarray(clean, np.float32)[new])
    stats.append((resid[0], mc_div[0] if div is None else np.full(chunk, div, np.float32),
                  None if mse is None else mse[0]))
    bands.append(np.asarray(band_power(noisy[new])))
    n += chunk
  sigma = pooled(n)
  est = SureEstimate(sure_from_stats(terms(0), terms(1), sigma), sigma, signal_power(noisy[order[:n]], sigma),
                     band=None if noise_psd is not None else np.concatenate(bands), div=terms(1))
  return {**est.record(), **({"mse": float(np.mean(terms(2)))} if clean is not None else {})}


def choose(values, sure_mse, fit: bool = False, width: int = 5) -> int:
  """Index of the chosen grid value: SURE's argmin, or with `fit` the grid value nearest the minimum
  of a parabola in log(value) least-squares fitted to the `width` values around that argmin (the
  argmin itself when the parabola does not open upwards or its minimum lies outside those values;
  docs/sure_notes.md, "Parabola choice")."""
  s = np.asarray(sure_mse, np.float64)
  i = int(np.argmin(s))
  if not fit or len(s) < 3:
    return i
  x = np.log(np.asarray(values, np.float64))
  w = min(width, len(s))
  lo = max(0, min(i - w // 2, len(s) - w))
  c = np.polyfit(x[lo:lo + w], s[lo:lo + w], 2)
  if not c[0] > 0 or not x[lo] <= -c[1] / (2 * c[0]) <= x[lo + w - 1]:
    return i
  return int(np.argmin(np.abs(x + c[1] / (2 * c[0]))))


def reliability(den_sigma, sigma, sure_mse: float, power: float) -> str:
  """Why SURE's numbers may not be trusted on this batch ("" when no reason is seen): the per-image
  MAD σ and the high-band σ disagree by over 5% (coloured noise, or σ given wrong), SURE ≤ 0
  (σ overestimated), or no signal power above the noise."""
  notes = []
  ratio = float(np.mean(den_sigma) / np.mean(sigma))
  if abs(ratio - 1) > 0.05:
    notes.append(f"noise std estimates disagree (denoiser's / SURE's = {ratio:.3f}): noise not white or σ wrong")
  if not sure_mse > 0:
    notes.append("SURE estimate <= 0: σ overestimated")
  if not power > 0:
    notes.append("no signal power above the noise in the subset")
  return "; ".join(notes)


def sure_reason(name: str, fitted: bool = False) -> str:
  """Why SURE cannot score registry method `name` as called ("" when it can): `fitted` is the
  registry `fit` form (model held fixed, each particle's CTF in the call), else the `get` form."""
  from cryojax_denoise import denoisers

  method = denoisers.registry.method(name)  # InputError for an unknown name
  if method.learned and method.fit is not None and not fitted:
    return (f"{name}'s per-batch form refits and fine-tunes on every call, so each SURE probe would retrain; "
            "score its fitted form (denoisers.fit)")
  return ""


def method_sure(name: str, den: Callable, images, noise_std=None, *, ctf=None, noise_psd=None, fitted: bool = False,
                seed: int = 0, keep_output: bool = False, scale: float = 1.0, **params) -> SureEstimate | str:
  """SURE of registry method `name` as `den` runs it on `images` (B, H, W), or a one-line reason
  (`sure_reason`) when SURE cannot be applied.

  `den`: the `get` form `den(y, σ)`, or with `fitted` the registry `fit` form `den(y, σ, ctf)`,
  probed with its fitted model held fixed and `ctf` (B, H, W) (the images' own CTFs, None = identity)
  in every call: the function SURE scores is then the one applied to the stack (probing it with
  ctf=None scored a CTF-free CWF instead, 3.1× the true MSE; docs/sure_notes.md, "Dataset-level methods").
  `noise_std`, `noise_psd`, `keep_output` as in `sure`; `params` the method's parameters (for `known_divergence`);
  `scale`: the factor `den` multiplies the method's output by (`scale_output`), which scales its divergence.
  """
  reason = sure_reason(name, fitted)
  if reason:
    return reason
  call = (lambda y, s: den(y, s, ctf)) if fitted else den
  div = known_divergence(name, np.shape(images), **params)
  div = None if div is None else scale * div
  return sure(call, images, noise_std, noise_psd=noise_psd, eps=eps_for(name), div=div, seed=seed,
              keep_output=keep_output)


def gained_method(name: str, den: Callable, images, noise_std=None, *, ctf=None, noise_psd=None, fitted: bool = False,
                  **params) -> tuple[Callable, float, SureEstimate, SureEstimate] | str:
  """`den` (either form of `method_sure`) scaled by SURE's MSE-optimal output gain α in [0, 1] estimated on
  `images` (`sure.output_gain`): (scaled den, α, SURE of den, SURE of α·den), or `sure_reason`'s line. The
  images are mean-removed, so α = 0 is the mean image: α·den is never worse than it beyond SURE's error."""
  from cryojax_denoise.denoisers.tuning.sure import gained

  est = method_sure(name, den, images, noise_std, ctf=ctf, noise_psd=noise_psd, fitted=fitted, keep_output=True,
                    **params)
  if isinstance(est, str):
    return est
  alpha, after = gained(images, est)
  return scale_output(den, alpha), alpha, est, after


def scale_output(den: Callable, alpha: float) -> Callable:
  """`den` (any signature) with its output multiplied by `alpha`; `den` itself when alpha is 1."""
  if alpha == 1.0:
    return den

  def scaled(*args, **kwargs):
    return alpha * den(*args, **kwargs)

  return scaled
