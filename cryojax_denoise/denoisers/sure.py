"""Parameters from the noisy data alone: Monte-Carlo SURE (Ramani, Blu & Unser, IEEE TIP 2008).

For y = x + n with white Gaussian noise n of std σ over the N pixels of an image, and any
denoiser f (weakly differentiable), Stein's unbiased risk estimate of the per-image MSE
‖f(y) − x‖²/N needs no clean image:

    SURE(y) = ‖y − f(y)‖²/N − σ² + 2σ²·div f(y)/N,   div f(y) ≈ bᵀ(f(y + εb) − f(y))/ε,

with b a Rademacher probe (entries ±1, one per pixel of the batch), averaged over `n_probes`
probes, and ε = `eps`·σ per image. Our patch methods threshold (DDTF, OMP) and are not smooth:
a tiny ε measures only the local Jacobian and misses the jumps, so ε is a fraction of σ (see
`EPS`). Everything is in image units; `relative_mse` divides by the signal power estimated from
the noisy images, var(y) − σ² (the sweep's MSE is relative to signal power).

    est = sure(denoisers.get("wiener"), noisy, sigma)    # SureEstimate: mse (B,), relative, gain_db
    params, table = sure_tune("ddtf", noisy)             # knob with the lowest SURE on the grid

A jit-able denoiser is evaluated for the whole grid of knob values in one compiled function
(vmapped over the grid on accelerators, `lax.map` on CPU); one that is not (bm3d) is looped.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.errors import InputError

# Probe step as a fraction of σ. Thresholding methods (ddtf, ksvd, bm3d) need a step that is not
# tiny (the MC divergence of hard thresholding at ε = 0.01σ swings by ±50% between probes) but not
# large (ε = 0.2σ overestimates DDTF's MSE by 10-40%); 0.07σ with 4 probes measured best (DDTF, SNR
# 0.1). Smooth methods take a small step: the Wiener gain depends on the power of y, and ε = 0.1σ
# already overestimates its MSE by 12-20%, ε = 0.01σ is unbiased.
EPS = 0.07
EPS_BY_METHOD = {"gaussian": 0.01, "wiener": 0.01}
N_PROBES = 4       # Rademacher probes per estimate
# Methods whose SURE jitters from one knob value to the next by more than their MSE differs near the
# optimum: DDTF relearns its frame at every value and on every probed input, and its SURE/MSE ratio
# scatters by ±5-10% along its fine grid. On the 20 validation settings (16 images) the raw argmin
# was within 5% of the best knob's MSE in 12/20 and 13/20 (4 probes, two probe draws) and 17/20 (8);
# the parabola of `choose` in 20/20, 19/20 and 20/20. K-SVD and BM3D do not jitter at their coarser
# grids, where a parabola misfits: raw argmin 20/20 and 14/15 (README, SURE section).
FIT_CHOICE = ("ddtf",)
N_IMAGES = 32      # images drawn from a stack to tune on
BAND_CUTOFF = 0.4   # cycles/pixel beyond which `band_noise_std` takes images to be noise alone


@dataclasses.dataclass
class SureEstimate:
  """SURE of one denoiser on a batch: `mse` (B,) per image in image units, `sigma` (B,) used,
  `power` the estimated signal power of the batch, `output` f(y) (B, H, W) (None if not kept)."""
  mse: np.ndarray
  sigma: np.ndarray
  power: float
  output: np.ndarray | None = None

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


def rademacher(key: jax.Array, shape: tuple) -> jax.Array:
  """Random ±1 float32 array of `shape`."""
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(jnp.float32)


def divergence(out, probed, probes, eps):
  """Per-image MC divergence (B,): mean over k of b_kᵀ(f(y + ε·b_k) − f(y))/ε over each image.

  `out` f(y) (B, H, W), `probed` f(y + ε·b_k) (K, B, H, W), `probes` the ±1 b_k (K, B, H, W),
  `eps` (B,) the absolute steps. NumPy or JAX arrays.
  """
  xp = jnp if isinstance(out, jax.Array) else np
  return xp.mean(xp.sum(probes * (probed - out[None]) / eps[None, :, None, None], axis=(-2, -1)), axis=0)


def sure_from_outputs(images, out, probed, probes, sigma, eps):
  """Per-image MC-SURE (B,) from y `images` (B, H, W), f(y) `out` and the probed outputs (see
  `divergence`); `sigma` (B,) the noise std. Image units."""
  xp = jnp if isinstance(out, jax.Array) else np
  n = images.shape[-1] * images.shape[-2]
  resid = xp.sum((images - out) ** 2, axis=(-2, -1)) / n
  return resid - sigma ** 2 + 2.0 * sigma ** 2 * divergence(out, probed, probes, eps) / n


def signal_power(images, sigma) -> float:
  """Signal power of a batch (B, H, W) from the noisy images: var(y) − mean σ² (over the batch)."""
  return float(np.var(np.asarray(images, np.float64)) - np.mean(np.square(np.asarray(sigma, np.float64))))


def gain_db(mse, sigma) -> float:
  """10·log10(mean σ² / mean MSE): the estimated MSE reduction over the noisy input, in dB."""
  mse, s2 = float(np.mean(mse)), float(np.mean(np.square(sigma)))
  return float(10.0 * np.log10(s2 / mse)) if mse > 0 else float("inf")


@functools.partial(jax.jit, static_argnames=("cutoff",))
def band_noise_std(images: jax.Array, cutoff: float = BAND_CUTOFF) -> jax.Array:
  """One noise std for a (B, H, W) batch from its power beyond `cutoff` cycles/pixel, image units.

  White noise of std σ has mean |FFT|²/(H·W) = σ² at every frequency, while particle images carry
  almost no signal beyond 0.4 cycles/pixel (power < 0.5% of the noise at SNR 1 on our maps), so
  the mean over those modes of all images is an unbiased σ² (the per-image MAD estimate of
  `noise.py` has ~4% scatter per image, too much for SURE's −σ² term at SNR ≤ 0.1).
  """
  x = jnp.asarray(images, jnp.float32)
  _, H, W = x.shape
  r2 = np.fft.fftfreq(H)[:, None] ** 2 + np.fft.fftfreq(W)[None, :] ** 2
  band = jnp.asarray(r2 > cutoff ** 2)
  power = jnp.abs(jnp.fft.fft2(x)) ** 2 / (H * W)
  return jnp.sqrt(jnp.sum(jnp.where(band, power, 0.0)) / (x.shape[0] * jnp.sum(band)))


def sigmas(images, noise_std=None, sure_std=None) -> tuple[np.ndarray, np.ndarray]:
  """(σ passed to the denoiser, σ in SURE's formula), each (B,), for images (B, H, W).

  Given `noise_std` serves both; when None the denoiser gets what `denoisers.get` would estimate
  (per-image MAD, computed once on y so that y + εb sees the same σ) and SURE gets `sure_std`, or
  the batch's `band_noise_std` when that is None too.
  """
  from cryojax_denoise.denoisers.noise import noise_std_or_estimate

  images = jnp.asarray(images, jnp.float32)
  den = noise_std_or_estimate(images, noise_std)
  if noise_std is None:
    den_sure = band_noise_std(images) if sure_std is None else sure_std
  else:
    den_sure = noise_std
  est = jnp.broadcast_to(jnp.asarray(den_sure, jnp.float32), images.shape[:1])
  return np.asarray(den, np.float32), np.asarray(est, np.float32)


def _probes(seed: int, n_probes: int, shape: tuple) -> np.ndarray:
  return np.asarray(rademacher(jax.random.key(seed), (n_probes, *shape)))


def is_jittable(fn: Callable, images, sigma, *args) -> bool:
  """Whether `fn(images, sigma, *args)` traces (jax.eval_shape); bm3d (NumPy in processes) does not."""
  try:
    jax.eval_shape(fn, jnp.asarray(images), jnp.asarray(sigma), *args)
    return True
  except Exception:  # a tracer turned into NumPy, a Python branch on a traced value, ...
    return False


@functools.partial(jax.jit, static_argnames=("fn", "grid_batch"))
def _grid_outputs(fn, images, sigma, values, probes, eps, grid_batch=None):
  """f_v(y) and f_v(y + ε·b_k) for every knob value v: ((G, B, H, W), (G, K, B, H, W))."""
  inputs = jnp.concatenate([images[None], images[None] + eps[None, :, None, None] * probes])

  def one(v):
    outs = jax.vmap(lambda x: fn(x, sigma, v))(inputs)
    return outs[0], outs[1:]

  return jax.lax.map(one, values, batch_size=grid_batch)


def grid_outputs(fn: Callable, images, sigma, values, probes, eps, grid_batch: int | None = None):
  """`fn(images, sigma, value)` at y and at y + ε·b_k for each value: NumPy ((G, B, H, W), (G, K, B, H, W)).

  Jit-able `fn` (hashable: the same object hits the compile cache) runs as one compiled function,
  `grid_batch` values vmapped at a time (default: all of them on an accelerator, one on CPU);
  any other `fn` is called in a Python loop, one batch at a time.
  """
  images = np.asarray(images, np.float32)
  values = np.asarray(values, np.float32)
  if is_jittable(fn, images, sigma, values[0]):
    if grid_batch is None:
      grid_batch = len(values) if jax.default_backend() != "cpu" else 1
    out, probed = _grid_outputs(fn, jnp.asarray(images), jnp.asarray(sigma), jnp.asarray(values),
                                jnp.asarray(probes), jnp.asarray(eps), grid_batch=max(1, min(grid_batch, len(values))))
    return np.asarray(out), np.asarray(probed)
  outs, probed = [], []
  for v in values:
    outs.append(np.asarray(fn(images, sigma, float(v)), np.float32))
    probed.append(np.stack([np.asarray(fn(images + eps[:, None, None] * b, sigma, float(v)), np.float32)
                            for b in probes]))
  return np.stack(outs), np.stack(probed)


def eps_for(name: str) -> float:
  """The measured probe step (fraction of σ) for method `name`."""
  return EPS_BY_METHOD.get(name, EPS)


def _fixed_knob(den: Callable) -> Callable:
  return lambda images, sigma, value: den(images, sigma)


def sure(den: Callable, images, noise_std=None, *, sure_std=None, eps: float = EPS,
         n_probes: int = N_PROBES, seed: int = 0, keep_output: bool = False) -> SureEstimate:
  """MC-SURE of `den(images (B, H, W), noise_std (B,)) -> (B, H, W)` on `images`, in image units.

  `noise_std` scalar or (B,) (None: estimated, see `sigmas`; `sure_std` then overrides SURE's σ);
  `eps` the probe step as a fraction of σ; `n_probes` Rademacher probes from `seed`.
  Costs 1 + n_probes calls of `den` on the batch.
  """
  images = np.asarray(images, np.float32)
  den_sigma, sigma = sigmas(images, noise_std, sure_std)
  probes = _probes(seed, n_probes, images.shape)
  out, probed = grid_outputs(_fixed_knob(den), images, den_sigma, [0.0], probes, eps * sigma)
  mse = sure_from_outputs(images, out[0], probed[0], probes, sigma, eps * sigma)
  return SureEstimate(mse, sigma, signal_power(images, sigma), out[0] if keep_output else None)


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
              seed: int = 0, eps: float | None = None, n_probes: int = N_PROBES, clean=None,
              grid_batch: int | None = None, **fixed) -> tuple[dict, list[dict]]:
  """Chooses `REGISTRY[name].knob` on the grid by SURE on noisy images alone (`choose`: the lowest,
  or for `FIT_CHOICE` methods the minimum of a parabola through it).

  `noisy` (B, H, W), `noise_std` scalar or (B,) (None: estimated, `sure_std` for SURE's σ, see
  `sigmas`); a random subset of `n_images` is used (seeded); `eps` None: `eps_for(name)`. Like
  `tuning.tune`, returns ({knob: best, **fixed}, table), one row
  per grid value: {knob: v, "sure_mse": image units, "sure_relative", "gain_db", "seconds",
  "warning": `reliability` note or ""}, and, when `clean` (B, H, W) is given (for validation
  only), the true "mse" of the same outputs.
  """
  check_tunable(name)
  from cryojax_denoise import denoisers

  knob = denoisers.REGISTRY[name].knob
  eps = eps_for(name) if eps is None else eps
  values = tuple(denoisers.REGISTRY[name].grid if grid is None else grid)
  if not values:
    raise InputError(f"empty tuning grid for {name!r}")
  noisy = np.asarray(noisy, np.float32)
  rows = subset(len(noisy), n_images, seed)
  images = noisy[rows]
  den_sigma, sigma = sigmas(images, None if noise_std is None else np.broadcast_to(noise_std, len(noisy))[rows],
                            sure_std)
  probes = _probes(seed, n_probes, images.shape)
  t0 = time.perf_counter()
  out, probed = grid_outputs(knob_function(name, tuple(sorted(fixed.items()))), images, den_sigma, values,
                             probes, eps * sigma, grid_batch)
  seconds = (time.perf_counter() - t0) / len(values)
  power = signal_power(images, sigma)
  table = []
  for g, v in enumerate(values):
    est = SureEstimate(sure_from_outputs(images, out[g], probed[g], probes, sigma, eps * sigma), sigma, power)
    row = {knob: v, "sure_mse": est.mean, "sure_relative": est.relative, "gain_db": est.gain_db,
           "seconds": seconds}
    if clean is not None:
      row["mse"] = float(np.mean((out[g] - np.asarray(clean, np.float32)[rows]) ** 2))
    table.append(row)
  best = table[choose(values, [r["sure_mse"] for r in table], name in FIT_CHOICE)]
  note = reliability(den_sigma, sigma, best["sure_mse"], power)
  for row in table:
    row["warning"] = note
  return {knob: best[knob], **fixed}, table


def choose(values, sure_mse, fit: bool = False, width: int = 5) -> int:
  """Index of the chosen grid value: SURE's argmin, or with `fit` the grid value nearest the minimum
  of a parabola in log(value) least-squares fitted to the `width` values around that argmin (the
  argmin itself when the parabola does not open upwards)."""
  s = np.asarray(sure_mse, np.float64)
  i = int(np.argmin(s))
  if not fit or len(s) < 3:
    return i
  x = np.log(np.asarray(values, np.float64))
  w = min(width, len(s))
  lo = max(0, min(i - w // 2, len(s) - w))
  c = np.polyfit(x[lo:lo + w], s[lo:lo + w], 2)
  return int(np.argmin(np.abs(x + c[1] / (2 * c[0])))) if c[0] > 0 else i


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


def compare_with_clean(name: str, noisy, clean, noise_std=None, **kw) -> dict:
  """SURE against ground truth on one simulated batch (for the sweep and validation).

  Runs `sure_tune(..., clean=clean)` and returns the knob chosen by SURE and by the true MSE on
  the same outputs, the true MSE of each choice, SURE's estimate at its choice and the ratios
  (`choice_ratio` = MSE(SURE's knob) / MSE(best knob), `estimate_ratio` = SURE / true MSE) and
  the true MSE of the registered default (`mse_default`, NaN when not on the grid).
  MSEs are in image units and relative to the clean batch's power (`*_relative`).
  """
  params, table = sure_tune(name, noisy, noise_std, clean=clean, **kw)
  knob = next(iter(table[0]))
  rows = subset(len(noisy), kw.get("n_images", N_IMAGES), kw.get("seed", 0))
  power = float(np.mean(np.square(np.asarray(clean, np.float64)[rows])))
  chosen = next(r for r in table if r[knob] == params[knob])
  best = min(table, key=lambda r: r["mse"])
  from cryojax_denoise import denoisers

  default = next((r["mse"] for r in table if r[knob] == denoisers.REGISTRY[name].default), float("nan"))
  return {"method": name, "knob": knob, "mse_default": default, "sure_choice": chosen[knob], "clean_choice": best[knob],
          "mse_sure_choice": chosen["mse"], "mse_clean_choice": best["mse"], "sure_mse": chosen["sure_mse"],
          "mse_sure_choice_relative": chosen["mse"] / power, "sure_mse_relative": chosen["sure_mse"] / power,
          "choice_ratio": chosen["mse"] / best["mse"], "estimate_ratio": chosen["sure_mse"] / chosen["mse"],
          "seconds": sum(r["seconds"] for r in table), "table": table}
