"""io: checked reading, atomic and bounded-memory writing of MRC stacks and STAR files.

Also holds the small helpers (`launch`, `files_under`) the denoise / make_pairs / bad-input
tests share.
"""

import os
import stat
import subprocess
import sys

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryojax_denoise import io
from cryojax_denoise.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")


def launch(*args, **kw) -> subprocess.CompletedProcess:
  """Runs `launch.py ARGS` in a subprocess (the way users run it)."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=kw.get("timeout", 300))


def launch_async(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files_under(path) -> list[str]:
  """Every file and folder below `path` (relative), sorted: to check that nothing was written."""
  out = []
  for base, dirs, files in os.walk(path):
    out += [os.path.relpath(os.path.join(base, n), path) for n in dirs + files]
  return sorted(out)


def random_stack(n=6, size=32, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size)).astype(np.float32)


def test_write_stack_roundtrip_and_pixel_size(tmp_path):
  x = random_stack()
  io.write_stack(str(tmp_path / "a.mrcs"), x, 2.5)
  s = io.read_stack(str(tmp_path / "a.mrcs"))
  np.testing.assert_array_equal(np.asarray(s.data), x)
  assert s.pixel_size == pytest.approx(2.5)
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "a.mrcs").st_mode) == 0o666 & ~umask  # not mkstemp's 0600
  assert files_under(tmp_path) == ["a.mrcs"]  # no temporary left behind


def test_stack_writer_batches_out_of_order_and_header_stats(tmp_path):
  x = random_stack(n=10)
  path = str(tmp_path / "w.mrcs")
  with io.StackWriter(path, 10, (32, 32), 1.7) as w:
    w.write(6, x[6:])
    w.write(0, x[:6])
  with mrcfile.open(path) as mrc:
    np.testing.assert_array_equal(mrc.data, x)
    assert mrc.is_image_stack() and mrc.voxel_size.x == pytest.approx(1.7)
    assert mrc.header.dmin == pytest.approx(x.min()) and mrc.header.dmax == pytest.approx(x.max())
    assert mrc.header.dmean == pytest.approx(x.mean(), abs=1e-6) and mrc.header.rms == pytest.approx(x.std(), rel=1e-5)


def test_stack_writer_leaves_nothing_when_incomplete_or_failing(tmp_path):
  path = str(tmp_path / "sub" / "w.mrcs")
  with pytest.raises(RuntimeError, match="wrote 4 of 10"):
    with io.StackWriter(path, 10, (32, 32), 1.0) as w:
      w.write(0, random_stack(4))
  with pytest.raises(KeyError):
    with io.StackWriter(path, 10, (32, 32), 1.0) as w:
      w.write(0, random_stack(4))
      raise KeyError("boom")
  assert files_under(tmp_path) == []  # neither the file, a temporary, nor the folder it created


def test_image_reader_reads_any_rows(tmp_path):
  x = random_stack(n=9)
  io.write_stack(str(tmp_path / "a.mrcs"), x, 1.0)
  r = io.ImageReader()
  np.testing.assert_array_equal(r.read(str(tmp_path / "a.mrcs"), [7, 2, 2, 0]), x[[7, 2, 2, 0]])
  np.testing.assert_array_equal(r.read(str(tmp_path / "a.mrcs"), range(3, 8)), x[3:8])
  with pytest.raises(InputError, match="index 10 out of range"):
    r.read(str(tmp_path / "a.mrcs"), [9])


def test_truncated_and_garbage_files_are_named(tmp_path):
  io.write_stack(str(tmp_path / "a.mrcs"), random_stack(n=4), 1.0)
  data = (tmp_path / "a.mrcs").read_bytes()
  (tmp_path / "cut.mrcs").write_bytes(data[:-100])
  (tmp_path / "head.mrcs").write_bytes(data[:300])
  (tmp_path / "text.mrcs").write_text("this is not an MRC file\n" * 100)
  with pytest.raises(InputError, match=r"cut\.mrcs: truncated MRC file"):
    io.read_stack(str(tmp_path / "cut.mrcs"))
  with pytest.raises(InputError, match=r"head\.mrcs: truncated MRC file"):
    io.read_stack(str(tmp_path / "head.mrcs"))
  with pytest.raises(InputError, match=r"text\.mrcs: not an MRC file"):
    io.read_stack(str(tmp_path / "text.mrcs"))


def test_write_star_is_lossless(tmp_path):
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.234567891], "rlnVoltage": [300.0]})
  particles = pd.DataFrame({"rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"],
                            "rlnDefocusU": [12345.678901234, 1e-7], "rlnAngleRot": [90.0, -0.5],
                            "rlnOpticsGroup": [1, 1]})
  io.write_star(str(tmp_path / "p.star"), optics, particles)
  back = starfile.read(str(tmp_path / "p.star"))
  pd.testing.assert_frame_equal(back["optics"], optics)
  pd.testing.assert_frame_equal(back["particles"], particles)
  io.write_star(str(tmp_path / "p30.star"), None, particles)  # RELION 3.0 layout: one block
  pd.testing.assert_frame_equal(starfile.read(str(tmp_path / "p30.star")), particles)


def test_star_paths_resolve_beside_the_star_file_or_in_the_relion_project(tmp_path):
  x = random_stack(n=3)
  os.makedirs(tmp_path / "proj" / "Extract" / "job012")
  os.makedirs(tmp_path / "proj" / "Refine3D" / "job050")
  io.write_stack(str(tmp_path / "proj" / "Extract" / "job012" / "a.mrcs"), x, 1.0)
  io.write_stack(str(tmp_path / "proj" / "Refine3D" / "job050" / "b.mrcs"), x[::-1], 1.0)
  particles = pd.DataFrame({"rlnImageName": ["2@Extract/job012/a.mrcs", "1@b.mrcs"]})
  star_path = str(tmp_path / "proj" / "Refine3D" / "job050" / "run_data.star")
  io.write_star(star_path, None, particles)
  star = io.read_star(star_path)
  assert star.stack_paths == [str(tmp_path / "proj" / "Extract" / "job012" / "a.mrcs"),
                              str(tmp_path / "proj" / "Refine3D" / "job050" / "b.mrcs")]
  np.testing.assert_array_equal(io.star_images(star), x[[1, 2]])
  io.write_star(star_path, None, pd.DataFrame({"rlnImageName": ["1@Extract/job099/gone.mrcs"]}))
  with pytest.raises(InputError, match=r"row 1: image stack .*Refine3D/job050/Extract/job099/gone\.mrcs not found"):
    io.read_star(star_path)



def test_new_files_follow_the_umask_at_write_time(tmp_path):
  """Issue 14: the umask is not read (toggled) once at import; a later umask applies to new files."""
  old = os.umask(0o077)
  try:
    io.write_stack(str(tmp_path / "a.mrcs"), random_stack(n=2), 1.0)
    io.atomic_write_text(str(tmp_path / "b.txt"), "x\n")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "a.mrcs").st_mode) == 0o600
  assert stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == 0o600


def test_stack_writer_stats_without_float64_batch_copies(tmp_path):
  """Issue 14: header statistics match NumPy's, and a batch is not copied to float64 (peak memory)."""
  import tracemalloc

  x = 100 + 3 * random_stack(n=64, size=64, seed=3)  # 1 MiB of float32
  with io.StackWriter(str(tmp_path / "s.mrcs"), 64, (64, 64), 1.5) as w:
    tracemalloc.start()
    w.write(32, x[32:])
    w.write(0, x[:32])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  assert peak < 256 * 1024, peak  # a float64 copy of a 32-image batch alone is 1 MiB
  with mrcfile.open(tmp_path / "s.mrcs") as m:
    h, x64 = m.header, x.astype(np.float64)
    np.testing.assert_allclose([h.dmin, h.dmax, h.dmean, h.rms], [x.min(), x.max(), x64.mean(), x64.std()], rtol=1e-6)
