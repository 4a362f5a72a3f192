"""The bundled general models (autoencoder and GAN trained on the molecule corpus) and their recipe."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise import denoisers
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.models import Generator, host_init
from cryojax_denoise.training import restore, train


@pytest.fixture(scope="module")
def phantom_set():
  source = load_source(image_size=32)
  return simulate.simulate_dataset(source, 8, 32, snr=0.5, seed=3, ctf=True)


@pytest.mark.parametrize("kind", ["autoencoder", "gan"])
def test_bundled_model_loads_and_denoises_a_stack(kind, phantom_set):
  path = restore.bundled_dir(kind)
  assert os.path.isdir(path), f"bundled {kind} model missing at {path}"
  den = denoisers.get(kind)  # no checkpoint: the bundled general model
  out = np.asarray(den(phantom_set.noisy))
  assert out.shape == phantom_set.noisy.shape and np.isfinite(out).all()
  mse = float(np.mean((out - phantom_set.clean) ** 2))
  assert mse < 0.5 * float(np.mean((phantom_set.noisy - phantom_set.clean) ** 2))
  cfg = den.config
  assert cfg.data == "corpus" and cfg.model.noise_channel and cfg.model.odd and cfg.model.prior == "wiener"


def test_bundled_model_is_odd_both_polarities(phantom_set):
  den = denoisers.get("autoencoder")
  x = phantom_set.noisy[:4]
  np.testing.assert_allclose(np.asarray(den(-x)), -np.asarray(den(x)), atol=1e-4)


def test_noise_channel_feeds_the_estimated_sigma():
  gen = host_init(lambda: Generator((8, 16), (1, 0), noise_channel=True, rngs=nnx.Rngs(0)), 0)
  assert gen.down[0].kernel.shape[2] == 2  # image + σ channel
  x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32))
  before = np.asarray(gen(x))
  gen.down[0].kernel.set_value(gen.down[0].kernel[...].at[:, :, 1, :].set(0.0))
  assert not np.allclose(before, np.asarray(gen(x)))


@pytest.mark.slow
def test_general_preset_smoke_training(tmp_path):
  c = train.default_config("autoencoder")
  c.preset = "general"
  c.steps, c.image_size, c.batch_size, c.val_size, c.pool_size = 2, 32, 4, 4, 2
  c.eval_every = c.checkpoint_every = c.log_every = 2
  c.model.widths, c.model.blocks = (8, 16), (1, 0)
  row = train.train(c, str(tmp_path))
  assert row["step"] == 2 and np.isfinite(row["val_mse"])
  saved = json.loads(json.dumps(restore.load_generator(str(tmp_path))[1].to_dict()))
  assert saved["data"] == "corpus" and saved["loss"] == "l2" and saved["model"]["noise_channel"]


@pytest.mark.slow
def test_general_preset_trains_on_the_corpus_not_the_phantom():
  # The preset's data="corpus" must reach the data source (it once did not: "general" models were
  # trained on the built-in phantom alone).
  from cryojax_denoise.data.corpus import CorpusPairs
  from cryojax_denoise.errors import InputError
  from cryojax_denoise.training import data as data_lib

  c = train.default_config("autoencoder")
  c.preset = "general"
  c.image_size, c.batch_size, c.pool_size = 32, 4, 2
  source = data_lib.make_data(train.resolve(c))
  assert isinstance(source, CorpusPairs)
  c.data = "phantom"
  with pytest.raises(InputError, match="config.data"):
    train.resolve(c)


def test_wiener_prior_is_corrected_by_the_network():
  """With prior="wiener" the output is Wiener(x, σ̂) + network; a zero head leaves exactly the Wiener filter."""
  from cryojax_denoise.denoisers.classical.filters import wiener_denoise
  from cryojax_denoise.denoisers.noise import estimate_noise_std

  gen = host_init(lambda: Generator((8, 16), (1, 0), noise_channel=True, prior="wiener", rngs=nnx.Rngs(0)), 0)
  assert gen.down[0].kernel.shape[2] == 3  # image, σ, Wiener estimate
  x = jax.numpy.asarray(np.random.default_rng(1).normal(size=(2, 16, 16)).astype(np.float32))
  wiener = np.asarray(wiener_denoise(x, estimate_noise_std(x)))
  assert not np.allclose(np.asarray(gen(x)), wiener)
  gen.head.kernel.set_value(jax.numpy.zeros_like(gen.head.kernel[...]))
  gen.head.bias.set_value(jax.numpy.zeros_like(gen.head.bias[...]))
  np.testing.assert_allclose(np.asarray(gen(x)), wiener, atol=1e-5)
