"""SURE's σ̂² against the noise actually drawn, on the stacks `validate_sure.py` makes (noise known).

usage: python scripts/sure_sigma_check.py SET:CTF:SNR ...   e.g. ... phantom:1:1 ribosome:0:0.05
For 256, 512 and 2,048 random images of each setting prints, relative to the true σ²: the
tail-corrected σ̂² SURE uses (`tail`), the plain band estimate (`band`), the drawn noise's power in
the band and over all pixels, the clean signal's power in the band, and (noise energy − σ̂²)/σ², which
is what the σ̂² term adds to SURE − true MSE (negative: SURE reads low by that much of σ²).
"""
import sys

import jax.numpy as jnp
import numpy as np

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise.denoisers import noise


def main():
  for spec in sys.argv[1:]:
    name, ctf, snr = spec.split(":")
    ds = validate_sure.simulate_setting(validate_sure.load_set(name), float(snr), bool(int(ctf)),
                                        validate_sure.SIMULATED)
    s2 = float(ds.noise_std) ** 2
    drawn = ds.noisy - ds.clean
    for seed, n in [(7, 256), (8, 512), (9, 2048)]:
      rows = np.random.default_rng(seed).permutation(validate_sure.SIMULATED)[:n]
      tail = noise.tail_corrected_noise_std(ds.noisy[rows]) ** 2
      band = float(noise.band_noise_std(jnp.asarray(ds.noisy[rows]))) ** 2
      drawn_band = float(jnp.mean(noise.band_power(jnp.asarray(drawn[rows]))))
      drawn_all = float(np.mean(np.square(drawn[rows].astype(np.float64))))
      signal_band = float(jnp.mean(noise.band_power(jnp.asarray(ds.clean[rows]))))
      print(f"{spec} n={n}: tail {tail / s2 - 1:+.5f} band {band / s2 - 1:+.5f} "
            f"noise-in-band {drawn_band / s2 - 1:+.5f} noise-all {drawn_all / s2 - 1:+.5f} "
            f"signal-in-band {signal_band / s2:.5f} (noise-all - tail)/σ² {(drawn_all - tail) / s2:+.5f}",
            flush=True)


if __name__ == "__main__":
  main()
