"""Data parallelism over every device (of every host) with `jax.sharding`.

One mesh axis, 'data': a global batch is split along its first dimension
(NamedSharding(mesh, P('data'))); params, BatchNorm statistics and optimizer
state are replicated (P()). XLA's SPMD partitioner inserts the gradient
all-reduce, and BatchNorm statistics are global-batch statistics, so a step is
the single-device step up to float32 reduction order.

Several hosts: one process per host calls `initialize` before any other JAX
call (docs/distributed.md). Every process loads the same global batch (same
seed, same order) and hands JAX only the rows of its own devices.

With one device everything passes through untouched, so single-device runs
compile and compute exactly what they did without a mesh.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Iterable, Iterator

import jax
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

_initialized = False
_barriers = 0  # barriers passed; a coordination-service barrier's name is used once


def wants_distributed(config: Any = None) -> bool:
  """config.distributed (if the config has it) or FTJAX_DISTRIBUTED=1 / JAX_COORDINATOR_ADDRESS."""
  if config is not None and bool(getattr(config, "get", lambda *_: False)("distributed", False)):
    return True
  flag = os.environ.get("FTJAX_DISTRIBUTED", "")
  return flag.lower() in ("1", "true", "yes") or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(config: Any = None) -> None:
  """`jax.distributed.initialize` once per process, when asked for.

  The coordinator address, process count and id come from JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID, or are detected by JAX on SLURM, Open MPI
  and Cloud TPU.
  """
  global _initialized
  if _initialized or not wants_distributed(config):
    return
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  # CPU processes need a collectives backend to talk to each other (GPUs use NCCL).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  _initialized = True


def barrier(name: str, timeout_seconds: int = 3600) -> None:
  """Waits until every process reaches the barrier `name` (no-op with one process).

  A barrier of the coordination service, not a collective: others may wait here
  for minutes (process 0 preparing data), and CPU collectives (gloo) fail when a
  peer is more than 30 s late.
  """
  global _barriers
  if jax.process_count() > 1:
    _barriers += 1  # every process passes the same barriers in the same order
    ocp_multihost.get_barrier_sync_fn()(key=f"ftjax {_barriers}: {name}",
                                        timeout_ms=timeout_seconds * 1000)


class DataParallel:
  """The 'data' mesh over `devices` (default: all of them) and its shardings."""

  def __init__(self, devices: list[jax.Device] | None = None):
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = Mesh(np.array(devices), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))
    # Auto-RGN's probe batches: [minibatch, batch, ...], split along the batch.
    self.stacked_batch = NamedSharding(self.mesh, P(None, "data"))

  @property
  def size(self) -> int:
    return self.mesh.size

  @property
  def active(self) -> bool:
    return self.size > 1

  def check_divisible(self, value: int, field: str) -> None:
    if value % self.size:
      lower = value - value % self.size
      raise ValueError(
          f"{field}={value} is not divisible by the {self.size} devices of the data-parallel "
          f"mesh; set --{field}={lower or self.size} (a multiple of {self.size}), or run "
          f"on fewer devices (CUDA_VISIBLE_DEVICES / --xla_force_host_platform_device_count).")

  def shardings(self) -> tuple[NamedSharding, NamedSharding] | None:
    """(replicated, batch) for `step.make_train_step`, None on one device."""
    return (self.replicated, self.batch) if self.active else None

  def _put(self, tree: Any, sharding: NamedSharding) -> Any:
    if not self.active:
      return tree
    if jax.process_count() == 1:
      return jax.device_put(tree, sharding)

    def put(x):
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      x = np.asarray(x)  # the same global value on every process
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)

  def replicate(self, tree: Any) -> Any:
    return self._put(tree, self.replicated)

  def shard_batch(self, tree: Any) -> Any:
    return self._put(tree, self.batch)

  def shard_stacked(self, tree: Any) -> Any:
    return self._put(tree, self.stacked_batch)

  def to_device(self, batch: Any) -> Any:
    """A host batch put on the devices (split over the mesh when there are several).

    The copy is asynchronous: `prefetch` issues it for later batches while the
    devices still work on earlier ones.
    """
    if self.active:
      return self.shard_batch(batch)
    # The default device's own sharding: the one the state has, so the step's
    # cache key stays the same from the first call on.
    return jax.device_put(batch)

  def prefetch(self, batches: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Yields `batches` already on the devices, copying up to `size` batches ahead."""
    queue = collections.deque()
    for batch in batches:
      queue.append(self.to_device(batch))
      if len(queue) > size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()

  def gather(self, x: jax.Array) -> np.ndarray:
    """A (possibly cross-host) sharded array as one host numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
