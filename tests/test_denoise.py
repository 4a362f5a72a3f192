"""The denoise experiment and its streaming library: STAR/MRC in and out, units, order, bounded memory."""

import json
import os
import subprocess
import sys
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryojax_denoise import denoise_stack, denoisers, io
from cryojax_denoise.errors import InputError
from test_io import ROOT, SHARED, files_under, launch_async, random_stack

RELION_STAR = os.path.join(SHARED, "relion31.star")
RELION_STACK = os.path.join(SHARED, "relion31.mrcs")


def gaussian(images, width=1.5):
  return np.asarray(denoisers.get("gaussian", width=width)(np.asarray(images, np.float32)))


def read_mrc(path):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # relion31.mrcs lacks the MAP ID string
    with mrcfile.open(path, permissive=True) as mrc:
      return np.array(mrc.data), float(mrc.voxel_size.x)


@pytest.fixture(scope="module")
def relion_runs(tmp_path_factory):
  """`denoise` on relion31.star (gaussian of width 2.5, output out/den.mrcs) and on relion31.mrcs (wiener,
  default output), run side by side; returns (folder, {name: CompletedProcess-like})."""
  if not os.path.exists(RELION_STAR):
    pytest.skip("../shared/data/relion31.* absent")
  d = tmp_path_factory.mktemp("relion")
  procs = {
      "star": launch_async("--experiment=denoise", f"--workdir={d / 'w_star'}", "--config.method=gaussian",
                           "--config.params=width=2.5", f"--config.input={RELION_STAR}",
                           f"--config.output={d / 'out' / 'den.mrcs'}"),
      "stack": launch_async("--experiment=denoise", f"--workdir={d / 'w'}", "--config.method=wiener",
                            f"--config.input={RELION_STACK}"),
  }
  results = {}
  for name, p in procs.items():
    _, stderr = p.communicate(timeout=300)
    results[name] = (p.returncode, stderr)
  return d, results


@pytest.mark.slow
def test_relion31_star_in_star_out(relion_runs):
  d, runs = relion_runs
  returncode, stderr = runs["star"]
  assert returncode == 0, stderr[-2000:]
  assert "denoise: 5/5" in stderr and "img/s" in stderr and "ETA" in stderr  # progress line
  before, after = starfile.read(RELION_STAR), starfile.read(str(d / "out" / "den.star"))
  pd.testing.assert_frame_equal(after["optics"], before["optics"])
  assert list(after["particles"].columns) == list(before["particles"].columns) and len(after["particles"]) == 5
  others = [c for c in before["particles"].columns if c != "rlnImageName"]
  pd.testing.assert_frame_equal(after["particles"][others], before["particles"][others])
  assert list(after["particles"]["rlnImageName"]) == [f"{i:06d}@den.mrcs" for i in range(1, 6)]
  x, _ = read_mrc(RELION_STACK)
  y, pixel = read_mrc(str(d / "out" / "den.mrcs"))
  assert y.shape == x.shape and pixel == pytest.approx(2.806)  # pixel size from the STAR optics
  np.testing.assert_allclose(y, gaussian(x, width=2.5), atol=1e-4)  # params used; input units, same order
  assert abs(y.mean() - x.mean()) < 1e-3 and 0.05 < y.std() / x.std() < 1
  # The written STAR file resolves back to the new images.
  star = io.read_star(str(d / "out" / "den.star"))
  np.testing.assert_allclose(io.star_images(star), y)
  assert files_under(d / "out") == ["den.mrcs", "den.star"]


@pytest.mark.slow
def test_relion31_stack_default_output(relion_runs):
  d, runs = relion_runs
  returncode, stderr = runs["stack"]
  assert returncode == 0, stderr[-2000:]
  # wiener with no params: its knob chosen by SURE (AUTO_BY_DEFAULT), recorded beside the output
  assert files_under(d / "w") == ["config.json", "denoised.mrcs", "denoised.params.json"]
  record = json.load(open(d / "w" / "denoised.params.json"))
  assert record["auto"] and record["method"] == "wiener" and set(record["params"]) >= {"strength"}
  x, pixel_in = read_mrc(RELION_STACK)
  y, pixel_out = read_mrc(str(d / "w" / "denoised.mrcs"))
  assert y.shape == x.shape and pixel_out == pytest.approx(pixel_in)
  assert abs(y.mean() - x.mean()) < 0.05 * x.std() and y.std() < x.std()


