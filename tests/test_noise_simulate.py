"""simulate's noise_psd= (data/simulate.py, noise/spec.py): coloured noise at the same total SNR."""

import numpy as np
import pytest

from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import spectrum as sp
from cryojax_denoise.noise import whiten as wh

L = 32


def test_simulate_noise_psd_keeps_snr():
  """simulate(noise_psd=issue:relion31): SNR exact (total variances), noise spectrum relion31's shape."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source
  from cryojax_denoise.noise import spec

  src = load_source(image_size=L, seed=0)
  ds = simulate.simulate_dataset(src, 128, L, 0.5, seed=1, noise_psd=spec.resolve("issue:relion31"))
  assert np.isclose(simulate.measured_snr(ds.noisy, ds.clean), 0.5, rtol=1e-3)
  per = sp.band_means(sp.radial_average(np.mean(np.abs(np.fft.fft2(ds.noisy - ds.clean)) ** 2, 0) / L ** 2))
  assert per[0] / per[-3:].mean() > 4.0 and wh.psd_flatness(per) > 4.0
  for bad in ("exp:ratio=x", "plateau:foo=1", "issue:nope", "nonsense"):
    with pytest.raises(InputError):
      spec.resolve(bad)


def test_grid_tune_wrap_tunes_the_whitened_method():
  """tuning.tune(wrap=): the sweep's coloured test set tunes the knob of the method it applies
  (whitened for the spectrum); on relion31-coloured noise that beats the white-noise model, tuned too
  (wiener: adaptive, so whitening changes it; a fixed linear filter such as gaussian commutes with it)."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source
  from cryojax_denoise.denoisers.tuning import grid
  from cryojax_denoise.noise import spec
  from cryojax_denoise.noise.methods import wrap

  psd = wh.psd_grid(spec.resolve("issue:relion31"), (L, L))
  ds = simulate.simulate_dataset(load_source(image_size=L, seed=0), 32, L, 0.1, seed=3, ctf=False,
                                 noise_psd=spec.resolve("issue:relion31"))
  sigma = np.std(ds.noisy - ds.clean, axis=(1, 2))
  calls = []

  def whitened(den, v):
    calls.append(v)
    return wrap(den, psd, "wiener", {"strength": v})

  white, white_table = grid.tune("wiener", ds.noisy, ds.clean, sigma)
  col, col_table = grid.tune("wiener", ds.noisy, ds.clean, sigma, wrap=whitened)
  assert len(calls) == len(col_table) > 1
  best = lambda t: min(r["mse"] for r in t)  # noqa: E731
  assert best(col_table) < 0.9 * best(white_table), (best(col_table), best(white_table))
