"""SURE under stationary coloured noise (issue 29): SURE/true MSE with the true PSD given, and SURE as today
(white formula, band σ̂), for registered methods at their defaults on the unseen ribosome.

Tables of SURE as `denoise` reports it, every registered method (issues 29 and 32), from the JSONL rows of
`scripts/coloured_noise_check.py` (which records, per variant asked with `--sure`, SURE's estimate of the
scored images' MSE and their true MSE, absolute units):

usage: python scripts/sure_coloured.py --table ROWS.jsonl [MORE.jsonl ...]
  B(i), issue 29: rows of `--sure issue:relion31/est` (the spectrum estimated on the stack, as
  `denoise --config.noise=coloured` runs): SURE / true, z, and the Spearman correlation of SURE's ranking of
  the methods with the true ranking per SNR; B(ii), issue 32: the `white_noise` rows (σ estimated, as
  `denoise` runs), with and without CTF. A cell passes when |SURE − true| <= 10% of true + 2 standard errors;
  a method SURE cannot score shows its one-line reason.

usage: python scripts/sure_coloured.py SNR N_SCORE METHODS [CTF 1|0] [N_FIT] [coloured|white]
  e.g. ... 0.1 256 gaussian,wiener,ddtf,bm3d,cwf 1 1000
`white` keeps the white noise: "SURE with PSD" is then SURE given the true σ (a flat PSD).
Simulates `validate_sure.py`'s stack (64², 5 Å/px) and replaces its white noise by the same unit draws
coloured with `PSD` (radial, 1 + 5·exp(−(r/0.1)²): ~6× the high band below 0.1 cycles/px, like relion31's
measured spectrum, issue 29 table row 1), scaled to the white noise's total variance (SNR unchanged).
Scores the first N_SCORE images; cwf is fitted on N_FIT others (model fixed, each particle's CTF in the call).
SURE_NO_WHITE=1 skips the white-formula comparison (bm3d: half the time).
"""
import os
import sys
import time

import numpy as np

import validate_sure  # this folder: the validation's stacks
from cryojax_denoise import denoisers
from cryojax_denoise.data import ctf as ctf_mod
from cryojax_denoise.denoisers.tuning import sure, sure_policy


def profile(n: int = 65) -> np.ndarray:
  """The radial PSD shape (n,) on 0 … 0.5 cycles/px, mean over the 64² grid scaled later."""
  r = np.linspace(0, 0.5, n)
  return 1.0 + 5.0 * np.exp(-(r / 0.1) ** 2)


