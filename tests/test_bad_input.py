"""Bad input, wherever a file comes in: one clear `error:` line naming the file and the problem,
a non-zero exit, and nothing written (no workdir, no output, no temporary, inputs untouched).

Every case runs `launch.py` in its own subprocess, as users do; the subprocesses of all cases run
a few at a time (module fixture) to keep the suite fast, and each case is its own test.
"""

import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from cryojax_denoise import io
from test_io import ROOT, files_under, random_stack

pytestmark = pytest.mark.slow  # end-to-end runs of launch.py (see pyproject's markers)


def _star(path, names, optics=True, drop=()):
  particles = pd.DataFrame({"rlnImageName": names, "rlnAngleRot": 10.0, "rlnAngleTilt": 20.0,
                            "rlnAnglePsi": 30.0, "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0,
                            "rlnDefocusU": 15000.0, "rlnDefocusV": 14000.0, "rlnDefocusAngle": 10.0,
                            "rlnOpticsGroup": 1}).drop(columns=list(drop))
  table = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                        "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [2.0], "rlnImageSize": [32],
                        "rlnImageDimensionality": [2]})
  io.write_star(str(path), table if optics else None, particles)


def _mismatched_checkpoint(d):
  """A training workdir whose checkpoint (meta only) was made with other model widths."""
  from cryojax_denoise.training import checkpoints, train

  config = train.config_dict(train.default_config("autoencoder"))
  config["model"]["widths"] = [8, 16, 32, 32]
  ckpt = checkpoints.Checkpointer(str(d))
  try:
    ckpt.save(3, {}, config)
  finally:
    ckpt.close()


def _make_files(d, checkpoint):
  """Small inputs, good and bad, in folder `d` (and a copy of the `checkpoint` workdir)."""
  shutil.copytree(checkpoint, d / "ckpt")
  io.write_stack(str(d / "good.mrcs"), random_stack(n=6), 2.0)
  data = (d / "good.mrcs").read_bytes()
  (d / "cut.mrcs").write_bytes(data[:-700])
  (d / "text.mrcs").write_text("particle images, honestly\n" * 200)
  io.write_volume(str(d / "vol.mrc"), random_stack(n=32), 2.0)
  nan, inf = random_stack(n=6), random_stack(n=6)
  nan[2, 5, 7] = np.nan
  inf[1, 0, 0] = np.inf
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # mrcfile warns while writing the header statistics
    io.write_stack(str(d / "nan.mrcs"), nan, 2.0)
    io.write_stack(str(d / "inf.mrcs"), inf, 2.0)
  io.write_stack(str(d / "empty.mrcs"), np.zeros((0, 32, 32), np.float32), 2.0)
  io.write_stack(str(d / "rect.mrcs"), np.zeros((3, 32, 48), np.float32), 2.0)
  io.write_stack(str(d / "clean5.mrcs"), random_stack(n=5), 2.0)
  names = [f"{i}@good.mrcs" for i in (1, 2, 3)]
  _star(d / "good.star", names)
  _star(d / "inf.star", ["1@good.mrcs", "2@inf.mrcs", "3@good.mrcs"])
  _star(d / "nocol.star", names, drop=("rlnImageName",))
  _star(d / "noposes.star", names, drop=("rlnAngleTilt",))
  _star(d / "missing.star", ["1@good.mrcs", "1@Extract/gone.mrcs"])
  _star(d / "range.star", ["1@good.mrcs", "7@good.mrcs"])


