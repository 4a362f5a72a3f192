"""Trains the autoencoder (the GAN's generator alone, L1 or L2 loss).

    python launch.py --experiment=train_autoencoder [--workdir=DIR] [--config.steps=N ...]

Fresh simulated pairs by default (SNR log-uniform in `snr_range`, or fixed `snr`), or pairs of stacks
with `--config.noisy=particles.mrcs --config.clean=clean.mrcs` (e.g. from make_pairs). Writes
`checkpoints/` (orbax) and `metrics.jsonl`; rerunning on the same workdir resumes and stops at
`steps`. Use the result with `denoise --config.method=autoencoder --config.checkpoint=DIR`.
"""

from cryojax_denoise.training import train

get_config, validate, run = train.experiment("autoencoder")
