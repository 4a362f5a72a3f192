"""Parameters from the noisy data alone: Monte-Carlo SURE (Ramani, Blu & Unser, IEEE TIP 2008).

For y = x + n with white Gaussian noise n of std σ over the N pixels of an image, and any
denoiser f (weakly differentiable), Stein's unbiased risk estimate of the per-image MSE
‖f(y) − x‖²/N needs no clean image:

    SURE(y) = ‖y − f(y)‖²/N − σ² + 2σ²·div f(y)/N,   div f(y) ≈ bᵀ(f(y + εb) − f(y))/ε,

with b a Rademacher probe (entries ±1, one per pixel of the batch), averaged over `n_probes`
probes, and ε = `eps`·σ per image; a linear shift-invariant method (gaussian) registers its exact
divergence (`Method.divergence`, `known_divergence`) and is not probed. Our patch methods
threshold (DDTF, OMP) and are not smooth: a tiny ε measures only the local Jacobian and misses
the jumps, so ε is a fraction of σ (see `EPS`). Everything is in image units; `relative_mse`
divides by the signal power estimated from the noisy images, var(y) − σ² (the sweep's MSE is
relative to signal power).

    est = sure(denoisers.get("wiener"), noisy, sigma)    # SureEstimate: mse (B,), relative, gain_db
    params, table = sure_tune("ddtf", noisy)             # knob with the lowest SURE on the grid

A jit-able denoiser is evaluated for the whole grid of knob values compiled (vmapped over the grid
on accelerators, one value at a time on CPU), reducing each image to its SURE terms inside; one
that is not (bm3d) is looped. The knob is chosen on `N_IMAGES` random images; SURE's estimate of
the chosen knob's MSE is then made on `N_ESTIMATE` (`estimate_chosen`): its error is set by the
number of images (the realised noise), not by σ (measured: notes in `estimate_chosen`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax.numpy as jnp
import numpy as np

from cryojax_denoise.denoisers.noise import band_power, noise_std_or_estimate, tail_corrected_noise_std
from cryojax_denoise.denoisers.sure_grid import (  # noqa: F401 (divergence, is_jittable, rademacher: API)
    divergence, grid_stats, is_jittable, rademacher, sure_from_stats)
from cryojax_denoise.denoisers.sure_grid import rademacher_probes as _probes
from cryojax_denoise.denoisers.registry import keyword_params
from cryojax_denoise.errors import InputError

# Probe step as a fraction of σ. Thresholding methods (ddtf, ksvd, bm3d) need a step that is not
# tiny (the MC divergence of hard thresholding at ε = 0.01σ swings by ±50% between probes) but not
# large (ε = 0.2σ overestimates DDTF's MSE by 10-40%); 0.07σ with 4 probes measured best (DDTF, SNR
# 0.1). Smooth methods take a small step: the Wiener gain depends on the power of y, and ε = 0.1σ
# already overestimates its MSE by 12-20%, ε = 0.01σ is unbiased. BM3D takes 0.04σ: against Stein's
# target <n, f(y)>/σ² (noise known), its divergence term at 0.07σ read +11.6 ± 3.9% of the MSE at phantom,
# no CTF, SNR 0.05 (256 images; 0.14σ: +28.5 ± 3.1%), at 0.04σ −0.1 ± 5.0%; in 4 other settings
# 0.03-0.07σ were within 2 standard errors of 0 (README, SURE section; `scripts/sure_probe_step.py`).
EPS = 0.07
EPS_BY_METHOD = {"gaussian": 0.01, "wiener": 0.01, "bm3d": 0.04}
N_PROBES = 4       # Rademacher probes per estimate
# Methods whose SURE jitters from one knob value to the next by more than their MSE differs near the
# optimum: DDTF relearns its frame at every value and on every probed input, and its SURE/MSE ratio
# scatters by ±5-10% along its fine grid. On the 20 validation settings (16 images) the raw argmin
# was within 5% of the best knob's MSE in 12/20 and 13/20 (4 probes, two probe draws) and 17/20 (8);
# the parabola of `choose` in 20/20, 19/20 and 20/20. K-SVD and BM3D do not jitter at their coarser
# grids, where a parabola misfits: raw argmin 20/20 and 14/15 (README, SURE section).
FIT_CHOICE = ("ddtf",)
# Methods whose registered default is their design value, kept unless SURE puts it `significance` paired
# standard errors above the lowest after the subset has grown: BM3D's sigma_scale=1 gives it the noise σ its
# thresholds were designed for, and at low SNR its SURE difference between neighbouring values is the small
# remainder of two large terms (phantom, no CTF, SNR 0.05, 32 images: Δ divergence term −0.65, Δ MSE +0.024), so
# grid values 1.0 and 1.25 can trade places: there, after growing to 128 images, SURE's lowest was 1.25
# (1.077× the best MSE) with 1.0 1.86 standard errors above it. Not for DDTF, whose default is no design
# value: kept this way it would have been 1.087× the best at ribosome, CTF, SNR 0.05 (README, SURE section).
KEEP_DEFAULT = ("bm3d",)
# The tuning subset grows, N_IMAGES at a time, while any other grid value's SURE is within SIGNIFICANCE paired
# standard errors of its lowest (`difference_se`), up to N_TUNE_MAX images and while all tuning images cost at most
# TUNE_BUDGET × the stack's images in denoiser calls (grid values × (1 + probes) each; with the plain pass and the
# estimate's ESTIMATE_BUDGET, `auto` then costs at most ~2.5× plain denoising once the first 32 fit in the budget,
# what it cost before where they do not: DDTF 2.46× on 1,000 images, which do not grow): on 32 images × 4 probes a
# near-tie is a coin flip (bm3d, phantom, SNR 0.1: SURE(1.25) − SURE(1.0) = −0.0017 ± 0.0080 against a true
# +0.0151, so SURE chose a knob 1.09× the best MSE; on 128 images +0.0114 ± 0.0043). Keeping the registered default
# unless beaten by 2 standard errors on the 32 was measured and rejected: DDTF's and K-SVD's defaults are up to 1.38×
# and 1.06× the best MSE at low SNR and 32 images could not show it (6 misses in 40 settings).
SIGNIFICANCE = 2.0
N_TUNE_MAX = 128
TUNE_BUDGET = 1.0
N_IMAGES = 32      # images drawn from a stack to tune on
N_ESTIMATE = 128   # images for SURE's estimate of the chosen knob's MSE (`estimate_chosen`), at least
# ... and more, a batch at a time, while its standard error is above SE_TARGET of the estimate, up to N_ESTIMATE_MAX:
# the estimate's error is mostly the images' realised noise, ~σ²·sqrt(2/pixels) against an MSE that falls with
# the SNR (its SE on 128 images of 64²: 4-14% of the MSE at SNR 0.05, 1-6% at SNR 0.2; README, SURE section).
N_ESTIMATE_MAX = 512
SE_TARGET = 0.03
# ... and while its new images cost at most ESTIMATE_BUDGET × the stack's images in denoiser calls (1 + probes
# each): a stack of 1,000 keeps the 128 (DDTF's auto then costs 2.6× plain denoising in batches of 64, 3.05× at a
# budget of 1, which grew it to 224); the full 512 needs 5,120 images.
ESTIMATE_BUDGET = 0.5
# The estimate's new images (beyond the tuned subset) go in batches of up to ESTIMATE_BATCH: one call of 96
# rather than three of 32, since DDTF and K-SVD learn once per call (DDTF: 0.65 CPU-s per call on 96 images,
# 0.57 on 32, 5 calls instead of 15 with 4 probes); its Monte-Carlo noise is no larger (notes/final5/sure.md).
ESTIMATE_BATCH = 96


@dataclasses.dataclass
class SureEstimate:
  """SURE of one denoiser on a batch: `mse` (B,) per image in image units, `sigma` (B,) used,
  `power` the estimated signal power of the batch, `output` f(y) (B, H, W) (None if not kept),
  `band` (B,) each image's high-band power (`noise.band_power`) and `div` (B,) its divergence per
  pixel, for `standard_error` (None: not known)."""
  mse: np.ndarray
  sigma: np.ndarray
  power: float
  output: np.ndarray | None = None
  band: np.ndarray | None = None
  div: np.ndarray | None = None

  @property
  def mean(self) -> float:
    """Estimated MSE of the batch, image units."""
    return float(np.mean(self.mse))

  @property
  def relative(self) -> float:
    """Estimated MSE relative to the signal power (the sweep's MSE); NaN when no signal is seen."""
    return self.mean / self.power if self.power > 0 else float("nan")

  @property
  def gain_db(self) -> float:
    """Estimated MSE reduction 10·log10(σ² / SURE) in dB (the noisy input has MSE σ²)."""
    return gain_db(self.mse, self.sigma)

  @property
  def standard_error(self) -> float:
    """Standard error of `mean`, image units (`standard_error`)."""
    return standard_error(self.mse, self.band, self.div)

  def record(self) -> dict:
    """The numbers to report: {"n_images", "sure_mse", "sure_relative", "gain_db", "sure_se" (image units),
    "relative_se" (standard error / estimate)}."""
    se = self.standard_error
    return {"n_images": len(self.mse), "sure_mse": self.mean, "sure_relative": self.relative, "gain_db": self.gain_db,
            "sure_se": se, "relative_se": se / self.mean if self.mean > 0 else float("nan")}


def standard_error(sure_mse, band=None, div=None) -> float:
  """Standard error of the mean of per-image SURE values (B,) over independent images, image units.

  SURE's σ² is the mean high-band power of the same images (`noise.band_power`, `band` (B,)), so
  the mean's error is that of mean_i ψ_i with ψ_i = SURE_i − (1 − 2·mean div)·band_i (its influence
  values; `div` (B,) per pixel, 0 if None): the sample sd of ψ over sqrt(B). Without `band`, that
  of the SURE values. Conservative: the spread of the true per-image MSEs counts too. NaN with
  fewer than 3 images.
  """
  s = np.asarray(sure_mse, np.float64)
  if len(s) < 3:
    return float("nan")
  if band is not None:
    s = s - (1.0 - 2.0 * (0.0 if div is None else float(np.mean(div)))) * np.asarray(band, np.float64)
  return float(np.std(s, ddof=1) / np.sqrt(len(s)))


def difference_se(a: SureEstimate, b: SureEstimate) -> float:
  """Standard error of mean(a.mse − b.mse), SURE's difference between two knob values on the same
  images (B,), image units: the sample spread of the paired differences over sqrt(B), each with its
  influence on the shared σ² (2·(mean a.div − mean b.div)·band, cf. `standard_error`). NaN with
  fewer than 3 images."""
  d = np.asarray(a.mse, np.float64) - np.asarray(b.mse, np.float64)
  if len(d) < 3:
    return float("nan")
  if a.band is not None:
    mean_div = lambda e: 0.0 if e.div is None else float(np.mean(e.div))  # noqa: E731
    d = d + 2.0 * (mean_div(a) - mean_div(b)) * np.asarray(a.band, np.float64)
  return float(np.std(d, ddof=1) / np.sqrt(len(d)))


def above_best(ests: list[SureEstimate]) -> np.ndarray:
  """(G,) how many paired standard errors (`difference_se`) each knob value's SURE lies above the
  lowest on the same images (0 there; NaN with under 3 images)."""
  means = np.array([e.mean for e in ests])
  i = int(np.argmin(means))
  return np.array([0.0 if g == i else (means[g] - means[i]) / difference_se(e, ests[i]) for g, e in enumerate(ests)])


def signal_power(images, sigma) -> float:
  """Signal power of a batch (B, H, W) from the noisy images: var(y) − mean σ² (over the batch)."""
  return float(np.var(np.asarray(images, np.float64)) - np.mean(np.square(np.asarray(sigma, np.float64))))


def gain_db(mse, sigma) -> float:
  """10·log10(mean σ² / mean MSE): the estimated MSE reduction over the noisy input, in dB."""
  mse, s2 = float(np.mean(mse)), float(np.mean(np.square(sigma)))
  return float(10.0 * np.log10(s2 / mse)) if mse > 0 else float("inf")


def sigmas(images, noise_std=None, sure_std=None) -> tuple[np.ndarray, np.ndarray]:
  """(σ passed to the denoiser, σ in SURE's formula), each (B,), for images (B, H, W).

  Given `noise_std` serves both; when None the denoiser gets what `denoisers.get` would estimate
  (per-image MAD, computed once on y so that y + εb sees the same σ) and SURE gets `sure_std`, or
  the batch's `tail_corrected_noise_std` (the high band's power less the signal extrapolated into
  it) when that is None too.
  """
  images = jnp.asarray(images, jnp.float32)
  den = noise_std_or_estimate(images, noise_std)
  if noise_std is None:
    den_sure = tail_corrected_noise_std(images) if sure_std is None else sure_std
  else:
    den_sure = noise_std
  est = jnp.broadcast_to(jnp.asarray(den_sure, jnp.float32), images.shape[:1])
  return np.asarray(den, np.float32), np.asarray(est, np.float32)


def eps_for(name: str) -> float:
  """The measured probe step (fraction of σ) for method `name`."""
  return EPS_BY_METHOD.get(name, EPS)


@functools.lru_cache(maxsize=64)
def _fixed_knob(den: Callable) -> Callable:
  """`den` as a grid function of no knob; one object per `den`, so repeated `sure` calls hit the compile cache."""
  return lambda images, sigma, value: den(images, sigma)


def sure(den: Callable, images, noise_std=None, *, sure_std=None, eps: float = EPS,
         n_probes: int = N_PROBES, seed: int = 0, keep_output: bool = False, div: float | None = None) -> SureEstimate:
  """MC-SURE of `den(images (B, H, W), noise_std (B,)) -> (B, H, W)` on `images`, in image units.

  `noise_std` scalar or (B,) (None: estimated, see `sigmas`; `sure_std` then overrides SURE's σ);
  `eps` the probe step as a fraction of σ; `n_probes` Rademacher probes from `seed`, or none when
  `div`, the exact divergence per pixel, is known (`known_divergence`).
  Costs 1 + n_probes calls of `den` on the batch (1 with `div`).
  """
  images = np.asarray(images, np.float32)
  den_sigma, sigma = sigmas(images, noise_std, sure_std)
  probes = _probes(seed, 0 if div is not None else n_probes, images.shape)
  resid, mc_div, _ = grid_stats(_fixed_knob(den), images, den_sigma, [0.0], probes, eps * sigma)
  div = mc_div[0] if div is None else np.full(len(images), div, np.float32)
  output = np.asarray(den(images, den_sigma), np.float32) if keep_output else None
  return SureEstimate(sure_from_stats(resid[0], div, sigma), sigma, signal_power(images, sigma), output,
                      np.asarray(band_power(images)), div)


def known_divergence(name: str, shape: tuple, **params) -> float | None:
  """Exact divergence per pixel of registry method `name` with `params` (its defaults for the rest)
  on images of `shape` (..., H, W), when it registers one (`Method.divergence`: linear shift-invariant
  methods); None otherwise."""
  from cryojax_denoise import denoisers

  method = denoisers.REGISTRY.get(name)
  if method is None or method.divergence is None:
    return None
  takes = keyword_params(method.divergence)
  return float(method.divergence(*shape[-2:], **{k: v for k, v in {**method.defaults, **params}.items() if k in takes}))


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
              significance: float = SIGNIFICANCE, stack_size: int | None = None, **fixed) -> tuple[dict, list[dict]]:
  """Chooses `REGISTRY[name].knob` on the grid by SURE on noisy images alone (`choose`: the lowest,
  or for `FIT_CHOICE` methods the minimum of a parabola through it; for `KEEP_DEFAULT` methods the
  registered default while its SURE is within `significance` paired standard errors of the lowest).

  The grid is run on `n_images` random images (seeded), then on `n_images` more at a time while the
  SURE of any other value is within `significance` paired standard errors of the lowest (`above_best`), up to
  `n_tune_max` images and while all of them cost at most `tune_budget` × the stack's images in calls
  (the first `n_images` always run). `stack_size`: the images of the stack `noisy` was drawn from, for
  both budgets (None: `noisy` is the stack).

  `noisy` (B, H, W), `noise_std` scalar or (B,) (None: estimated, `sure_std` for SURE's σ, see
  `sigmas`); `eps` None: `eps_for(name)`; a method
  with a `known_divergence` is not probed (`n_probes` ignored). Like
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
  given = None if noise_std is None else np.broadcast_to(np.asarray(noise_std, np.float32), len(noisy))
  rows = subset(len(noisy), n_images, seed)
  exact = [known_divergence(name, noisy.shape, **{knob: v}, **fixed) for v in values]
  n_probes = 0 if exact[0] is not None else n_probes
  fn = knob_function(name, tuple(sorted(fixed.items())))
  rest = np.setdiff1d(np.arange(len(noisy)), rows)
  order = np.concatenate([rows, rest[np.random.default_rng(seed + 2).permutation(len(rest))]])  # growth draws
  calls = len(values) * (1 + n_probes)  # denoiser calls per tuning image
  stack = len(noisy) if stack_size is None else stack_size
  n_stop = min(max(n_tune_max, len(rows)), len(noisy), max(len(rows), int(tune_budget * stack / calls)))
  t0, stats, n = time.perf_counter(), [], 0
  while True:
    batch = order[n:n + len(rows)]
    den_sigma_b, sigma_b = sigmas(noisy[batch], None if given is None else given[batch], sure_std)
    probes = _probes(seed + (2 + n if n else 0), n_probes, noisy[batch].shape)
    stats.append(grid_stats(fn, noisy[batch], den_sigma_b, values, probes, eps * sigma_b,
                            None if clean is None else np.asarray(clean, np.float32)[batch], grid_batch))
    n += len(batch)
    tuned = order[:n]
    resid, div = (np.concatenate([st[i] for st in stats], axis=1) for i in (0, 1))
    mse = None if clean is None else np.concatenate([st[2] for st in stats], axis=1)
    if n_probes == 0:
      div = np.repeat(np.asarray(exact, np.float32)[:, None], n, axis=1)
    images = noisy[tuned]
    den_sigma, sigma = sigmas(images, None if given is None else given[tuned], sure_std)
    power, band = signal_power(images, sigma), np.asarray(band_power(images))
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
                                       done=done, div=exact[g], stack_size=stack)
  return {knob: best[knob], **fixed}, table


def estimate_chosen(fn: Callable, noisy, noise_std, value, *, chunk: int, n_estimate: int = N_ESTIMATE,
                    n_max: int = N_ESTIMATE_MAX, se_target: float = SE_TARGET, budget: float = ESTIMATE_BUDGET,
                    seed: int = 0, sure_std=None, eps: float = EPS, n_probes: int = N_PROBES, clean=None,
                    done=None, div: float | None = None, stack_size: int | None = None) -> dict:
  """SURE of `fn(images, sigma, value)` (one knob value) on random images of `noisy` (B, H, W): first
  `n_estimate`, then one more batch at a time while the standard error exceeds `se_target` of the
  estimate, up to `n_max`, the stack, and new images whose (1 + `n_probes`) calls each add up to at
  most `budget` × the stack's images. New images go in equal batches of at most `chunk` (one
  compiled shape; batch methods learn once per batch, so fewer, larger calls cost less; a remainder
  is left out); `done` = (rows, resid, div, mse, band) of images already probed at this value
  (`grid_stats`' terms and `noise.band_power`) are counted, not rerun; `div` the exact divergence
  per pixel, when known (no probes: `n_probes` is then 0); `stack_size` the budget's stack (None:
  `noisy`). Returns `SureEstimate.record()` (+ the
  true "mse" of the same images with `clean`).

  The estimate's error is mostly the realised noise in what the denoiser keeps (its energy differs
  from σ² by ~sqrt(2/(B·H·W)) relative), not σ's: on 20 settings (64², gaussian) SURE on 32 images
  was within 10% of the same images' true MSE in 18/20 with the estimated σ and 18/20 with the exact
  one, on 128 in 20/20 (notes/final4/sure.md); `standard_error` measures it on the images used.
  """
  noisy = np.asarray(noisy, np.float32)
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
      if not standard_error(values, np.concatenate(bands), terms(1)) > se_target * values.mean():
        break
    new = order[n:n + chunk]
    given = None if stack_std is None else stack_std[new]
    den_sigma = np.asarray(noise_std_or_estimate(jnp.asarray(noisy[new]), given))
    probes = _probes(seed + 1 + n, n_probes, (chunk, *noisy.shape[1:]))
    step = eps * (stack_std[new] if stack_std is not None else np.full(chunk, sure_sigma(n_first)[0], np.float32))
    resid, mc_div, mse = grid_stats(fn, noisy[new], den_sigma, [value], probes, step,
                                    None if clean is None else np.asarray(clean, np.float32)[new])
    stats.append((resid[0], mc_div[0] if div is None else np.full(chunk, div, np.float32),
                  None if mse is None else mse[0]))
    bands.append(np.asarray(band_power(noisy[new])))
    n += chunk
  sigma = pooled(n)
  est = SureEstimate(sure_from_stats(terms(0), terms(1), sigma), sigma, signal_power(noisy[order[:n]], sigma),
                     band=np.concatenate(bands), div=terms(1))
  return {**est.record(), **({"mse": float(np.mean(terms(2)))} if clean is not None else {})}


def choose(values, sure_mse, fit: bool = False, width: int = 5) -> int:
  """Index of the chosen grid value: SURE's argmin, or with `fit` the grid value nearest the minimum
  of a parabola in log(value) least-squares fitted to the `width` values around that argmin (the
  argmin itself when the parabola does not open upwards or its minimum lies outside those values:
  DDTF at SNR 0.05 had a near-flat jittered window whose parabola bottomed out two values below it,
  1.84× the best MSE, where the argmin is 1.11×)."""
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