def _two_stack_star(tmp_path, relion30=False):
  """A STAR file whose rows interleave two stacks in a subfolder, indices out of order."""
  a, b = random_stack(n=5, seed=1), random_stack(n=4, seed=2)
  os.makedirs(tmp_path / "Extract")
  io.write_stack(str(tmp_path / "Extract" / "a.mrcs"), a, 3.0)
  io.write_stack(str(tmp_path / "Extract" / "b.mrcs"), b, 3.0)
  names = ["3@Extract/a.mrcs", "1@Extract/b.mrcs", "5@Extract/a.mrcs", "4@Extract/b.mrcs", "1@Extract/a.mrcs"]
  expected = np.stack([a[2], b[0], a[4], b[3], a[0]])
  particles = pd.DataFrame({"rlnImageName": names, "rlnDefocusU": [1e4, 1.1e4, 1.2e4, 1.3e4, 1.4e4],
                            "rlnAngleRot": [10.5, 20.0, 30.25, 40.0, 50.0], "rlnOpticsGroup": [1] * 5})
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.25], "rlnVoltage": [300.0]})
  io.write_star(str(tmp_path / "p.star"), None if relion30 else optics, particles)
  return str(tmp_path / "p.star"), expected, particles


@pytest.mark.parametrize("relion30", [False, True])
def test_star_with_several_stacks_keeps_row_order(tmp_path, relion30):
  star_path, expected, particles = _two_stack_star(tmp_path, relion30)
  table = denoise_stack.open_particles(star_path)
  outputs = denoise_stack.output_paths(table, str(tmp_path / "out" / "d.star"))
  assert outputs.stack == str(tmp_path / "out" / "d.mrcs")
  denoise_stack.denoise(table, denoisers.get("gaussian"), outputs, batch_size=2)
  y, pixel = read_mrc(outputs.stack)
  np.testing.assert_allclose(y, gaussian(expected), atol=1e-4)
  assert pixel == pytest.approx(3.0 if relion30 else 2.25)
  back = starfile.read(outputs.star, always_dict=True)
  assert ("optics" in back) != relion30  # the input's layout is kept
  new = back["particles"] if not relion30 else next(iter(back.values()))
  pd.testing.assert_frame_equal(new.drop(columns="rlnImageName"), particles.drop(columns="rlnImageName"))
  assert list(new["rlnImageName"]) == [f"{i:06d}@d.mrcs" for i in range(1, 6)]


