"""Losses and the one optimisation step of every kind (on per-image standardised images, see `training.data`).

  GAN (pix2pix, as the cianfrocco-lab model): D minimises ½[BCE(D(clean, noisy), 1) + BCE(D(G(noisy), noisy), 0)];
  G minimises BCE(D(G(noisy), noisy), 1) + λ·mean|G(noisy) − clean|, λ = `l1_weight` (100).
  Autoencoder: the generator alone with mean |·| (`loss="l1"`) or mean squared (`loss="l2"`) error.
  Self-supervised: the losses of `training.self_supervised` (`loss`: noise2self, noise2noise, ...).
Both use Adam with β1 = 0.5 (learning rates `lr_g`, `lr_d`; see `model._adam`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cryojax_denoise.noise import whiten
from cryojax_denoise.training import data as data_lib, self_supervised as ss
from cryojax_denoise.training.model import Learner, call_generator, probe_inputs, split_inputs


def _bce(logits: jax.Array, label: float) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def _reconstruction(pred, target, loss: str, weight=None) -> jax.Array:
  """Mean |error| (l1) or error² (l2); `weight` (B, H, W): a real FFT-grid filter the error passes first."""
  err = pred - target if weight is None else whiten.apply_filter(pred - target, weight)
  return jnp.mean(jnp.abs(err)) if loss == "l1" else jnp.mean(err ** 2)


def split_target(clean: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """Targets (B, H, W), or (B, 2, H, W): targets and the filter their error is scored through (the coloured
  CWF corpus's colouring filter 1/W: a network working on whitened particles is trained for MSE in the
  particles' own domain, `cwf_corpus.CwfCorpusPairs`) -> (targets, filter or None)."""
  return (clean[:, 0], clean[:, 1]) if clean.ndim == 4 else (clean, None)


def learner_step(learner: Learner, noisy: jax.Array, clean: jax.Array, config, key=None) -> dict:
  """One optimisation step in place on raw (noisy, clean) (B, H, W); returns scalar losses.
  Self-supervised: `clean` is the second noisy copy (or noisy itself); `key` draws masks/sub-samplings."""
  probe = probe_inputs(noisy)
  noisy, prior = split_inputs(noisy)
  clean, weight = split_target(clean)
  x, mean, std = data_lib.standardise(noisy)
  y = (clean - mean) / std
  p = None if prior is None else (prior - mean) / std
  if learner.kind == "self_supervised":
    loss_fn = ss.loss_fn(config.loss, config)
    if config.loss == "sure":
      loss_fn = partial(loss_fn, prior=p, probe=probe)
    (loss, aux), grads = nnx.value_and_grad(lambda g: loss_fn(g, x, y, key), has_aux=True)(learner.generator)
    learner.opt_g.update(learner.generator, grads)
    return {"loss": loss, **aux}
  if learner.kind == "autoencoder":
    def g_loss(gen):
      return _reconstruction(call_generator(gen, x, p), y, config.loss, weight)
    loss, grads = nnx.value_and_grad(g_loss)(learner.generator)
    learner.opt_g.update(learner.generator, grads)
    return {"loss": loss}

  fake = jax.lax.stop_gradient(call_generator(learner.generator, x, p))

  def d_loss(disc):
    return 0.5 * (_bce(disc(y, x), 1.0) + _bce(disc(fake, x), 0.0))

  loss_d, grads_d = nnx.value_and_grad(d_loss)(learner.discriminator)
  learner.opt_d.update(learner.discriminator, grads_d)
  disc = learner.discriminator

  def g_loss(gen):
    pred = call_generator(gen, x, p)
    adv = _bce(disc(pred, x), 1.0)
    l1 = jnp.mean(jnp.abs(pred - y))
    return adv + config.l1_weight * l1, (adv, l1)

  (loss_g, (adv, l1)), grads_g = nnx.value_and_grad(g_loss, has_aux=True)(learner.generator)
  learner.opt_g.update(learner.generator, grads_g)
  return {"loss_g": loss_g, "loss_d": loss_d, "adv": adv, "l1": l1}
