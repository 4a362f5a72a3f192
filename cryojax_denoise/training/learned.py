"""The learned denoisers' loaders: each loads a trained model from `checkpoint=DIR`.

The registry names them (`denoisers/learned_registry.py`) and imports this module only when one is
called, so `denoisers.get("gan", checkpoint=DIR)` works like any other method while importing
`cryojax_denoise.denoisers` imports no training code. The signatures here are the registry's
(`tests/test_imports.py` checks that they agree).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _load(checkpoint: str | None, kind: str) -> Callable:
  from cryojax_denoise.training.restore import load_denoiser

  return load_denoiser(checkpoint or None, kind=kind)


def load_autoencoder(*, checkpoint: str | None = None) -> Callable:
  """The autoencoder trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _load(checkpoint, "autoencoder")


def load_gan(*, checkpoint: str | None = None) -> Callable:
  """The GAN generator trained in `checkpoint` (None: the bundled general model) as
  `den(images (B, H, W), noise_std=None)`."""
  return _load(checkpoint, "gan")


FINETUNE_LR = 1e-4  # SURE fine-tuning's learning rate (a tenth of training's: it adapts, not retrains)
MIN_FINETUNE_PARTICLES = 32  # a smaller stack is denoised without fine-tuning (with a warning)
FINETUNE_CROP = 64  # px: larger particles are fine-tuned on random crops of the training corpus's box
FINETUNE_INPUT_GB = 1.0  # at most this much of (noisy, CWF, probe, W probe) inputs: a random subset of particles
COLOURED_KIND = "autoencoder_cwf_coloured"  # bundled model for whitened particles: pretrained/<kind>_general
BLEND_IMAGES = 128  # particles SURE weighs the network's correction of CWF on (`correction_weight`)


