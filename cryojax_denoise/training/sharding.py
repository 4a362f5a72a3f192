"""Data-parallel placement: a 1-D `Mesh` over every device on a "data" axis, batches sharded along
their first axis, parameters and optimiser state replicated. The same code runs on one CPU, several
GPUs or a TPU host (and several hosts after `cryojax_denoise.distributed.initialize`).
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


def local_device_count() -> int:
  return jax.local_device_count()