# name: (experiment, config overrides (relative paths are in the case folder), words the error line must hold)
CASES = {
    "not_mrc": ("denoise", {"input": "text.mrcs"}, ["text.mrcs", "not an MRC file"]),
    "truncated_mrc": ("denoise", {"input": "cut.mrcs"}, ["cut.mrcs", "truncated MRC file"]),
    "volume_as_stack": ("denoise", {"input": "vol.mrc"}, ["vol.mrc", "3D volume", "expected a stack"]),
    "stack_as_volume": ("make_pairs", {"input": "good.star", "volume": "good.mrcs"},
                        ["good.mrcs", "image stack", "expected a 3D volume"]),
    "nan_values": ("denoise", {"input": "nan.mrcs"}, ["nan.mrcs", "image 3", "NaN or Inf"]),
    "inf_values_via_star": ("denoise", {"input": "inf.star"}, ["inf.star", "row 2", "inf.mrcs", "NaN or Inf"]),
    "empty_stack": ("denoise", {"input": "empty.mrcs"}, ["empty.mrcs", "empty stack"]),
    "non_square": ("denoise", {"input": "rect.mrcs"}, ["rect.mrcs", "32x48", "square"]),
    "star_missing_image_column": ("denoise", {"input": "nocol.star"}, ["nocol.star", "missing", "rlnImageName"]),
    "star_missing_pose_column": ("make_pairs", {"input": "noposes.star", "volume": "vol.mrc"},
                                 ["noposes.star", "missing", "rlnAngleTilt"]),
    "star_missing_stack": ("denoise", {"input": "missing.star"}, ["missing.star", "row 2", "gone.mrcs", "not found"]),
    "star_index_out_of_range": ("denoise", {"input": "range.star"},
                                ["range.star", "row 2", "index 7 out of range", "6 images"]),
    "noisy_clean_different_sizes": ("train_autoencoder", {"noisy": "good.mrcs", "clean": "clean5.mrcs"},
                                    ["clean5.mrcs", "(5, 32, 32)", "good.mrcs", "(6, 32, 32)"]),
    "train_checkpoint_of_another_model": ("train_autoencoder", {"workdir": "ckpt", "steps": 5},
                                          ["ckpt", "checkpoint does not match the config", "model.widths"]),
    "denoise_checkpoint_not_matching_model": ("denoise", {"input": "good.mrcs", "method": "autoencoder",
                                                          "checkpoint": "ckpt"},
                                              ["ckpt", "does not match the model"]),
    "missing_input": ("denoise", {"input": "nowhere.mrcs"}, ["nowhere.mrcs", "not found"]),
    "output_is_input": ("denoise", {"input": "good.mrcs", "output": "good.mrcs"},
                        ["good.mrcs", "output path is the input"]),
    "output_is_a_star_stack": ("denoise", {"input": "good.star", "output": "good.mrcs"},
                               ["good.mrcs", "output path is the input"]),
    "make_pairs_output_is_input": ("make_pairs", {"input": "good.star", "volume": "vol.mrc", "output": "vol.mrc"},
                                   ["vol.mrc", "output path is the input"]),
    # issue 14, defect 2: an existing directory as output was an IsADirectoryError after all the work.
    "output_is_a_directory": ("denoise", {"input": "good.mrcs", "output": "ckpt"}, ["ckpt", "is a directory"]),
    # issue 14, defect 3: a misspelled K-SVD parameter was a TypeError traceback.
    "misspelled_ksvd_parameter": ("denoise", {"input": "good.mrcs", "method": "ksvd", "params": "Cc=1.0"},
                                  ["Cc", "ksvd", "unknown parameter"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Runs every case (at most 4 at a time); returns {name: (returncode, stderr, folder, before)}."""
  base = tmp_path_factory.mktemp("bad_input")
  _mismatched_checkpoint(base / "ckpt")
  jobs, out = [], {}
  for name, (experiment, overrides, _) in CASES.items():
    d = base / name
    d.mkdir()
    _make_files(d, base / "ckpt")
    cfg = {"output": "out/result.mrcs", **overrides} if experiment == "denoise" else dict(overrides)
    if experiment == "make_pairs":
      cfg.setdefault("output", "out/clean.mrcs")
    workdir = d / cfg.pop("workdir", "w")
    args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--experiment={experiment}", f"--workdir={workdir}"]
    args += [f"--config.{k}={d / v if isinstance(v, str) and k not in ('method', 'params') else v}"
             for k, v in cfg.items()]
    before = {f: (d / f).read_bytes() if (d / f).is_file() else None for f in files_under(d)}
    jobs.append((name, d, before, args))
  running = []
  while jobs or running:
    while jobs and len(running) < 4:
      name, d, before, args = jobs.pop(0)
      p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      running.append((name, d, before, p))
    time.sleep(0.05)
    for job in [j for j in running if j[3].poll() is not None]:
      name, d, before, p = job
      out[name] = (p.returncode, p.stderr.read(), d, before)
      running.remove(job)
  return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(results, case):
  returncode, stderr, d, before = results[case]
  words = CASES[case][2]
  assert returncode != 0
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-3000:]
  assert "Traceback" not in stderr
  assert all(w in errors[0] for w in words), errors[0]
  # Nothing written: no workdir, no output folder or temporary; every input byte-identical.
  assert files_under(d) == sorted(before), set(files_under(d)) ^ set(before)
  assert all((d / f).read_bytes() == data for f, data in before.items() if data is not None)
