"""Several processes, one result: `jax.distributed` from config keys, `denoise` and `make_pairs` split
by rows (`by_parts`), `reconstruct`'s sums reduced (`all_sum`); training's loop reports a dead peer
through `peers_alive` (its data placement is `cryojax_denoise.sharding`'s).

    python launch.py --experiment=denoise ... --config.distributed=True        # SLURM / Open MPI / TPU
    python launch.py --experiment=denoise ... --config.distributed=True \\
        --config.coordinator_address=10.0.0.1:1234 --config.num_processes=2 --config.process_id=0

Denoising: process k of n takes a contiguous share of the input rows, cut on `batch_size`
boundaries (so every batch holds the same images as in a one-process run and the output is
bit-identical), and writes it atomically to `OUTPUT.parts/part-K-of-N.mrcs` followed by a
`.json` done-marker. After a barrier, process 0 copies the parts into the output stack (and STAR
file) in input order and removes them. A rerun after a crash skips every part whose marker matches
the run (same input, method, parameters, rows), so only missing parts are redone.

Dataset-level methods (cwf) are fitted in every process on the same rows (a fixed seed, the whole
table) with the same deterministic code, so the fits agree; `params=auto` is chosen on process 0 and
broadcast. On CPU the collectives are gloo's, so one machine can run several local processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys

import numpy as np
from absl import logging

from cryojax_denoise.errors import InputError

BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000  # a share may take days; a dead process ends the wait sooner
# How long a process waits to join the job and for a result that process 0 computes and shares (e.g.
# the SURE choice of params=auto, minutes on a busy machine): generous, since a slow peer is not a dead
# one (a dead one is caught sooner by the heartbeat). `collective_timeout_s` in the config.
COLLECTIVE_TIMEOUT_S = 3600
_STATE = {"coordinator": "", "timeout_s": COLLECTIVE_TIMEOUT_S, "shares": 0}


def add_config(c) -> None:
  """Adds the keys of a multi-process launch to an experiment's ConfigDict."""
  import ml_collections

  c.distributed = False        # join a jax.distributed job (auto-detected on SLURM / Open MPI / TPU)
  c.coordinator_address = ""   # manual launch: HOST:PORT of process 0 (with num_processes, process_id)
  c.num_processes = ml_collections.config_dict.placeholder(int)
  c.process_id = ml_collections.config_dict.placeholder(int)
  c.heartbeat_timeout_s = 100  # a process silent this long counts as dead, and the job fails
  c.collective_timeout_s = COLLECTIVE_TIMEOUT_S  # joining the job, and waiting for a result process 0 shares