def test_output_in_input_units_and_denoised(tmp_path):
  """A stack in arbitrary units (offset 1000, scale 50): the output is in those units and
  closer to the clean images than the input, for normalize=std with the σ given in input units."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] - 15.5
  clean = np.stack([np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / 40.0) for dx, dy in rng.uniform(-6, 6, (12, 2))])
  clean = ((clean - clean.mean()) / clean.std()).astype(np.float32)
  noisy = clean + rng.normal(scale=1.0, size=clean.shape).astype(np.float32)
  io.write_stack(str(tmp_path / "raw.mrcs"), 1000 + 50 * noisy, 1.1)
  table = denoise_stack.open_particles(str(tmp_path / "raw.mrcs"))
  outputs = denoise_stack.output_paths(table, str(tmp_path / "den.mrcs"))
  denoise_stack.denoise(table, denoisers.get("wiener"), outputs, batch_size=5, noise_std=50.0, normalize="std")
  y, pixel = read_mrc(outputs.stack)
  target = 1000 + 50 * clean
  assert pixel == pytest.approx(1.1) and abs(y.mean() - target.mean()) < 5
  assert np.mean((y - target) ** 2) < 0.5 * np.mean((1000 + 50 * noisy - target) ** 2)


def test_stream_pads_last_batch_and_leaves_nothing_on_error(tmp_path):
  x = random_stack(n=10)
  io.write_stack(str(tmp_path / "in.mrcs"), x, 1.0)
  table = denoise_stack.open_particles(str(tmp_path / "in.mrcs"))
  shapes = []

  def double(rows, images):
    shapes.append(images.shape)
    np.testing.assert_array_equal(images, x[rows])
    return 2 * images

  denoise_stack.stream(table, double, str(tmp_path / "out.mrcs"), batch_size=4)
  assert shapes == [(4, 32, 32)] * 3  # one shape: a jitted function compiles once
  np.testing.assert_array_equal(read_mrc(str(tmp_path / "out.mrcs"))[0], 2 * x)

  def fail_late(rows, images):
    if rows[0] >= 4:
      raise ValueError("device lost")
    return images

  with pytest.raises(ValueError):
    denoise_stack.stream(table, fail_late, str(tmp_path / "sub" / "bad.mrcs"), batch_size=4)
  assert files_under(tmp_path) == ["in.mrcs", "out.mrcs"]


def _start_denoise(tmp_path, stack, out):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=denoise",
                           f"--workdir={tmp_path / ('w_' + os.path.basename(out))}", "--config.method=gaussian",
                           "--config.params=default", f"--config.input={stack}", f"--config.output={out}",
                           "--config.batch_size=256"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _peak_rss(p) -> int:
  """Peak resident memory (bytes) of the finished child `p`, from wait4's rusage."""
  err = p.stderr.read()
  _, status, usage = os.wait4(p.pid, 0)
  p.returncode = os.waitstatus_to_exitcode(status)
  assert p.returncode == 0, err[-2000:]
  return usage.ru_maxrss * 1024  # kB on Linux


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "wait4") or sys.platform != "linux", reason="needs Linux wait4 rusage")
def test_memory_stays_bounded_on_a_large_stack(tmp_path):
  """20,000 images of 64² (328 MB): `launch.py --experiment=denoise` peaks at about the same
  resident memory as on 256 images (the two run side by side), far below the stack's size."""
  n, block = 20000, random_stack(n=1000, size=64, seed=3)
  big, small = str(tmp_path / "big.mrcs"), str(tmp_path / "small.mrcs")
  with io.StackWriter(big, n, (64, 64), 1.0) as w:
    for start in range(0, n, len(block)):
      w.write(start, block + np.float32(start // len(block)))
  io.write_stack(small, block[:256], 1.0)
  runs = [_start_denoise(tmp_path, small, str(tmp_path / "small_out.mrcs")),
          _start_denoise(tmp_path, big, str(tmp_path / "big_out.mrcs"))]
  base, peak = (_peak_rss(p) for p in runs)
  stack_bytes = n * 64 * 64 * 4
  print(f"peak RSS: 256 images {base / 2**20:.0f} MiB, {n} images {peak / 2**20:.0f} MiB, "
        f"growth {(peak - base) / 2**20:.0f} MiB for a {stack_bytes / 2**20:.0f} MiB stack")
  assert peak - base < stack_bytes / 3
  reader = io.ImageReader()
  for rows in ([0, 1], [12345], [n - 1]):
    np.testing.assert_allclose(reader.read(str(tmp_path / "big_out.mrcs"), rows), gaussian(reader.read(big, rows)),
                               atol=1e-4)


def test_star_stacks_of_different_sizes_are_refused(tmp_path):
  io.write_stack(str(tmp_path / "a.mrcs"), random_stack(n=2, size=32), 1.0)
  io.write_stack(str(tmp_path / "b.mrcs"), random_stack(n=2, size=24), 1.0)
  io.write_star(str(tmp_path / "p.star"), None, pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@b.mrcs"]}))
  with pytest.raises(InputError, match=r"b\.mrcs: images are 24x24, but .*a\.mrcs has 32x32"):
    denoise_stack.open_particles(str(tmp_path / "p.star"))


def test_parse_params():
  from cryojax_denoise.pipeline import parse_params

  assert parse_params("") == {}
  assert parse_params("width=2.5") == {"width": 2.5}
  assert parse_params("lam_scale=0.8, patch=8,shared=True,mode=fast,sizes=(1,2)") == \
      {"lam_scale": 0.8, "patch": 8, "shared": True, "mode": "fast", "sizes": (1, 2)}
  with pytest.raises(InputError, match="not key=value"):
    parse_params("2.5")
