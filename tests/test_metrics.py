"""Metrics against independent references: NumPy and scikit-image."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cryojax_denoise import metrics


def _pair(seed=0, b=3, n=48):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:n, :n]
  clean = np.stack([np.sin(xx / (3 + i)) * np.cos(yy / (4 + i)) + 0.3 * rng.normal(size=(n, n)) for i in range(b)])
  noisy = clean + rng.normal(scale=0.5, size=clean.shape)
  return noisy.astype(np.float32), clean.astype(np.float32)


def test_mse_psnr_match_numpy_and_skimage():
  x, y = _pair()
  np.testing.assert_allclose(metrics.mse(x, y), ((x - y) ** 2).mean(axis=(1, 2)), rtol=1e-5)
  ref = [peak_signal_noise_ratio(yi, xi, data_range=yi.max() - yi.min()) for xi, yi in zip(x, y)]
  np.testing.assert_allclose(metrics.psnr(x, y), ref, rtol=1e-4)


def test_ssim_matches_skimage():
  x, y = _pair(1)
  ref = [structural_similarity(yi, xi, data_range=float(yi.max() - yi.min()), gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False) for xi, yi in zip(x, y)]
  np.testing.assert_allclose(metrics.ssim(x, y), ref, atol=1e-4)
  np.testing.assert_allclose(metrics.ssim(y, y), 1.0, atol=1e-5)


def test_frc_self_is_one_and_independent_noise_near_zero():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(4, 64, 64)).astype(np.float32)
  b = rng.normal(size=(4, 64, 64)).astype(np.float32)
  np.testing.assert_allclose(metrics.frc_curve(a, a), 1.0, atol=1e-5)
  curve = np.asarray(metrics.frc_curve(a, b))[:, 10:]  # low rings hold too few pixels to average
  assert abs(curve.mean()) < 0.03
  # ring k has ~2πk independent values, so its FRC has std ≈ 1/sqrt(2πk) ≈ 0.13 at k = 10
  assert np.abs(curve).max() < 0.45


def test_frc_matches_direct_numpy_ring_sum():
  x, y = _pair(3, b=1, n=32)
  fx, fy = np.fft.fft2(x[0]), np.fft.fft2(y[0])
  k = np.fft.fftfreq(32) * 32
  r = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
  ref = [np.real((fx * fy.conj())[r == i].sum()) / np.sqrt((abs(fx[r == i]) ** 2).sum() * (abs(fy[r == i]) ** 2).sum())
         for i in range(17)]
  np.testing.assert_allclose(metrics.frc_curve(x, y)[0], ref, rtol=1e-4, atol=1e-5)


def test_resolution_from_curve_interpolates_and_caps_at_nyquist():
  box, px = 64, 2.0
  curve = np.ones(33, np.float32)
  assert metrics.resolution_from_curve(curve, box, px, 0.5) == pytest.approx(box * px / 32)
  curve[10:] = 0.0
  curve[9] = 1.0  # falls from 1 at shell 9 to 0 at shell 10: crosses 0.5 at 9.5
  assert float(metrics.resolution_from_curve(curve, box, px, 0.5)) == pytest.approx(box * px / 9.5, rel=1e-5)