def fit_autoencoder_cwf(images, noise_std=None, ctf=None, *, checkpoint: str | None = None,
                        finetune_steps: int = 300, cwf: Callable | None = None,
                        whitening: np.ndarray | None = None) -> Callable:
  """Registry `fit` hook of "autoencoder_cwf": covariance Wiener filtering fitted on `images` (N, H, W)
  with their CTFs (`denoisers.cwf`), then the prior="cwf" network, which corrects each particle's CWF
  estimate; returns `den(images (B, H, W), noise_std=None, ctf=None) -> (B, H, W)`, CTF-modulated like cwf.

  `finetune_steps` > 0 first adapts the network to this stack by Monte-Carlo SURE on `images` alone
  (`training.self_supervised.sure`: no clean image; batches of 16, in a temporary folder), which is what
  lets it beat CWF on molecules unlike the training corpus (see README). Its cost does not grow with the box:
  particles larger than `FINETUNE_CROP` are seen as random crops of it (the network is convolutional and
  then denoises whole particles), and at most `FINETUNE_INPUT_GB` of inputs are built, from a random subset
  of the particles (1,024 of 256²; every particle of a 64² stack up to 16,384).

  Two CWF fits: the network's prior, with the basis reach it was trained with (`prior_reach_px`: the inscribed
  disk for the white-noise model), and the registered cwf (its default reach, `cwf.fit_denoiser`), which is
  the base the correction is weighed against (`correction_weight`; one fit when the network was trained on
  the registered cwf's reach): the output is cwf + β·(network − cwf), so where SURE cannot show the network
  to help, autoencoder_cwf is the registered cwf (at 128² the reach-0 prior alone is
  2.4% worse than it). `cwf`: the "cwf" method already fitted on these `images`, σ and CTFs: the prior when
  its reach (`den.reach`) is the prior's, else the base; the other is fitted here. `whitening`: the filter W
  (H, W) on the FFT grid the `images` were whitened with under coloured noise, joined to `ctf`
  (`noise.methods.fit_coloured`); None: white noise. Under W the default network is the one trained on such
  datasets (`pretrained/autoencoder_cwf_coloured_general/`, preset `general_cwf_coloured`), and both the SURE
  fine-tuning (`sure_colouring`) and β (`correction_weight`'s `colouring` = 1/W) score the output coloured back,
  the MSE `denoise` returns and the model was trained for."""
  import tempfile

  from cryojax_denoise.denoisers.noise import noise_std_or_estimate
  from cryojax_denoise.denoisers.registry import fit
  from cryojax_denoise.errors import InputError

  kind = "autoencoder_cwf" if whitening is None else COLOURED_KIND
  net = _load(checkpoint, kind)
  if net.config.model.get("prior") != "cwf":
    raise InputError(f"{checkpoint}: not a prior=cwf model (train it with --config.preset=general_cwf); "
                     "use method=autoencoder for it")
  if int(finetune_steps) < 0:
    raise InputError(f"finetune_steps: must be >= 0, got {finetune_steps}")
  images = np.asarray(images, np.float32)
  if int(finetune_steps) > 0 and len(images) < MIN_FINETUNE_PARTICLES:
    from absl import logging

    logging.warning("autoencoder_cwf: %d particles, fewer than the %d SURE fine-tuning needs: not fine-tuned",
                    len(images), MIN_FINETUNE_PARTICLES)
    finetune_steps = 0
  noise_std = noise_std_or_estimate(images, noise_std)
  prior_reach = prior_reach_px(net.config, images.shape[-1])
  given_prior = cwf is not None and prior_reach is not None and getattr(cwf, "reach", prior_reach) == prior_reach
  base = cwf if cwf is not None and not given_prior else fit("cwf", images, noise_std, ctf)
  if prior_reach is None:  # the network corrects the registered cwf itself: one fit, prior and base
    cwf = base
  else:
    cwf = cwf if given_prior else fit("cwf", images, noise_std, ctf, reach=prior_reach)
  if int(finetune_steps) > 0:
    from cryojax_denoise.training import restore, self_supervised as ss, train

    keep = finetune_subset(images.shape)
    inputs = ss.cwf_sure_inputs(images[keep], cwf, np.asarray(noise_std, np.float32)[keep],
                                None if ctf is None else np.asarray(ctf)[keep])
    with tempfile.TemporaryDirectory(prefix="autoencoder_cwf_") as work:
      init = checkpoint or restore.bundled_dir(kind)
      colouring = {} if whitening is None else {"sure_colouring": ss.colouring_profile(whitening)}
      tuned = train.finetune(inputs, work, init=init, loss="sure", steps=int(finetune_steps), lr_g=FINETUNE_LR,
                          val_size=16, eval_every=int(finetune_steps), checkpoint_every=int(finetune_steps),
                          crop_size=FINETUNE_CROP if images.shape[-1] > FINETUNE_CROP else 0, **colouring)
      net = restore.load_denoiser(tuned)

  def corrected(batch, noise_std=None, ctf=None):
    return np.asarray(net(batch, prior=np.asarray(cwf(batch, noise_std, ctf))))

  beta = correction_weight(images, noise_std, ctf, base, corrected,
                           colouring=None if whitening is None else 1.0 / np.asarray(whitening, np.float32))

  def denoise(batch, noise_std=None, ctf=None):
    start = np.asarray(base(batch, noise_std, ctf))
    if beta == 0.0:
      return start
    out = corrected(batch, noise_std, ctf)
    return out if beta == 1.0 else start + np.float32(beta) * (out - start)

  denoise.correction_weight = beta
  return denoise


def prior_reach_px(config, size: int) -> float | None:
  """The basis reach (px past the edge of a `size`² box) of the CWF prior a prior="cwf" network was trained on:
  its config's `cwf_prior_reach` (a fraction of the box; absent in models trained before it: 0, the inscribed
  disk); None when that is the registered cwf's own reach (`steerable.EDGE_REACH`)."""
  from cryojax_denoise.denoisers.cwf import steerable
  from cryojax_denoise.training.cwf_corpus import PRIOR_REACH

  fraction = float(config.get("cwf_prior_reach", PRIOR_REACH))
  return None if fraction == steerable.EDGE_REACH else fraction * int(size)


