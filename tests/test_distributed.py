"""Issue 16: `denoise` and `reconstruct` over 2 local CPU processes (jax.distributed on 127.0.0.1, gloo)
equal the one-process runs; a killed process fails the run, and the rerun redoes only missing parts."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import starfile

from cryojax_denoise import distributed, io
from cryojax_denoise.errors import InputError
from test_io import ROOT, random_stack

N = 40


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _star(d) -> str:
  """40 particles of 32² in two stacks, rows interleaving them with indices out of order."""
  a, b = random_stack(n=25, seed=3), random_stack(n=15, seed=4) * 2 + 5
  os.makedirs(d / "Extract")
  io.write_stack(str(d / "Extract" / "a.mrcs"), a, 2.0)
  io.write_stack(str(d / "Extract" / "b.mrcs"), b, 2.0)
  rng = np.random.default_rng(0)
  names = [f"{i}@Extract/a.mrcs" for i in range(1, 26)] + [f"{i}@Extract/b.mrcs" for i in range(1, 16)]
  names = [names[i] for i in rng.permutation(N)]
  particles = pd.DataFrame({"rlnImageName": names, "rlnAngleRot": np.arange(N) * 1.5,
                            "rlnOpticsGroup": [1] * N})
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnVoltage": [300.0]})
  io.write_star(str(d / "p.star"), optics, particles)
  return str(d / "p.star")


def _denoise(star, out, *extra) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=denoise", "--config.method=wiener",
          "--config.batch_size=8", "--config.sure_images=0", f"--config.input={star}",
          f"--config.output={out}", f"--workdir={os.path.dirname(out)}", *extra]


def _start(cmd):
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pair(star, out, port):
  """Both processes of a 2-process run (process 0 first: it hosts the coordinator)."""
  keys = ["--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}",
          "--config.num_processes=2", "--config.heartbeat_timeout_s=10"]
  return [_start(_denoise(star, out, *keys, f"--config.process_id={k}")) for k in (0, 1)]


def _finish(procs, timeout=400):
  """[(exit status, stderr)] of each process, in order."""
  errs = [p.communicate(timeout=timeout)[1] for p in procs]
  return [(p.returncode, err) for p, err in zip(procs, errs)]


def _read(path):
  return np.asarray(io.read_stack(path, mmap=False).data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The one-process run and a 2-process run, side by side."""
  d = tmp_path_factory.mktemp("dist")
  star = _star(d)
  one = _start(_denoise(star, str(d / "one" / "den.star")))
  two = _pair(star, str(d / "two" / "den.star"), _free_port())
  (rc1, err1), = _finish([one])
  return d, star, (rc1, err1), _finish(two)


@pytest.mark.slow
def test_two_processes_equal_one_process_exactly(runs):
  d, star, (rc1, err1), two = runs
  assert rc1 == 0, err1[-2000:]
  for rc, err in two:
    assert rc == 0, err[-3000:]
  assert "denoising rows 1-16" in two[0][1] and "denoising rows 17-40" in two[1][1]  # batch-aligned shares
  np.testing.assert_array_equal(_read(str(d / "two" / "den.mrcs")), _read(str(d / "one" / "den.mrcs")))
  one_star, two_star = starfile.read(str(d / "one" / "den.star")), starfile.read(str(d / "two" / "den.star"))
  pd.testing.assert_frame_equal(two_star["particles"], one_star["particles"])  # input order, same names
  pd.testing.assert_frame_equal(two_star["optics"], one_star["optics"])
  assert sorted(os.listdir(d / "two")) == ["config.json", "den.mrcs", "den.star"]  # parts removed


