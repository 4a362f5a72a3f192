"""Issue 13 validation: SURE-chosen knob vs clean-chosen knob, SURE estimate vs true MSE.

usage: python scripts/validate_sure.py OUT.jsonl METHODS N [SNRS] [SETS] [CTFS] [N_ESTIMATE]
  e.g. ... out.jsonl gaussian,wiener,ddtf 16 1,0.5,0.2,0.1,0.05 phantom,ribosome 1,0 128
σ blind (denoiser: per-image MAD, SURE: high-band estimate), 64² images, seeds fixed. Simulates
max(N, N_ESTIMATE, 2,560) images: the knob is tuned on N random ones, SURE's estimate of the
chosen knob's MSE is made on N_ESTIMATE random ones, more while its standard error is above
`sure_policy.SE_TARGET` (`sure_policy.estimate_chosen`), as `params=auto` does, up to the 512 of
`sure_policy.N_ESTIMATE_MAX`; the tuning subset grows as `sure_tune` grows it. Both within the budgets a stack
of 5,120 gets (`EMULATED`): the estimate can then reach its 512 images, the tuning its 128.
"""
import json
import sys
import time

import numpy as np

from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.denoisers.tuning import sure_policy

SIMULATED = 2560  # images per setting: a 512-image estimate × (1 + 4 probes) calls fits in a budget of 1 × these
EMULATED = 5120  # the simulated stacks get the tuning and estimate budgets of a stack of this many images


def n_simulated(n: int, n_estimate: int) -> int:
  """Images simulated per setting: the tuning and estimate subsets, and room for a 512-image estimate."""
  return max(n, n_estimate, SIMULATED)


def load_set(name: str):
  """The validation's 64² source: the built-in phantom, or the unseen 70S ribosome from ../shared/data."""
  if name == "phantom":
    return load_source(image_size=64)
  return load_source(volume="../shared/data/ribosome70S_65.mrc", pixel_size=5.0, image_size=64)


def simulate_setting(src, snr: float, ctf: bool, n_sim: int):
  """One setting's stack (seeded by its SNR, so every script sees the same images)."""
  return simulate.simulate_dataset(src, n_sim, 64, snr, seed=1000 + int(1000 * snr), ctf=ctf)


def compare_with_clean(name: str, noisy, clean, noise_std=None, **kw) -> dict:
  """SURE against ground truth on one simulated batch (issue 13's validation).

  Runs `sure_tune(..., clean=clean)` and returns the knob chosen by SURE and by the true MSE on
  the same outputs, the true MSE of each choice, SURE's estimate at its choice and the ratios
  (`choice_ratio` = MSE(SURE's knob) / MSE(best knob), `estimate_ratio` = SURE / true MSE of the
  chosen row's "estimate", on `estimate_images` images; `grid_estimate_ratio` the same on the
  tuning subset) and the true MSE of the registered default (`mse_default`, NaN when not on the grid).
  MSEs are in image units and relative to the clean batch's power (`*_relative`).
  """
  params, table = sure_policy.sure_tune(name, noisy, noise_std, clean=clean, **kw)
  knob = next(iter(table[0]))
  rows = sure_policy.subset(len(noisy), kw.get("n_images", sure_policy.N_IMAGES), kw.get("seed", 0))
  power = float(np.mean(np.square(np.asarray(clean, np.float64)[rows])))
  chosen = next(r for r in table if r[knob] == params[knob])
  best = min(table, key=lambda r: r["mse"])
  from cryojax_denoise import denoisers

  default = next((r["mse"] for r in table if r[knob] == denoisers.REGISTRY[name].default), float("nan"))
  return {"method": name, "knob": knob, "mse_default": default, "sure_choice": chosen[knob], "clean_choice": best[knob],
          "mse_sure_choice": chosen["mse"], "mse_clean_choice": best["mse"], "sure_mse": chosen["sure_mse"],
          "mse_sure_choice_relative": chosen["mse"] / power, "sure_mse_relative": chosen["sure_mse"] / power,
          "choice_ratio": chosen["mse"] / best["mse"], "grid_estimate_ratio": chosen["sure_mse"] / chosen["mse"],
          "tune_images": chosen["n_images"], "estimate_images": chosen["estimate"]["n_images"],
          "estimate_sure_mse": chosen["estimate"]["sure_mse"],
          "estimate_mse": chosen["estimate"]["mse"],
          "estimate_ratio": chosen["estimate"]["sure_mse"] / chosen["estimate"]["mse"],
          "estimate_relative_se": chosen["estimate"]["relative_se"],
          "estimate_z": (chosen["estimate"]["sure_mse"] - chosen["estimate"]["mse"]) / chosen["estimate"]["sure_se"],
          "seconds": sum(r["seconds"] for r in table), "table": table}


def main():
  out, methods, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
  snrs = [float(s) for s in (sys.argv[4] if len(sys.argv) > 4 else "1,0.5,0.2,0.1,0.05").split(",")]
  sets = (sys.argv[5] if len(sys.argv) > 5 else "phantom,ribosome").split(",")
  ctfs = [bool(int(c)) for c in (sys.argv[6] if len(sys.argv) > 6 else "1,0").split(",")]
  n_est = int(sys.argv[7]) if len(sys.argv) > 7 else sure_policy.N_ESTIMATE
  n_sim = n_simulated(n, n_est)
  for name in sets:
    src = load_set(name)
    for ctf in ctfs:
      for snr in snrs:
        ds = simulate_setting(src, snr, ctf, n_sim)
        for m in methods:
          t = time.time()
          r = compare_with_clean(m, ds.noisy, ds.clean, None, n_images=n, n_estimate=n_est, stack_size=EMULATED)
          r.update(set=name, ctf=ctf, snr=snr, n=n, noise_std_true=float(ds.noise_std), wall=time.time() - t)
          with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
          print(f"{name} ctf={ctf} snr={snr} {m}: sure {r['sure_choice']} (tuned on {r['tune_images']}) "
                f"clean {r['clean_choice']} "
                f"choice {r['choice_ratio']:.3f} est {r['estimate_ratio']:.3f} on {r['estimate_images']} "
                f"(SE {r['estimate_relative_se']:.3f}, z {r['estimate_z']:+.2f}) default/best "
                f"{r['mse_default'] / r['mse_clean_choice']:.3f} est on {n} {r['grid_estimate_ratio']:.3f} "
                f"({r['wall']:.0f}s)", flush=True)


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
