"""MSE of learned checkpoints against classical methods on the unseen 70S ribosome (64², 5 Å/px, CTF on,
64 test images per SNR from seed 20000, σ estimated per image as `denoise` does; cwf fitted on 1000 other
noisy particles with their CTFs; prior="cwf" checkpoints get that fit's estimates as their prior input).

    python scripts/eval_unseen.py CHECKPOINT[,CHECKPOINT] SNR[,SNR] METHOD[,METHOD] [MAP.mrc|MODEL.cif PIXEL_SIZE]
e.g. python scripts/eval_unseen.py cryojax_denoise/pretrained/autoencoder_general 1,0.5,0.2,0.1,0.05 bm3d,cwf
     python scripts/eval_unseen.py general,gan 1,0.1 bm3d ../shared/data/8zpm.cif 1.5   (mmCIF route)
CHECKPOINT "general" / "gan" means the bundled general autoencoder / GAN.
"""
import sys

import numpy as np

from cryojax_denoise import denoisers
from cryojax_denoise.data import ctf as ctf_lib
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.denoisers.noise import estimate_noise_std
from cryojax_denoise.training.restore import load_denoiser


def main(argv):
  ckpts, snrs, classical = argv[1].split(","), [float(s) for s in argv[2].split(",")], argv[3].split(",")
  volume, pixel_size = (argv[4], float(argv[5])) if len(argv) > 5 else ("../shared/data/ribosome70S_65.mrc", 5.0)
  model = volume.endswith((".cif", ".pdb", ".mmcif"))
  src = load_source(volume=None if model else volume, structure=volume if model else None,
                             pixel_size=pixel_size, image_size=64)
  bundled = {"general": ("autoencoder", None), "gan": ("gan", None)}
  learned = {c.rstrip("/").split("/")[-1]: (load_denoiser(None, kind=bundled[c][0]) if c in bundled
                                            else load_denoiser(c)) for c in ckpts}
  for snr in snrs:
    ds = simulate.simulate_dataset(src, 64, 64, snr=snr, seed=20000, ctf=True)
    sigma = np.asarray(estimate_noise_std(ds.noisy))
    res, cwf = {}, None
    if "cwf" in classical or any(den.config.model.get("prior") == "cwf" for den in learned.values()):
      fit = simulate.simulate_dataset(src, 1000, 64, snr=snr, seed=40000, ctf=True)
      den = denoisers.fit("cwf", fit.noisy, np.asarray(estimate_noise_std(fit.noisy)),
                          ctf_lib.ctf_grid(fit.particles, fit.optics, 64, fit.pixel_size))
      cwf = np.asarray(den(ds.noisy, sigma, ctf_lib.ctf_grid(ds.particles, ds.optics, 64, ds.pixel_size)))
    for m in classical:
      out = cwf if m == "cwf" else denoisers.get(m)(ds.noisy, sigma)
      res[m] = float(np.mean((np.asarray(out) - ds.clean) ** 2))
    for name, den in learned.items():
      prior = cwf if den.config.model.get("prior") == "cwf" else None
      res[name] = float(np.mean((np.asarray(den(ds.noisy, prior=prior)) - ds.clean) ** 2))
    print(f"SNR {snr:g}: " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
  main(sys.argv)