@pytest.mark.slow
def test_killed_process_fails_both_and_rerun_redoes_only_missing_parts(runs, tmp_path):
  d, star, _, _ = runs
  out = str(tmp_path / "den.star")
  procs = _pair(star, out, _free_port())
  marker = tmp_path / "den.mrcs.parts" / "part-00000-of-00002.json"
  for line in procs[1].stderr:  # kill process 1 as soon as it starts on its rows, before it can write them
    if "denoising rows" in line:
      break
  procs[1].send_signal(signal.SIGKILL)
  if procs[1].wait() == 0:  # it ended without starting its rows (not expected)
    (rc0, err0), _ = _finish(procs)
    assert rc0 == 0, err0[-3000:]
    pytest.skip("process 1 finished before it could be killed")
  (rc0, err0), (rc1, _) = _finish(procs)
  assert marker.exists(), err0[-3000:]  # process 0 wrote its part before it found process 1 gone
  assert rc0 != 0 and rc1 != 0
  lines = [line for line in err0.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "another process has died" in lines[0], err0[-3000:]
  assert not os.path.exists(tmp_path / "den.mrcs") and marker.exists()
  (rc0, err0), (rc1, err1) = _finish(_pair(star, out, _free_port()))
  assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
  assert "already written: kept" in err0 and "denoising rows" not in err0
  np.testing.assert_array_equal(_read(str(tmp_path / "den.mrcs")), _read(str(d / "one" / "den.mrcs")))


def test_shares_are_contiguous_batch_aligned_and_cover_every_row():
  assert distributed.shares(40, 2, 8) == [(0, 16), (16, 40)]  # process 0 (it assembles) takes less
  assert distributed.shares(40, 3, 64) == [(0, 0), (0, 0), (0, 40)]
  for n_rows, n, batch in [(1, 4, 1), (1000, 7, 64), (999, 3, 1), (5, 2, 2)]:
    cuts = distributed.shares(n_rows, n, batch)
    assert cuts[0][0] == 0 and cuts[-1][1] == n_rows and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    assert all(start % min(batch, n_rows) == 0 for start, _ in cuts)


@pytest.mark.parametrize("keys, message", [
    (dict(num_processes=2), "only used with --config.distributed=True"),
    (dict(distributed=True, num_processes=2), "without coordinator_address, process_id"),
    (dict(distributed=True, coordinator_address="h:1", num_processes=2, process_id=2), "must be in 0..1"),
    (dict(distributed=True, coordinator_address="host", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(distributed=True, coordinator_address="h:1", num_processes=0, process_id=0), "at least 1"),
])
def test_bad_key_combinations_are_one_input_error(keys, message):
  config = dict(distributed=False, coordinator_address="", num_processes=None, process_id=None)
  config.update(keys)
  with pytest.raises(InputError, match=message):
    distributed.check_config(SimpleNamespace(get=config.get))
  distributed.check_config(SimpleNamespace(get=dict(distributed=True).get))  # auto-detection: fine


def _reconstruct(star, work, *extra) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=reconstruct", f"--workdir={work}",
          f"--config.input={star}", "--config.batch_size=8", "--config.pad=1", *extra]


@pytest.mark.slow
def test_reconstruct_half_maps_over_two_processes_equal_one_process(tmp_path):
  """30 particles of 24² at random poses: per-process Fourier sums, summed over processes."""
  rng = np.random.default_rng(1)
  n = 30
  io.write_stack(str(tmp_path / "p.mrcs"), random_stack(n=n, size=24, seed=5), 3.0)
  particles = pd.DataFrame({"rlnImageName": [f"{i}@p.mrcs" for i in range(1, n + 1)],
                            "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
                            "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOpticsGroup": [1] * n})
  optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [3.0], "rlnVoltage": [300.0]})
  star = str(tmp_path / "p.star")
  io.write_star(star, optics, particles)
  port = _free_port()
  keys = ["--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2"]
  procs = [_start(_reconstruct(star, tmp_path / "one"))]
  procs += [_start(_reconstruct(star, tmp_path / "two", *keys, f"--config.process_id={k}")) for k in (0, 1)]
  results = _finish(procs)
  for rc, err in results:
    assert rc == 0, err[-3000:]
  assert "back-projecting particles 1-16" in results[1][1] and "back-projecting particles 17-30" in results[2][1]
  for name in ("half1.mrc", "half2.mrc", "map.mrc"):
    one, _ = io.read_volume(str(tmp_path / "one" / name))
    two, _ = io.read_volume(str(tmp_path / "two" / name))
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5 * np.abs(one).max())
  fsc_one = json.load(open(tmp_path / "one" / "fsc.json"))
  fsc_two = json.load(open(tmp_path / "two" / "fsc.json"))
  np.testing.assert_allclose(fsc_two["fsc"], fsc_one["fsc"], atol=1e-5)


