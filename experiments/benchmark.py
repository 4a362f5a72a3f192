"""benchmark: images/s of every classical denoiser and of its reference implementation, same images.

    python launch.py --experiment=benchmark [--config.n_images=64 --config.image_size=128 --config.snr=0.1]

Simulates `n_images` noisy images of the built-in phantom (or `volume=`), then times each method
on the whole batch after a compile/warm-up call on the same shape (steady state):
- ddtf (JAX) against `denoisers.reference.ddtf_denoise_numpy` (plain NumPy, same sampled patches;
  the outputs are compared);
- ksvd (JAX) and its sparse coder: our Batch-OMP against scikit-learn's `orthogonal_mp_gram` on the
  same patches and dictionary (selected atoms and coefficients compared);
- bm3d (bm3d package, one process per core), the speed baseline;
- gaussian (JAX FFT) against `scipy.ndimage.gaussian_filter` (periodic), wiener (JAX).
σ given to the methods is the realised noise std of each image (known in simulation). Writes
benchmark.json and benchmark.md (images/s, ratios to bm3d and to the references, MSE, device, shapes).
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import grid as tuning
from cryojax_denoise.errors import InputError
from cryojax_denoise.io import atomic_write_text
from cryojax_denoise.progress import Progress

METHODS = tuple(denoisers.classical_names())  # every registered method that needs no training


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_images = 64
  c.image_size = 128
  c.snr = 0.1
  c.seed = 0
  c.ctf = True
  c.volume = ""  # an MRC map; empty: the built-in phantom
  c.pixel_size = 0.0  # Å per pixel of `volume` when its header says 0 (0: from the header)
  c.methods = METHODS
  c.repeats = 1  # timed calls per method (after one warm-up call); the fastest is reported
  c.bm3d_workers = 0  # 0: one process per CPU core
  c.reference = True  # also time the reference implementations
  c.omp_patches = 4096  # patches coded by both OMPs
  c.omp_atoms = 8  # atoms per patch in the OMP comparison (fixed sparsity, so supports compare)
  c.ddtf_n_patches = 0  # patches DDTF learns from; 0: its default (40000)
  c.ksvd_n_train = 0  # patches K-SVD learns from; 0: its default
  c.tune = False  # pick each knob on a separate tuning batch of `n_tune` images first
  c.n_tune = 8
  c.auto = False  # also time params=auto (SURE on `auto_images` of the batch) against denoising the batch
  c.auto_images = 32
  c.auto_batch = 64  # plain denoising also timed in batches of this size (the denoise experiment's default)
  c.aspire_python = "/work/peers-venv/bin/python"  # ASPIRE's interpreter: cwf's reference ("" or absent: none)
  c.align = True  # also time projection matching (reconstruction.align) against its NumPy reference, same grid
  c.align_particles = 0  # particles the JAX kernel aligns; 0: 4 × n_images (the NumPy reference aligns 4)
  return c


def validate(config) -> None:
  if config.ddtf_n_patches < 0 or config.ksvd_n_train < 0 or config.omp_patches < 1:
    raise InputError("benchmark: ddtf_n_patches, ksvd_n_train must be >= 0 and omp_patches >= 1")
  if config.n_images < 1 or config.image_size < 16:
    raise InputError("benchmark: n_images must be >= 1 and image_size >= 16")
  if not config.snr > 0:
    raise InputError(f"benchmark: snr must be > 0, got {config.snr}")
  bad = [m for m in config.methods if m not in METHODS]
  if bad:
    raise InputError(f"benchmark: unknown methods {bad}; valid: {', '.join(METHODS)}")
  if config.volume and not os.path.isfile(config.volume):
    raise InputError(f"benchmark: volume {config.volume!r} not found")


def _simulate(config, n: int, seed: int):
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source

  source = load_source(volume=config.volume or None, image_size=config.image_size, seed=config.seed,
                       pixel_size=config.pixel_size or None)
  ds = simulate.simulate_dataset(source, n, config.image_size, config.snr, seed, ctf=config.ctf)
  noisy, clean = np.asarray(ds.noisy, np.float32), np.asarray(ds.clean, np.float32)
  return noisy, clean, np.std(noisy - clean, axis=(1, 2)).astype(np.float32), ds


def _timed(fn, repeats: int, warmup: bool = True):
  """(result, fastest wall seconds, its CPU seconds) of `fn()` over `repeats` calls, after one
  untimed warm-up call. CPU time is this process's (all threads)."""
  if warmup:
    jax.block_until_ready(fn())
  best, cpu, out = float("inf"), float("inf"), None
  for _ in range(max(1, repeats)):
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    wall, c = time.perf_counter() - t0, time.process_time() - c0
    if wall < best:
      best, cpu = wall, c
  return np.asarray(out, np.float32), best, cpu


