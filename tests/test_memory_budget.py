"""CWF's memory budget (`memory_gb`, denoisers/cwf/budget.py): the streamed fit, its batch sizing, the
pipeline's lazy fit subset, bad budgets, and the Fourier-cropped working box."""

import mrcfile
import numpy as np
import pytest

from cryojax_denoise import denoise_stack, pipeline
from cryojax_denoise.data import simulate
from cryojax_denoise.data.ctf import ctf_grid
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.denoisers.cwf import budget, cwf
from cryojax_denoise.denoisers.cwf import steerable as st
from cryojax_denoise.errors import InputError

L, N = 48, 90


@pytest.fixture(scope="module")
def data():
  ds = simulate.simulate_dataset(load_source(image_size=L), N, L, snr=0.2, seed=5, ctf=True)
  ctf = np.asarray(ctf_grid(ds.particles, ds.optics, L, ds.pixel_size))
  return np.asarray(ds.noisy, np.float32), np.asarray(ds.clean, np.float32), ctf


def _budget_for(batch: int, L: int, n: int, reach: float = 0.0) -> float:
  """The memory_gb whose fit batch is `batch` (half a particle's work to spare) on a basis reaching `reach`."""
  return (budget.fixed_bytes(L, n, reach=reach) + (batch + 0.5) * budget.per_particle_bytes(L, reach=reach)) / budget.GB


class _Counting:
  """A lazy (n, H, W) array recording the largest slice read; reading it whole (np.asarray) fails."""

  def __init__(self, a):
    self.a, self.shape, self.largest = a, a.shape, 0

  def __len__(self):
    return len(self.a)

  def __getitem__(self, index):
    out = self.a[index]
    self.largest = max(self.largest, len(out))
    return out

  def __array__(self, dtype=None, copy=None):
    raise AssertionError("the whole fit subset was read at once")


@pytest.mark.slow  # ~1 min each on the loaded 2-core machine
def test_streamed_fit_equals_one_shot_and_reads_one_batch_at_a_time(data):
  noisy, _, ctf = data
  one_shot = cwf.fit(noisy, None, ctf, batch_size=N, n_groups=4)
  memory_gb = _budget_for(40, L, N)  # the solve after the pass (4 CTF groups' blocks) needs ~32 particles' work
  assert budget.fit_batch(L, N, memory_gb, n_groups=4) == 40
  images, ctfs = _Counting(noisy), _Counting(ctf)
  streamed = cwf.fit(images, None, ctfs, memory_gb=memory_gb, n_groups=4)
  assert images.largest == 40 and ctfs.largest == 40  # without the budget: 90 (one batch of 256 >= N)
  np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=0, atol=1e-5 * np.abs(one_shot.mean).max())
  c1, c2 = np.asarray(one_shot.covariance), np.asarray(streamed.covariance)
  np.testing.assert_allclose(c2, c1, rtol=0, atol=1e-5 * np.abs(c1).max())
  assert float(streamed.noise_var) == pytest.approx(float(one_shot.noise_var), rel=1e-6)
  out1, out2 = (np.asarray(cwf.apply(m, noisy[:16], None, ctf[:16])) for m in (one_shot, streamed))
  np.testing.assert_allclose(out2, out1, rtol=0, atol=1e-5 * np.abs(out1).max())


def test_bad_and_too_small_budgets_are_input_errors():
  for bad in (0, -1.0, float("nan"), float("inf"), "abc", True):
    with pytest.raises(InputError, match="memory_gb"):
      budget.check_memory_gb(bad)
  assert budget.check_memory_gb(None) == pytest.approx(0.5 * budget.machine_gb())
  assert budget.check_memory_gb("2.5") == 2.5
  need = max(budget.fixed_bytes(256, 10_000) + budget.per_particle_bytes(256), budget.solve_bytes(256, 10_000)) / budget.GB
  with pytest.raises(InputError, match=r"needs at least \d"):
    budget.fit_batch(256, 10_000, 0.9 * need)
  assert budget.fit_batch(256, 10_000, need + 0.01) >= 1
  assert budget.fit_batch(256, 10_000, 100.0) == 256  # capped: a large budget does not grow the batch


