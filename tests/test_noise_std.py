"""`noise.band_noise_std`, the batch σ of Monte-Carlo SURE: NumPy reference, unbiased on pure white
noise, and on noise + band-limited particles (the signal beyond the cutoff is what biases it)."""

import numpy as np
import pytest

from cryojax_denoise.denoisers import noise
from cryojax_denoise.denoisers.classical.filters import gaussian_denoise


def _reference(images, cutoff):
  """NumPy: sqrt(mean over images and modes with |k| > cutoff of |FFT|² / (H·W))."""
  x = np.asarray(images, np.float64)
  power = np.abs(np.fft.fft2(x)) ** 2 / (x.shape[1] * x.shape[2])
  k = np.hypot(*np.meshgrid(np.fft.fftfreq(x.shape[1]), np.fft.fftfreq(x.shape[2]), indexing="ij"))
  return np.sqrt(power[:, k > cutoff].mean())


def test_band_noise_std_matches_numpy():
  x = np.random.default_rng(0).normal(size=(3, 32, 48)).astype(np.float32) * 2.0 + 1.0
  for cutoff in (0.3, noise.BAND_CUTOFF, 0.45):
    np.testing.assert_allclose(float(noise.band_noise_std(x, cutoff=cutoff)), _reference(x, cutoff), rtol=1e-5)


def test_band_noise_std_unbiased_on_noise_and_particles():
  """Mean over 40 batches of 8 images of 64²: within 0.2% of σ on pure noise (each batch's scatter
  ~0.35%), and on noise + smooth particles at SNR 1 (their power beyond the cutoff is ~1e-6 σ²);
  the per-image MAD (`estimate_noise_std`) is biased up by the same particles' edges."""
  rng = np.random.default_rng(1)
  sigma = 1.7
  n = sigma * rng.normal(size=(40, 8, 64, 64)).astype(np.float32)
  pure = np.array([float(noise.band_noise_std(b)) for b in n])
  assert abs(pure.mean() / sigma - 1) < 0.002 and pure.std() / sigma < 0.006, (pure.mean(), pure.std())
  x = np.array(gaussian_denoise(rng.normal(size=(8, 64, 64)).astype(np.float32), width=2.5))
  x *= sigma / x.std()  # SNR 1
  est = np.array([float(noise.band_noise_std(x + b)) for b in n])
  assert abs(est.mean() / sigma - 1) < 0.002, est.mean()
  assert np.mean([float(noise.estimate_noise_std(x + b).mean()) for b in n[:4]]) > sigma * 1.002


def test_tail_corrected_noise_std_removes_signal_extrapolated_into_the_band():
  """Signal whose power falls exponentially in the radius (0.4× per 0.05 cycles/px, 8% of σ² at 0.375,
  1.4% beyond 0.4) biases the band σ² up by 1.4%; the tail-corrected σ² is within 0.6% of the noise's
  own band power (rms 0.28% over 40 draws, notes/final5/sure.md). Without resolved signal (smooth
  particles, pure noise) it is the band σ exactly."""
  rng = np.random.default_rng(2)
  sigma, b = 1.7, 32
  k = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij"))
  gain = np.sqrt(0.08 * sigma ** 2 * np.exp(-np.log(0.4) / 0.05 * (0.375 - k)))
  x = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(b, 64, 64))) * gain)).astype(np.float32)
  n = sigma * rng.normal(size=(b, 64, 64)).astype(np.float32)
  noise_band = float(noise.band_noise_std(n)) ** 2
  assert float(noise.band_noise_std(x + n)) ** 2 / noise_band - 1 > 0.01
  assert abs(noise.tail_corrected_noise_std(x + n) ** 2 / noise_band - 1) < 0.006
  smooth = np.array(gaussian_denoise(rng.normal(size=(b, 64, 64)).astype(np.float32), width=2.5))
  smooth *= sigma / smooth.std()
  for y in (n, smooth + n):
    assert noise.tail_corrected_noise_std(y) == pytest.approx(float(noise.band_noise_std(y)), rel=1e-5)
