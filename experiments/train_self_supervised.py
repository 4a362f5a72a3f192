"""Fits a learned denoiser to noisy particles alone (no clean images): self-supervised fine-tuning.

    python launch.py --experiment=train_self_supervised --workdir=DIR --config.noisy=particles.star \
        [--config.init=general|none|CKPT] [--config.loss=noise2self|neighbor2neighbor|noise2noise] \
        [--config.noisy2=other_half.mrcs] [--config.steps=N --config.batch_size=B --config.lr_g=LR]

`noisy=` an MRC stack or a RELION STAR file (any square size; images are padded to the network's
stride); `init=general` starts from the bundled general model (its architecture is kept), `none`
from scratch, or a training workdir. The last `val_size` particles (at most a tenth) are held out and
scored by the loss's self-supervised data term, logged as `val_ss_loss` in `metrics.jsonl`. Writes
`checkpoints/` (orbax); rerunning on the same workdir resumes. Apply the result with
`denoise --config.method=autoencoder --config.checkpoint=DIR`. Losses and options:
`cryojax_denoise/training/self_supervised.py`.
"""

from cryojax_denoise.training import train

get_config, validate, run = train.experiment("self_supervised")
