"""Is a method's Monte-Carlo divergence biased at a probe step ε? Checked against Stein's target, noise known.

usage: python scripts/sure_probe_step.py OUT.jsonl METHOD SET CTF SNR N EPSES [N_PROBES] [VALUE]
  e.g. ... out.jsonl bm3d phantom 0 0.05 256 0.02,0.04,0.07,0.14 2 1.0
On N random images of the stack `validate_sure.py` makes for that setting, with the method's knob at
VALUE (its default when left out) and σ estimated as `denoise` does: for white noise n of std σ,
E⟨n, f(y)⟩ = σ²·E[div f(y)], so ⟨n, f(y) − x⟩/σ² per pixel (the same expectation, less ⟨n, x⟩'s
spread) is an unbiased divergence with no probe step. SURE − true MSE = (‖n‖²/N − σ̂²) + 2⟨n, x⟩/N +
2(σ̂²·div − ⟨n, f⟩)/N: this prints the last term, the divergence's error, relative to the true MSE,
with its standard error over the images, at each ε (fraction of σ̂; the same probes at every ε), and
SURE / true MSE with σ̂ and with the true σ.
"""
import json
import sys

import numpy as np

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import sure, sure_grid, sure_policy


def main():
  out, method, name, ctf, snr, n = (sys.argv[1], sys.argv[2], sys.argv[3], bool(int(sys.argv[4])),
                                    float(sys.argv[5]), int(sys.argv[6]))
  epses = [float(e) for e in sys.argv[7].split(",")]
  n_probes = int(sys.argv[8]) if len(sys.argv) > 8 else 2
  value = float(sys.argv[9]) if len(sys.argv) > 9 else denoisers.REGISTRY[method].default
  n_sim = validate_sure.n_simulated(n, sure_policy.N_ESTIMATE)
  ds = validate_sure.simulate_setting(validate_sure.load_set(name), snr, ctf, n_sim)
  rows = np.random.default_rng(7).permutation(n_sim)[:n]
  y, x = np.asarray(ds.noisy, np.float32)[rows], np.asarray(ds.clean, np.float32)[rows]
  noise, s_true, pixels = y - x, float(ds.noise_std), y.shape[-2] * y.shape[-1]
  den_sigma, s_hat = sure.sigmas(y)
  fn = sure_policy.knob_function(method)
  f = np.asarray(fn(y, den_sigma, value), np.float32)
  mse = np.sum((f - x) ** 2, axis=(1, 2)) / pixels
  resid = np.sum((y - f) ** 2, axis=(1, 2)) / pixels
  stein = np.sum(noise * (f - x), axis=(1, 2)) / pixels / s_true ** 2
  probes = sure_grid.rademacher_probes(100, n_probes, y.shape)
  row = {"method": method, "set": name, "ctf": ctf, "snr": snr, "n": n, "value": value, "n_probes": n_probes,
         "noise_std": s_true, "sure_std": float(s_hat[0]), "mse": float(mse.mean()), "stein_div": float(stein.mean()),
         "eps": {}}
  for e in epses:
    step = e * s_hat
    probed = np.stack([np.asarray(fn(y + step[:, None, None] * b, den_sigma, value), np.float32) for b in probes])
    div = sure_grid.divergence(f, probed, probes, step) / pixels
    err = 2 * s_true ** 2 * (div - stein) / mse.mean()  # the divergence term's error per image, / true MSE
    row["eps"][str(e)] = {
        "div": float(div.mean()), "div_error_relative": float(err.mean()),
        "div_error_relative_se": float(err.std(ddof=1) / np.sqrt(n)),
        "sure_ratio": float(sure.sure_from_stats(resid, div, s_hat).mean() / mse.mean()),
        "sure_ratio_true_sigma": float(sure.sure_from_stats(resid, div, s_true).mean() / mse.mean())}
    print(f"{method} {name} ctf={int(ctf)} snr={snr} ε={e}σ: divergence term error "
          f"{row['eps'][str(e)]['div_error_relative']:+.3f} ± {row['eps'][str(e)]['div_error_relative_se']:.3f} "
          f"of the MSE; SURE / MSE {row['eps'][str(e)]['sure_ratio']:.3f}", flush=True)
  with open(out, "a") as fh:
    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
