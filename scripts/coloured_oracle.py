"""What coloured noise costs any linear denoiser: the covariance-Wiener oracle against cwf (issue 29).

    PYTHONPATH=. python scripts/coloured_oracle.py OUT.jsonl [--volume MAP.mrc | --structure MODEL.cif]
        [--pixel_size 5] [--size 64] [--snrs 0.1,0.05,0.02] [--spectra issue:reprojection48,issue:relion31]
        [--n 1000] [--n_score 128] [--n_cov 40000] [--seed 20000] [--methods cwf,autoencoder_cwf]
        [--no_oracle]
    PYTHONPATH=. python scripts/coloured_oracle.py --table OUT.jsonl [MORE.jsonl ...]

`--volume ""` without `--structure` is the built-in phantom; `--pixel_size 0` the map's own (the phantom's and
a model's: ~60% of the box). Defaults: the unseen ribosome at 5 Å/px, 64², CTF, 1,000 particles.

The oracle is the best linear estimate of each particle's clean CTF-modulated image given the *true*
mean μ and covariance C of the CTF-free projections (estimated from `--n_cov` clean projections at fresh
random poses, in the stack's units), its CTF h_i and the true noise spectrum P:
t̂_i = c + h_i ⊙ μ + D_i C D_i (D_i C D_i + diag P)⁻¹ (y_i − c − h_i ⊙ μ), in the (real, orthonormal)
Hartley basis where the CTF D_i = diag(h_i) and stationary noise diag(P) are both diagonal (c: the stack
standardisation's constant). No linear method, whitened or not, does better on average; `cwf` estimates
the same μ, C from the noisy stack. `--methods` (dataset-level, as `denoise` fits them on all `--n`
particles under the true spectrum, `noise.methods.fit_coloured`) and the oracle are scored on the first
`--n_score` particles of the same noise draws, white and coloured at the same total variance
(`simulate_dataset`), MSE relative to the clean images' power. One JSON line per (SNR, spectrum); the
printed lines give each one's coloured / white ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def hartley(x: np.ndarray) -> np.ndarray:
  """Orthonormal 2D Hartley transform of (..., H, W) (its own inverse)."""
  f = np.fft.fft2(x, norm="ortho")
  return f.real - f.imag


def source(args):
  from cryojax_denoise.data.maps import load_source
  return load_source(volume=args.volume or None, structure=args.structure, pixel_size=args.pixel_size or None,
                     image_size=args.size, seed=0)


def clean_moments(src, size: int, n_cov: int, scale: float, seed: int, batch: int = 500):
  """Mean (H·W,) and covariance (H·W, H·W) in the Hartley basis of CTF-free projections / `scale`."""
  import jax

  from cryojax_denoise.data.simulate import Simulator

  sim = Simulator(src, size, ctf=False, calibrate=False)
  d = size * size
  total, gram = np.zeros(d), np.zeros((d, d))
  key = jax.random.PRNGKey(seed)
  for start in range(0, n_cov, batch):
    params = sim.sample_params(key, min(batch, n_cov - start), start)
    u = hartley(np.asarray(sim.project(params), np.float64) / scale).reshape(-1, d)
    total += u.sum(0)
    gram += u.T @ u
  mean = total / n_cov
  return mean, gram / n_cov - np.outer(mean, mean)


def stack_constants(src, size: int, n: int, seed: int):
  """(m, s, CTF-free raw projections of the stack's particles): the stack's clean images are
  (h ⊙ raw − m) / s (`simulate_dataset`'s standardisation over the whole stack)."""
  from cryojax_denoise.data import simulate as sim_mod

  sim = sim_mod.Simulator(src, size, ctf=True, calibrate=False)
  free = sim_mod.Simulator(src, size, ctf=False, calibrate=False)
  raws, frees = [], []
  for _, _, params, images, _ in sim_mod._chunks(sim, seed, n, 64, False):
    raws.append(images)
    frees.append(np.asarray(free.project(params)))
  raw = np.concatenate(raws).astype(np.float64)
  return float(raw.mean()), float(raw.std()), np.concatenate(frees)


def oracle(y, ctf, psd, mean, cov, c):
  """Linear-MMSE estimates (B, H, W) of the CTF-modulated clean images, given the true moments."""
  from scipy.linalg import cho_factor, cho_solve

  b, h, w = y.shape
  p = psd.reshape(-1)
  out = np.empty_like(y, dtype=np.float64)
  for i in range(b):
    hi = ctf[i].reshape(-1).astype(np.float64)
    r = hartley(y[i] - c).reshape(-1) - hi * mean
    a = cov * np.outer(hi, hi)
    a[np.diag_indices_from(a)] += p
    z = cho_solve(cho_factor(a, lower=True, check_finite=False), r, check_finite=False)
    est = hi * mean + r - p * z  # D C D (D C D + P)⁻¹ r = r − P (D C D + P)⁻¹ r
    out[i] = hartley(est.reshape(h, w)) + c
  return out


def table(paths) -> None:
  """Markdown: per molecule, SNR and spectrum, each estimator's white and coloured MSE and their ratio."""
  merged = {}  # rows of one (molecule, SNR, spectrum, scored set) from several runs merge, the later winning
  for r in (json.loads(line) for p in paths for line in open(p) if line.strip()):
    merged.setdefault((r["source"], r["snr"], r["spectrum"], r["n_score"]), {}).update(r)
  rows = list(merged.values())
  white = {(r["source"], r["snr"]): r for r in rows if r["spectrum"] == "white"}
  names = [m for m in ("oracle", "cwf", "autoencoder_cwf") if any(m in r for r in rows)]
  print("| molecule | SNR | spectrum | n | " + " | ".join(f"{m}: white, coloured (ratio)" for m in names) + " |")
  print("|---|---|---|---|" + "---|" * len(names))
  for r in sorted(rows, key=lambda r: (r["source"], -r["snr"], r["spectrum"])):
    w = white.get((r["source"], r["snr"]))
    if r["spectrum"] == "white" or w is None:
      continue
    cells = [f"{w[m]:.3f}, {r[m]:.3f} ({r[m] / w[m]:.3f})" if m in r and m in w else "" for m in names]
    print(f"| {os.path.basename(r['source'])} | {r['snr']:g} | {r['spectrum']} | {r['n_score']} | "
          + " | ".join(cells) + " |")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out", nargs="?", default="")
  ap.add_argument("--table", nargs="+", default=None)
  ap.add_argument("--volume", default="../shared/data/ribosome70S_65.mrc")
  ap.add_argument("--structure", default=None)
  ap.add_argument("--pixel_size", type=float, default=5.0)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--snrs", default="0.1,0.05,0.02")
  ap.add_argument("--spectra", default="issue:reprojection48,issue:relion31")
  ap.add_argument("--n", type=int, default=1000)
  ap.add_argument("--n_score", type=int, default=128)
  ap.add_argument("--n_cov", type=int, default=40000)
  ap.add_argument("--seed", type=int, default=20000)
  ap.add_argument("--methods", default="cwf")
  ap.add_argument("--no_oracle", action="store_true", help="the methods alone (rows merge in --table)")
  ap.add_argument("--no_white", action="store_true",
                  help="the spectra alone (white noise takes no coloured path: an earlier run's white rows stand)")
  args = ap.parse_args()
  if args.table:
    return table(args.table)
  if args.structure:
    args.volume = None

  from cryojax_denoise.data import ctf as ctf_mod
  from cryojax_denoise.data import simulate as sim
  from cryojax_denoise.noise import spec
  from cryojax_denoise.noise import whiten as wh
  from cryojax_denoise.noise.methods import fit_coloured

  src = source(args)
  size, k = args.size, args.n_score
  t0 = time.time()
  m, s, free = stack_constants(src, size, args.n, args.seed)
  if not args.no_oracle:
    mean, cov = clean_moments(src, size, args.n_cov, s, args.seed + 7919)
    print(f"moments of {args.n_cov} clean projections: {time.time() - t0:.0f} s", flush=True)
  for snr in (float(v) for v in args.snrs.split(",")):
    runs = {}
    for name in ([] if args.no_white else ["white"]) + args.spectra.split(","):
      radial = None if name == "white" else spec.resolve(name)
      ds = sim.simulate_dataset(src, args.n, size, snr, seed=args.seed, ctf=True, noise_psd=radial)
      ctf = ctf_mod.ctf_grid(ds.particles, ds.optics, size, float(ds.pixel_size))
      x = ds.clean[:k].astype(np.float64)
      if name == "white":  # the model of the stack: clean = h ⊙ (raw / s) − m / s
        model = np.fft.ifft2(np.fft.fft2(free[:k] / s) * ctf[:k]).real - m / s
        err = np.linalg.norm(model - x) / np.linalg.norm(x)
        print(f"SNR {snr}: model of the clean stack, relative error {err:.2e}", flush=True)
      g = np.ones((size, size)) if radial is None else wh.psd_grid(radial, (size, size))
      psd = g * float(ds.noise_std) ** 2 / g.mean()
      power = float(np.mean(x ** 2))
      row = {"snr": snr, "spectrum": name, "n_score": k, "source": ds.source}
      if not args.no_oracle:
        t1 = time.time()
        est = oracle(ds.noisy[:k].astype(np.float64), ctf[:k], psd, mean, cov, -m / s)
        row.update(n_cov=args.n_cov, oracle=float(np.mean((est - x) ** 2)) / power, oracle_s=round(time.time() - t1, 1))
      for method in filter(None, args.methods.split(",")):
        t1 = time.time()
        den = fit_coloured(method, ds.noisy, None, ctf, None if radial is None else psd)
        out = np.asarray(den(ds.noisy[:k], None, ctf[:k]), np.float64)
        row[method], row[f"{method}_s"] = float(np.mean((out - x) ** 2)) / power, round(time.time() - t1, 1)
      runs[name] = row
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
      print(json.dumps(row), flush=True)
    for name, row in runs.items():
      if name != "white" and "white" in runs:
        ratios = {key: row[key] / runs["white"][key] for key in ["oracle", *args.methods.split(",")] if key in row}
        print(f"SNR {snr} {name}: coloured / white " + ", ".join(f"{a} {v:.3f}" for a, v in ratios.items()), flush=True)


if __name__ == "__main__":
  main()
