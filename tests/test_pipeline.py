"""The stack pipeline as a library (`cryojax_denoise.pipeline`): a STAR file denoised from Python, the
params text and auto policy, the stack-size floor of dataset-level methods and the one normalisation."""

import json
import os

import mrcfile
import numpy as np
import pytest

from cryojax_denoise import denoise_stack, io, pipeline
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.errors import InputError


@pytest.fixture(scope="module")
def star_set(tmp_path_factory):
  """A simulated RELION set: 120 particles of 32², CTF on, SNR 0.2 (particles.star, noisy.mrcs, clean.mrcs)."""
  ds = simulate.simulate_dataset(load_source(image_size=32), 120, 32, snr=0.2, seed=2, ctf=True)
  return simulate.write_dataset(ds, str(tmp_path_factory.mktemp("sim")))


def test_denoise_particles_cwf_auto_from_python(star_set, tmp_path):
  out = tmp_path / "out" / "denoised.mrcs"
  record = pipeline.denoise_particles(star_set["particles.star"], method="cwf", params="auto", output=str(out))
  noisy, clean, den = (mrcfile.read(p) for p in (star_set["noisy.mrcs"], star_set["clean.mrcs"], str(out)))
  assert den.shape == noisy.shape and np.isfinite(den).all()
  assert np.mean((den - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)  # closer to the clean images
  star = io.read_star(str(out.with_suffix(".star")))
  np.testing.assert_array_equal(io.star_images(star), den)  # the STAR rows point at the new stack, in order
  assert record["method"] == "cwf" and record["auto"] is True
  s = record["sure"]
  assert {"n_images", "noise_std", "mse", "mse_standard_error", "relative_mse", "gain_db"} <= set(s)
  assert s["n_images"] == 32 and s["gain_db"] > 0 and s["mse"] > 0
  assert record["outputs"]["stack"] == str(out) and record["outputs"]["star"] == str(out.with_suffix(".star"))
  with open(record["outputs"]["params_json"]) as f:
    assert json.load(f)["sure"]["mse"] == pytest.approx(s["mse"])


def test_denoise_particles_refuses_bad_settings(star_set, tmp_path):
  with pytest.raises(InputError, match="unknown setting"):
    pipeline.denoise_particles(star_set["particles.star"], method="wiener", output=str(tmp_path / "a.mrcs"), sizes=3)
  with pytest.raises(InputError, match="unknown method"):
    pipeline.denoise_particles(star_set["particles.star"], method="nope", output=str(tmp_path / "a.mrcs"))
  with pytest.raises(InputError, match="no knob|tunable|learned"):
    pipeline.check_settings(pipeline.Settings(method="autoencoder", params="auto"))
  assert not os.path.exists(tmp_path / "a.mrcs")


def test_params_text_and_auto_policy():
  assert pipeline.parse_params("a=1, b=(2,3),c=name") == {"a": 1, "b": (2, 3), "c": "name"}
  assert pipeline.split_auto("auto, width=2") == (True, " width=2")
  assert pipeline.params_mode("wiener", "", 32) == (True, "")       # AUTO_BY_DEFAULT
  assert pipeline.params_mode("wiener", "", 0) == (False, "")       # no SURE images: defaults
  assert pipeline.params_mode("bm3d", "", 32) == (False, "")
  assert pipeline.params_mode("wiener", "default", 32) == (False, "")
  s = pipeline.Settings(method="gaussian", params="auto,width=2.0")
  assert s.mode() == (True, {"width": 2.0})


def test_cwf_refuses_a_stack_below_its_minimum(tmp_path):
  from cryojax_denoise import denoisers

  need = denoisers.REGISTRY["cwf"].min_stack
  assert need > 1
  pipeline.check_stack_size("cwf", need, "x")  # at the floor: a warning only
  with pytest.raises(InputError, match=f"fewer than the {need}"):
    pipeline.check_stack_size("cwf", need - 1, "x.star")
  pipeline.check_stack_size("wiener", 1, "x")  # a per-image method has no floor
  rng = np.random.default_rng(0)
  io.write_stack(str(tmp_path / "few.mrcs"), rng.standard_normal((need - 1, 16, 16)).astype(np.float32), 2.0)
  with pytest.raises(InputError, match="cwf needs"):
    pipeline.denoise_particles(str(tmp_path / "few.mrcs"), method="cwf", output=str(tmp_path / "o.mrcs"))
  assert not (tmp_path / "o.mrcs").exists()


def test_one_normalisation_rule():
  assert denoise_stack.mean_and_scale(2.0, 3.0, "none", "x") == (0.0, 1.0)
  assert denoise_stack.mean_and_scale(2.0, 3.0, "mean", "x") == (2.0, 1.0)
  assert denoise_stack.mean_and_scale(2.0, 3.0, "std", "x") == (2.0, 3.0)
  assert denoise_stack.mean_and_scale(2.0, 0.0, "mean", "x") == (2.0, 1.0)  # a constant stack: mean only is fine
  with pytest.raises(InputError, match="constant"):
    denoise_stack.mean_and_scale(2.0, 0.0, "std", "stack.mrcs")
  with pytest.raises(InputError, match="normalize"):
    denoise_stack.mean_and_scale(2.0, 1.0, "max", "x")


def test_denoise_particles_coloured_noise_step(tmp_path):
  """noise="auto" on a stack with relion31's spectrum: the pipeline measures it, calls it coloured, records
  it, and the whitened wiener (knob by coloured SURE) lands closer to the clean images than the white model."""
  from cryojax_denoise.noise import spec

  ds = simulate.simulate_dataset(load_source(image_size=32), 200, 32, snr=0.2, seed=4, ctf=True,
                                 noise_psd=spec.resolve("issue:relion31"))
  files = simulate.write_dataset(ds, str(tmp_path / "sim"))
  clean = mrcfile.read(files["clean.mrcs"])
  mse = {}
  for mode in ("white", "auto"):
    out = tmp_path / mode / "denoised.mrcs"
    record = pipeline.denoise_particles(files["particles.star"], method="wiener", params="auto", noise=mode,
                                        output=str(out), sure_images=16)
    mse[mode] = float(np.mean((mrcfile.read(str(out)) - clean) ** 2))
  assert record["noise"]["decision"] == "coloured" and record["noise"]["mode"] == "auto"
  with open(record["outputs"]["params_json"]) as f:
    saved = json.load(f)
  assert saved["noise"]["decision"] == "coloured" and saved["sure"]["mse"] > 0
  assert mse["auto"] < 0.8 * mse["white"], mse