@pytest.mark.slow  # ~1 min each on the loaded 2-core machine
def test_pipeline_fit_reads_the_subset_in_budgeted_batches(tmp_path, monkeypatch, data):
  ds = simulate.simulate_dataset(load_source(image_size=32), 80, 32, snr=0.2, seed=2, ctf=True)
  paths = simulate.write_dataset(ds, str(tmp_path / "sim"))
  reads = []
  real = denoise_stack.read_rows
  monkeypatch.setattr(denoise_stack, "read_rows", lambda t, r, rows: reads.append(len(rows)) or real(t, r, rows))
  # the registered cwf's (reaching) basis; 2 CTF groups: the solve needs ~22 particles' work
  memory_gb = _budget_for(30, 32, 80, st.basis_reach(32))
  out = tmp_path / "den.mrcs"
  pipeline.denoise_particles(paths["particles.star"], method="cwf", params="n_groups=2", output=str(out),
                             sure_images=0, memory_gb=memory_gb)
  assert reads and max(reads) == 30  # unbudgeted, the 80-particle subset is read in one call
  free = tmp_path / "free.mrcs"
  pipeline.denoise_particles(paths["particles.star"], method="cwf", params="n_groups=2", output=str(free),
                             sure_images=0, memory_gb=50.0)
  np.testing.assert_allclose(mrcfile.read(str(out)), mrcfile.read(str(free)), rtol=0,
                             atol=1e-5 * np.abs(mrcfile.read(str(free))).max())
  with pytest.raises(InputError, match="memory_gb"):
    pipeline.denoise_particles(paths["particles.star"], method="cwf", output=str(tmp_path / "x.mrcs"),
                               memory_gb=-2)
  with pytest.raises(InputError, match="needs at least"):
    pipeline.denoise_particles(paths["particles.star"], method="cwf", output=str(tmp_path / "y.mrcs"),
                               memory_gb=0.05)
  assert not (tmp_path / "x.mrcs").exists() and not (tmp_path / "y.mrcs").exists()


def test_crop_keeps_noise_std_and_inverts_on_band_limited_images():
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((64, 64, 64)).astype(np.float32)
  assert float(np.std(np.asarray(budget.crop(noise, 40)))) == pytest.approx(1.0, rel=0.02)
  f = np.fft.fftfreq(64)
  low = (np.abs(f)[:, None] < 11 / 64) & (np.abs(f)[None, :] < 11 / 64)  # below the 24² box's Nyquist
  smooth = np.fft.ifft2(np.fft.fft2(noise) * low).real.astype(np.float32)
  np.testing.assert_allclose(np.asarray(budget.uncrop(budget.crop(smooth, 24), 64)), smooth, atol=1e-4)
  assert budget.working_box(400, 256) == 256 and budget.working_box(200, 256) == 200
  assert budget.working_box(400, 0) == 400


@pytest.mark.slow  # ~1 min each on the loaded 2-core machine
def test_cropped_fit_denoises_about_as_well(data):
  noisy, clean, ctf = data
  full = cwf.fit_denoiser(noisy, None, ctf)
  cropped = cwf.fit_denoiser(noisy, None, ctf, max_box=32)
  assert full.box == L and cropped.box == 32
  mse = [float(np.mean((np.asarray(d(noisy[:32], None, ctf[:32])) - clean[:32]) ** 2)) for d in (full, cropped)]
  noisy_mse = float(np.mean((noisy[:32] - clean[:32]) ** 2))
  assert mse[1] < 0.5 * noisy_mse and mse[1] < 1.2 * mse[0]


def test_default_budget_stretches_to_the_estimate_but_a_given_one_does_not(monkeypatch):
  """`denoise`'s default budget (half the machine) rises to cwf's estimate up to 80% of the machine (the
  estimate is an upper bound: 10,000 × 256² with the reaching basis is estimated at 9.4 GB, peaked at ~4.2);
  a memory_gb the user gives is kept, and fit_batch refuses below the estimate as before."""
  import importlib

  from cryojax_denoise.pipeline import Settings

  pipeline_run = importlib.import_module("cryojax_denoise.pipeline.run")  # the module (`pipeline.run` is its function)

  need = budget.min_gb(64, 1000, reach=st.basis_reach(64))
  monkeypatch.setattr(budget, "machine_gb", lambda: 1.5 * need)  # half the machine: 0.75 of the estimate
  assert pipeline_run._memory_gb(Settings(method="cwf"), 64, 1000) == pytest.approx(need)
  monkeypatch.setattr(budget, "machine_gb", lambda: need)  # 80% of the machine is below it: capped there
  assert pipeline_run._memory_gb(Settings(method="cwf"), 64, 1000) == pytest.approx(0.8 * need)
  with pytest.raises(InputError, match="needs at least"):
    budget.fit_batch(64, 1000, 0.8 * need, reach=st.basis_reach(64))
  given = Settings(method="cwf", memory_gb=0.5 * need)
  assert pipeline_run._memory_gb(given, 64, 1000) == pytest.approx(0.5 * need)
  monkeypatch.setattr(budget, "machine_gb", lambda: 100 * need)  # plenty: half the machine, unchanged
  assert pipeline_run._memory_gb(Settings(method="cwf"), 64, 1000) == pytest.approx(50 * need)