# ---------------------------------------------------------------------------- training over processes

TRAIN_KEYS = dict(batch_size=4, val_size=4, eval_every=2, log_every=1, checkpoint_every=2, keep_checkpoints=1000)
TRAIN_MODEL = dict(widths=(4, 8), blocks=(1, 0))


def _pairs(d) -> tuple[str, str]:
  """40 (noisy, clean) pairs of 32²: Gaussian blobs and Gaussian noise."""
  rng = np.random.default_rng(2)
  y, x = np.mgrid[:32, :32] - 16.0
  clean = np.stack([np.exp(-((x - a) ** 2 + (y - b) ** 2) / w) for a, b, w in rng.uniform((-5, -5, 10), (5, 5, 40),
                                                                                       (40, 3))])
  io.write_stack(str(d / "clean.mrcs"), clean.astype(np.float32), 2.0)
  io.write_stack(str(d / "noisy.mrcs"), (clean + rng.normal(0, 0.5, clean.shape)).astype(np.float32), 2.0)
  return str(d / "noisy.mrcs"), str(d / "clean.mrcs")


def _train_config(noisy, clean, steps):
  from cryojax_denoise.training import train

  c = train.default_config("autoencoder")
  c.update(dict(TRAIN_KEYS, noisy=noisy, clean=clean, steps=steps))
  c.model.update(TRAIN_MODEL)
  return c


def _train_pair(work, noisy, clean, port):
  keys = [f"--config.{k}={v}" for k, v in dict(TRAIN_KEYS, noisy=noisy, clean=clean, steps=100000).items()]
  keys += [f"--config.model.{k}={tuple(v)}" for k, v in TRAIN_MODEL.items()]
  keys += ["--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
           "--config.heartbeat_timeout_s=10"]
  return [_start([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=train_autoencoder",
                  f"--workdir={work}", *keys, f"--config.process_id={k}"]) for k in (0, 1)]


def _generator(work, step, config):
  """The generator's parameters (flat list) at checkpoint `step` of `work`."""
  import jax
  from flax import nnx
  from cryojax_denoise.training import checkpoints, train

  learner = train.Learner(train.resolve(config), seed=0)
  ckpt = checkpoints.Checkpointer(str(work), create=False)
  ckpt.restore(step, learner.parts())
  ckpt.close()
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(learner.generator, nnx.Param))]


def _metrics(work) -> dict:
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # once each: trimmed, process 0 only
  return {r["step"]: r for r in rows}


