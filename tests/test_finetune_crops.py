"""Self-supervised fine-tuning on crops (`crop_size`, training/data.py) and the autoencoder_cwf fine-tuning
subset (`learned.finetune_subset`): what lets SURE fine-tuning cost the same at 256² as at 64²."""

import numpy as np
import pytest

from cryojax_denoise.errors import InputError
from cryojax_denoise.training import data as data_lib, learned, train


def _config(**over):
  c = train.default_config("self_supervised")
  c.init, c.loss, c.batch_size, c.val_size, c.seed = "none", "sure", 8, 4, 3
  for key, value in over.items():
    c[key] = value
  return c


def _channels(n=24, size=32):
  """(n, 4, size, size) with every value distinct, so a crop names its particle and corner."""
  return np.arange(n * 4 * size * size, dtype=np.float32).reshape(n, 4, size, size)


def _dihedral(image):
  for k in range(4):
    r = np.rot90(image, k, axes=(-2, -1))
    yield r
    yield r[..., ::-1]


def test_crops_are_windows_of_one_transformed_particle_in_every_channel():
  arrays = _channels()
  data = data_lib.NoisyStack(_config(crop_size=16), arrays=(arrays, None))
  noisy, target = (np.asarray(a) for a in data.batch(5))
  assert noisy.shape == (8, 4, 16, 16) and target.shape == (8, 16, 16)
  np.testing.assert_array_equal(target, noisy[:, 0])
  corners = set()
  for crop in noisy:
    i = int(crop[0, 0, 0]) // (4 * 32 * 32)
    assert i < data.n_train
    hits = [(t, r, c) for t in _dihedral(arrays[i]) for r in range(17) for c in range(17)
            if np.array_equal(t[:, r:r + 16, c:c + 16], crop)]
    assert len(hits) == 1  # all four channels from one window of one rotation/flip of particle i
    corners.add(hits[0][1:])
  assert len(corners) > 1  # random corners, not one fixed window


def test_no_crop_or_a_crop_of_the_whole_box_is_the_uncropped_stream():
  arrays = _channels()
  plain = data_lib.NoisyStack(_config(), arrays=(arrays, None)).batch(2)
  for crop in (0, 32, 48):
    same = data_lib.NoisyStack(_config(crop_size=crop), arrays=(arrays, None)).batch(2)
    for a, b in zip(plain, same):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_crop_sizes_are_one_error():
  from cryojax_denoise.training import self_supervised as ss

  with pytest.raises(InputError, match="crop_size"):
    ss.check_config(_config(crop_size=-1))
  with pytest.raises(InputError, match="crop_size"):
    ss.check_config(_config(loss="neighbor2neighbor", crop_size=33))


def test_finetune_subset_bounds_the_inputs_and_keeps_small_stacks_whole():
  np.testing.assert_array_equal(learned.finetune_subset((2000, 64, 64)), np.arange(2000))
  keep = learned.finetune_subset((10_000, 256, 256))
  assert len(keep) == 1024 and len(np.unique(keep)) == 1024 and np.all(np.diff(keep) > 0) and keep[-1] < 10_000
  assert 16 * 256 * 256 * len(keep) <= learned.FINETUNE_INPUT_GB * 2**30
  np.testing.assert_array_equal(keep, learned.finetune_subset((10_000, 256, 256)))  # reproducible
  assert len(learned.finetune_subset((50, 4096, 4096))) == learned.MIN_FINETUNE_PARTICLES  # never fewer
