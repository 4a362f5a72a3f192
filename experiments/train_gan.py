"""Trains the conditional GAN (generator + patch discriminator, BCE + 100·L1).

    python launch.py --experiment=train_gan [--workdir=DIR] [--config.steps=N ...]

Fresh simulated pairs by default (SNR log-uniform in `snr_range`, or fixed `snr`), or pairs of stacks
with `--config.noisy=particles.mrcs --config.clean=clean.mrcs` (e.g. from make_pairs). Writes
`checkpoints/` (orbax) and `metrics.jsonl`; rerunning on the same workdir resumes and stops at
`steps`. Use the result with `denoise --config.method=gan --config.checkpoint=DIR`.
"""

from cryojax_denoise.training import train

KIND = "gan"


def get_config():
  return train.default_config(KIND)


def validate(config, workdir=None):
  """Checks keys, input stacks and (when resuming) that the workdir's checkpoints match the model."""
  resolved = train.resolve(config)
  train.check_workdir(resolved, workdir or train.launcher_workdir(f"train_{KIND}"))


def run(config, workdir):
  train.train(config, workdir)
