"""Data-parallel placement: a 1-D `Mesh` over every device on a "data" axis, batches sharded along
their first axis, parameters and optimiser state replicated. The same code runs on one CPU, several
GPUs or a TPU host, and several processes after `cryojax_denoise.distributed.initialize`: the mesh then
spans every process's devices, each process places only its own rows of a batch (`shard_host_batch`),
and `to_host` gathers a sharded result.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cryojax_denoise.errors import InputError

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A mesh over all (global) devices, one "data" axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shards axis 0 (the batch) over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise InputError(f"config.batch_size: {batch_size} is not divisible by the {n} devices it is sharded over")


def shard_host_batch(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host batch (the same on every process) as a global array sharded by `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_host_rows(rows, n: int, sharding: NamedSharding | None) -> tuple[jax.Array, ...]:
  """Global arrays of `n` rows sharded along axis 0 by `sharding`, from `rows(start, stop) -> (host
  arrays of rows start..stop-1)` called once for this process's rows only: each process reads and
  augments only its share of the batch. `sharding=None`: all rows, on the default device."""
  if sharding is None:
    return tuple(jax.numpy.asarray(a) for a in rows(0, n))
  spans = [index[0].indices(n)[:2] for index in sharding.addressable_devices_indices_map((n,)).values()]
  lo, hi = min(start for start, _ in spans), max(stop for _, stop in spans)
  local = rows(lo, hi)

  def part(a):
    def callback(index):
      start, stop, _ = index[0].indices(n)
      return a[(slice(start - lo, stop - lo), *index[1:])]
    return jax.make_array_from_callback((n, *a.shape[1:]), sharding, callback)

  return tuple(part(np.asarray(a)) for a in local)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a global array on every process (an all-gather when other processes hold
  shards of it; a plain copy otherwise)."""
  if not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def local_device_count() -> int:
  return jax.local_device_count()


def batch_placement(batch: int):
  """(batch rounded up to a multiple of the local device count, `place(x)`): `place` shards a batch's
  arrays along axis 0 over the local devices (data parallel, like training; a model stays replicated)
  and is the identity on one device (e.g. CWF's fit and Wiener step, denoisers/cwf/cwf.py)."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return batch, lambda x: x
  spec = batch_sharding(data_mesh(devices))
  return -(-batch // len(devices)) * len(devices), lambda x: jax.device_put(x, spec)
