"""Corpus batches per second against training steps per second (the general preset, 64², batch 16), on
whatever backend JAX finds: the data source must keep up with the step.

    python scripts/corpus_rate.py [STEPS]
"""
import sys
import time

import jax
from flax import nnx

from cryojax_denoise.data.corpus import CorpusPairs
from cryojax_denoise import sharding
from cryojax_denoise.training import train


def main(argv):
  n = int(argv[1]) if len(argv) > 1 else 100
  c = train.default_config("autoencoder")
  c.preset = "general"
  c = train.resolve(c)
  data = CorpusPairs(c)
  jax.block_until_ready(data.batch(0))  # builds the pool, compiles
  t = time.perf_counter()
  for step in range(1, n + 1):
    out = data.batch(step)
  jax.block_until_ready(out)
  batches = n / (time.perf_counter() - t)
  learner = train.Learner(c)
  graphdef, state = nnx.split(learner)
  mesh = sharding.data_mesh()
  step_fn = train.make_train_step(graphdef, c, mesh)
  noisy, clean = data.batch(0)
  state, _ = step_fn(state, noisy, clean, None)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(n):
    state, loss = step_fn(state, noisy, clean, None)
  jax.block_until_ready(loss)
  steps = n / (time.perf_counter() - t)
  print(f"{jax.default_backend()}: corpus {batches:.1f} batches/s, training {steps:.1f} steps/s "
        f"(batch {c.batch_size}, {c.image_size}²); pool refresh of {c.pool_size} maps every {c.pool_refresh} "
        f"steps included")


if __name__ == "__main__":
  main(sys.argv)
