"""The launcher: unknown experiments and keys are one clear line and a non-zero exit."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, cwd=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], capture_output=True, text=True,
                        cwd=cwd or ROOT, timeout=300)


def test_unknown_experiment_lists_valid_names(tmp_path):
  r = launch("--experiment=simulat", f"--workdir={tmp_path / 'w'}")
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown experiment 'simulat'" in lines[0] and "simulate" in lines[0]
  assert not (tmp_path / "w").exists()


def test_unknown_config_key_lists_valid_keys(tmp_path):
  r = launch("--experiment=simulate", f"--workdir={tmp_path / 'w'}", "--config.n_imagez=3")
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown config key 'n_imagez'" in lines[0] and "n_images" in lines[0]
  assert not (tmp_path / "w").exists()


def test_bad_config_value_is_one_line(tmp_path):
  r = launch("--experiment=simulate", f"--workdir={tmp_path / 'w'}", "--config.n_images=many")
  assert r.returncode != 0
  assert len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


STOP_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, os.getcwd())
from cryojax_denoise import denoise_stack, io, launcher
from cryojax_denoise.denoisers.tuning import sure_policy

moment, stack, out = sys.argv[1:4]


def arm(owner, name):
  real = getattr(owner, name)

  def send_sigterm_then_call(*args, **kwargs):  # a real SIGTERM, delivered at this exact moment
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

  setattr(owner, name, send_sigterm_then_call)


owner, name = {"tune": (sure_policy, "sure_tune"), "quality": (sure_policy, "sure"), "stream": (denoise_stack, "stream"),
               "write": (io.StackWriter, "write")}[moment]
arm(owner, name)
params = "auto" if moment == "tune" else "default"
sys.argv = ["launch.py", "--experiment=denoise", "--config.method=wiener", f"--config.params={params}",
            "--config.sure_images=8", "--config.batch_size=4", f"--config.input={stack}",
            f"--config.output={out}", f"--workdir={os.path.dirname(out)}"]  # config_flags reads sys.argv
sys.exit(launcher.main(sys.argv))
"""


def test_sigterm_stops_the_run_at_every_moment(tmp_path):
  """A stop stops from any point: SIGTERM while SURE chooses params, inside the SURE quality score (an
  `except Exception` there once swallowed it and the run went on), as streaming starts and mid-write.
  Each: exit 143, one "stopped (SIGTERM)" line, no traceback, no output stack."""
  import numpy as np

  from cryojax_denoise import io

  stack = tmp_path / "in.mrcs"
  io.write_stack(str(stack), np.random.default_rng(0).standard_normal((12, 16, 16)).astype(np.float32), 2.0)
  for moment in ("tune", "quality", "stream", "write"):
    out = tmp_path / moment / "den.mrcs"
    proc = subprocess.run([sys.executable, "-c", STOP_SCRIPT, moment, str(stack), str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 143, (moment, proc.stderr[-2000:])
    assert "stopped (SIGTERM)" in proc.stderr and "Traceback" not in proc.stderr, (moment, proc.stderr[-2000:])
    assert "no SURE quality score" not in proc.stderr, moment
    assert not out.exists(), moment
