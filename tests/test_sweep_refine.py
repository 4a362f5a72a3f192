"""snr_sweep's reconstruct switch: True/False as before, "known", "refine" (estimated-pose rows beside
the known-pose ones) and one error line for anything else."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cryojax_denoise.errors import InputError
from experiments import snr_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value, mode", [(False, ""), (True, "known"), ("", ""), ("known", "known"),
                                         ("Refine", "refine"), ("true", "known"), ("False", "")])
def test_reconstruct_mode(value, mode):
  config = snr_sweep.get_config()
  config.reconstruct = value
  assert snr_sweep.reconstruct_mode(config) == mode


@pytest.mark.parametrize("value", ["both", 1.0, "yes"])
def test_reconstruct_mode_rejects(value):
  config = snr_sweep.get_config()
  config.reconstruct = value
  with pytest.raises(InputError, match="reconstruct"):
    snr_sweep.reconstruct_mode(config)


def test_command_line_values_and_bad_value(tmp_path):
  """The launcher parses True as the bool (today's behaviour) and refine as a name; a bad value is one
  error line and no workdir."""
  from cryojax_denoise import launcher

  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=snr_sweep",
                      f"--workdir={tmp_path / 'bad'}", "--config.reconstruct=maybe"], capture_output=True, text=True,
                     cwd=ROOT, timeout=120)
  assert r.returncode != 0 and not (tmp_path / "bad").exists()
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "reconstruct" in errors[0], r.stderr[-2000:]
  assert launcher.to_jsonable(snr_sweep.get_config())["reconstruct"] is False


def test_refine_rows_beside_known_pose_rows(tmp_path):
  """reconstruct=refine on tiny sizes: every (method, SNR) row gets the estimated-pose scores beside the
  known-pose resolution; raw particles at SNR 1 are aligned to within a few degrees; report.md names both."""
  config = snr_sweep.get_config()
  config.preset, config.methods, config.snrs, config.test_volume = "smoke", ("gaussian",), (1.0,), ""
  config.reconstruct, config.refine_steps_deg = "refine", (15.0,)
  config.n_reconstruct, config.n_test, config.n_tune = 200, 4, 4
  snr_sweep.run(config, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())
  assert [r["method"] for r in rows] == ["noisy", "gaussian"]
  for r in rows:
    for key in ("fsc_resolution_A", "fsc_resolution_refined_A", "reference_resolution_refined_A",
                "median_angular_error_deg", "fraction_within_5deg"):
      assert np.isfinite(r[key]) and r[key] >= 0, (r["method"], key)
  noisy = rows[0]
  assert noisy["median_angular_error_deg"] < 5.0 and noisy["fraction_within_5deg"] > 0.5, noisy
  assert noisy["fsc_resolution_refined_A"] < 1.5 * noisy["fsc_resolution_A"], noisy
  text = (tmp_path / "report.md").read_text()
  assert "3D reconstruction, known poses" in text and "3D reconstruction, estimated poses" in text
  assert "(estimated poses)" in text and "Estimated-pose rows" in text