def _mse(x, y) -> float:
  return float(np.mean((np.asarray(x, np.float64) - y) ** 2))


def _omp_comparison(noisy: np.ndarray, config) -> dict:
  """Our Batch-OMP vs scikit-learn's orthogonal_mp_gram: same patches, dictionary, sparsity."""
  from sklearn.linear_model import orthogonal_mp_gram

  from cryojax_denoise.denoisers.classical import ksvd, omp
  from cryojax_denoise.denoisers.classical import patches as pt

  r, k = 8, int(config.omp_atoms)
  dic = np.asarray(ksvd.overcomplete_dct(r, 256), np.float32)[:, 1:]  # drop the DC atom (patches are DC-free)
  b, y, x = pt.sample_positions(jax.random.key(config.seed + 1), noisy.shape, r, int(config.omp_patches))
  p = np.asarray(pt.gather_patches(jnp.asarray(noisy), b, y, x, r))
  p = p - p.mean(1, keepdims=True)
  gram, dtx = dic.T @ dic, p @ dic
  ours = jax.jit(lambda g, c: omp.batch_omp(g, c, k))
  _, t_ours, _ = _timed(lambda: ours(gram, dtx).coefs, config.repeats)
  full = ours(gram, dtx)
  t0 = time.perf_counter()
  ref = orthogonal_mp_gram(gram.astype(np.float64), dtx.T.astype(np.float64), n_nonzero_coefs=k, copy_Gram=True,
                           copy_Xy=True)  # (N, P)
  t_ref = time.perf_counter() - t0
  ref = np.atleast_2d(ref)
  idx, coefs, n_at = np.asarray(full.indices), np.asarray(full.coefs), np.asarray(full.n_atoms)
  same, max_diff = 0, 0.0
  for i in range(p.shape[0]):
    ours_set = set(idx[i, : n_at[i]].tolist())
    ref_set = set(np.flatnonzero(ref[:, i]).tolist())
    if ours_set == ref_set:
      same += 1
      dense = np.zeros(dic.shape[1])
      np.add.at(dense, idx[i, : n_at[i]], coefs[i, : n_at[i]])
      max_diff = max(max_diff, float(np.max(np.abs(dense - ref[:, i])) / (np.max(np.abs(ref[:, i])) + 1e-12)))
  P = p.shape[0]
  return dict(n_patches=P, dictionary=list(dic.shape), atoms=k, ours_patches_per_s=P / t_ours,
              sklearn_patches_per_s=P / t_ref, speedup=t_ref / t_ours, same_support_fraction=same / P,
              max_rel_coef_diff_same_support=max_diff)


