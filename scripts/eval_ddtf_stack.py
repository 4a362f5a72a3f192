"""DDTF with one frame learned per stack vs one per batch of 64 (as `denoise` runs it), on the same particles.

    python scripts/eval_ddtf_stack.py SNR[,SNR] [MAP.mrc PIXEL_SIZE|phantom 0] [N_STACK]

A measurement for issue 11's question (may DDTF learn one dictionary per dataset, like CWF's fit?):
N_STACK (default 1024) noisy particles of 64² with CTF (seed 40000) are the stack; σ is estimated per
image as `denoise` does. "per batch": `ddtf_denoise` on consecutive batches of 64, each learning its own
frame. "per stack": the frame learned once on the same number of patches (40,000) drawn from the whole
stack, then applied batch by batch. Prints the MSE to the clean images over the whole stack and the
CPU seconds of each (compiles excluded: each is run twice, the second timed).
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise import denoisers
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.denoisers.classical import ddtf, patches as pt
from cryojax_denoise.denoisers.noise import estimate_noise_std
from cryojax_denoise.pipeline import Settings

# DDTF's defaults and `denoise`'s batch size, read from the package (never copied: they would drift).
_D = denoisers.REGISTRY["ddtf"].defaults
BATCH = Settings().batch_size
R, N_ITER, N_PATCHES, STRIDE = _D["r"], _D["n_iter"], _D["n_patches"], _D["stride"]
LAM1, LAM2 = _D["lam_scale"] * _D["lam1"], _D["lam_scale"] * _D["lam2"]


@jax.jit
def learn_on_stack(images, sigma, key):
  """One frame (R², R²) from N_PATCHES patches drawn from the whole (N, H, W) stack."""
  b, y, x = pt.sample_positions(key, images.shape, R, N_PATCHES)
  return ddtf.learn_filters(pt.gather_patches(images, b, y, x, R), LAM1 * sigma[b], N_ITER)


apply = jax.jit(lambda images, d, sigma: ddtf.apply_filters(images, d, LAM2 * sigma, STRIDE, True))


def per_batch(noisy, sigma):
  return np.concatenate([np.asarray(ddtf.ddtf_denoise(noisy[s:s + BATCH], sigma[s:s + BATCH]))
                         for s in range(0, len(noisy), BATCH)])


def per_stack(noisy, sigma):
  d = learn_on_stack(jnp.asarray(noisy), jnp.asarray(sigma), jax.random.key(0))
  return np.concatenate([np.asarray(apply(noisy[s:s + BATCH], d, sigma[s:s + BATCH]))
                         for s in range(0, len(noisy), BATCH)])


def timed(fn, *args):
  fn(*args)  # compile
  t = time.process_time()
  out = fn(*args)
  return out, time.process_time() - t


def main(argv):
  snrs = [float(s) for s in argv[1].split(",")]
  volume, pixel_size = (argv[2], float(argv[3])) if len(argv) > 3 else ("../shared/data/ribosome70S_65.mrc", 5.0)
  n = int(argv[4]) if len(argv) > 4 else 1024
  src = (load_source(image_size=64) if volume == "phantom"
         else load_source(volume=volume, pixel_size=pixel_size, image_size=64))
  for snr in snrs:
    ds = simulate.simulate_dataset(src, n, 64, snr=snr, seed=40000, ctf=True)
    noisy = np.asarray(ds.noisy, np.float32)
    clean = np.asarray(ds.clean, np.float32)
    sigma = np.asarray(estimate_noise_std(noisy), np.float32)
    scale = np.mean(clean ** 2)
    row = {"snr": snr, "map": volume, "n": n}
    for name, fn in (("per_batch", per_batch), ("per_stack", per_stack)):
      out, cpu = timed(fn, noisy, sigma)
      row[name] = {"mse": float(np.mean((out - clean) ** 2) / scale), "cpu_s": round(cpu, 2)}
    row["ratio"] = row["per_stack"]["mse"] / row["per_batch"]["mse"]
    print(row, flush=True)


if __name__ == "__main__":
  main(sys.argv)