@pytest.mark.slow
def test_training_over_two_processes_equals_one_and_resumes_on_one_after_a_kill(tmp_path):
  """2 processes (1 CPU device each, batch rows split between them) train like 1 process (1 device);
  killing process 1 fails both with one line; the rerun on 1 process resumes from their checkpoint."""
  from cryojax_denoise.training import checkpoints, train

  noisy, clean = _pairs(tmp_path)
  one, two = tmp_path / "one", tmp_path / "two"
  procs = _train_pair(str(two), noisy, clean, _free_port())

  def kill_after_checkpoint_4():
    deadline = time.time() + 400
    while not (two / "checkpoints" / "4").is_dir() and time.time() < deadline and procs[0].poll() is None:
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)

  killer = threading.Thread(target=kill_after_checkpoint_4)
  killer.start()
  train.train(_train_config(noisy, clean, 4), str(one))  # meanwhile: the 1-process run, here
  killer.join()
  (rc0, err0), (rc1, _) = _finish(procs)
  assert rc0 != 0 and rc1 != 0, err0[-3000:]
  lines = [line for line in err0.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "another process has died" in lines[0], err0[-3000:]
  config = _train_config(noisy, clean, 4)
  for a, b in zip(_generator(two, 4, config), _generator(one, 4, config), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  m1, m2 = _metrics(one), _metrics(two)
  for step in (1, 2, 3, 4):
    for key in ("loss", "val_mse") if step % 2 == 0 else ("loss",):
      assert abs(m2[step][key] - m1[step][key]) < 1e-5, (step, key, m2[step], m1[step])

  last = checkpoints.Checkpointer(str(two), create=False).latest_step()  # rerun on 1 process: resumes there
  train.train(_train_config(noisy, clean, last + 2), str(two))
  train.train(_train_config(noisy, clean, last + 2), str(one))
  for a, b in zip(_generator(two, last + 2, config), _generator(one, last + 2, config), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  m1, m2 = _metrics(one), _metrics(two)
  assert len(m2) == last + 2 and abs(m2[last + 2]["loss"] - m1[last + 2]["loss"]) < 1e-5


@pytest.mark.slow
def test_make_pairs_over_two_processes_equals_one_process_exactly(tmp_path):
  """24 simulated particles of 32²: shares of 8-row batches projected per process, assembled on 0."""
  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import load_source
  from experiments import make_pairs
  from test_make_pairs import _blob_map

  io.write_volume(str(tmp_path / "map.mrc"), _blob_map(), 4.0)
  source = load_source(volume=str(tmp_path / "map.mrc"), image_size=32)
  ds = simulate.simulate_dataset(source, n_images=24, image_size=32, snr=1.0, seed=1, max_shift_A=6.0, batch_size=24)
  simulate.write_dataset(ds, str(tmp_path / "sim"))

  def command(work, *extra):
    return [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=make_pairs", f"--workdir={work}",
            f"--config.input={tmp_path / 'sim' / 'particles.star'}", f"--config.volume={tmp_path / 'map.mrc'}",
            "--config.batch_size=8", "--config.noisy_copy=True", *extra]

  keys = ["--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{_free_port()}",
          "--config.num_processes=2"]
  procs = [_start(command(tmp_path / "two", *keys, f"--config.process_id={k}")) for k in (0, 1)]
  config = make_pairs.get_config()  # meanwhile: the 1-process run, here (one interpreter start fewer)
  config.input, config.volume = str(tmp_path / "sim" / "particles.star"), str(tmp_path / "map.mrc")
  config.batch_size, config.noisy_copy = 8, True
  make_pairs.validate(config)
  make_pairs.run(config, str(tmp_path / "one"))
  results = _finish(procs)
  for rc, err in results:
    assert rc == 0, err[-3000:]
  assert "make_pairs rows 1-8" in results[0][1] and "make_pairs rows 9-24" in results[1][1]
  for name in ("clean.mrcs", "noisy.mrcs"):
    np.testing.assert_array_equal(_read(str(tmp_path / "two" / name)), _read(str(tmp_path / "one" / name)))
  assert sorted(os.listdir(tmp_path / "two")) == ["clean.mrcs", "config.json", "noisy.mrcs"]  # parts removed


SHARE_SCRIPT = r"""
import sys, time
from ml_collections import ConfigDict
from cryojax_denoise import distributed
port, k = sys.argv[1], int(sys.argv[2])
distributed.initialize(ConfigDict(dict(distributed=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                       process_id=k, heartbeat_timeout_s=30, collective_timeout_s=600)))
def choose():
  return {"params": {"lam": 0.5}}
print("shared", distributed.share(choose), flush=True)
distributed._STATE["timeout_s"] = 3  # process 0 now computes for longer than process 1 waits
def slow():
  time.sleep(10)
  return 1
print("shared", distributed.share(slow), flush=True)
"""


def test_share_waits_for_process_0_and_a_timeout_is_one_error_line(tmp_path):
  """`share` goes through the coordination service (no gloo connect to time out while process 0 computes);
  a wait past `collective_timeout_s` ends with one `error:` line naming the process and the coordinator."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", SHARE_SCRIPT, str(port), str(k)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
  try:
    out1, err1 = procs[1].communicate(timeout=240)
    assert "shared {'params': {'lam': 0.5}}" in out1, err1[-2000:]
    assert procs[1].returncode == 1
    lines = [line for line in err1.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err1, err1[-2000:]
    assert "process 1 of 2" in lines[0] and f"127.0.0.1:{port}" in lines[0] and "collective_timeout_s" in lines[0]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