def _aspire_reference(noisy, sigma, ds, ctf, config):
  """ASPIRE's DenoiserCov2D (experiments/peers/aspire_cwf.py, run by `aspire_python` in a subprocess)
  on the same particles and CTFs, its estimate CTF-modulated like cwf's; `fn.seconds` is ASPIRE's own
  fit + denoise time (no interpreter start or imports). None when `aspire_python` is absent."""
  if not config.aspire_python or not os.path.exists(config.aspire_python):
    return None
  from cryojax_denoise.data.ctf import ctf_params
  from experiments.peers.compare_cwf import run_aspire

  def fn():
    params = None if ctf is None else ctf_params(ds.particles, ds.optics, ds.pixel_size)
    res = run_aspire(config.aspire_python, noisy, float(np.mean(sigma ** 2)), ds.pixel_size, params, ctf)
    fn.seconds = res["seconds"]
    out = res["denoised"]
    return out if ctf is None else np.fft.ifft2(np.fft.fft2(out) * ctf).real

  return fn, "ASPIRE 0.14 DenoiserCov2D (own environment, subprocess)"


def _reference(name: str, noisy, sigma, params: dict, config):
  """(callable, description) of the reference implementation of `name`, or None."""
  if name == "ddtf":
    from cryojax_denoise.denoisers.classical import patches as pt
    from experiments.peers import reference

    kw = {k: v for k, v in params.items() if k in ("lam_scale", "stride", "n_iter", "r", "threshold_dc")}
    n_patches = params.get("n_patches", 40000)
    pos = [np.asarray(a) for a in pt.sample_positions(jax.random.key(params.get("seed", 0)), noisy.shape,
                                                      kw.get("r", 8), n_patches)]
    return (lambda: reference.ddtf_denoise_numpy(noisy, sigma, pos, **kw)), "NumPy DDTF (experiments/peers/reference.py)"
  if name == "tv":
    from experiments.peers import reference

    kw = {**denoisers.REGISTRY["tv"].defaults, **params}
    lam, n_iter, tau = kw["lam"], kw["n_iter"], kw["tau"]
    return (lambda: reference.tv_denoise_numpy(noisy, lam * sigma, n_iter, tau)), "NumPy TV (experiments/peers/reference.py)"
  if name == "gaussian":
    from scipy import ndimage

    w = params.get("width", denoisers.REGISTRY["gaussian"].default)
    return (lambda: np.stack([ndimage.gaussian_filter(im, w, mode="wrap") for im in noisy])), \
        "scipy.ndimage.gaussian_filter (mode=wrap)"
  return None


