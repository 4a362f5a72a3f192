"""Issue 13 validation: SURE-chosen knob vs clean-chosen knob, SURE estimate vs true MSE.

usage: python scripts/validate_sure.py OUT.jsonl METHODS N [SNRS] [SETS] [CTFS]
  e.g. ... out.jsonl gaussian,wiener,ddtf 16 1,0.5,0.2,0.1,0.05 phantom,ribosome 1,0
σ blind (denoiser: per-image MAD, SURE: high-band estimate), 64² images, seeds fixed.
"""
import json
import sys
import time

from cryojax_denoise.data import simulate
from cryojax_denoise.denoisers import sure


def main():
  out, methods, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
  snrs = [float(s) for s in (sys.argv[4] if len(sys.argv) > 4 else "1,0.5,0.2,0.1,0.05").split(",")]
  sets = (sys.argv[5] if len(sys.argv) > 5 else "phantom,ribosome").split(",")
  ctfs = [bool(int(c)) for c in (sys.argv[6] if len(sys.argv) > 6 else "1,0").split(",")]
  for name in sets:
    src = simulate.load_source(image_size=64) if name == "phantom" else simulate.load_source(
        volume="../shared/data/ribosome70S_65.mrc", pixel_size=5.0, image_size=64)
    for ctf in ctfs:
      for snr in snrs:
        ds = simulate.simulate_dataset(src, n, 64, snr, seed=1000 + int(1000 * snr), ctf=ctf)
        for m in methods:
          t = time.time()
          r = sure.compare_with_clean(m, ds.noisy, ds.clean, None, n_images=n)
          r.update(set=name, ctf=ctf, snr=snr, n=n, noise_std_true=float(ds.noise_std), wall=time.time() - t)
          with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
          print(f"{name} ctf={ctf} snr={snr} {m}: sure {r['sure_choice']} clean {r['clean_choice']} "
                f"choice {r['choice_ratio']:.3f} est {r['estimate_ratio']:.3f} default/best "
                f"{r['mse_default'] / r['mse_clean_choice']:.3f} ({r['wall']:.0f}s)", flush=True)


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
