"""Self-supervised training: init= from a checkpoint, blind-spot J-invariance, neighbour sub-sampling,
smoke fine-tune, resume after SIGKILL, bad noisy stacks.

Tiny generators on 32² images (stride 4), so each test compiles one small step.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise.training import checkpoints, restore, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"widths": (8, 16), "blocks": (1, 0), "output": "linear"}


def _smooth(n, size=32, seed=0, sigma=1.0):
  """(clean, noisy) float32 (n, size, size): low-pass Gaussian fields plus white noise of std `sigma`."""
  rng = np.random.default_rng(seed)
  f = np.fft.fftfreq(size)
  lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.06 ** 2))
  clean = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) * lowpass))
  clean = (clean / clean.std()).astype(np.float32)
  return clean, (clean + sigma * rng.normal(size=clean.shape)).astype(np.float32)


def _config(kind, **over):
  c = train.default_config(kind)
  c.model.widths, c.model.blocks = TINY["widths"], TINY["blocks"]
  c.disc.widths, c.disc.blocks = (8, 16), (1, 1)
  c.batch_size, c.val_size, c.eval_every, c.log_every = 8, 8, 5, 1
  for key, value in over.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
  d = tmp_path_factory.mktemp("stacks")
  clean, noisy = _smooth(48)
  io.write_stack(str(d / "noisy.mrcs"), noisy, 2.0)
  io.write_stack(str(d / "clean.mrcs"), clean, 2.0)
  return str(d / "noisy.mrcs"), str(d / "clean.mrcs")


@pytest.fixture(scope="module")
def trained_ae(stacks, tmp_path_factory):
  """A 2-step tiny autoencoder checkpoint (model widths (8, 16)) to initialise other runs from."""
  wd = str(tmp_path_factory.mktemp("ae") / "run")
  train.train(_config("autoencoder", noisy=stacks[0], clean=stacks[1], steps=2, loss="l2"), wd)
  return wd


def _params(module):
  return nnx.state(module, nnx.Param).to_pure_dict()


def test_init_from_checkpoint_takes_its_model_and_weights(trained_ae, stacks, tmp_path):
  # a GAN fine-tuned from the autoencoder: the config's own (different) model sizes are replaced
  c = _config("gan", noisy=stacks[0], clean=stacks[1], init=trained_ae, steps=1)
  c.model.widths, c.model.blocks = (4, 8, 8), (0, 0, 0)
  r = train.resolve(c)
  assert tuple(r.model.widths) == TINY["widths"] and tuple(r.model.blocks) == TINY["blocks"]
  learner = train.Learner(r, seed=3)
  train.load_init(learner.generator, r.init)
  saved, _, _ = restore.load_generator(trained_ae)
  jax.tree.map(np.testing.assert_array_equal, _params(learner.generator), _params(saved))
  # one GAN step from it runs and stays close to the initial weights (Adam: lr-sized moves)
  wd = str(tmp_path / "gan")
  train.train(c, wd)
  gen, cfg, step = restore.load_generator(wd)
  assert step == 1 and tuple(cfg.model.widths) == TINY["widths"]
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), _params(gen), _params(saved)))
  assert 0 < max(diffs) < 10 * float(c.lr_g)
  for bad, message in (("/nonexistent/ckpt", "not found"), ("general_missing", "not found")):
    with pytest.raises(InputError, match=message):
      train.resolve(_config("autoencoder", init=bad))
