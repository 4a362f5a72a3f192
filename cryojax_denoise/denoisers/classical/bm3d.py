"""BM3D (Dabov et al. 2007) through the `bm3d` package, images in parallel across processes.

`bm3d` runs one image at a time in NumPy/C; a batch is split over worker processes started with
the "spawn" method (safe with JAX and threads in the parent). The pool is created on first use and
kept for later calls (starting processes costs seconds; a stack is denoised batch after batch);
`shutdown_pool()` ends it (it also ends at interpreter exit, and each worker ends itself when its
parent process is gone). Not jit-able: it is the reference
classical method, and the speed baseline in the `benchmark` experiment.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing as mp
import os

import numpy as np

from cryojax_denoise.denoisers.registry import register

_POOL: dict = {}
_WORKER_CPU = [0.0]  # CPU seconds the workers reported back (`worker_cpu_seconds`)


def worker_cpu_seconds() -> float:
  """CPU seconds the worker processes have spent on this process's BM3D calls so far: benchmarks add
  it to `time.process_time()`, which leaves child processes out."""
  return _WORKER_CPU[0]


def _bm3d_chunk(images: np.ndarray, sigmas: np.ndarray, one_thread: bool = False) -> tuple[np.ndarray, float]:
  """BM3D of each image; also the CPU seconds this process spent. `one_thread` limits BLAS/OpenMP
  and bm3d's own threads to one (in a worker: one process per core, no oversubscription; with its
  default automatic threads two workers on 2 cores spent 1.08 CPU-s per 64² image, one thread 0.62)."""
  import contextlib
  import time

  import bm3d

  limit, profile = contextlib.nullcontext(), "np"
  if one_thread:
    profile = bm3d.BM3DProfile()  # the "np" profile
    profile.num_threads = 1
    try:  # threadpoolctl comes with scikit-learn; without it BLAS keeps its default threads
      from threadpoolctl import threadpool_limits

      limit = threadpool_limits(1)
    except ImportError:
      pass
  t0 = time.process_time()
  with limit:
    out = np.stack([np.asarray(bm3d.bm3d(im, sigma_psd=float(s), profile=profile), np.float32)
                    for im, s in zip(images, sigmas)])
  return out, time.process_time() - t0


def _watch_parent(parent: int) -> None:
  """Worker initializer: a daemon thread that ends this worker as soon as its parent is gone (killed
  by SIGKILL, or stopped before it could shut the pool down), so no worker outlives a run."""
  import threading
  import time

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def _pool(workers: int) -> cf.ProcessPoolExecutor:
  pool = _POOL.get(workers)
  if pool is None:
    shutdown_pool()
    pool = _POOL[workers] = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                                   initializer=_watch_parent, initargs=(os.getpid(),))
  return pool


def shutdown_pool(kill: bool = False) -> None:
  """Ends the worker processes, if any: waits for running tasks, or with `kill` terminates them
  (a stopped run: SIGTERM/SIGINT in the launcher)."""
  for key in list(_POOL):
    pool = _POOL.pop(key)
    if kill:
      for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
      pool.shutdown(wait=True, cancel_futures=True)
    else:
      pool.shutdown()


# At exit, before module teardown (a pool collected during teardown prints "Exception ignored ...
# 'NoneType' object has no attribute 'util'" from its manager thread).
atexit.register(shutdown_pool)


@register("bm3d", knob="sigma_scale", grid=(0.75, 1.0, 1.25, 1.5, 2.0), compiled=False,
          description="BM3D (bm3d package) with σ·sigma_scale, images in parallel processes")
def bm3d_denoise(images, noise_std, *, sigma_scale: float = 1.0, workers: int | None = None) -> np.ndarray:
  """BM3D of (B, H, W) with noise std `noise_std` (scalar or (B,)) times `sigma_scale`: (B, H, W).

  `workers` processes (default: the CPU count); 1 runs in this process.
  """
  return bm3d_denoise_cpu(images, noise_std, sigma_scale=sigma_scale, workers=workers)[0]


def bm3d_denoise_cpu(images, noise_std, *, sigma_scale: float = 1.0,
                     workers: int | None = None) -> tuple[np.ndarray, float]:
  """`bm3d_denoise` and the CPU seconds its workers spent (for load-independent benchmarks)."""
  x = np.asarray(images, np.float32)
  B = x.shape[0]
  sig = np.broadcast_to(np.asarray(noise_std, np.float64), (B,)) * sigma_scale
  workers = int(workers or os.cpu_count() or 1)
  if workers <= 1 or B == 1:
    return _bm3d_chunk(x, sig)
  chunks = [c for c in np.array_split(np.arange(B), min(B, 4 * workers)) if len(c)]
  parts = list(_pool(workers).map(_bm3d_chunk, [x[c] for c in chunks], [sig[c] for c in chunks],
                                  [True] * len(chunks)))
  cpu = float(sum(p[1] for p in parts))
  _WORKER_CPU[0] += cpu
  return np.concatenate([p[0] for p in parts], axis=0), cpu
