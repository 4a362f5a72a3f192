"""Our CWF vs ASPIRE's DenoiserCov2D (and bm3d) on the same simulated particles: MSE and time.

    nice -n 15 .venv/bin/python experiments/peers/compare_cwf.py --n 1000 --size 64 \\
        --snrs 1,0.5,0.2,0.1,0.05 --ctf 1,0 [--volume MAP --pixel-size 5.0 | --molecule-seed 1,2,3] [--bm3d 48]

ASPIRE runs in its own environment (`--aspire-python`, default /work/peers-venv/bin/python) in a
subprocess on the same noisy images, with the true noise variance; both CWF estimates are
multiplied by each particle's CTF (our grid) and scored against the CTF-modulated clean images
(relative MSE: the clean stack is standardised). Times: fit + denoise, excluding imports/compiles
(ours: the second of two identical calls with `--warm`), wall and process CPU seconds (all threads; the
load-independent measure on a shared machine). `--aspire-stop-ratio R` stops ASPIRE once its timed part
has used R times our CPU seconds, recording only that lower bound of the CPU speed-up (checks a
"≥ R× faster" target at R× our cost). bm3d is scored on the first `--bm3d` images.
`--aspire-cache DIR` keeps ASPIRE's outputs and reuses them (to re-score a changed `cwf` without rerunning it).
`--molecule-seed S[,S...]`: corpus molecules `data.molecules.molecule_map(S, size)` (an int seed; the
training corpora draw theirs from [seed, id] pairs, never a bare int), each with its own pixel size.

Speed (ours vs ASPIRE, distinct CTFs), e.g. `--n 10000 --size 128 --snrs 0.1 --ctf 1 --aspire-stop-ratio 10`.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class AspireStopped(Exception):
  """ASPIRE stopped at its CPU limit; `cpu_seconds` its timed part had used."""

  def __init__(self, cpu_seconds: float):
    super().__init__(f"ASPIRE stopped after {cpu_seconds:.1f} CPU-s")
    self.cpu_seconds = cpu_seconds


def _cpu_seconds(pid: int) -> float:
  """user + system CPU seconds of process `pid` (all its threads), from /proc."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_limited(cmd, log_path: str, cpu_limit: float | None) -> int:
  """Runs `cmd` (stderr to `log_path`); stops it once the CPU used after its "timed-from-cpu C" line
  exceeds `cpu_limit` (AspireStopped). Returns its exit status."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
  while True:
    try:
      return proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
      if cpu_limit is None:
        continue
      with open(log_path) as f:
        marks = [float(line.split()[1]) for line in f if line.startswith("timed-from-cpu ")]
      used = _cpu_seconds(proc.pid) - marks[0] if marks else 0.0
      if used > cpu_limit:
        proc.kill()
        proc.wait()
        raise AspireStopped(used)


def _outside_disk(size: int) -> np.ndarray:
  """(size, size) bool: pixels at radius >= size / 2 from the centre pixel size // 2, where a pixel-domain
  Fourier–Bessel basis (ours) is 0 and ASPIRE's band-limited FFB basis is not."""
  y, x = np.mgrid[:size, :size] - size // 2
  return np.hypot(x, y) >= size / 2


def _modulate(x, ctf):
  return x if ctf is None else np.fft.ifft2(np.fft.fft2(x) * ctf).real.astype(np.float32)


def run_aspire(python: str, noisy, noise_var: float, pixel_size: float, params: dict | None = None,
               ctf=None, cpu_limit: float | None = None) -> dict:
  """ASPIRE's DenoiserCov2D on `noisy` (N, L, L) in a subprocess of its interpreter `python`;
  `params` (data.ctf.ctf_params of the rows) and `ctf` (N, L, L) give each particle its CTF.
  Returns {denoised (N, L, L) CTF-free, seconds (fit + denoise), cpu_seconds, sign, ctf_rel_err};
  raises AspireStopped once its timed part has used `cpu_limit` CPU seconds."""
  with tempfile.TemporaryDirectory() as tmp:
    data = {"noisy": np.asarray(noisy, np.float32), "noise_var": float(noise_var), "pixel_size": float(pixel_size)}
    if params is not None:
      data.update({k: v for k, v in params.items() if k != "pixel_size"})
      data["ctf"] = np.asarray(ctf[:8], np.float32)
    np.savez(os.path.join(tmp, "in.npz"), **data)
    cmd = ["nice", "-n", "15", python, os.path.join(HERE, "aspire_cwf.py"), os.path.join(tmp, "in.npz"),
           os.path.join(tmp, "out.npz")]
    if _run_limited(cmd, os.path.join(tmp, "stderr.txt"), cpu_limit):
      with open(os.path.join(tmp, "stderr.txt")) as f:
        raise RuntimeError(f"ASPIRE failed:\n{f.read()[-3000:]}")
    res = np.load(os.path.join(tmp, "out.npz"))
    return {"denoised": res["denoised"], "seconds": float(res["seconds"]), "sign": float(res["sign"]),
            "cpu_seconds": float(res["cpu_seconds"]) if "cpu_seconds" in res else None,
            "ctf_rel_err": float(res["ctf_rel_err"])}


def _cache_stem(name: str) -> str:
  """A file-name stem for a source: "corpus molecule 3 (...)" -> corpus_molecule_3, a map path -> its file's stem
  (never a path: the cache stays in --aspire-cache)."""
  return os.path.splitext(os.path.basename(name.split(" (")[0]))[0].replace(" ", "_")


def corpus_source(seed: int, size: int):
  """The corpus molecule of int `seed` rendered on a (size, size, size) grid, as a MapSource."""
  from cryojax_denoise.data import molecules
  from cryojax_denoise.data.maps import MapSource

  volume, pixel_size, kind = molecules.molecule_map(int(seed), size + size % 2)
  return MapSource(volume, float(pixel_size), f"corpus molecule {seed} ({kind}, {pixel_size:.2f} A/px)")


