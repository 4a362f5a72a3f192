"""The conformations experiment: states, balanced particles, classifiers against NumPy/brute-force
references, no label leak (identical states give chance), and the smoke preset end to end."""

import itertools
import json
import os

import numpy as np
import pytest

from cryojax_denoise.data import phantom
from cryojax_denoise.errors import InputError
from cryojax_denoise.evaluation import conformations as cf


def test_domain_labels_and_rigid_motion():
  positions = phantom.phantom_atoms(0)
  labels = phantom.domain_labels(positions)
  sizes = np.bincount(labels)
  assert 3 <= len(sizes) <= 6 and sizes.min() >= 300 and sizes.max() < 1600
  d = int(np.argmin(sizes))
  moved = cf.move_domain(positions, labels, d, displacement_A=6.0)
  shift = moved - positions
  np.testing.assert_allclose(np.linalg.norm(shift[labels == d], axis=1), 6.0, atol=1e-9)
  assert np.all(shift[labels != d] == 0)
  assert np.allclose(shift[labels == d], shift[labels == d][0])  # one rigid translation
  turned = cf.move_domain(positions, labels, d, angle_deg=20.0)
  inside = lambda p: np.linalg.norm(p[labels == d][:, None] - p[labels == d][None, ::50], axis=-1)
  np.testing.assert_allclose(inside(turned), inside(positions), atol=1e-9)  # rigid: distances kept
  assert np.abs(turned - positions)[labels == d].max() > 1.0
  with pytest.raises(InputError):
    cf.move_domain(positions, labels, len(sizes), displacement_A=1.0)


def test_balanced_labels_every_block():
  labels = cf.balanced_labels(101, 2, seed=3)
  assert len(labels) == 101 and set(labels) == {0, 1}
  for n in range(2, 101, 2):
    assert np.sum(labels[:n]) == n // 2
  assert not np.array_equal(labels, cf.balanced_labels(101, 2, seed=4))
  k3 = cf.balanced_labels(30, 3, seed=0)
  assert np.all(np.bincount(k3) == 10)


def test_classifiers_match_references():
  rng = np.random.default_rng(0)
  templates = rng.normal(size=(3, 40, 8, 8)).astype(np.float32)
  truth = rng.integers(0, 3, 40)
  images = templates[truth, np.arange(40)] * 1.7 + 0.3 + rng.normal(scale=1.2, size=(40, 8, 8)).astype(np.float32)
  ls = np.asarray(cf.least_squares_labels(images, templates))
  ref = np.argmin([[np.sum((images[i] - templates[k, i]) ** 2) for i in range(40)] for k in range(3)], axis=0)
  np.testing.assert_array_equal(ls, ref)
  ncc = np.asarray(cf.correlation_labels(images, templates))
  ref = np.argmax([[np.corrcoef(images[i].ravel(), templates[k, i].ravel())[0, 1] for i in range(40)]
                   for k in range(3)], axis=0)
  np.testing.assert_array_equal(ncc, ref)
  # Accuracy up to relabelling equals the best over all permutations (brute force).
  pred = rng.integers(0, 3, 40)
  best = max(np.mean(truth == np.asarray(p)[pred]) for p in itertools.permutations(range(3)))
  assert cf.accuracy(truth, pred, 3, permute=True) == pytest.approx(best)
  assert cf.accuracy(truth, pred, 3) == pytest.approx(np.mean(truth == pred))


def test_make_particles_units_and_snr():
  rng = np.random.default_rng(1)
  raw = rng.normal(2.0, 3.0, size=(2, 64, 16, 16)).astype(np.float32)
  labels = cf.balanced_labels(64, 2, 0)
  unit = rng.standard_normal((64, 16, 16)).astype(np.float32)
  p = cf.make_particles(raw, labels, unit, 0.25)
  np.testing.assert_allclose(p.clean, p.templates[labels, np.arange(64)])
  assert abs(p.clean.mean()) < 1e-5 and p.clean.std() == pytest.approx(1.0, rel=1e-4)
  np.testing.assert_allclose(p.noisy - p.clean, p.noise_std * unit, atol=1e-5)  # one σ for both states
  assert np.mean(np.var(p.clean, axis=(1, 2))) / p.noise_std**2 == pytest.approx(0.25, rel=1e-4)
  # Same affine map for every state: templates are raw states standardised by the clean stack.
  scale = (p.templates[1, 0] - p.templates[1, 1]) / (raw[1, 0] - raw[1, 1])
  assert np.allclose(scale, scale.flat[0], rtol=1e-3)


