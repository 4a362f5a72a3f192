"""SURE fine-tuning of the bundled CWF-conditioned autoencoder on one noisy stack, scored on held-out particles.

    python scripts/eval_sure_finetune.py SNR[,SNR] STEPS [MAP.mrc|MODEL.cif|phantom PIXEL_SIZE]

As a user would: 1000 noisy particles of an unseen molecule (64², CTF on, seed 40000) are all there is;
CWF is fitted on them with their CTFs, the bundled `autoencoder_cwf` model is fine-tuned on them by
Monte-Carlo SURE (no clean image; `self_supervised.sure`), then 64 other particles (seed 20000, as
`eval_unseen.py`) are denoised by cwf, the bundled model and the fine-tuned one; prints MSE to the clean.
"""
import sys
import tempfile

import numpy as np

from cryojax_denoise import denoisers
from cryojax_denoise.data import ctf as ctf_lib, simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.denoisers.noise import estimate_noise_std
from cryojax_denoise.training import restore, self_supervised as ss, train

IMAGE_SIZE = 64  # pixels per side of every simulated particle (the tests use a smaller one)


def main(argv):
  snrs, steps = [float(s) for s in argv[1].split(",")], int(argv[2])
  volume, pixel_size = (argv[3], float(argv[4])) if len(argv) > 4 else ("../shared/data/ribosome70S_65.mrc", 5.0)
  model = volume.endswith((".cif", ".pdb", ".mmcif"))
  if volume == "phantom":  # the built-in phantom (the sweep's in-distribution set)
    src = load_source(image_size=IMAGE_SIZE)
  else:
    src = load_source(volume=None if model else volume, structure=volume if model else None,
                               pixel_size=pixel_size, image_size=IMAGE_SIZE)
  bundled = restore.load_denoiser(restore.bundled_dir("autoencoder_cwf"))
  for snr in snrs:
    fit, test = (simulate.simulate_dataset(src, n, IMAGE_SIZE, snr=snr, seed=seed, ctf=True)
                 for n, seed in ((1000, 40000), (64, 20000)))
    ctf_fit, ctf_test = (ctf_lib.ctf_grid(d.particles, d.optics, IMAGE_SIZE, d.pixel_size) for d in (fit, test))
    sig_fit, sig_test = (np.asarray(estimate_noise_std(d.noisy)) for d in (fit, test))
    cwf = denoisers.fit("cwf", fit.noisy, sig_fit, ctf_fit)
    inputs = ss.cwf_sure_inputs(fit.noisy, cwf, sig_fit, ctf_fit)
    with tempfile.TemporaryDirectory() as work:
      tuned = restore.load_denoiser(train.finetune(inputs, work, init=restore.bundled_dir("autoencoder_cwf"),
                                                loss="sure", steps=steps, lr_g=1e-4, val_size=64,
                                                eval_every=max(steps // 4, 1), checkpoint_every=steps))
      prior = np.asarray(cwf(test.noisy, sig_test, ctf_test))
      res = {"cwf": prior, "autoencoder_cwf": bundled(test.noisy, prior=prior),
             "sure_finetuned": tuned(test.noisy, prior=prior)}
    print(f"SNR {snr:g}: " + "  ".join(f"{k} {np.mean((v - test.clean) ** 2):.4f}" for k, v in res.items()),
          flush=True)


if __name__ == "__main__":
  main(sys.argv)
