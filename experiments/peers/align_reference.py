"""Plain NumPy reference of `align`'s exhaustive stage, and the benchmark that times both on one grid.

The reference is the textbook search: for each particle, the cross-correlation with every CTF-modulated
reference over all shifts at once by inverse FFT (irfft2 of conj(c·R)·X on the band), read inside the
shift disc and divided by the reference's CTF-weighted norm. It scores exactly what `align._exhaustive`
scores (same band, weights, grid, shifts), so tests compare the two and the benchmark times the same
comparisons: one comparison = one (particle, rotation, shift) score over the K band frequencies.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise.reconstruction import align, so3_grid


def exhaustive_numpy(images: np.ndarray, ctf: np.ndarray, refs: np.ndarray, bd: align.Band,
                     shifts_px: np.ndarray, chunk: int = 256):
  """Best (score, rotation index, shift index) (N,) each, for (N, D, D) images, (N, K) CTF values at the
  band points, (J, K) complex slices and (S, 2) integer origins in pixels; scores as `align._exhaustive`'s."""
  n, d = images.shape[0], images.shape[-1]
  half = d // 2 + 1
  lag = ((-np.rint(shifts_px[:, 1]).astype(int)) % d, (-np.rint(shifts_px[:, 0]).astype(int)) % d)
  best = (np.full(n, -np.inf), np.zeros(n, int), np.zeros(n, int))
  for i in range(n):
    x = np.fft.rfft2(np.fft.ifftshift(images[i].astype(np.float64))).ravel()[bd.flat]
    y = x * ctf[i]  # no weights here: irfft2 itself counts the kx = 0 column once and the rest twice
    for j0 in range(0, len(refs), chunk):
      r = refs[j0:j0 + chunk]
      z = np.zeros((len(r), d * half), np.complex128)
      z[:, bd.flat] = np.conj(r) * y
      cc = np.fft.irfft2(z.reshape(len(r), d, half), s=(d, d)) * (d * d / 2.0)  # Σ_half w Re(...) per lag
      norm = np.sqrt(np.maximum((np.abs(r) ** 2) @ (ctf[i] ** 2 * bd.w), 1e-30))
      score = cc[:, lag[0], lag[1]] / norm[:, None]  # (J, S)
      j, s = np.unravel_index(np.argmax(score), score.shape)
      if score[j, s] > best[0][i]:
        best[0][i], best[1][i], best[2][i] = score[j, s], j0 + j, s
  return best


def benchmark(n_particles: int = 256, n_numpy: int = 8, box: int = 32, pixel_size: float = 4.0,
              step_deg: float = 15.0, resolution_A: float = 12.0, max_shift_A: float = 8.0, seed: int = 0,
              batch_size: int = align.DEFAULT_BATCH) -> dict:
  """Comparisons per second of `align._exhaustive` (jitted, batches of `batch_size`) and of
  `exhaustive_numpy` on the same random map, grid, band and shifts, in this process; plus the kernel's
  per-batch working set in bytes. `n_numpy` particles time the slower NumPy loop."""
  rng = np.random.default_rng(seed)
  vol = rng.normal(size=(box, box, box)).astype(np.float32)
  images = rng.normal(size=(n_particles, box, box)).astype(np.float32)
  ref = align.prepare_reference(vol, pixel_size)
  grid = so3_grid.uniform_grid(step_deg)
  bd = align.band(box, pixel_size, resolution_A)
  kx, ky, w, flat = (jnp.asarray(v) for v in (bd.kx, bd.ky, bd.w, bd.flat))
  scale = ref.fvol.shape[0] / box
  refs, p2, valid = align.reference_slices(ref.fvol, jnp.asarray(grid.matrices), kx, ky, scale=scale,
                                           chunk=align.DEFAULT_CHUNK)
  shifts = align.shift_grid(max_shift_A / pixel_size)
  ctf = np.asarray(0.2 + rng.uniform(size=(n_particles, len(bd.flat))), np.float32)
  s_j = jnp.asarray(shifts)

  def run(imgs, c):
    y, c2w, _ = align._prepare_jit(jnp.asarray(imgs), jnp.asarray(c), kx, ky, flat, w)
    return align._exhaustive(y, c2w, refs, p2, valid, s_j, kx, ky, d=box)

  b = min(batch_size, n_particles)
  jax.block_until_ready(run(images[:b], ctf[:b]))  # compile
  t0 = time.perf_counter()
  out = [run(images[i:i + b], ctf[i:i + b]) for i in range(0, n_particles - b + 1, b)]
  jax.block_until_ready(out)
  t_jax = time.perf_counter() - t0
  n_jax = b * len(out)
  k = len(bd.flat)
  slices = np.asarray(refs[..., :k] + 1j * refs[..., k:]).reshape(-1, k)[: len(grid.matrices)]
  t0 = time.perf_counter()
  exhaustive_numpy(images[:n_numpy], ctf[:n_numpy], slices, bd, shifts)
  t_np = time.perf_counter() - t0
  per = len(grid.matrices) * len(shifts)
  jax_rate, np_rate = n_jax * per / t_jax, n_numpy * per / t_np
  return {"box": box, "rotations": len(grid.matrices), "shifts": len(shifts), "band_points": k,
          "particles_jax": n_jax, "particles_numpy": n_numpy, "jax_comparisons_per_s": jax_rate,
          "numpy_comparisons_per_s": np_rate, "speedup": jax_rate / np_rate,
          "batch_working_set_bytes": working_set_bytes(b, len(grid.matrices), len(shifts), k)}


def working_set_bytes(batch: int, rotations: int, shifts: int, band_points: int,
                      chunk: int = align.DEFAULT_CHUNK) -> int:
  """float32 bytes the exhaustive stage holds for one batch: the shared slices (J·3K), the shifted
  particles (B·S·2K) and one chunk's scores (B·S·chunk, twice for the masked copy)."""
  chunk = min(chunk, rotations)
  padded = -(-rotations // chunk) * chunk
  return 4 * (padded * 3 * band_points + batch * shifts * 2 * band_points + 2 * batch * shifts * chunk)