def _smoke(tmp_path, **overrides):
  from experiments import conformations as exp

  config = exp.get_config()
  config.preset = "smoke"
  config.methods = ("gaussian", "wiener")
  for k, v in overrides.items():
    config[k] = v
  workdir = str(tmp_path / "conf")
  os.makedirs(workdir)
  exp.run(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    return workdir, json.load(f)


@pytest.mark.slow
def test_smoke_end_to_end_and_no_label_leak(tmp_path):
  """Smoke preset with an identical state pair (0 Å) beside the largest displacement: identical
  states must classify at chance by every classifier (a label leak would not), 24 Å at SNR 1 ≥ 95%."""
  workdir, rows = _smoke(tmp_path, displacements=(0.0, 24.0))
  for name in ("results.json", "results.csv", "accuracy_vs_snr.png", "report.md", "config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert {r["method"] for r in rows} == {"raw", "gaussian", "wiener"}
  assert {r["classifier"] for r in rows} == {"template", "template_ncc", "pca_gmm", "pca_kmeans", "3d"}
  for r in rows:
    assert {"method", "snr", "displacement_A", "classifier", "accuracy", "n_images"} <= set(r)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["n_images"] == 48
  same = [r for r in rows if r["displacement_A"] == 0.0]
  for r in same:
    # 48 balanced particles: chance is 0.5; relabelled clusters reach ~0.6 by luck, 0.75 is > 3.4 s.e.
    assert r["accuracy"] <= 0.75, r
    if r["classifier"].startswith("template"):
      assert r["accuracy"] == pytest.approx(0.5), r  # identical templates: ties, balanced labels
  raw24 = {(r["classifier"], r["snr"]): r["accuracy"] for r in rows if r["method"] == "raw" and r["displacement_A"] == 24.0}
  assert raw24["template", 1.0] >= 0.95 and raw24["template_ncc", 1.0] >= 0.95
  three_d = [r for r in rows if r["classifier"] == "3d" and r["displacement_A"] == 24.0 and r["method"] == "raw"]
  assert all(np.isfinite(r["fsc_mean"]) and sum(r["class_sizes"]) == 48 for r in three_d)
  report = open(os.path.join(workdir, "report.md")).read()
  assert "## Verdict" in report and "template" in report


def test_bad_config_is_one_input_error():
  from experiments import conformations as exp

  for key, value in (("methods", ("nope",)), ("preset", "huge"), ("image_caps", "bm3d=x"),
                     ("volumes", ("missing_a.mrc", "missing_b.mrc")), ("snrs", (0.0,))):
    config = exp.get_config()
    config[key] = value
    with pytest.raises(InputError):
      exp.validate(config)


def test_user_state_maps(tmp_path):
  from cryojax_denoise import io

  x = np.arange(32) - 16
  zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
  blob = lambda cx: np.exp(-((xx - cx) ** 2 + yy**2 + zz**2) / 8.0).astype(np.float32)
  paths = [str(tmp_path / f"{n}.mrc") for n in ("a", "b", "c")]
  io.write_volume(paths[0], blob(0) + blob(6), 4.0)
  io.write_volume(paths[1], blob(0) + blob(8), 4.0)
  io.write_volume(paths[2], blob(0), 3.0)
  maps, pixel_size = cf.load_states(32, volumes=paths[:2])
  assert len(maps) == 2 and maps[0].shape == maps[1].shape == (32, 32, 32) and pixel_size == 4.0
  assert not np.allclose(maps[0], maps[1])
  with pytest.raises(InputError):
    cf.load_states(32, volumes=(paths[0], paths[2]))  # another voxel size: not one grid
  with pytest.raises(InputError):
    cf.load_states(32, volumes=paths[:1])  # one state is not a comparison
