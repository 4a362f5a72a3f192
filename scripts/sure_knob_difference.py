"""How well SURE resolves two knob values on the tuning images (issue 13's one bm3d knob miss).

usage: python scripts/sure_knob_difference.py METHOD SET CTF SNR V1 V2 [N_IMAGES] [N_PROBES]
  e.g. ... bm3d phantom 0 0.1 1.0 1.25 32 4
Simulates the stack `validate_sure.py` makes for that setting, takes the same random tuning subset
`sure_tune` does and prints SURE and the true MSE at V1 and V2, SURE's paired difference with its
standard error over the images (`sure.difference_se`, the one `sure_tune`'s growth tests), the true
difference, and the divergence term's share of it.
"""
import sys

import numpy as np

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise.denoisers.tuning import sure, sure_grid, sure_policy


def main():
  method, name, ctf, snr, v1, v2 = sys.argv[1], sys.argv[2], bool(int(sys.argv[3])), *map(float, sys.argv[4:7])
  n_images = int(sys.argv[7]) if len(sys.argv) > 7 else sure_policy.N_IMAGES
  n_probes = int(sys.argv[8]) if len(sys.argv) > 8 else sure.N_PROBES
  ds = validate_sure.simulate_setting(validate_sure.load_set(name), snr, ctf,
                                      validate_sure.n_simulated(n_images, sure_policy.N_ESTIMATE))
  rows = sure_policy.subset(len(ds.noisy), n_images, 0)
  images, clean = np.asarray(ds.noisy, np.float32)[rows], np.asarray(ds.clean, np.float32)[rows]
  den_sigma, sigma = sure.sigmas(images)
  probes = sure_grid.rademacher_probes(0, n_probes, images.shape)
  resid, div, mse = sure_grid.grid_stats(sure_policy.knob_function(method), images, den_sigma, (v1, v2), probes,
                                         sure.eps_for(method) * sigma, clean)
  band = np.asarray(sure.band_power(images))
  est = [sure.SureEstimate(np.asarray(sure.sure_from_stats(resid[g], div[g], sigma)), sigma, 0.0, band=band,
                           div=div[g]) for g in range(2)]
  se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
  d, dt, ddiv = est[1].mse - est[0].mse, np.asarray(mse[1] - mse[0]), 2 * sigma ** 2 * np.asarray(div[1] - div[0])
  print(f"{method} {name} ctf={ctf} snr={snr:g}, {n_images} images x {n_probes} probes: SURE {est[0].mean:.4f} "
        f"{est[1].mean:.4f}, true {np.mean(mse[0]):.4f} {np.mean(mse[1]):.4f}; SURE({v2:g}) - SURE({v1:g}) "
        f"{d.mean():+.4f} ± {sure.difference_se(est[1], est[0]):.4f} (sure.difference_se), true {dt.mean():+.4f}; "
        f"divergence term's difference {ddiv.mean():+.4f} ± {se(ddiv):.4f}")


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