def correction_weight(images, noise_std, ctf, cwf: Callable, corrected: Callable, seed: int = 1,
                      colouring: np.ndarray | None = None) -> float:
  """How much of the network's correction of CWF to apply on this stack: SURE's β in [0, 1]
  (`sure.blend_weight`: its lower confidence bound) for cwf + β·(network − cwf), `cwf` the base estimate
  (the registered cwf) and `corrected` the network's output, on `BLEND_IMAGES` random
  particles with their CTFs, both probed alike with the fitted models held fixed. The network was trained on
  64² corpus molecules; where its correction does not carry over (a 256² box, another molecule) this keeps
  autoencoder_cwf at CWF instead of below it.

  `colouring`: V = 1/W (H, W) when `images` are whitened particles W·y (`fit_autoencoder_cwf`'s `whitening`).
  β is then weighed on the outputs coloured back, V·f(W·y), against y = V·(W·y), whose noise has PSD σ²·V²
  (σ the whitened noise's std): SURE of the MSE `denoise` returns, ‖V(f − x)‖², whose Stein term is
  σ² tr(V² J_f) (coloured probes, `sure.sure(noise_psd=)`), not the whitened particles' ‖f − x‖², which
  weighs the low frequencies where the coloured noise sits less than the output does."""
  from absl import logging

  from cryojax_denoise.denoisers.tuning import sure
  from cryojax_denoise.noise import whiten as wh

  n = len(images)
  idx = np.sort(np.random.default_rng(seed).choice(n, min(n, BLEND_IMAGES), replace=False))
  y, s = images[idx], np.asarray(noise_std, np.float32)[idx]
  c = None if ctf is None else np.asarray(ctf)[idx]
  if colouring is None:
    ests = [sure.sure(lambda b, sig, f=f: f(b, sig, c), y, s, keep_output=True) for f in (cwf, corrected)]
  else:
    v = np.asarray(colouring, np.float32)
    w = 1.0 / v

    def coloured(f):
      return lambda b, sig: np.asarray(wh.apply_filter(f(np.asarray(wh.apply_filter(b, w)), s, c), v))

    y = np.asarray(wh.apply_filter(y, v))
    psd = np.square(s.astype(np.float64))[:, None, None] * np.square(v.astype(np.float64))[None]
    ests = [sure.sure(coloured(f), y, noise_psd=psd, keep_output=True) for f in (cwf, corrected)]
  beta = sure.blend_weight(y, *ests)
  logging.info("autoencoder_cwf: correction weight %.3f on %d particles (SURE's relative MSE%s: cwf %.4g, "
               "network %.4g)", beta, len(y), "" if colouring is None else ", coloured back",
               ests[0].relative, ests[1].relative)
  return beta


def finetune_subset(shape: tuple, seed: int = 0) -> np.ndarray:
  """Sorted indices of the particles of a stack of `shape` (N, H, W) that SURE fine-tuning reads: all of
  them while their 4 float32 input channels fit `FINETUNE_INPUT_GB`, else a random subset that does."""
  n, most = int(shape[0]), max(MIN_FINETUNE_PARTICLES, int(FINETUNE_INPUT_GB * 2**30 // (16 * shape[-2] * shape[-1])))
  if n <= most:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def load_autoencoder_cwf(*, checkpoint: str | None = None, finetune_steps: int = 300) -> Callable:
  """`den(images (B, H, W), noise_std=None)` that fits CWF (and fine-tunes the network) on the first
  images it is given (no CTF) and reuses that fit for every later call on images of the same size
  (a new size is fitted once on its first batch); for a stack with CTFs use the fitted form,
  `denoisers.fit("autoencoder_cwf", stack, σ, ctf)`."""
  fits: dict[tuple, Callable] = {}  # (H, W) -> the fitted denoiser

  def denoise(images, noise_std=None):
    shape = tuple(np.shape(images)[-2:])
    if shape not in fits:
      fits[shape] = fit_autoencoder_cwf(images, noise_std, None, checkpoint=checkpoint,
                                        finetune_steps=finetune_steps)
    return fits[shape](images, noise_std)

  return denoise