def table(paths) -> None:
  """Prints B(i) and B(ii) (see the module docstring) from coloured_noise_check.py's JSONL rows."""
  import json

  from scipy.stats import spearmanr

  rows = {}
  for p in paths:
    with open(p) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          if "sure" in r or "sure_reason" in r:
            rows[(r["snr"], r["spectrum"] or "white", r["variant"], r.get("ctf", True), r["method"])] = r
  groups = sorted({k[:4] for k in rows}, key=lambda k: (k[1] == "white", k[1], not k[3], -k[0]))
  print("| noise | CTF | SNR | method | n | true MSE | SURE ± 2 SE | SURE / true | z | within 10% + 2 SE |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rank = {}
  for g in groups:
    for name in ORDER:
      r = rows.get((*g, name))
      if r is None:
        continue
      label = f"{g[1]} ({g[2]})" if g[1] != "white" else "white"
      if "sure_reason" in r:
        print(f"| {label} | {'yes' if g[3] else 'no'} | {g[0]:g} | {name} | {r['n']} | {r['sure_true']:.4f} | "
              f"no number: {r['sure_reason']} | | | |")
        continue
      true, est, se = r["sure_true"], r["sure"], r["sure_se"]
      ok = abs(est - true) <= 0.1 * true + 2 * se
      print(f"| {label} | {'yes' if g[3] else 'no'} | {g[0]:g} | {name} | {r['n']} | {true:.4f} | {est:.4f} ± "
            f"{2 * se:.4f} | {est / true:.3f} | {(est - true) / se:+.2f} | {'yes' if ok else '**no**'} |")
      rank.setdefault(g, []).append((name, est / r["power"], true / r["power"]))
  print("\n| noise | CTF | SNR | methods | Spearman (SURE's ranking vs true) | SURE's order | true order |")
  print("|---|---|---|---|---|---|---|")
  for g, v in rank.items():
    if len(v) < 3:
      continue
    rho = spearmanr([a for _, a, _ in v], [b for _, _, b in v]).statistic
    order = lambda i: ", ".join(n for n, *_ in sorted(v, key=lambda t: t[i]))  # noqa: E731
    label = f"{g[1]} ({g[2]})" if g[1] != "white" else "white"
    print(f"| {label} | {'yes' if g[3] else 'no'} | {g[0]:g} | {len(v)} | {rho:.3f} | {order(1)} | {order(2)} |")


ORDER = ("gaussian", "wiener", "bm3d", "ksvd", "ddtf", "tv", "cwf", "autoencoder", "gan", "autoencoder_cwf")


def main():
  if sys.argv[1] == "--table":
    table(sys.argv[2:])
    return
  snr, n_score, methods = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
  use_ctf = bool(int(sys.argv[4])) if len(sys.argv) > 4 else True
  n_fit = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
  white_noise = len(sys.argv) > 6 and sys.argv[6] == "white"
  n = n_score + (n_fit if any(denoisers.REGISTRY[m].fit for m in methods) else 0)
  ds = validate_sure.simulate_setting(validate_sure.load_set("ribosome"), snr, use_ctf, n)
  psd = sure.psd_grid(np.ones(2) if white_noise else profile(), (64, 64))
  psd *= float(ds.noise_std) ** 2 / psd.mean()  # the white noise's total variance
  unit = (ds.noisy - ds.clean) / np.float32(ds.noise_std)
  noisy = ds.noisy if white_noise else (ds.clean + sure._colour(unit, psd)).astype(np.float32)
  ctf = ctf_mod.ctf_grid(ds.particles, ds.optics, 64, float(ds.pixel_size)) if use_ctf else None
  y, x = noisy[:n_score], ds.clean[:n_score]
  c = None if ctf is None else ctf[:n_score]
  power = float(np.mean(np.square(x.astype(np.float64))))
  sigma = float(np.sqrt(psd.mean()))
  print(f"snr={snr} ctf={use_ctf} psd low/high {psd[0, 0] / psd[32, 0]:.2f} σ²={sigma ** 2:.3f} "
        f"signal power {power:.4f}", flush=True)
  for name in methods:
    t = time.time()
    fitted = denoisers.REGISTRY[name].fit is not None
    if fitted:
      den = denoisers.fit(name, noisy[n_score:], sigma, None if ctf is None else ctf[n_score:])
    else:
      den = denoisers.get(name)
    out = np.asarray(den(y, sigma, c) if fitted else den(y, sigma), np.float32)
    true = np.mean((out - x) ** 2, axis=(-2, -1))
    est = sure_policy.method_sure(name, den, y, None, ctf=c, noise_psd=psd, fitted=fitted)
    d = est.mse - true
    line = (f"  {name}: true MSE {true.mean():.4f} (rel {true.mean() / power:.3f}); SURE with PSD {est.mean:.4f} "
            f"ratio {est.mean / true.mean():.3f} (z {d.mean() / (d.std(ddof=1) / np.sqrt(len(d))):+.2f}, "
            f"SE {est.standard_error / true.mean():.3f})")
    if os.environ.get("SURE_NO_WHITE"):  # bm3d: the white comparison doubles a slow run
      print(f"{line} ({time.time() - t:.0f}s)", flush=True)
      continue
    call = (lambda im, s: den(im, s, c)) if fitted else den  # as today: white formula, σ̂ estimated
    white = sure.sure(call, y, None, eps=sure.eps_for(name), keep_output=True,
                      div=sure.known_divergence(name, y.shape))
    true_white = float(np.mean((white.output - x) ** 2))  # that call's own MSE (σ̂ passed to the denoiser)
    print(f"{line}; white SURE {white.mean:.4f} ratio {white.mean / true_white:.3f} "
          f"(σ̂² {float(np.mean(white.sigma ** 2)):.3f}) ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