def run(config, workdir: str) -> None:
  n, size = int(config.n_images), int(config.image_size)
  logging.info("benchmark: simulating %d images of %d² at SNR %g", n, size, config.snr)
  noisy, clean, sigma, ds = _simulate(config, n, config.seed)
  from cryojax_denoise.data.ctf import ctf_grid

  ctf = ctf_grid(ds.particles, ds.optics, size, ds.pixel_size)  # None without CTF; for uses_ctf methods
  chosen, tables = {}, {}
  if config.tune:
    t_noisy, t_clean, t_sigma, _ = _simulate(config, int(config.n_tune), 10_000 + config.seed)
    for name in config.methods:
      fixed = {"ddtf": {"n_patches": int(config.ddtf_n_patches)} if config.ddtf_n_patches else {},
               "ksvd": {"n_train": int(config.ksvd_n_train)} if config.ksvd_n_train else {}}.get(name, {})
      chosen[name], tables[name] = tuning.tune(name, t_noisy, t_clean, t_sigma, **fixed)
      logging.info("benchmark: tuned %s: %s", name, chosen[name])
  load_start = os.getloadavg()
  rows = []
  bar = Progress(total=len(config.methods), desc="benchmark", unit="methods", every_s=0.0)
  for name in config.methods:
    params = dict(chosen.get(name, {}))
    if name == "ddtf" and config.ddtf_n_patches:
      params["n_patches"] = int(config.ddtf_n_patches)
    if name == "ksvd" and config.ksvd_n_train:
      params["n_train"] = int(config.ksvd_n_train)
    if name == "bm3d" and config.bm3d_workers:
      params["workers"] = int(config.bm3d_workers)
    den = denoisers.get(name, **params)
    if name == "bm3d":  # nothing to compile: warm up (start the worker processes) on a few images
      from cryojax_denoise.denoisers.classical.bm3d import bm3d_denoise_cpu

      k = min(n, 2 * (config.bm3d_workers or os.cpu_count() or 1))
      den(noisy[:k], sigma[:k])
      t0 = time.perf_counter()
      out, cpu = bm3d_denoise_cpu(noisy, sigma, **params)  # the registry's bm3d, plus its workers' CPU time
      secs = time.perf_counter() - t0
    elif denoisers.REGISTRY[name].fit is not None:  # dataset-level (cwf): fit on the batch with its CTFs, apply
      out, secs, cpu = _timed(lambda: denoisers.fit(name, noisy, sigma, ctf, **params)(noisy, sigma, ctf),
                              config.repeats)
    else:
      out, secs, cpu = _timed(lambda: den(noisy, sigma), config.repeats)
    row = dict(method=name, params={k: v for k, v in params.items()}, seconds=secs, images_per_s=n / secs,
               cpu_seconds=cpu, images_per_cpu_s=n / cpu if cpu > 0 else None, mse=_mse(out, clean))
    ref = _reference(name, noisy, sigma, params, config) if config.reference else None
    if name == "cwf" and config.reference:
      ref = _aspire_reference(noisy, sigma, ds, ctf, config)
    if ref is not None:
      fn, desc = ref
      t0 = time.perf_counter()
      ref_out = np.asarray(fn(), np.float32)
      t_ref = getattr(fn, "seconds", time.perf_counter() - t0)
      row["reference"] = dict(name=desc, seconds=t_ref, images_per_s=n / t_ref, speedup=t_ref / secs,
                              mse=_mse(ref_out, clean), max_abs_diff=float(np.max(np.abs(ref_out - out))))
    if name == "ksvd" and config.reference:
      row["reference"] = dict(name="scikit-learn orthogonal_mp_gram (sparse coder)", **_omp_comparison(noisy, config))
    if config.auto and denoisers.REGISTRY[name].knob:
      row["auto"] = _auto_cost(name, den, noisy, sigma, params, secs, cpu, config)
    rows.append(row)
    bar.update(1, extra=f"{name}: {row['images_per_s']:.3g} images/s, MSE {row['mse']:.4f}")
  from cryojax_denoise.denoisers.classical.bm3d import shutdown_pool

  shutdown_pool()
  bm3d_rate = next((r["images_per_s"] for r in rows if r["method"] == "bm3d"), None)
  bm3d_cpu = next((r["images_per_cpu_s"] for r in rows if r["method"] == "bm3d"), None)
  for r in rows:
    r["vs_bm3d"] = r["images_per_s"] / bm3d_rate if bm3d_rate else None
    r["vs_bm3d_cpu"] = r["images_per_cpu_s"] / bm3d_cpu if bm3d_cpu and r["images_per_cpu_s"] else None
  align_row = _align_benchmark(config) if config.align else None
  result = dict(
      device=[str(d) for d in jax.devices()], backend=jax.default_backend(), cpu_count=os.cpu_count(),
      platform=platform.platform(), jax_version=jax.__version__,
      load_average_start=list(load_start), load_average_end=list(os.getloadavg()),
      shapes=dict(images=[n, size, size], dtype="float32"), snr=config.snr, noisy_mse=_mse(noisy, clean),
      noise_std_mean=float(sigma.mean()), rows=rows, tuning=dict(chosen=chosen, tables=tables), align=align_row)
  atomic_write_text(os.path.join(workdir, "benchmark.json"), json.dumps(result, indent=2, default=_jsonable) + "\n")
  atomic_write_text(os.path.join(workdir, "benchmark.md"), _markdown(result))
  logging.info("benchmark: wrote %s", os.path.join(workdir, "benchmark.md"))


