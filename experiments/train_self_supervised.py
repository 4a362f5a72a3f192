"""Fits a learned denoiser to noisy particles alone (no clean images): self-supervised fine-tuning.

    python launch.py --experiment=train_self_supervised --workdir=DIR --config.noisy=particles.star \
        [--config.init=general|none|CKPT] [--config.loss=noise2self|neighbor2neighbor|noise2noise] \
        [--config.noisy2=other_half.mrcs] [--config.steps=N --config.batch_size=B --config.lr_g=LR] \
        [--config.noise=white|coloured|auto] [--config.noise_psd=FILE]

`noisy=` an MRC stack or a RELION STAR file (any square size; images are padded to the network's
stride); `init=general` starts from the bundled general model (its architecture is kept), `none`
from scratch, or a training workdir. The last `val_size` particles (at most a tenth) are held out and
scored by the loss's self-supervised data term, logged as `val_ss_loss` in `metrics.jsonl`. Writes
`checkpoints/` (orbax); rerunning on the same workdir resumes. Apply the result with
`denoise --config.method=autoencoder --config.checkpoint=DIR`. Losses and options:
`cryojax_denoise/training/self_supervised.py`.

`noise=coloured` (or `auto`: whiten when the measured spectrum is not flat, as `denoise`'s `noise=`)
trains on particles whitened with the noise spectrum measured on `noisy=` (or given by `noise_psd=`), so
the losses' pixel-independence holds under a coloured spectrum; `DIR/noise.json` records the decision
and `DIR/noise_psd.npy` the spectrum: apply with `denoise ... --config.checkpoint=DIR --config.noise=coloured
--config.noise_psd=DIR/noise_psd.npy` (colour ∘ network ∘ whiten with the training filter). Default
`white`: the particles as read (`cryojax_denoise/training/ss_noise.py`, docs/finetuning.md).
"""

from cryojax_denoise.training import train

get_config, validate, run = train.experiment("self_supervised")
