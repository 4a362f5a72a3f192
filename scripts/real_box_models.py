"""Issue 32: the bundled learned models at real box sizes against cwf and bm3d, on a simulated stack.

    PYTHONPATH=. python scripts/real_box_models.py SIM_DIR OUT.jsonl [--n_fit 2000] [--n_score 200]
        [--methods cwf,autoencoder_cwf,autoencoder,gan,bm3d,gaussian] [--sure 64]
    PYTHONPATH=. python scripts/real_box_models.py --table|--matrix OUT.jsonl [MORE.jsonl ...]

SIM_DIR is a `simulate` workdir (particles.star, noisy.mrcs, clean.mrcs), e.g. the ribosome at 1.52 Å/px,
128² or 256², SNR 0.1, CTF:

    python launch.py --experiment=simulate --workdir=SIM_DIR --config.volume=../shared/data/ribosome70S_65.mrc \\
        --config.pixel_size=1.52 --config.image_size=256 --config.n_images=2000 --config.snr=0.1 --config.seed=1

Each method as `denoise` applies it by default: σ estimated per image, registry defaults, the bundled general
models; the dataset-level methods (cwf, autoencoder_cwf) fitted on the first `--n_fit` particles with their
CTFs (held fixed), every method scored on the first `--n_score`. MSE relative to the scored clean images'
variance, and in absolute units; one JSON line per method appended to OUT.jsonl (done methods skipped).
`--table` prints the SURE rows of such files as one markdown table (a cell passes when
|SURE − true| <= 10% of true + 2 standard errors, issue 32) with a count of the cells that pass; `--matrix` the
same cells compactly, a row per method and a column per SNR and CTF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _sure_cells(paths: list[str]):
  """(row, its stack's config.json, within 10% + 2 standard errors?) for each row with a SURE estimate."""
  for path in paths:
    for line in open(path):
      r = json.loads(line)
      if "sure_mse" in r:
        cfg = json.load(open(os.path.join(r["sim_dir"], "config.json")))
        yield r, cfg, abs(r["sure_mse"] - r["sure_true_mse"]) <= 0.1 * r["sure_true_mse"] + 2 * r["sure_se"]


def sure_table(paths: list[str]) -> None:
  """Markdown table of the rows with a SURE estimate: box, SNR, CTF (from each stack's config.json), method."""
  cells = sorted(_sure_cells(paths), key=lambda c: (c[0]["size"], -float(c[1]["snr"]), not c[1]["ctf"]))
  print("| box | SNR | CTF | method | n | true MSE | SURE ± SE | SURE / true | z | within 10% + 2 SE |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r, cfg, ok in cells:
    est, se, true = r["sure_mse"], r["sure_se"], r["sure_true_mse"]
    held = r.get("held_out") and r["method"] in ("cwf", "autoencoder_cwf")
    method = r["method"] + (" (fit without the scored)" if held else "")
    print(f"| {r['size']}² | {float(cfg['snr']):g} | {'yes' if cfg['ctf'] else 'no'} | {method} | "
          f"{r['sure_images']} | {true:.4g} | {est:.4g} ± {se:.2g} | {est / true:.3f} | {(est - true) / se:+.2f} | "
          f"{'yes' if ok else '**no**'} |")
  print(f"\n{sum(ok for _, _, ok in cells)} of {len(cells)} cells within 10% + 2 standard errors")


def sure_matrix(paths: list[str]) -> None:
  """The same rows as one compact table per box: a row per method, a column per (SNR, CTF), each cell
  SURE / true (z), in bold where it is outside 10% + 2 standard errors."""
  cells, methods = {}, []
  for r, cfg, ok in _sure_cells(paths):
    est, se, true = r["sure_mse"], r["sure_se"], r["sure_true_mse"]
    text = f"{est / true:.3f} ({(est - true) / se:+.1f})"
    cells[(r["size"], (-float(cfg["snr"]), not cfg["ctf"]), r["method"])] = text if ok else f"**{text}**"
    methods += [r["method"]] if r["method"] not in methods else []
  for size in sorted({k[0] for k in cells}):
    cols = sorted({k[1] for k in cells if k[0] == size})
    print(f"\n{size}²: SURE / true MSE (z); columns SNR, CTF\n")
    print("| method | " + " | ".join(f"{-s:g}, {'no CTF' if n else 'CTF'}" for s, n in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for m in methods:
      print(f"| {m} | " + " | ".join(cells.get((size, col, m), "–") for col in cols) + " |")


def main() -> None:
  if sys.argv[1:2] == ["--table"]:
    return sure_table(sys.argv[2:])
  if sys.argv[1:2] == ["--matrix"]:
    return sure_matrix(sys.argv[2:])
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("sim_dir")
  ap.add_argument("out")
  ap.add_argument("--n_fit", type=int, default=2000)
  ap.add_argument("--n_score", type=int, default=200)
  ap.add_argument("--methods", default="cwf,autoencoder_cwf,autoencoder,gan,bm3d,gaussian")
  ap.add_argument("--sure", type=int, default=0, help="also SURE's estimate (as `denoise` logs it) on this many "
                  "of the scored images, absolute units with its standard error, and their true MSE")
  ap.add_argument("--held_out", action="store_true", help="fit the dataset-level methods on the --n_fit particles "
                  "after the scored ones (the scored particles out of the fit) instead of the first --n_fit")
  args = ap.parse_args()

  import mrcfile

  from cryojax_denoise import denoisers, io
  from cryojax_denoise.data import ctf as ctf_lib
  from cryojax_denoise.denoisers.noise import estimate_noise_std

  star = io.read_star(os.path.join(args.sim_dir, "particles.star"))
  n_fit = min(args.n_fit, len(star))
  n_score = min(args.n_score, n_fit)
  n_read = min(n_fit + n_score, len(star)) if args.held_out else n_fit
  fit_rows = slice(n_score, n_read) if args.held_out else slice(0, n_fit)
  noisy = np.asarray(mrcfile.mmap(os.path.join(args.sim_dir, "noisy.mrcs"), mode="r").data[:n_read], np.float32)
  clean = np.asarray(mrcfile.mmap(os.path.join(args.sim_dir, "clean.mrcs"), mode="r").data[:n_score], np.float64)
  size, pixel_size = noisy.shape[-1], star.pixel_size()
  ctf = ctf_lib.ctf_grid(star.particles.iloc[:n_read], star.optics, size, pixel_size)
  sigma = np.asarray(estimate_noise_std(noisy), np.float32)
  y, s, power = noisy[:n_score], sigma[:n_score], float(np.var(clean))
  c = None if ctf is None else ctf[:n_score]  # a stack simulated with ctf=False has none
  fit_data = (noisy[fit_rows], sigma[fit_rows], None if ctf is None else ctf[fit_rows])
  n_fit = len(fit_data[0])
  done = set()
  if os.path.exists(args.out):
    done = {json.loads(line)["method"] for line in open(args.out)}
  for name in (m for m in args.methods.split(",") if m and m not in done):
    t0, c0 = time.time(), time.process_time()
    if denoisers.REGISTRY[name].fit is not None:
      den = denoisers.fit(name, *fit_data)
      out = np.concatenate([np.asarray(den(y[i:i + 32], s[i:i + 32], None if c is None else c[i:i + 32]))
                            for i in range(0, n_score, 32)])
    else:
      den = denoisers.get(name)
      out = np.concatenate([np.asarray(den(y[i:i + 32], s[i:i + 32])) for i in range(0, n_score, 32)])
    mse = float(np.mean((out.astype(np.float64) - clean) ** 2))
    extra = {}
    if args.sure:  # the fitted model held fixed, each particle's CTF in every probed call
      from cryojax_denoise.denoisers.tuning import sure_policy

      k = min(args.sure, n_score)
      fitted = denoisers.REGISTRY[name].fit is not None
      ctf_k = c[:k] if fitted and c is not None else None
      est = sure_policy.method_sure(name, den, y[:k], None, ctf=ctf_k, fitted=fitted)
      if not isinstance(est, str):
        extra = {"sure_images": k, "sure_mse": est.mean, "sure_se": est.standard_error,
                 "sure_true_mse": float(np.mean((out[:k].astype(np.float64) - clean[:k]) ** 2))}
    row = {"method": name, "size": int(size), "pixel_size_A": float(pixel_size), "n_fit": n_fit,
           "held_out": args.held_out, "n_score": n_score,
           "mse": mse, "mse_rel": mse / power, "seconds": round(time.time() - t0, 1),
           "cpu_s": round(time.process_time() - c0, 1), "sim_dir": os.path.abspath(args.sim_dir), **extra}
    with open(args.out, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
  from cryojax_denoise.denoisers.classical import bm3d as bm3d_mod
  bm3d_mod.shutdown_pool()


if __name__ == "__main__":  # bm3d starts worker processes with spawn
  main()
