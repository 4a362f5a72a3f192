"""Self-supervised training of the generator on noisy particles alone (no clean images).

Losses, on per-image standardised images x (B, H, W) (see `training.data`); `x2` is the second noisy
copy for noise2noise (standardised with x's mean and std) and x itself otherwise:

* `neighbor2neighbor` (Huang et al., CVPR 2021): each 2×2 cell gives two different, adjacent pixels,
  one to g1(x) and one to g2(x) (H/2, W/2), whose noise is independent. Loss
  ‖f(g1 x) − g2 x‖² + γ‖f(g1 x) − g2 x − (g1 f(x) − g2 f(x))‖², f(x) under stop_gradient (γ = `gamma`).
* `noise2self` (Batson & Royer, ICML 2019): a J-invariant blind spot. Per image one random phase of a
  `mask_grid`-spaced pixel grid is masked; masked pixels are replaced by the mean of their 8 neighbours
  (`mask_replace="mean"`) or by one random neighbour (`"neighbor"`), and the squared error is scored on
  the masked pixels only. At inference the plain network is applied.
* `noise2noise` (Lehtinen et al., 2018): ‖f(x) − x2‖² with two independent noisy copies of each
  particle (half sets, even/odd frames, or two simulated noise draws); the data source swaps the two
  copies at random so both serve as input.

Measured (70S ribosome, 64², CTF, SNR 0.1, 2000 particles, 1000 steps of 16 from scratch; test MSE,
BM3D 0.52): noise2self 0.35, noise2noise 0.32 (supervised 0.30), neighbor2neighbor 0.87: at this SNR
the half-size training images of neighbor2neighbor do not carry over to full size, so noise2self is
the default.

All assume pixel-wise independent noise; correlated noise (e.g. from motion correction or a
non-flat spectrum) is partly learned as signal. `noise=coloured` (or `auto`, as `denoise`'s
`noise=`; `noise_psd=FILE` a known spectrum) therefore trains on whitened particles: the spectrum is
measured on the training stack exactly as `denoise --config.noise=coloured` measures it
(`noise.stack.stack_noise`: same rows, same normalisation; `training/ss_noise.py`), every batch is whitened with
W = sqrt(mean P / P) (`noise.whiten`), and the decision goes to `WORKDIR/noise.json` with the 2D
spectrum in `WORKDIR/noise_psd.npy`, so `denoise --config.noise=coloured --config.noise_psd=
WORKDIR/noise_psd.npy` applies the model as colour ∘ network ∘ whiten with the same filter. Whitening,
not a wider blind spot: measured on relion31-coloured noise (64², 600 particles) the noise
autocorrelation at lag 1 / √2 / 2 / 3 px is 0.24 / 0.17 / 0.10 / 0.05 raw and ≤ 0.002 at every lag
within 5 px after whitening with the estimate (≤ 0.012 from 30 particles; white noise: ≤ 0.004), so the blind spot's independence
holds again with the default `mask_grid` (docs/finetuning.md). Images of any size are reflect-padded to the
generator's stride (the sub-sampled half-size images too) and cropped back.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.training import data as data_lib

LOSSES = ("neighbor2neighbor", "noise2self", "noise2noise", "sure")
REPLACEMENTS = ("mean", "neighbor")
# Loss options that change the compiled step.
CONFIG_KEYS = ("gamma", "mask_grid", "mask_replace", "sure_eps", "sure_colouring")

# Ordered pairs of adjacent pixels of a 2×2 cell, cell index = 2·row + column.
NEIGHBOUR_PAIRS = np.array([(0, 1), (0, 2), (1, 0), (1, 3), (2, 0), (2, 3), (3, 1), (3, 2)], np.int32)
# The 8 neighbours (dy, dx) of a pixel.
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
_VAL_KEY = 0x55  # fixed key of the validation loss (same masks at every evaluation)
_VALIDATION: dict = {}  # compiled validation losses, per (generator graph, loss options)


def add_config(c: ml_collections.ConfigDict) -> None:
  """The self-supervised keys, added to `train.default_config("self_supervised")`."""
  c.init = "general"            # start from the bundled general model ("none": from scratch; or a checkpoint)
  c.loss = "noise2self"         # noise2self | neighbor2neighbor | noise2noise (see the module docstring)
  c.noisy2 = ""                 # noise2noise: a second noisy copy of `noisy` (same particles, same order)
  c.gamma = 2.0                 # neighbor2neighbor: weight γ of the consistency regulariser
  c.mask_grid = 4               # noise2self: spacing of the masked pixel grid (1/mask_grid² masked)
  c.mask_replace = "mean"       # noise2self: masked pixels <- "mean" of 8 neighbours | a random "neighbor"
  c.sure_eps = 0.01             # sure: probe step ε in units of each image's noise std
  c.sure_colouring = ()         # sure on whitened particles: radial V² = P / mean P (shells 0 … 0.5 cycles/px)
                                # of the colouring filter, to score the MSE coloured back; (): the whitened MSE
  c.val_size = 128              # held-out noisy images scored by the self-supervised loss
  c.noise = "white"             # white | coloured | auto: train on particles whitened with their spectrum
  c.noise_psd = ""              # a known noise spectrum file (.npy/.txt, radial or 2D) instead of measuring
  c.noise_fit_size = 10000      # particles the spectrum is measured on (as denoise's fit_size)
  c.crop_size = 0               # > 0: train on random crops of this size (px) of larger particles (the network is
                                # convolutional and denoises whole particles): a 256² stack trains at 64²'s cost


def check_config(c) -> None:
  """Validates the self-supervised keys; sets `c.image_size` from the noisy stack when given."""
  if c.loss not in LOSSES:
    raise InputError(f"config.loss: must be one of {', '.join(LOSSES)} for self-supervised training, got {c.loss!r}")
  if c.mask_replace not in REPLACEMENTS:
    raise InputError(f"config.mask_replace: must be one of {', '.join(REPLACEMENTS)}, got {c.mask_replace!r}")
  if int(c.get("crop_size", 0)) < 0:
    raise InputError(f"config.crop_size: must be >= 0 (0: whole particles), got {c.crop_size}")
  if int(c.mask_grid) < 2:
    raise InputError(f"config.mask_grid: must be at least 2 (neighbours of a masked pixel stay unmasked), "
                     f"got {c.mask_grid}")
  from cryojax_denoise.noise import decide

  if c.get("noise", "white") not in decide.MODES:
    raise InputError(f"config.noise: {c.noise!r} is not one of {', '.join(decide.MODES)}")
  if c.get("noise_psd", ""):
    decide.load_psd_file(str(c.noise_psd))
  if int(c.get("noise_fit_size", 10000)) < 2:
    raise InputError(f"config.noise_fit_size: must be at least 2, got {c.noise_fit_size}")
  if c.noisy2 and not c.noisy:
    raise InputError("config.noisy2: given without noisy= (the first copy)")
  if c.clean:
    raise InputError("config.clean: self-supervised training reads no clean images; leave clean= empty")
  if c.noisy:
    c.image_size = int(data_lib.NoisyStack.read(c)[0].shape[1])
  if c.loss == "neighbor2neighbor" and int(c.get("crop_size", 0)) % 2:
    raise InputError(f"config.crop_size: neighbor2neighbor needs an even crop, got {c.crop_size} px")
  if c.loss == "neighbor2neighbor" and int(c.image_size) % 2:
    raise InputError(f"config.noisy: neighbor2neighbor needs an even image size, got {c.image_size} px")


# ---------------------------------------------------------------------------- kernels


def cells(images: jax.Array) -> jax.Array:
  """(B, H, W) with H, W even -> (B, H/2, W/2, 4): the 2×2 cells, index 2·row + column."""
  b, h, w = images.shape
  return images.reshape(b, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(b, h // 2, w // 2, 4)


def neighbour_indices(key: jax.Array, shape: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
  """Two (B, H/2, W/2) int arrays: per cell, the indices of two different adjacent pixels."""
  pick = jax.random.randint(key, shape, 0, len(NEIGHBOUR_PAIRS))
  pairs = jnp.asarray(NEIGHBOUR_PAIRS)
  return pairs[pick, 0], pairs[pick, 1]


def subsample(images: jax.Array, index: jax.Array) -> jax.Array:
  """(B, H, W), index (B, H/2, W/2) -> (B, H/2, W/2): pixel `index` of each 2×2 cell."""
  return jnp.take_along_axis(cells(images), index[..., None], axis=-1)[..., 0]


def apply_padded(generator, x: jax.Array, prior: jax.Array | None = None) -> jax.Array:
  """generator(x) (or generator(x, prior)) for (B, H, W) of any size: reflect-padded to its stride and
  cropped back."""
  stride = int(getattr(generator, "stride", 1))
  h, w = x.shape[-2:]
  ph, pw = -h % stride, -w % stride

  def pad(a):
    if a is None or not (ph or pw):
      return a
    return jnp.pad(a, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")

  out = generator(pad(x)) if prior is None else generator(pad(x), pad(prior))
  return out[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def neighbours(x: jax.Array) -> jax.Array:
  """(B, H, W) -> (8, B, H, W): each pixel's 8 neighbours (reflected at the border, never itself)."""
  h, w = x.shape[-2:]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect")
  return jnp.stack([xp[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _OFFSETS])


def replacement(x: jax.Array, key: jax.Array, how: str) -> jax.Array:
  """(B, H, W) values for masked pixels that do not depend on the pixel itself."""
  nb = neighbours(x)
  if how == "mean":
    return jnp.mean(nb, axis=0)
  pick = jax.random.randint(key, x.shape, 0, len(_OFFSETS))
  return jnp.take_along_axis(nb, pick[None], axis=0)[0]


def grid_mask(phase: jax.Array, shape: tuple[int, int], grid: int) -> jax.Array:
  """phase (B, 2) ints in [0, grid) -> (B, H, W) bool: pixels with (y, x) ≡ phase (mod grid)."""
  yy = jnp.arange(shape[0])[None, :, None] % grid
  xx = jnp.arange(shape[1])[None, None, :] % grid
  return (yy == phase[:, 0, None, None]) & (xx == phase[:, 1, None, None])


def blind_spot(generator, x: jax.Array, grid: int = 4, how: str = "mean", key: jax.Array | None = None) -> jax.Array:
  """The J-invariant denoiser of a masked-trained network: output pixel i is generator(x with pixel i's
  grid phase replaced)[i], so it never depends on x[i]. grid² forward passes; (B, H, W) -> (B, H, W)."""
  key = jax.random.key(0) if key is None else key
  rep = replacement(x, key, how)
  out = jnp.zeros_like(x)
  b = x.shape[0]
  for dy in range(grid):
    for dx in range(grid):
      mask = grid_mask(jnp.tile(jnp.array([[dy, dx]]), (b, 1)), x.shape[-2:], grid)
      out = jnp.where(mask, apply_padded(generator, jnp.where(mask, rep, x)), out)
  return out


# ---------------------------------------------------------------------------- losses


def neighbor2neighbor(generator, x, x2, key, *, gamma: float = 2.0):
  del x2
  b, h, w = x.shape
  i1, i2 = neighbour_indices(key, (b, h // 2, w // 2))
  g1, g2 = subsample(x, i1), subsample(x, i2)
  fx = jax.lax.stop_gradient(apply_padded(generator, x))
  diff = apply_padded(generator, g1) - g2
  rec = jnp.mean(diff ** 2)
  reg = jnp.mean((diff - (subsample(fx, i1) - subsample(fx, i2))) ** 2)
  return rec + gamma * reg, {"ss_rec": rec, "ss_reg": reg}


def noise2self(generator, x, x2, key, *, grid: int = 4, how: str = "mean"):
  del x2
  k_phase, k_rep = jax.random.split(key)
  mask = grid_mask(jax.random.randint(k_phase, (x.shape[0], 2), 0, grid), x.shape[-2:], grid)
  out = apply_padded(generator, jnp.where(mask, replacement(x, k_rep, how), x))
  rec = jnp.sum(jnp.where(mask, (out - x) ** 2, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
  return rec, {"ss_rec": rec}


def noise2noise(generator, x, x2, key):
  del key
  rec = jnp.mean((apply_padded(generator, x) - x2) ** 2)
  return rec, {"ss_rec": rec}


def sure(generator, x, x2, key, *, eps: float = 0.01, prior=None, probe=None, colouring: tuple = ()):
  """Monte-Carlo SURE as a training loss (Ramani, Blu & Unser 2008; Soltanayev & Chun, NeurIPS 2018): an
  unbiased estimate of mean((f(x) − clean)²) from x alone under white Gaussian noise of std σ (Haar MAD of
  each standardised image): ‖x − f(x)‖²/N − σ² + 2σ²·bᵀ(f(x + εσb) − f(x))/(εσN), one probe b per image.
  A prior input p (the CWF estimate, affine in x) moves with the probe by εσ·(W b): `probe` = (b, W b)
  (B, H, W) each, precomputed (`cwf_sure_inputs`); without a prior, b is drawn from `key` (Rademacher).

  `colouring`: x are whitened particles and the MSE wanted is that of the output coloured back by V = 1/W,
  ‖V(f(x) − clean)‖²/N (what `denoise` returns under coloured noise); the radial profile of V² (shells
  0 … 0.5 cycles/px, `colouring_grid`). SURE of it: (‖V(x − f(x))‖² − σ² tr V² + 2σ² tr(V² J_f))/N, with
  tr(V² J_f) read as (V² b)ᵀ J_f b. On crops V is applied circularly to the crop: still an unbiased
  estimate of that weighted MSE."""
  from cryojax_denoise.models.generator import estimated_sigma

  del x2
  sigma = estimated_sigma(x)[:, None, None]
  if probe is None:
    if prior is not None:
      raise ValueError("SURE with a prior input needs the prior's response to the probe (probe=(b, W b))")
    b, wb = jax.random.rademacher(key, x.shape, jnp.float32), None
  else:
    b, wb = probe
  e = eps * sigma
  fx = apply_padded(generator, x, prior)
  fxe = apply_padded(generator, x + e * b, None if prior is None else prior + e * wb)
  if colouring:
    v2 = jnp.asarray(colouring_grid(colouring, x.shape[-2:]))
    resid = jnp.mean(v2 * jnp.abs(jnp.fft.fft2(x - fx)) ** 2, axis=(-2, -1)) / (x.shape[-2] * x.shape[-1])
    b = jnp.fft.ifft2(jnp.fft.fft2(b) * v2).real  # V² b: E (V² b)ᵀ J b = tr(V² J)
  else:
    resid = jnp.mean((x - fx) ** 2, axis=(-2, -1))
  div = jnp.mean(b * (fxe - fx), axis=(-2, -1)) / e[:, 0, 0]
  per_image = resid - sigma[:, 0, 0] ** 2 + 2 * sigma[:, 0, 0] ** 2 * div
  rec = jnp.mean(per_image)
  return rec, {"ss_rec": rec, "sure_div": jnp.mean(div)}


def colouring_grid(profile, shape) -> np.ndarray:
  """V² = 1/W² (H, W) float32 on the unshifted FFT grid from its radial `profile` (S,) on shells 0 … 0.5
  cycles/px, W the whitening filter of a noise spectrum of that shape (`whiten.whitening_filter`): mean 1, so
  tr V² = N and the σ² term of the weighted SURE is σ²."""
  from cryojax_denoise.noise import whiten as wh

  return (1.0 / np.square(wh.whitening_filter(profile, shape))).astype(np.float32)


def colouring_profile(whitening: np.ndarray) -> tuple:
  """The radial profile of V² = 1/W² (`sure_colouring`) of a whitening filter W (H, W) (`noise.whiten`)."""
  from cryojax_denoise.noise import spectrum as sp

  return tuple(float(v) for v in sp.radial_average(1.0 / np.square(np.asarray(whitening, np.float64))))


def cwf_sure_inputs(noisy: np.ndarray, cwf, noise_std=None, ctf=None, seed: int = 0) -> np.ndarray:
  """(N, 4, H, W) float32 inputs of SURE fine-tuning for a prior="cwf" model: the noisy particles, their
  estimates by the fitted CWF `cwf` (`denoisers.fit("cwf", ...)`), a Rademacher probe b per particle, and
  CWF's response to it, W b = cwf(b) − cwf(0) (CWF is affine in its input; same σ and CTF)."""
  from cryojax_denoise.denoisers.noise import noise_std_or_estimate

  noisy = np.asarray(noisy, np.float32)
  sigma = np.asarray(noise_std_or_estimate(noisy, noise_std), np.float32)
  b = np.random.default_rng(seed).choice(np.float32([-1.0, 1.0]), noisy.shape)
  out = np.empty((len(noisy), 4) + noisy.shape[1:], np.float32)
  for start in range(0, len(noisy), 256):
    sl = slice(start, start + 256)
    c = None if ctf is None else ctf[sl]
    out[sl, 0], out[sl, 2] = noisy[sl], b[sl]
    out[sl, 1] = np.asarray(cwf(noisy[sl], sigma[sl], c))
    out[sl, 3] = np.asarray(cwf(b[sl], sigma[sl], c)) - np.asarray(cwf(np.zeros_like(b[sl]), sigma[sl], c))
  return out


def loss_fn(name: str, config=None):
  """`loss(generator, x, x2, key) -> (scalar, {"ss_rec", ...})` for `name`, options from `config`."""
  get = (lambda k, d: d) if config is None else (lambda k, d: config.get(k, d))
  if name == "neighbor2neighbor":
    return partial(neighbor2neighbor, gamma=float(get("gamma", 2.0)))
  if name == "noise2self":
    return partial(noise2self, grid=int(get("mask_grid", 4)), how=str(get("mask_replace", "mean")))
  if name == "noise2noise":
    return noise2noise
  if name == "sure":
    return partial(sure, eps=float(get("sure_eps", 0.01)), colouring=tuple(get("sure_colouring", ()) or ()))
  raise InputError(f"config.loss: must be one of {', '.join(LOSSES)}, got {name!r}")


def make_validation(gen_graphdef, config):
  """(generator state, (noisy, noisy2) raw (N, H, W)) -> {"val_ss_loss"}: the loss's data term on the
  held-out noisy images with fixed masks (an estimate of MSE to the clean images + noise variance)."""
  from flax import nnx

  key = (gen_graphdef, str(config.loss)) + tuple(config.get(k) for k in CONFIG_KEYS)
  if key in _VALIDATION:
    return _VALIDATION[key]
  loss = loss_fn(str(config.loss), config)

  @jax.jit
  def score(state, inputs, noisy2):
    from cryojax_denoise.training.model import probe_inputs, split_inputs

    probe = probe_inputs(inputs)
    noisy, prior = split_inputs(inputs)
    x, mean, std = data_lib.standardise(noisy)
    extra = {} if config.loss != "sure" else {
        "prior": None if prior is None else (prior - mean) / std, "probe": probe}
    _, aux = loss(nnx.merge(gen_graphdef, state), x, (noisy2 - mean) / std, jax.random.key(_VAL_KEY), **extra)
    return aux["ss_rec"]

  def evaluate(state, val) -> dict:
    return {"val_ss_loss": float(score(state, *val))}

  _VALIDATION[key] = evaluate
  return evaluate