def run_one(source, n, size, snr, use_ctf, args, seed=0):
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.ctf import ctf_grid, ctf_params
  from cryojax_denoise.denoisers.cwf import cwf

  ds = simulate.simulate_dataset(source, n, size, snr, seed, ctf=use_ctf)
  noisy, clean = np.asarray(ds.noisy, np.float32), np.asarray(ds.clean, np.float32)
  sigma = float(ds.noise_std)
  ctf = ctf_grid(ds.particles, ds.optics, size, ds.pixel_size) if use_ctf else None
  row = {"molecule": source.name, "n": n, "size": size, "snr": snr, "ctf": bool(use_ctf), "reach": args.reach}
  for rep in range(2 if args.warm else 1):
    t0, c0 = time.perf_counter(), time.process_time()
    ours = np.asarray(cwf.cwf_denoise(noisy, sigma, ctf=ctf, reach=args.reach))
    row["ours_s"], row["ours_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
  row["ours_mse"] = float(np.mean((ours - clean) ** 2))
  out = _outside_disk(size)
  row["clean_power_outside"] = float(np.mean(clean[:, out] ** 2) * out.mean() / np.mean(clean ** 2))
  row["ours_mse_outside"] = float(np.sum((ours[:, out] - clean[:, out]) ** 2) / clean.size)
  row["load_avg"] = os.getloadavg()[0]
  theirs = None
  if args.aspire_python:
    params = ctf_params(ds.particles, ds.optics, ds.pixel_size) if use_ctf else None
    limit = args.aspire_stop_ratio * row["ours_cpu_s"] if args.aspire_stop_ratio else None
    cache = (os.path.join(args.aspire_cache, f"{_cache_stem(source.name)}_n{n}_L{size}_snr{snr:g}"
                          f"_ctf{int(bool(use_ctf))}.npz") if args.aspire_cache and not limit else "")
    try:
      if cache and os.path.exists(cache):
        res = {k: v if v.ndim else v.item() for k, v in np.load(cache).items()}
      else:
        res = run_aspire(args.aspire_python, noisy, sigma ** 2, ds.pixel_size, params, ctf, limit)
        if cache:
          os.makedirs(args.aspire_cache, exist_ok=True)
          np.savez(cache, **{k: v for k, v in res.items() if v is not None})
    except AspireStopped as stop:
      row.update(aspire_stopped_cpu_s=stop.cpu_seconds, speedup_cpu_at_least=stop.cpu_seconds / row["ours_cpu_s"])
    else:
      theirs = _modulate(res["denoised"], ctf)
      row.update(aspire_s=res["seconds"], aspire_cpu_s=res.get("cpu_seconds"), aspire_ctf_rel_err=res["ctf_rel_err"],
                 aspire_mse=float(np.mean((theirs - clean) ** 2)), aspire_sign=res["sign"],
                 aspire_mse_outside=float(np.sum((theirs[:, out] - clean[:, out]) ** 2) / clean.size))
      row["ratio_mse"] = row["ours_mse"] / row["aspire_mse"]
      row["speedup"] = row["aspire_s"] / row["ours_s"]
      if res.get("cpu_seconds"):
        row["speedup_cpu"] = res["cpu_seconds"] / row["ours_cpu_s"]
  if args.bm3d:
    from cryojax_denoise.denoisers.classical.bm3d import bm3d_denoise
    k = min(args.bm3d, n)
    b = np.asarray(bm3d_denoise(noisy[:k], np.full(k, sigma, np.float32)))
    row["bm3d_mse_first"] = float(np.mean((b - clean[:k]) ** 2))
    row["ours_mse_first"] = float(np.mean((ours[:k] - clean[:k]) ** 2))
    if theirs is not None:
      row["aspire_mse_first"] = float(np.mean((theirs[:k] - clean[:k]) ** 2))
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--snrs", default="1,0.5,0.2,0.1,0.05")
  p.add_argument("--ctf", default="1,0")
  p.add_argument("--volume", default="")
  p.add_argument("--pixel-size", type=float, default=0.0)
  p.add_argument("--molecule-seed", default="", help="corpus molecules' int seeds, comma-separated")
  p.add_argument("--aspire-python", default="/work/peers-venv/bin/python")
  p.add_argument("--aspire-stop-ratio", type=float, default=0.0,
                 help="stop ASPIRE at this multiple of our CPU seconds (then only a speed-up bound)")
  p.add_argument("--reach", type=float, default=None,
                 help="our basis disk's reach past the image edge, pixels (default: steerable.basis_reach)")
  p.add_argument("--aspire-cache", default="",
                 help="folder of ASPIRE's outputs per molecule/SNR/CTF: reused when present (same particles: "
                      "the simulation is seeded), written otherwise")
  p.add_argument("--bm3d", type=int, default=0)
  p.add_argument("--warm", action="store_true", help="time our second call (after compiles)")
  p.add_argument("--out", default="")
  args = p.parse_args()
  from cryojax_denoise.data.maps import load_source
  if args.molecule_seed:
    sources = [corpus_source(int(s), args.size) for s in args.molecule_seed.split(",")]
  else:
    sources = [load_source(volume=args.volume or None, pixel_size=args.pixel_size or None, image_size=args.size)]
  rows = []
  for source in sources:
    for c in [int(v) for v in args.ctf.split(",")]:
      for snr in [float(v) for v in args.snrs.split(",")]:
        rows.append(run_one(source, args.n, args.size, snr, c, args))
        print(json.dumps(rows[-1]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
