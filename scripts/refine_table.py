"""Issue 30's table: does denoising help find the poses, and then the map? One command, resumable.

    python scripts/refine_table.py --out=RUNS/r30 [--snrs=1,0.1,0.05,0.02] [--seeds=7,8] \
        [--methods=bm3d,cwf,autoencoder,autoencoder_cwf] [--n_images=2000]

Per (seed, SNR) it simulates the unseen 70S ribosome as docs/reconstruction.md does (64² at 5 Å/px, CTF,
±10 Å shifts, `simulate --config.seed=SEED`; RUNS/r30/sim_SNR_sSEED, skipped when there), then runs
`reconstruct` in-process with the experiment's own functions (`experiments/_refine_poses.py`):

- known: true poses (`poses=known`, today's rows);
- refine raw: `poses=refine --config.initial_model=truth64.mrc --config.max_shift_A=15`;
- per METHOD, align: `align_with=METHOD` (reconstruct from raw) and both: `align_with=METHOD
  reconstruct_from=METHOD`. Both modes use one denoised stack (each half set denoised on its own), exactly
  what the experiment makes for either: `denoise_halves` depends on the method and the split seed only.

Every run appends one JSON line to RUNS/r30/refine_table.jsonl (done runs are skipped on a rerun), then
RUNS/r30/refine_table.md is rewritten: per SNR and run, the mean over seeds ± half their range. A row
carrying a "source" (a number measured elsewhere and added to the JSONL by hand) is marked † with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as launch.py: small LAPACK calls spin-wait otherwise

import numpy as np  # noqa: E402

RIBOSOME = os.path.join(ROOT, "..", "shared", "data", "ribosome70S_65.mrc")
COLUMNS = (("resolution_A", "half-map FSC 0.143 (Å)", "{:.2f}"), ("reference_resolution_A", "vs truth FSC 0.5 (Å)", "{:.2f}"),
           ("median_angular_error_deg", "median angular error (°)", "{:.2f}"),
           ("fraction_within_5deg", "within 5° (%)", "{:.1f}"), ("median_shift_error_A", "median shift error (Å)", "{:.2f}"))


def simulate(out: str, snr: float, seed: int, n: int) -> str:
  """The simulate workdir of (SNR, seed), made with launch.py when missing."""
  work = os.path.join(out, f"sim_{snr:g}_s{seed}")
  if not os.path.exists(os.path.join(work, "particles.star")):
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=simulate", f"--workdir={work}",
                    f"--config.volume={RIBOSOME}", "--config.pixel_size=5", "--config.image_size=64",
                    f"--config.n_images={n}", f"--config.snr={snr:g}", "--config.max_shift_A=10",
                    f"--config.seed={seed}"], check=True, cwd=ROOT)
  return work


def truth_map(out: str) -> str:
  """RUNS/truth64.mrc: the ribosome on the particles' grid (the initial model, low-passed to 30 Å by refine)."""
  path = os.path.join(out, "truth64.mrc")
  if not os.path.exists(path):
    from cryojax_denoise import io
    from cryojax_denoise.data.maps import load_source

    src = load_source(volume=RIBOSOME, pixel_size=5.0, image_size=64)
    io.write_volume(path, np.asarray(src.volume, np.float32), 5.0)
  return path


def runs(methods) -> list[tuple[str, str, str]]:
  """[(run name, align_with, reconstruct_from)]; poses=known is the run named 'known'."""
  out = [("known", "", ""), ("refine raw", "raw", "raw")]
  for m in methods:
    out += [(f"align {m}", m, "raw"), (f"both {m}", m, m)]
  return out


