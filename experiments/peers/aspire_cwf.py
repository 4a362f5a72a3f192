"""ASPIRE-Python's CWF (`aspire.denoising.DenoiserCov2D`) on particles from an .npz file: the reference
for `cryojax_denoise.denoisers.cwf.cwf`. Runs under ASPIRE's own interpreter (its pins clash with ours):

    /work/peers-venv/bin/python experiments/peers/aspire_cwf.py IN.npz OUT.npz

IN.npz: noisy (N, L, L) float32, noise_var, pixel_size (Å), and for CTF defocus_u, defocus_v (Å),
defocus_angle (deg, RELION's), voltage_kv, cs_mm, amplitude_contrast (N,) and ctf (N, L, L), our
RELION-sign CTF on the FFT grid, used only to check ASPIRE's sign (ASPIRE's CTF is then
flipped by negating its output if it is minus ours). OUT.npz: denoised (N, L, L) CTF-free,
seconds (fit + denoise, excluding imports and data setup), cpu_seconds (the same span's process CPU
time, all threads), sign, ctf_rel_err (radial profiles).
Nothing from this project is imported here.
"""

import sys
import time

import numpy as np


def main(src_path: str, out_path: str) -> None:
  from aspire.denoising import DenoiserCov2D
  from aspire.operators import CTFFilter
  from aspire.source import ArrayImageSource

  d = np.load(src_path)
  noisy = d["noisy"].astype(np.float32)
  n, L, _ = noisy.shape
  px = float(d["pixel_size"])
  src = ArrayImageSource(noisy, pixel_size=px)
  sign, rel = 1.0, 0.0
  if "defocus_u" in d:
    filters = [CTFFilter(voltage=float(d["voltage_kv"][i]), defocus_u=float(d["defocus_u"][i]),
                         defocus_v=float(d["defocus_v"][i]), defocus_ang=np.deg2rad(float(d["defocus_angle"][i])),
                         Cs=float(d["cs_mm"][i]), alpha=float(d["amplitude_contrast"][i])) for i in range(n)]
    src.unique_filters = filters
    src.filter_indices = np.arange(n)
    # ASPIRE uses the angle-averaged CTF: compare its grid with ours (fftshifted) for the sign.
    ours = np.fft.fftshift(d["ctf"][:8], axes=(-2, -1))
    theirs = np.stack([f.evaluate_grid(L, pixel_size=px) for f in filters[:8]])
    sign = float(np.sign((ours * theirs).sum()))
    rel = float(np.linalg.norm(sign * theirs - ours) / np.linalg.norm(ours))
  t0, c0 = time.perf_counter(), time.process_time()
  print(f"timed-from-cpu {c0}", file=sys.stderr, flush=True)  # lets a CPU-limited caller bound the timed part
  den = DenoiserCov2D(src, var_noise=float(d["noise_var"]))
  out = den.denoise[:].asnumpy()
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  np.savez(out_path, denoised=(sign * out).astype(np.float32), seconds=seconds, cpu_seconds=cpu, sign=sign,
           ctf_rel_err=rel)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
