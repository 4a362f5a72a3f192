"""3D reconstruction with known poses from `data.simulate` output: accuracy against the truth,
CTF and origin correction, half-map FSC, the reconstruct experiment."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cryojax_denoise import io
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import MapSource
from cryojax_denoise.reconstruction import fourier, fsc
from blobs import blobs as _blobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APIX = 4.0
HALF_NYQUIST_A = 4 * APIX


def _worst_to_half_nyquist(vol, truth, label: str | None = None) -> float:
  """Lowest unmasked FSC against the truth over the shells up to half Nyquist (printed with a label)."""
  curve = fsc.fsc_curve(vol, truth, mask=False)
  worst = fsc.fsc_at(curve, APIX, HALF_NYQUIST_A)
  if label:
    print(f"{label}: FSC vs truth per shell {np.round(curve, 3)}, min to half Nyquist {worst:.4f}")
  return worst


@pytest.fixture(scope="module")
def source():
  return MapSource(_blobs(32), APIX, "blobs")


@pytest.fixture(scope="module")
def ctf_data(source):
  """2000 CTF-modulated 32² projections with origins up to 8 Å (simulator's conventions)."""
  return simulate.simulate_dataset(source, 2000, 32, snr=1.0, seed=1, ctf=True, max_shift_A=8.0, batch_size=2000)


def test_clean_ctf_free_reconstruction_matches_truth(source):
  ds = simulate.simulate_dataset(source, 2000, 32, snr=1.0, seed=0, ctf=False, batch_size=2000)
  assert "rlnDefocusU" not in ds.particles.columns
  vol = fourier.reconstruct(ds.clean, ds.particles, ds.optics, ds.pixel_size)
  assert _worst_to_half_nyquist(vol, source.volume, "CTF-free") >= 0.9
  # Mirrored poses (angles not negated: the other handedness) must fail, so the test tells them apart.
  n = 300
  mirrored = ds.particles[:n].assign(rlnAngleRot=-ds.particles.rlnAngleRot[:n],
                                     rlnAngleTilt=-ds.particles.rlnAngleTilt[:n],
                                     rlnAnglePsi=-ds.particles.rlnAnglePsi[:n])
  assert _worst_to_half_nyquist(fourier.reconstruct(ds.clean[:n], mirrored, ds.optics, APIX), source.volume) < 0.5


def test_ctf_and_shifts_corrected(source, ctf_data):
  ds = ctf_data
  assert np.abs(ds.particles.rlnOriginXAngst).max() > 4.0
  vol = fourier.reconstruct(ds.clean, ds.particles, ds.optics, ds.pixel_size)
  assert _worst_to_half_nyquist(vol, source.volume, "CTF + origins") >= 0.8
  # Ignoring the CTF or the origins must be visibly worse.
  n = 600
  no_ctf = fourier.reconstruct(ds.clean[:n], ds.particles[:n], ds.optics, APIX, ctf=False)
  assert _worst_to_half_nyquist(no_ctf, source.volume) < 0.5
  unshifted = ds.particles[:n].assign(rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
  assert _worst_to_half_nyquist(fourier.reconstruct(ds.clean[:n], unshifted, ds.optics, APIX), source.volume) < 0.8


def test_fsc_basics(source):
  c = fsc.fsc_curve(source.volume, source.volume)
  np.testing.assert_allclose(c, 1.0, atol=1e-5)
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((2, 32, 32, 32)).astype(np.float32)
  c = fsc.fsc_curve(noise[0], noise[1])
  assert np.abs(c[4:]).max() < 0.25
  assert fsc.fsc_resolution(c, APIX, 0.143) > 4 * APIX
  assert fsc.fsc_resolution(np.ones(17), APIX) == pytest.approx(2 * APIX)


def test_half_map_resolution_worsens_as_snr_falls(ctf_data):
  """Same particles, noise of variance (mean per-image clean variance) / SNR (INTERFACE SNR)."""
  n = 800
  clean, table = ctf_data.clean[:n], ctf_data.particles[:n]
  signal = np.mean(np.var(clean, axis=(1, 2)))
  noise = np.random.default_rng(5).standard_normal(clean.shape).astype(np.float32)
  res = {}
  for snr in (1.0, 0.05, 0.005):
    out = fourier.half_map_resolution(clean + noise * np.sqrt(signal / snr), table, ctf_data.optics, APIX, seed=0)
    res[snr] = out["resolution_A"]
    assert len(out["fsc"]) == len(out["freq"]) == 17
  print("half-map FSC 0.143 resolution (Å) by SNR:", res)
  assert res[1.0] < res[0.05] < res[0.005]
  assert res[1.0] < 3 * APIX
  # A low-pass filter applied to every particle adds no information: it must not look better
  # (the default unmasked FSC does not carry low-frequency correlation into high shells).
  noisy = clean + noise * np.sqrt(signal / 0.05)
  blurred = gaussian_filter(noisy, (0, 1.5, 1.5))
  res_blurred = fourier.half_map_resolution(blurred, table, ctf_data.optics, APIX, seed=0)["resolution_A"]
  print("Gaussian-filtered particles at SNR 0.05:", res_blurred)
  assert res_blurred >= res[0.05] - 0.1


def test_half_maps_split_full_map_and_batching(ctf_data):
  """Seeded halves; the full map is the map of all particles whatever the batch size (padding rows
  carry zero weight)."""
  ds, n = ctf_data, 40
  maps = fourier.half_maps(ds.clean[:n], ds.particles[:n], ds.optics, APIX, seed=3, batch_size=16)
  assert maps.split.sum() == n // 2 and set(np.unique(maps.split)) == {0, 1}
  np.testing.assert_array_equal(maps.split, fourier.random_halves(n, 3))
  assert not np.array_equal(maps.split, fourier.random_halves(n, 4))
  for v in (maps.half1, maps.half2, maps.full):
    assert v.shape == (32, 32, 32) and v.dtype == np.float32
  full = fourier.reconstruct(ds.clean[:n], ds.particles[:n], ds.optics, APIX)  # one padded batch
  np.testing.assert_allclose(maps.full, full, atol=1e-4 * np.abs(full).max())
  assert np.abs(maps.half1 - maps.half2).max() > 1e-2 * np.abs(full).max()


@pytest.mark.slow
def test_experiment_writes_maps_and_fsc(tmp_path, source, ctf_data):
  """launch.py on a STAR file, denoising first (gaussian), on 2 (forced host) devices: the files,
  and the same full map as one device in this process."""
  n = 300
  noisy = ctf_data.noisy[:n]
  io.write_stack(str(tmp_path / "particles.mrcs"), noisy, APIX)
  io.write_volume(str(tmp_path / "truth.mrc"), source.volume, APIX)
  parts = ctf_data.particles[:n].copy()
  parts["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
  io.write_star(str(tmp_path / "particles.star"), ctf_data.optics, parts)
  work = tmp_path / "run"
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=reconstruct", f"--workdir={work}",
         f"--config.input={tmp_path / 'particles.star'}", f"--config.reference={tmp_path / 'truth.mrc'}",
         "--config.method=gaussian", "--config.params=width=1.0"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  for name in ("half1.mrc", "half2.mrc", "map.mrc", "fsc.json", "fsc.png", "config.json"):
    assert (work / name).exists(), name
  vol, size = io.read_volume(str(work / "map.mrc"))
  assert vol.shape == (32, 32, 32) and size == pytest.approx(APIX)
  result = json.loads((work / "fsc.json").read_text())
  assert result["method"] == "gaussian" and result["n_half"] == [150, 150]
  assert len(result["freq_per_A"]) == len(result["fsc"]) == 17
  assert 2 * APIX <= result["resolution_A"] < 8 * APIX
  assert 2 * APIX <= result["reference_resolution_A"] < 8 * APIX

  from experiments import reconstruct as experiment
  config = experiment.get_config()
  config.method, config.params = "gaussian", "width=1.0"
  here = fourier.half_maps(noisy, ctf_data.particles[:n], ctf_data.optics, APIX, seed=0,
                           transform=experiment._transform(config, noisy))
  np.testing.assert_allclose(vol, here.full, atol=1e-4 * np.abs(here.full).max())
  raw = fourier.reconstruct(noisy, ctf_data.particles[:n], ctf_data.optics, APIX)
  assert np.abs(raw - vol).max() > 0.05 * np.abs(raw).max()  # the particles were denoised

  # Bad input: one error line, exit 2, nothing written.
  bad = tmp_path / "bad"
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=reconstruct",
                        f"--workdir={bad}", f"--config.input={tmp_path / 'missing.star'}"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 2 and "missing.star" in out.stderr and not bad.exists()
