"""A tiny benchmark run through the launcher writes benchmark.json and benchmark.md."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_benchmark_writes_both_files(tmp_path):
  workdir = tmp_path / "bench"
  cmd = [sys.executable, "launch.py", "--experiment=benchmark", f"--workdir={workdir}",
         "--config.n_images=4", "--config.image_size=40", "--config.omp_patches=64"]
  # (4 images of 40², as in test_denoisers: the shared compilation cache compiles each kernel once)
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.loads((workdir / "benchmark.json").read_text())
  rows = {r["method"]: r for r in res["rows"]}
  assert {"ddtf", "ksvd", "bm3d", "gaussian", "wiener", "tv"} <= set(rows)  # every registered classical method
  assert res["shapes"]["images"] == [4, 40, 40] and res["device"]
  for r in rows.values():
    assert r["images_per_s"] > 0 and r["mse"] < res["noisy_mse"]
  assert rows["ddtf"]["reference"]["max_abs_diff"] < 1e-3  # same algorithm as the NumPy reference
  assert rows["ksvd"]["reference"]["same_support_fraction"] > 0.9  # our OMP picks scikit-learn's atoms
  # Same iteration as the NumPy reference (float64): the float32 iterates part only at the few pixels where the
  # gradient vanishes (4 images of 40², jax 0.10: max |Δ| 1.4e-3-3.5e-3, mean 2e-6), so the bound is on the MSE.
  assert rows["tv"]["reference"]["max_abs_diff"] < 1e-2
  assert abs(rows["tv"]["reference"]["mse"] - rows["tv"]["mse"]) < 1e-3 * rows["tv"]["mse"]
  md = (workdir / "benchmark.md").read_text()
  assert "| ddtf |" in md and "× bm3d" in md


def test_bad_config_is_one_line_error(tmp_path):
  cmd = [sys.executable, "launch.py", "--experiment=benchmark", f"--workdir={tmp_path / 'b'}",
         "--config.methods=('ddtf','nope')"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "unknown methods" in proc.stderr
  assert not (tmp_path / "b").exists()
