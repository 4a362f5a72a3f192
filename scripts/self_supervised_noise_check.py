"""Numbers of docs/finetuning.md's "Coloured noise" part (self-supervised training, issue 29).

    python scripts/self_supervised_noise_check.py acf SIMDIR [N]
        noise = SIMDIR/noisy.mrcs − SIMDIR/clean.mrcs (a `simulate` workdir; the first N particles): its
        autocorrelation at lags 1, √2, 2, 3, 4 px, the largest within 5 px, and the correlation between a
        pixel's noise and the mean of its 8 neighbours' (noise2self's replacement), raw and whitened with the
        spectrum `denoise --config.noise=coloured` measures on the noisy particles (`noise.stack.stack_noise`).
    python scripts/self_supervised_noise_check.py mse DENOISED.mrcs CLEAN.mrcs
        mean((denoised − clean)²) / var(clean): MSE relative to the signal power (INTERFACE.md).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

LAGS = {"1": (0, 1), "√2": (1, 1), "2": (0, 2), "3": (0, 3), "4": (0, 4)}


def autocorrelation(noise: np.ndarray) -> np.ndarray:
  """(N, H, W) -> (H, W) circular autocorrelation pooled over images, 1 at lag 0."""
  f = np.fft.fft2(noise - noise.mean(axis=(-2, -1), keepdims=True))
  a = np.fft.ifft2(np.mean(np.abs(f) ** 2, 0)).real
  return a / a[0, 0]


def correlations(noise: np.ndarray) -> dict:
  """The row of the table: lag correlations (x and y lags averaged), max |c| for 0 < |lag| <= 5 px, and
  corr(pixel, mean of its 8 neighbours)."""
  from cryojax_denoise.training.self_supervised import neighbours

  a = autocorrelation(noise)
  row = {f"lag {k}": float((a[l] + a[l[::-1]]) / 2) for k, l in LAGS.items()}
  row["max |lag| <= 5"] = float(max(abs(a[i, j]) for i in range(-5, 6) for j in range(-5, 6) if i or j))
  mean8 = np.asarray(neighbours(noise)).mean(0)
  row["pixel vs mean of 8"] = float(np.corrcoef(noise.ravel(), mean8.ravel())[0, 1])
  return row


def acf(simdir: str, n: int | None = None) -> dict:
  from cryojax_denoise import io
  from cryojax_denoise.noise import whiten as wh
  from cryojax_denoise.noise.stack import stack_noise
  from cryojax_denoise.streaming import open_particles

  noisy = np.asarray(io.read_stack(os.path.join(simdir, "noisy.mrcs")).data[:n], np.float32)
  clean = np.asarray(io.read_stack(os.path.join(simdir, "clean.mrcs")).data[:n], np.float32)
  with tempfile.TemporaryDirectory() as tmp:  # the first n particles as their own stack
    path = os.path.join(tmp, "noisy.mrcs")
    io.write_stack(path, noisy, 1.0)
    psd, _ = stack_noise(open_particles(path), io.ImageReader(), "coloured")
  filt = wh.whitening_filter(psd, psd.shape)
  noise = noisy - clean
  out = {"raw": correlations(noise), "whitened": correlations(np.asarray(wh.apply_filter(noise, filt))),
         "sampling std": float(1.0 / np.sqrt(noise.size))}
  for name in ("raw", "whitened"):
    print(f"{name:9s}", "  ".join(f"{k} {v:+.3f}" for k, v in out[name].items()))
  print(f"sampling std of each entry (1/sqrt(pixels)): {out['sampling std']:.4f}")
  return out


def mse(denoised: str, clean: str) -> float:
  from cryojax_denoise import io

  d = np.asarray(io.read_stack(denoised).data, np.float64)
  c = np.asarray(io.read_stack(clean).data, np.float64)
  value = float(((d - c) ** 2).mean() / c.var())
  print(f"{denoised}: MSE {value:.4f} (relative to the signal power)")
  return value


def main(argv=None):
  argv = sys.argv if argv is None else argv
  if len(argv) >= 3 and argv[1] == "acf":
    return acf(argv[2], int(argv[3]) if len(argv) > 3 else None)
  if len(argv) == 4 and argv[1] == "mse":
    return mse(argv[2], argv[3])
  raise SystemExit(__doc__)


if __name__ == "__main__":
  main()
