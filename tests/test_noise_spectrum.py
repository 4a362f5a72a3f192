"""Noise spectrum estimation from particle backgrounds (noise/spectrum.py) and noise=auto (noise/decide.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from cryojax_denoise.data import ctf as ctf_mod
from cryojax_denoise.errors import InputError
from cryojax_denoise.noise import decide
from cryojax_denoise.noise import spectrum as sp
from cryojax_denoise.noise import whiten as wh

N, L = 1000, 64


def issue_profile(name: str, steepness: float = 1.0, n_shells: int = L // 2 + 1) -> np.ndarray:
  """Radial PSD (relative) through issue 29's band means at the band centres; `steepness` scales the
  excess over the high-frequency level (2: 'twice as steep')."""
  bands = np.asarray(wh.ISSUE_BANDS[name])
  centres = (np.arange(len(bands)) + 0.5) * sp.BAND_WIDTH
  p = np.interp(sp.shell_frequencies(n_shells), centres, bands)
  return 1.0 + steepness * (p - 1.0)


def blob_particles(rng, n, size, radius=18.0, pixel_size=5.0):
  """CTF-modulated random blob particles (n, size, size) (sums of Gaussians within `radius` px)."""
  y, x = np.mgrid[:size, :size] - size // 2
  img = np.zeros((n, size, size), np.float32)
  for _ in range(6):
    c = rng.uniform(-0.6, 0.6, (n, 2)) * radius
    s = rng.uniform(2.0, 5.0, n)
    img += np.exp(-((y[None] - c[:, 0, None, None]) ** 2 + (x[None] - c[:, 1, None, None]) ** 2)
                  / (2 * s[:, None, None] ** 2)).astype(np.float32)
  d = rng.uniform(10000.0, 25000.0, n).astype(np.float32)
  args = [d, d, np.zeros(n), np.zeros(n), np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1),
          np.full(n, pixel_size)]
  ctf = np.asarray(ctf_mod._grid(*[jnp.asarray(a, jnp.float32) for a in args], shape=(size, size)))
  return np.fft.ifft2(np.fft.fft2(img) * ctf).real.astype(np.float32)


@pytest.fixture(scope="module")
def clean():
  return blob_particles(np.random.default_rng(0), N, L)


@pytest.mark.parametrize("steepness", [1.0, 2.0])
def test_coloured_spectrum_within_5_percent_with_ctf(clean, steepness):
  """Issue 29's 'done' figure: relion31's spectrum (and one twice as steep) from 1,000 particles of 64²
  with CTF signal at SNR 0.1, mask radius from the mean image: every 0.05-cycle band within 5%."""
  psd = issue_profile("relion31", steepness)
  sigma2 = clean.var(axis=(1, 2)).mean() / 0.1
  noise = np.asarray(wh.coloured_noise(jax.random.PRNGKey(1), clean.shape, psd, np.sqrt(sigma2)))
  est = sp.estimate_spectrum(clean + noise)
  truth = sp.band_means(sp.radial_average(wh.psd_grid(psd, (L, L)) / wh.psd_grid(psd, (L, L)).mean() * sigma2))
  err = sp.band_means(est.radial) / truth - 1
  assert est.n_used == N and 18 <= est.radius_px <= 31
  assert np.max(np.abs(err)) < 0.05, err


@pytest.mark.parametrize("steepness", [1.0, 2.0])
def test_radial_spectrum_keeps_the_total_noise_variance(clean, steepness):
  """The radial spectrum on the grid (what whitening and SURE use) has the 2D estimate's mean, the noise's total
  variance σ², within 0.15% of the realised one (blob particles with CTF at SNR 0.05): shell means read back
  linearly in |k| alone lose 0.30% / 0.48% of it under these spectra, which SURE's σ² term multiplies into
  ~10% of the MSE at SNR 0.05."""
  psd = issue_profile("relion31", steepness)
  sigma2 = clean.var(axis=(1, 2)).mean() / 0.05
  noise = np.asarray(wh.coloured_noise(jax.random.PRNGKey(4), clean.shape, psd, np.sqrt(sigma2)))
  est = sp.estimate_spectrum(clean + noise)
  on_grid = wh.psd_grid(est.radial, (L, L)).mean()
  assert on_grid == pytest.approx(est.psd2d.mean(), rel=1e-6)
  assert on_grid == pytest.approx(noise.var(), rel=0.0015)
  unscaled = wh.psd_grid(sp.radial_average(est.psd2d), (L, L)).mean()
  assert unscaled < noise.var() * (1 - 0.0025)
  np.testing.assert_allclose(est.radial / sp.radial_average(est.psd2d), on_grid / unscaled, rtol=1e-6)  # shape kept


def test_white_noise_units_and_auto_white():
  """White noise of std 2: PSD 4 per pixel at every band (image units² per pixel); auto says white."""
  rng = np.random.default_rng(2)
  x = (2.0 * rng.standard_normal((N, L, L))).astype(np.float32)
  est = sp.estimate_spectrum(x, 24)
  assert np.allclose(sp.band_means(est.radial), 4.0, rtol=0.03)
  assert np.isclose(est.psd2d.mean(), 4.0, rtol=0.01)
  assert wh.psd_flatness(est.radial) < 1.0 + decide.flat_tolerance(est)
  model, record = decide.choose("auto", x)
  assert model is None and record["decision"] == "white" and record["flatness"] < 1.05


def test_auto_picks_coloured_on_coloured_noise():
  x = np.asarray(wh.coloured_noise(jax.random.PRNGKey(3), (300, L, L), issue_profile("reprojection48")))
  model, record = decide.choose("auto", x, radius_px=20)
  keys, psds = model
  assert record["decision"] == "coloured" and list(psds) == ["all"] and psds["all"].shape == (L, L)
  assert record["flatness"] > 1.5


def test_correlogram_matches_numpy_reference():
  """Pair sums and counts against a direct loop over lags on a small masked image."""
  rng = np.random.default_rng(4)
  h = w = 8
  img = rng.standard_normal((1, h, w)).astype(np.float32)
  mask = sp.background_mask(h, w, 2.5)
  a = np.asarray(sp.pair_sums(jnp.asarray(img), jnp.asarray(mask), jnp.ones(1)))
  c = sp.pair_counts(mask)
  z = mask * img[0]
  for lx in range(-h + 1, h):
    for ly in range(-w + 1, w):
      ref = cnt = 0.0
      for i in range(h):
        for j in range(w):
          if 0 <= i + lx < h and 0 <= j + ly < w:
            ref += z[i, j] * z[i + lx, j + ly]
            cnt += mask[i, j] * mask[i + lx, j + ly]
      assert np.isclose(a[lx % (2 * h), ly % (2 * w)], ref, atol=1e-4)
      assert c[lx % (2 * h), ly % (2 * w)] == cnt


def test_bad_images_do_not_move_it():
  psd = issue_profile("relion31")
  x = np.array(wh.coloured_noise(jax.random.PRNGKey(5), (300, L, L), psd))
  ref = sp.estimate_spectrum(x, 24)
  x[:6] *= 30.0  # six bad images (e.g. carbon, contamination)
  x[6:9] += np.linspace(0, 50, L)[None, None, :]  # three with a strong gradient
  est = sp.estimate_spectrum(x, 24)
  assert est.n_rejected >= 9
  assert np.allclose(sp.band_means(est.radial), sp.band_means(ref.radial), rtol=0.02)


def test_anisotropic_2d():
  """A spectrum that depends on k_x only is recovered in 2D."""
  fy = np.abs(np.fft.fftfreq(L))[:, None] * np.ones((1, L))
  psd2 = 1.0 + 3.0 * np.exp(-fy / 0.05)
  x = np.asarray(wh.coloured_noise(jax.random.PRNGKey(6), (400, L, L), psd2))
  est = sp.estimate_spectrum(x, 20)
  truth = psd2 / psd2.mean()
  assert np.allclose(est.psd2d.mean(1), truth.mean(1), rtol=0.05)


def test_per_micrograph_and_group_keys():
  parts = pd.DataFrame({"rlnOpticsGroup": [1] * 5 + [2] * 3, "rlnMicrographName": list("aaaab") + list("ccc")})
  keys = decide.group_keys(parts, min_per_micrograph=3)
  assert list(keys) == ["group:1/micrograph:a"] * 4 + ["group:1"] + ["group:2/micrograph:c"] * 3


@pytest.mark.parametrize("kwargs, n, msg", [
    ({"radius_px": 50}, 20, "larger than"),
    ({"radius_px": 40}, 20, "background"),
    ({"radius_px": 20}, 1, "at least 2"),
])
def test_inestimable_spectrum_one_line(kwargs, n, msg):
  x = np.random.default_rng(7).standard_normal((n, L, L)).astype(np.float32)
  with pytest.raises(InputError) as err:
    sp.estimate_spectrum(x, **kwargs)
  assert msg in str(err.value) and "\n" not in str(err.value)


def test_mask_radius_from_mean_image(clean):
  r = sp.estimate_mask_radius(clean[:200] + np.random.default_rng(8).standard_normal((200, L, L)))
  assert 18 <= r <= 31


def test_pipeline_stack_noise(tmp_path):
  """denoise's noise step on an MRC stack: auto -> coloured with a record; wrap whitens and colours
  back; auto on an inestimable stack stays white with the reason, coloured raises one line."""
  from cryojax_denoise import io
  from cryojax_denoise.noise import stack as pipeline
  from cryojax_denoise.streaming import open_particles

  path = str(tmp_path / "noisy.mrcs")
  x = np.asarray(wh.coloured_noise(jax.random.PRNGKey(9), (200, 32, 32), issue_profile("relion31", n_shells=17)))
  io.write_stack(path, x, 2.0)
  reader = io.ImageReader()
  table = open_particles(path, reader)
  psd, record = pipeline.stack_noise(table, reader, "auto", normalize="none")
  assert record["decision"] == "coloured" and psd.shape == (32, 32) and record["n_images"] == 200
  from cryojax_denoise.noise.methods import wrap

  den = wrap(lambda im, s: im, psd)
  assert np.allclose(den(x[:4], None), x[:4], atol=1e-5)
  one = str(tmp_path / "one.mrcs")
  io.write_stack(one, x[:1], 2.0)
  table1 = open_particles(one, reader)
  psd1, rec1 = pipeline.stack_noise(table1, reader, "auto", normalize="none")
  assert psd1 is None and rec1["decision"] == "white" and "at least" in rec1["reason"]
  with pytest.raises(InputError):
    pipeline.stack_noise(table1, reader, "coloured", normalize="none")
  out = pipeline.add_record(None, record, str(tmp_path / "den.mrcs"))
  assert out is None and (tmp_path / "den.params.json").exists()


def test_per_micrograph_spectra():
  """Two micrographs with different noise levels get their own spectra; a small one falls back to its
  optics group's (all of the group's particles)."""
  x = np.random.default_rng(10).standard_normal((60, 32, 32)).astype(np.float32)
  x[:30] *= 2.0
  parts = pd.DataFrame({"rlnOpticsGroup": [1] * 60, "rlnMicrographName": ["a"] * 30 + ["b"] * 25 + ["c"] * 5})
  keys, spectra = decide.estimate_by_group(x, parts, 12, min_per_micrograph=20)
  mean = {k: s.psd2d.mean() for k, s in spectra.items()}
  assert np.isclose(mean["group:1/micrograph:a"], 4.0, rtol=0.05)
  assert np.isclose(mean["group:1/micrograph:b"], 1.0, rtol=0.05)
  assert np.isclose(mean["group:1"], 2.5, rtol=0.05) and spectra["group:1"].n_used == 60
