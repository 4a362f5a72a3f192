"""Trains the conditional GAN (generator + patch discriminator, BCE + 100·L1).

    python launch.py --experiment=train_gan [--workdir=DIR] [--config.steps=N ...]

Fresh simulated pairs by default (SNR log-uniform in `snr_range`, or fixed `snr`), or pairs of stacks
with `--config.noisy=particles.mrcs --config.clean=clean.mrcs` (e.g. from make_pairs). Writes
`checkpoints/` (orbax) and `metrics.jsonl`; rerunning on the same workdir resumes and stops at
`steps`. Use the result with `denoise --config.method=gan --config.checkpoint=DIR`.
"""

from cryojax_denoise.training import train

get_config, validate, run = train.experiment("gan")
