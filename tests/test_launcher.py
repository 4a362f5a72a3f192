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