def _auto_cost(name: str, den, noisy, sigma, params: dict, plain_seconds: float, plain_cpu: float, config) -> dict:
  """Seconds of `sure_policy.sure_tune` on `auto_images` of the batch (first call, compile included; then
  the fastest of `repeats` steady-state calls when the first took under 300 s) against denoising all
  images in one batch and in batches of `auto_batch` as `denoise` does (DDTF and K-SVD learn once per batch).
  CPU seconds include bm3d's worker processes."""
  from cryojax_denoise.denoisers.tuning import sure_policy
  from cryojax_denoise.denoisers.classical.bm3d import worker_cpu_seconds

  cpu_now = lambda: time.process_time() + worker_cpu_seconds()  # noqa: E731

  fixed = {k: v for k, v in params.items() if k != denoisers.REGISTRY[name].knob}
  secs, cpus = [], []  # first call, then the fastest of `repeats` steady-state calls when the first took < 300 s
  while len(secs) < 1 + max(1, int(config.repeats)) and (not secs or secs[0] < 300):
    t0, c0 = time.perf_counter(), cpu_now()
    chosen, table = sure_policy.sure_tune(name, noisy, sigma, n_images=int(config.auto_images), **fixed)
    secs.append(time.perf_counter() - t0)
    cpus.append(cpu_now() - c0)
  i = int(np.argmin(secs[1:])) + 1 if len(secs) > 1 else 0
  b = int(config.auto_batch)
  batched, batched_cpu, batched_first = plain_seconds, plain_cpu, float("nan")
  if 0 < b < len(noisy) and name != "bm3d":  # bm3d works image by image: its time does not depend on b
    run_batched = lambda: np.concatenate([np.asarray(den(noisy[i:i + b], sigma[i:i + b]))  # noqa: E731
                                          for i in range(0, len(noisy), b)])
    _, batched_first, _ = _timed(run_batched, 1, warmup=False)  # compiles for batches of b, like auto's first call
    _, batched, batched_cpu = _timed(run_batched, int(config.repeats), warmup=False)
  knob = denoisers.REGISTRY[name].knob
  tuned = next(r for r in table if r[knob] == chosen[knob])
  estimate = tuned["estimate"]
  logging.info("benchmark: %s params=auto %s in %.2f s (first call %.2f s) = %.2f× denoising %d images in one "
               "batch, %.2f× in batches of %d (CPU time %.2f×; first calls, compiles included, %.2f×)", name, chosen,
               secs[i], secs[0], secs[i] / plain_seconds, len(noisy), secs[i] / batched, b, cpus[i] / batched_cpu,
               secs[0] / batched_first)
  return dict(params=chosen, seconds=secs[i], first_call_seconds=secs[0], ratio_to_denoising=secs[i] / plain_seconds,
              batched_seconds=batched, batch=b, ratio_to_batched=secs[i] / batched,
              cpu_seconds=cpus[i], batched_cpu_seconds=batched_cpu, cpu_ratio_to_batched=cpus[i] / batched_cpu,
              batched_first_call_seconds=batched_first, first_call_ratio_to_batched=secs[0] / batched_first,
              n_images=tuned["n_images"], estimate_images=estimate["n_images"], grid=len(table))


def _align_benchmark(config) -> dict:
  """Comparisons/s of the projection-matching kernel and its NumPy reference (`align_reference.benchmark`)."""
  from experiments.peers import align_reference

  n = int(config.align_particles) or 4 * int(config.n_images)
  row = align_reference.benchmark(n_particles=n, n_numpy=4, seed=int(config.seed))
  logging.info("benchmark: align %.3g comparisons/s, NumPy reference %.3g (%.1f×)", row["jax_comparisons_per_s"],
               row["numpy_comparisons_per_s"], row["speedup"])
  return row


def _jsonable(v):
  if isinstance(v, (np.generic,)):
    return v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  return str(v)


