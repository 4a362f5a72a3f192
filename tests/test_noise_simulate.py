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
