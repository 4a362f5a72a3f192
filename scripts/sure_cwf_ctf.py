"""SURE of a fitted `cwf` (issue 32 item 1): the probed call with and without each particle's CTF.

usage: python scripts/sure_cwf_ctf.py SNR N_FIT N_SCORE [held|inside|refit] [CTF 1|0]
Simulates the unseen ribosome (64², 5 Å/px, `validate_sure.load_set`), fits cwf on N_FIT particles
and scores N_SCORE: `held` ones outside the fit, `inside` the first N_SCORE of the fit (as `denoise`
does when the stack is under `fit_size`), `refit` as inside and also SURE of the whole procedure (the
fit redone on every probed stack: what the fixed model leaves out). Prints, in image units, the true
MSE of cwf applied with each particle's CTF, SURE with the CTF in the probed call (the fix), SURE as
`denoise` called it before (the fitted model probed with ctf=None), and the MSE of that CTF-free call.
"""
import sys
import time

import numpy as np

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise import denoisers
from cryojax_denoise.data import ctf as ctf_mod
from cryojax_denoise.denoisers.tuning import sure


def main():
  snr, n_fit, n_score = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
  where = sys.argv[4] if len(sys.argv) > 4 else "held"
  use_ctf = bool(int(sys.argv[5])) if len(sys.argv) > 5 else True
  n = n_fit + (n_score if where == "held" else 0)
  ds = validate_sure.simulate_setting(validate_sure.load_set("ribosome"), snr, use_ctf, n)
  ctf = ctf_mod.ctf_grid(ds.particles, ds.optics, 64, float(ds.pixel_size))
  t = time.time()
  den = denoisers.fit("cwf", ds.noisy[:n_fit], None, None if ctf is None else ctf[:n_fit])
  score = np.arange(n_fit, n) if where == "held" else np.arange(n_score)
  if where == "refit":  # f(y_S) with the fit on (y_S, rest): the fitted model's dependence on the scored images
    rest, c_all = ds.noisy[n_score:n_fit], None if ctf is None else ctf[:n_fit]
    refit = lambda im, s: denoisers.fit("cwf", np.concatenate([im, rest]), None, c_all)(  # noqa: E731
        im, s, None if ctf is None else ctf[score])
    est = sure.sure(refit, ds.noisy[score], None, eps=sure.eps_for("cwf"))
    print(f"refit SURE {est.mean:.4f} ± {est.standard_error:.4f}", flush=True)
  y, x = ds.noisy[score], ds.clean[score]
  c = None if ctf is None else ctf[score]
  power = float(np.mean(np.square(x.astype(np.float64))))
  den_sigma, _ = sure.sigmas(y)
  true = float(np.mean((np.asarray(den(y, den_sigma, c)) - x) ** 2))
  fixed = sure.sure(lambda im, s: den(im, s, c), y, None, eps=sure.eps_for("cwf"))
  before = sure.sure(lambda im, s: den(im, s), y, None, eps=sure.eps_for("cwf"), keep_output=True)
  true_before = float(np.mean((before.output - x) ** 2))
  print(f"snr={snr} ctf={use_ctf} fit={n_fit} score={n_score} ({where}): true MSE {true:.4f} (rel {true / power:.3f}); "
        f"SURE with CTF {fixed.mean:.4f} ± {fixed.standard_error:.4f} (ratio {fixed.mean / true:.3f}, "
        f"rel {fixed.relative:.3f}); before (ctf=None) {before.mean:.4f} (ratio {before.mean / true:.3f}, "
        f"rel {before.relative:.3f}; that call's true MSE {true_before:.4f}); σ² {float(ds.noise_std) ** 2:.3f} "
        f"({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
  main()
