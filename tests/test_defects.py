"""Issue 14's defects, each reproduced the way a user met it (defects 2 and 3 are CLI cases in
test_bad_input.py; 6 is also exercised by test_reconstruction.py and test_make_pairs.py)."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from cryojax_denoise import denoise_stack, io
from cryojax_denoise.errors import InputError
from test_io import ROOT, random_stack


def _relion30_star(tmp_path):
  """A RELION 3.0 STAR file: no optics block, detector pixel 5 µm at magnification 38168 (1.31 Å)."""
  io.write_stack(str(tmp_path / "p.mrcs"), random_stack(n=3, size=32), 5.0)
  particles = pd.DataFrame({"rlnImageName": [f"{i}@p.mrcs" for i in (1, 2, 3)], "rlnAngleRot": 10.0,
                            "rlnAngleTilt": 20.0, "rlnAnglePsi": 30.0, "rlnDefocusU": 15000.0,
                            "rlnDefocusV": 14000.0, "rlnDefocusAngle": 10.0, "rlnVoltage": 300.0,
                            "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                            "rlnDetectorPixelSize": 5.0, "rlnMagnification": 38168.0})
  io.write_star(str(tmp_path / "p.star"), None, particles)
  return str(tmp_path / "p.star")


@pytest.mark.slow
def test_defect1_relion30_pixel_size_from_detector_and_magnification(tmp_path):
  from cryojax_denoise.data.maps import load_source
  from cryojax_denoise.data.projector import group_projector
  from cryojax_denoise.io.star import pixel_size_of

  path = _relion30_star(tmp_path)
  expected = 5.0e4 / 38168
  star = io.read_star(path)
  assert star.pixel_size() == pytest.approx(expected)
  table = denoise_stack.open_particles(path)
  assert table.pixel_size == pytest.approx(expected)  # the denoised stack's header
  source = load_source(image_size=32)
  _, pixel = group_projector(source, star.optics, 1, 32)  # make_pairs' and project's CTF grid
  assert pixel == pytest.approx(expected)
  with pytest.raises(InputError, match="rlnMagnification"):
    pixel_size_of({"rlnDetectorPixelSize": 5.0}, "x.star")


@pytest.mark.slow
def test_defect4_bm3d_pool_exits_without_traceback(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(
      "import numpy as np\n"
      "from cryojax_denoise.denoisers.classical import bm3d\n"
      "if __name__ == '__main__':\n"
      "  x = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)\n"
      "  print(bm3d.bm3d_denoise(x, 1.0, workers=2).shape)\n")
  proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0 and "(2, 32, 32)" in proc.stdout
  assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_defect5_eta_leaves_out_the_compiling_first_step():
  from cryojax_denoise.progress import Progress

  bar = Progress(total=1000, desc="train", unit="step", every_s=1e9)
  time.sleep(0.5)  # the first step compiles
  bar.update(1)
  assert "ETA ?" in bar.line()
  for _ in range(20):
    time.sleep(0.002)
    bar.update(1)
  assert bar.rate > 100  # ~1/0.002 s; counting the first step would give < 40
  bar.update(1, remaining_s=3725.0)
  assert "ETA 1:02:05" in bar.line()  # a caller's own estimate (measured costs) wins


def test_defect6_one_noun_for_the_input():
  from experiments import denoise, make_pairs, reconstruct

  for module in (denoise, make_pairs, reconstruct):
    config = module.get_config()
    assert "input" in config and "star" not in config, module.__name__


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_defect7_sigterm_leaves_no_bm3d_worker_behind(tmp_path):
  args = [sys.executable, "launch.py", "--experiment=snr_sweep", f"--workdir={tmp_path / 'w'}",
          "--config.preset=smoke", "--config.methods=('bm3d',)", "--config.snrs=(0.1,)", "--config.n_test=400",
          "--config.image_size=64"]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300  # a loaded machine starts the run slowly
    workers = []
    while time.time() < deadline and len(workers) < 2:
      time.sleep(0.5)
      workers = [p for p in _children(proc.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
    assert len(workers) >= 2, "no BM3D workers started"
    time.sleep(2.0)  # the workers are busy now
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(1.0)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "spawn_main" in open(f"/proc/{p}/cmdline").read()]
    assert not alive, f"workers {alive} outlived the run"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr.read()
  finally:
    if proc.poll() is None:
      proc.kill()


@pytest.mark.slow
def test_defect8_reconstruction_reports_denoising_progress_and_costed_eta(caplog):
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source
  from experiments import _sweep_reconstruction, snr_sweep

  config = snr_sweep.resolve(snr_sweep.get_config())
  with config.unlocked():
    config.n_reconstruct, config.n_tune, config.image_size = 24, 8, 32
  source = load_source(image_size=32)

  def dataset(n, snr, seed):
    return simulate.simulate_dataset(source, n_images=n, image_size=32, snr=snr, seed=seed)

  rows = [dict(method="noisy", snr=0.5, seconds_per_image=0.0, test_set="phantom"),
          dict(method="gaussian", snr=0.5, seconds_per_image=10.0, test_set="phantom")]
  logging.getLogger("absl").setLevel(logging.INFO)
  with caplog.at_level(logging.INFO):
    _sweep_reconstruction.add_reconstruction(rows, config, ["gaussian"], [0.5], {}, {}, dataset, 1, [], "phantom", source)
  lines = [r.getMessage() for r in caplog.records]
  assert any("reconstruct: denoising with gaussian @ SNR 0.5: 24/24" in line for line in lines), lines
  first = next(line for line in lines if line.startswith("reconstruct: 1/2"))
  m, sec = re.search(r"ETA (\d+):(\d\d) ", first).groups()
  assert 60 * int(m) + int(sec) >= 240, first  # 24 images × 10 s measured per image (plus a map), not the map pace
  assert np.isfinite(rows[1]["fsc_resolution_A"])