def cell(out: str, sim: str, snr: float, seed: int, methods, done: set, write) -> None:
  """Every run of one (SNR, seed) not yet in `done`; one JSON line each through `write`."""
  from experiments import _refine_poses, reconstruct
  from cryojax_denoise.reconstruction import align, fourier, fsc

  cfg = reconstruct.get_config()
  cfg.simulate_dir, cfg.initial_model, cfg.max_shift_A = sim, truth_map(out), 15.0
  star, images, particles, pixel_size = reconstruct._open(cfg)
  reference = reconstruct._reference(cfg, images.shape[-1], pixel_size)
  truth = _refine_poses.true_poses(particles, pixel_size)
  made = {}
  for name, align_with, reconstruct_from in runs(methods):
    if (snr, seed, name) in done:
      continue
    t0 = time.time()
    if name == "known":
      maps = fourier.half_maps(images, particles, star.optics, pixel_size, int(cfg.seed), pad=int(cfg.pad),
                               reg=float(cfg.reg))
      row = {"resolution_A": fsc.fsc_resolution(fsc.fsc_curve(maps.half1, maps.half2), pixel_size, 0.143),
             "reference_resolution_A": fsc.fsc_resolution(fsc.fsc_curve(maps.full, reference), pixel_size, 0.5)}
    else:
      cfg.poses, cfg.align_with, cfg.reconstruct_from = "refine", align_with, reconstruct_from
      _refine_poses.validate(cfg, images.shape[-1], pixel_size)
      t_den = time.time()
      _refine_poses.stacks(cfg, images, particles, star.optics, pixel_size, made)
      t_den = time.time() - t_den
      params = align.ctf_params(particles, star.optics, pixel_size, None)
      result = _refine_poses.refine_stacks(cfg, made, params, pixel_size, truth)
      full = _refine_poses.summary(cfg, result, truth, reference, pixel_size)
      row = {k: full[k] for k, _, _ in COLUMNS if k in full}
      row["denoise_seconds"] = round(t_den, 1)
    row.update(snr=snr, seed=seed, run=name, n_particles=len(images), seconds=round(time.time() - t0, 1))
    write(row)
    print(json.dumps(row), flush=True)


def table(rows: list[dict], methods) -> str:
  """The markdown table: per SNR (descending) and run, the mean over seeds ± half their range; every method
  the rows hold, not only this run's `methods` (a run for one method keeps the others' rows)."""
  held = [r["run"].split(" ", 1)[1] for r in rows if r["run"].startswith(("align ", "both "))]
  names = [r for r, _, _ in runs(list(dict.fromkeys(list(methods) + held)))]
  lines = ["| SNR | run | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "|---|---|---|" + "---|" * len(COLUMNS)]
  for snr in sorted({r["snr"] for r in rows}, reverse=True):
    for name in names:
      sel = [r for r in rows if r["snr"] == snr and r["run"] == name]
      if not sel:
        continue
      cells = []
      for key, _, fmt in COLUMNS:
        vals = np.array([r[key] for r in sel if key in r], np.float64)
        if key == "fraction_within_5deg":
          vals = 100 * vals
        if not len(vals):
          cells.append("–")
          continue
        text = fmt.format(vals.mean())
        cells.append(text + (f" ± {fmt.format((vals.max() - vals.min()) / 2)}" if len(vals) > 1 else ""))
      seeds = ",".join(str(s) + ("†" if any("source" in r for r in sel if r["seed"] == s) else "")
                       for s in sorted({r["seed"] for r in sel}))
      lines.append(f"| {snr:g} | {name} | {seeds} | " + " | ".join(cells) + " |")
  sources = sorted({r["source"] for r in rows if "source" in r})
  return "\n".join(lines + [f"\n† {s}" for s in sources]) + "\n"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--snrs", default="1,0.1,0.05,0.02")
  ap.add_argument("--seeds", default="7,8")
  ap.add_argument("--methods", default="bm3d,cwf,autoencoder,autoencoder_cwf")
  ap.add_argument("--n_images", type=int, default=2000)
  ap.add_argument("--table_only", action="store_true", help="rewrite the markdown table from the JSONL")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  methods = [m for m in args.methods.split(",") if m]
  path = os.path.join(args.out, "refine_table.jsonl")
  rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []

  def write(row: dict) -> None:
    rows.append(row)
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")
    with open(os.path.join(args.out, "refine_table.md"), "w") as f:
      f.write(table(rows, methods))

  if not args.table_only:
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    done = {(r["snr"], r["seed"], r["run"]) for r in rows}
    for seed in (int(s) for s in args.seeds.split(",")):
      for snr in (float(s) for s in args.snrs.split(",")):
        if all((snr, seed, name) in done for name, _, _ in runs(methods)):
          continue
        cell(args.out, simulate(args.out, snr, seed, args.n_images), snr, seed, methods, done, write)
  text = table(rows, methods)
  with open(os.path.join(args.out, "refine_table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
