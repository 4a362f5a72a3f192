"""Several processes, one result: `jax.distributed` from config keys, a result computed once and shared
(`share`), barriers, `reconstruct`'s sums reduced (`all_sum`); `denoise` and `make_pairs` split by rows
in `parts.py`; training's loop reports a dead peer through `peers_alive` (its data placement is
`cryojax_denoise.sharding`'s).

    python launch.py --experiment=denoise ... --config.distributed=True        # SLURM / Open MPI / TPU
    python launch.py --experiment=denoise ... --config.distributed=True \\
        --config.coordinator_address=10.0.0.1:1234 --config.num_processes=2 --config.process_id=0

`params=auto` is chosen on process 0 and sent to the others through the coordination service's
key-value store (`share`, waiting up to `collective_timeout_s`); a lost peer or a timeout ends the run
with one `error:` line naming the process and the coordinator, and finished parts are kept for a rerun.
On CPU the device collectives (`all_sum`) are gloo's, so one machine can run several local processes.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def shares(n_rows: int, n_processes: int, batch_size: int) -> list[tuple[int, int]]:
  """Contiguous (start, stop) rows of each process, cut on multiples of `batch_size` (empty shares
  when there are fewer batches than processes)."""
  batch_size = max(1, min(int(batch_size), n_rows))
  n_batches = -(-n_rows // batch_size)
  cuts = [min(n_rows, (k * n_batches // n_processes) * batch_size) for k in range(n_processes + 1)]
  return list(zip(cuts[:-1], cuts[1:]))


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