def _markdown(res: dict) -> str:
  n, size = res["shapes"]["images"][0], res["shapes"]["images"][1]
  lines = [
      "# Denoiser benchmark", "",
      f"{n} simulated images of {size}×{size} (float32) at SNR {res['snr']:g} (noisy MSE {res['noisy_mse']:.4f}); "
      f"device {', '.join(res['device'])} ({res['backend']}, {res['cpu_count']} CPU cores), jax {res['jax_version']}.",
      "Times are steady state (after a warm-up call on the same shape), whole batch, wall clock; "
      f"1-min load average {res['load_average_start'][0]:.1f} at start, {res['load_average_end'][0]:.1f} at end "
      f"(other work on the machine slows every row; images per CPU-second, summed over threads and "
      "worker processes, is the load-independent measure). bm3d uses one process per core, its pool started "
      "before timing.", "",
      "| method | images/s | × bm3d | images/CPU-s | × bm3d (CPU) | MSE | reference | ref images/s "
      "| speed-up vs ref | ref agreement |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in res["rows"]:
    vs = f"{r['vs_bm3d']:.1f}" if r.get("vs_bm3d") else "—"
    ref = r.get("reference")
    if ref is None:
      refcols = "— | — | — | —"
    elif "same_support_fraction" in ref:
      refcols = (f"{ref['name']} | {ref['sklearn_patches_per_s']:.4g} patches/s (ours {ref['ours_patches_per_s']:.4g}) "
                 f"| {ref['speedup']:.1f} | same atoms in {100 * ref['same_support_fraction']:.1f}% of "
                 f"{ref['n_patches']} patches, coef rel diff {ref['max_rel_coef_diff_same_support']:.1e}")
    else:
      refcols = (f"{ref['name']} | {ref['images_per_s']:.3g} | {ref['speedup']:.1f} | "
                 f"max |Δ| {ref['max_abs_diff']:.1e}, ref MSE {ref['mse']:.4f}")
    cpu = f"{r['images_per_cpu_s']:.3g}" if r.get("images_per_cpu_s") else "—"
    vs_cpu = f"{r['vs_bm3d_cpu']:.1f}" if r.get("vs_bm3d_cpu") else "—"
    lines.append(f"| {r['method']} | {r['images_per_s']:.3g} | {vs} | {cpu} | {vs_cpu} | {r['mse']:.4f} | {refcols} |")
  if res["tuning"]["chosen"]:
    lines += ["", "Parameters chosen on a separate tuning batch: " +
              ", ".join(f"{m}: {p}" for m, p in res["tuning"]["chosen"].items())]
  auto = [r for r in res["rows"] if "auto" in r]
  if auto:
    lines += ["", "params=auto (SURE's tuning and estimate images per method; steady state; first call "
              f"with compile in brackets) against denoising all {n} images: " +
              "; ".join(f"{r['method']} {r['auto']['seconds']:.2f} s = {r['auto']['ratio_to_denoising']:.2f}× "
                        f"({r['auto']['ratio_to_batched']:.2f}× denoising in batches of {r['auto']['batch']}, "
                        f"CPU time {r['auto'].get('cpu_ratio_to_batched', float('nan')):.2f}×, first calls "
                        f"{r['auto'].get('first_call_ratio_to_batched', float('nan')):.2f}×; "
                        f"first call {r['auto']['first_call_seconds']:.1f} s; chose {r['auto']['params']} on "
                        f"{r['auto']['n_images']} images, estimate on {r['auto'].get('estimate_images', '?')})"
                        for r in auto)]
  a = res.get("align")
  if a:
    lines += ["", f"Projection matching (reconstruction.align, exhaustive stage): {a['jax_comparisons_per_s']:.3g} "
              f"comparisons/s on {a['particles_jax']} particles of {a['box']}² against {a['rotations']} rotations × "
              f"{a['shifts']} shifts ({a['band_points']} frequencies each); NumPy FFT cross-correlation reference "
              f"{a['numpy_comparisons_per_s']:.3g}/s on {a['particles_numpy']}: {a['speedup']:.1f}×; working set "
              f"{a['batch_working_set_bytes'] / 2**20:.0f} MiB per batch, independent of the number of particles."]
  lines += ["", "Parameters: " + "; ".join(f"{r['method']} {r['params'] or 'defaults'}" for r in res["rows"]), ""]
  return "\n".join(lines)