def check_config(config) -> None:
  """InputError for a bad combination of the keys of `add_config` (before anything is written)."""
  address = config.get("coordinator_address") or ""
  n, k = config.get("num_processes"), config.get("process_id")
  manual = {"coordinator_address": address or None, "num_processes": n, "process_id": k}
  given = [key for key, value in manual.items() if value is not None]
  if not config.get("distributed"):
    if given:
      raise InputError(f"{given[0]}: only used with --config.distributed=True")
    return
  if (config.get("heartbeat_timeout_s") or 100) < 1:
    raise InputError(f"heartbeat_timeout_s: must be at least 1, got {config.get('heartbeat_timeout_s')}")
  if (config.get("collective_timeout_s") or COLLECTIVE_TIMEOUT_S) < 1:
    raise InputError(f"collective_timeout_s: must be at least 1, got {config.get('collective_timeout_s')}")
  if given and len(given) < 3:
    missing = [key for key in manual if key not in given]
    raise InputError(f"{', '.join(given)} given without {', '.join(missing)}: a manual launch needs "
                     "coordinator_address, num_processes and process_id (or none of them: auto-detection)")
  if not given:
    return
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise InputError(f"coordinator_address: {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
  if n < 1:
    raise InputError(f"num_processes: must be at least 1, got {n}")
  if not 0 <= k < n:
    raise InputError(f"process_id: must be in 0..{n - 1} for num_processes={n}, got {k}")


def initialize(config) -> None:
  """Joins the job when `config.distributed` (once per process; before any JAX computation).

  Other processes than 0 log warnings only, so a run logs once."""
  if not config.get("distributed"):
    return
  check_config(config)
  import jax

  if jax.distributed.is_initialized():
    return
  try:  # gloo: collectives between CPU processes (also the default of jax 0.10-0.12)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError) as e:  # an option a future jax may drop: CPU-only loss
    logging.warning("no gloo CPU collectives: %s", e)
  _STATE["timeout_s"] = int(config.get("collective_timeout_s") or COLLECTIVE_TIMEOUT_S)
  kwargs = {"heartbeat_timeout_seconds": int(config.get("heartbeat_timeout_s") or 100),
            "initialization_timeout": _STATE["timeout_s"]}
  if config.get("coordinator_address"):
    kwargs.update(coordinator_address=config.coordinator_address, num_processes=int(config.num_processes),
                  process_id=int(config.process_id))
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise InputError(f"distributed: cannot join the job ({str(e).splitlines()[0]}); on a cluster without "
                     "auto-detection give coordinator_address, num_processes and process_id") from None
  from jax._src import distributed as jax_distributed

  _STATE["coordinator"] = str(getattr(jax_distributed.global_state, "coordinator_address", "") or
                              config.get("coordinator_address") or "")
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  info("distributed: %d processes, %d devices (%d here)", jax.process_count(), jax.device_count(),
       jax.local_device_count())


def process() -> tuple[int, int]:
  """(this process's index, number of processes); (0, 1) without `jax.distributed`."""
  import jax

  if not jax.distributed.is_initialized():
    return 0, 1
  return jax.process_index(), jax.process_count()


def is_main() -> bool:
  return process()[0] == 0


def info(msg: str, *args) -> None:
  """`logging.info` on process 0 only."""
  if is_main():
    logging.info(msg, *args)


def fail(msg: str):
  """One line on stderr and exit status 1 (a peer died): at once, since jax's exit handler would wait
  for the dead peer and its error poller aborts this process with a stack trace moments later."""
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


# Words of the errors (ValueError, AssertionError or JaxRuntimeError, depending on where the collective
# was) raised when a peer died: gloo's closed connection, the coordination service's missed heartbeats.
PEER_DIED = ("gloo", "connection closed", "heartbeat", "unhealthy", "coordination service", "barrier failed")


@contextlib.contextmanager
def peers_alive(what: str):
  """Turns an error of a collective whose peer died into `fail`'s one line (other errors pass)."""
  try:
    yield
  except Exception as e:  # noqa: BLE001
    k, n = process()
    if n == 1 or not any(word in str(e).lower() for word in PEER_DIED):
      raise
    fail(f"distributed: {where()}: {what} failed, another process has died or left "
         f"({str(e).splitlines()[0][:200]}); rerun the same command to resume")


def barrier(name: str) -> None:
  """Waits for every process (the coordination service's barrier: no device computation)."""
  k, n = process()
  if n == 1:
    return
  from jax._src import distributed as jax_distributed  # the client of jax.distributed.initialize

  try:
    jax_distributed.global_state.client.wait_at_barrier(name, BARRIER_TIMEOUT_MS)
  except Exception as e:  # noqa: BLE001  (JaxRuntimeError: a peer died or left)
    fail(f"distributed: {where()}: barrier {name!r} failed, another process has died or left "
         f"({str(e).splitlines()[0][:200]}); rerun the same command to redo only the missing parts")


def where() -> str:
  """"process K of N (coordinator HOST:PORT)": for error lines."""
  k, n = process()
  return f"process {k} of {n} (coordinator {_STATE['coordinator'] or 'auto-detected'})"


def share(fn, *args):
  """`fn(*args)` (a JSON-able result) computed on process 0 and sent to every process.

  Through the coordination service's key-value store, not a device collective: the others wait up
  to `collective_timeout_s` while process 0 computes (a gloo broadcast timed out in its connect on
  a busy machine). A timeout is one `error:` line naming the process and the coordinator."""
  k, n = process()
  if n == 1:
    return fn(*args)
  from jax._src import distributed as jax_distributed

  client = jax_distributed.global_state.client
  key = f"cryojax_denoise/share/{_STATE['shares']}"  # every process calls share in the same order
  _STATE["shares"] += 1
  if k == 0:
    result = fn(*args)
    client.key_value_set(key, json.dumps(result, default=str))
    return json.loads(json.dumps(result, default=str))  # the same value every process gets
  try:
    return json.loads(client.blocking_key_value_get(key, int(_STATE["timeout_s"]) * 1000))
  except Exception as e:  # noqa: BLE001  (JaxRuntimeError: deadline exceeded, or the service is gone)
    fail(f"distributed: {where()}: waited {_STATE['timeout_s']} s for process 0's result ({fn.__name__}) "
         f"and got none ({str(e).splitlines()[0][:160]}); raise --config.collective_timeout_s on a busy "
         "machine; finished parts are kept, rerun the same command to resume")


# ---------------------------------------------------------------------------- denoising by parts


def shares(n_rows: int, n_processes: int, batch_size: int) -> list[tuple[int, int]]:
  """Contiguous (start, stop) rows of each process, cut on multiples of `batch_size` (empty shares
  when there are fewer batches than processes)."""
  batch_size = max(1, min(int(batch_size), n_rows))
  n_batches = -(-n_rows // batch_size)
  cuts = [min(n_rows, (k * n_batches // n_processes) * batch_size) for k in range(n_processes + 1)]
  return list(zip(cuts[:-1], cuts[1:]))


def parts_dir(outputs) -> str:
  return outputs.stack + ".parts"


def _part_paths(outputs, k: int, n: int) -> tuple[str, str]:
  stem = os.path.join(parts_dir(outputs), f"part-{k:05d}-of-{n:05d}")
  return stem + ".mrcs", stem + ".json"


def _fingerprint(config, table, start: int, stop: int, keys) -> str:
  """What a part's images depend on: the input files and the config `keys` (denoising's by default)."""
  source = os.stat(table.source)
  facts = {"input": os.path.abspath(table.source), "size": source.st_size, "mtime": source.st_mtime_ns,
           "rows": [start, stop, len(table)], **{key: str(config.get(key)) for key in keys}}
  return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def part_done(config, table, outputs, keys) -> bool:
  """Whether this process's part is already written by an earlier run of the same job."""
  k, n = process()
  start, stop = shares(len(table), n, config["batch_size"])[k]
  stack, marker = _part_paths(outputs, k, n)
  if not (os.path.exists(stack) and os.path.exists(marker)):
    return False
  try:
    with open(marker) as f:
      return json.load(f).get("fingerprint") == _fingerprint(config, table, start, stop, keys)
  except (OSError, ValueError):
    return False


def denoise(table, denoiser, outputs, reader, ctf_of=None, *, batch_size: int = 64, noise_std: float | None = None,
            normalize: str = "mean", facts: dict | None = None):
  """`denoise_stack.denoise` over every process: this process's part, a barrier, assembly on 0.

  `facts`: what the images depend on besides the input (the run's settings, e.g. `Settings.facts()`): a
  part written by an earlier run with the same facts is kept (resume)."""
  from cryojax_denoise import denoise_stack

  noise_std = noise_std or None
  if process()[1] == 1:
    return denoise_stack.denoise(table, denoiser, outputs, batch_size=batch_size, noise_std=noise_std,
                                 normalize=normalize, reader=reader, ctf_of=ctf_of)

  def make_fn():
    mean, scale = denoise_stack.normalization(table, reader, normalize)  # the whole table's
    return denoise_stack.denoise_batches(denoiser, noise_std, mean, scale, ctf_of)

  facts = {**(facts or {}), "batch_size": int(batch_size)}
  return by_parts(facts, table, outputs, make_fn, reader, "denoising", tuple(sorted(facts)))


def by_parts(config, table, outputs, make_fn, reader, verb: str, keys) -> object:
  """`make_fn()(rows, images) -> images` streamed over this process's share of `table` into its part
  (unless an earlier run with the same config `keys` wrote it), a barrier, then process 0 assembles
  `outputs.stack` (+ `outputs.star` when set) in input order; `rows` are indices into the whole table."""
  from cryojax_denoise import denoise_stack, io

  k, n = process()
  start, stop = shares(len(table), n, config["batch_size"])[k]
  stack, marker = _part_paths(outputs, k, n)
  if part_done(config, table, outputs, keys):
    logging.warning("process %d: part %s (rows %d-%d) already written: kept", k, stack, start + 1, stop)
  elif stop > start:
    fn = make_fn()
    part = denoise_stack.ParticleTable(table.source, table.stacks, table.stack_of[start:stop],
                                       table.indices[start:stop], table.shape, table.pixel_size)
    logging.warning("process %d of %d: %s rows %d-%d into %s", k, n, verb, start + 1, stop, stack)
    denoise_stack.stream(part, lambda rows, images: fn(rows + start, images), stack,
                         batch_size=config["batch_size"], desc=f"{verb} part {k}", reader=reader)
  if stop > start and not part_done(config, table, outputs, keys):
    io.atomic_write_text(marker, json.dumps({"rows": [start, stop],
                                             "fingerprint": _fingerprint(config, table, start, stop, keys)}) + "\n")
  barrier(f"{verb} {outputs.stack}: parts written")
  if k == 0:
    assemble(table, outputs, n, config["batch_size"])
  barrier(f"{verb} {outputs.stack}: assembled")
  return outputs


def assemble(table, outputs, n: int, batch_size: int, chunk: int = 1024) -> None:
  """Process 0: the parts, in row order, into `outputs.stack` (+ STAR); then removes the parts."""
  from cryojax_denoise import denoise_stack, io

  particles = denoise_stack.star_for_stack(table, outputs) if outputs.star else None
  with io.StackWriter(outputs.stack, len(table), table.shape, table.pixel_size) as writer:
    for k, (start, stop) in enumerate(shares(len(table), n, batch_size)):
      if stop == start:
        continue
      part = io.read_stack(_part_paths(outputs, k, n)[0], mmap=True, check_finite=False).data
      if part.shape != (stop - start, *table.shape):
        raise RuntimeError(f"{_part_paths(outputs, k, n)[0]}: {part.shape}, expected {stop - start} images")
      for i in range(0, stop - start, chunk):
        writer.write(start + i, np.asarray(part[i:i + chunk], np.float32))
      del part
  if outputs.star:
    denoise_stack.write_output_star(table, outputs, particles)
  shutil.rmtree(parts_dir(outputs), ignore_errors=True)
  info("assembled %d parts into %s", n, outputs.stack)


# ---------------------------------------------------------------------------- reconstruction


def all_sum(x: np.ndarray) -> np.ndarray:
  """The sum over processes of each process's host array `x` (same shape everywhere), on every process."""
  k, n = process()
  if n == 1:
    return np.asarray(x)
  import jax
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  devices = np.array(jax.devices()).reshape(n, jax.local_device_count())
  mesh = Mesh(devices, ("processes", "local"))
  x = multihost_utils.host_local_array_to_global_array(np.asarray(x)[None], mesh, PartitionSpec("processes"))
  total = jax.jit(lambda v: v.sum(0), out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
  return np.asarray(total.addressable_data(0))


def backproject(backproject_fn, images, params, *args, batch_size: int | None = None, **kwargs) -> np.ndarray:
  """`backproject_fn` (reconstruction.fourier.backproject) over this process's contiguous share of
  the particles, the accumulators summed over processes: the same sums as one process, up to float
  rounding of the summation order."""
  k, n = process()
  if n == 1:
    return backproject_fn(images, params, *args, batch_size=batch_size, **kwargs)
  start, stop = shares(len(params.shift), n, batch_size or 1)[k]
  part = type(params)(*(v[start:stop] for v in params))
  groups = kwargs.pop("groups", None)
  groups = None if groups is None else np.asarray(groups)[start:stop]
  logging.warning("process %d of %d: back-projecting particles %d-%d", k, n, start + 1, stop)
  if stop == start:  # fewer batches than processes: this one adds nothing
    d, pad = int(images.shape[-1]), int(kwargs.get("pad", 2))
    return all_sum(np.zeros((int(kwargs.get("n_groups", 1)), (pad * d) ** 3, 3), np.float32))
  return all_sum(backproject_fn(_Rows(images, start, stop), part, *args, batch_size=batch_size, groups=groups,
                                **kwargs))


class _Rows:
  """Rows start..stop-1 of a sliceable image source (memory map, STAR reader), sliced lazily."""

  def __init__(self, images, start: int, stop: int):
    self.images, self.start, self.stop = images, start, stop
    self.shape = (stop - start, *images.shape[1:])

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, rows: slice):
    lo, hi, _ = rows.indices(len(self))
    return self.images[self.start + lo:self.start + hi]
