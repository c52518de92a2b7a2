"""Data parallelism: one mesh axis ``data`` over every device, padded + masked batches.

The trainers keep parameters and optimiser state replicated (:func:`replicate`) and shard
each batch along its leading axis (:func:`shard_batch`); a plain ``jax.jit`` step then
runs SPMD over all devices of all processes and XLA inserts the gradient all-reduce.
Batches are padded to a multiple of the device count (:func:`pad_batch`,
:func:`round_up_batch`) and the returned mask keeps padded rows out of losses and metrics.

Multi-process (several hosts, or several processes on one host): every process calls
:func:`initialize_distributed` first, builds the same :func:`make_mesh`, loads only its
own rows of each global batch (:func:`process_slice`) and passes them to
:func:`shard_batch`, which assembles the global array with
``jax.make_array_from_process_local_data``. In a single process the same calls work
unchanged (the process slice is the whole batch).

>>> import numpy as np
>>> mesh = make_mesh()
>>> mesh.axis_names
('data',)
>>> batch, mask = pad_batch({"x": np.ones((3, 2), np.float32)}, round_up_batch(3, mesh))
>>> placed = shard_batch(batch, mesh)
>>> placed["x"].sharding == data_sharding(mesh), int(mask.sum())
(True, 3)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "data_sharding",
    "force_host_devices",
    "global_batch_size",
    "initialize_distributed",
    "is_main_process",
    "make_mesh",
    "pad_batch",
    "process_slice",
    "replicate",
    "replicated",
    "round_up_batch",
    "shard_batch",
]

#: The name of the only mesh axis.
DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices of all processes).

    Built with ``jax.make_mesh`` and ``axis_types=(AxisType.Auto,)``: since jax 0.7,
    ``make_mesh`` defaults to *explicit* axes, under which shardings become part of the
    array types and ``jit`` demands explicit sharding annotations. With ``Auto`` a plain
    ``jax.jit`` step fed :class:`NamedSharding` inputs lets the compiler propagate
    shardings (the classic GSPMD behaviour the trainers rely on).

    >>> mesh = make_mesh()
    >>> mesh.axis_names, mesh.size == jax.device_count(), mesh.axis_types
    (('data',), True, (Auto,))
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading axis over ``'data'`` (other axes whole).

    >>> data_sharding(make_mesh()).spec
    P('data',)
    """
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``.

    >>> replicated(make_mesh()).spec
    P()
    """
    return NamedSharding(mesh, PartitionSpec())


def global_batch_size(per_device: int, mesh: Mesh) -> int:
    """The global batch for ``per_device`` rows on each device of ``mesh``.

    >>> global_batch_size(8, make_mesh()) == 8 * jax.device_count()
    True
    """
    if per_device < 1:
        raise ValueError(f"per_device must be >= 1, got {per_device}")
    return per_device * mesh.size


def round_up_batch(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the number of devices in ``mesh`` that is >= ``batch_size``.

    Use it for a global batch size given by the user (the paper's 8) so that every device
    gets the same number of rows; the extra rows are padding (:func:`pad_batch`).

    >>> n = make_mesh().size
    >>> round_up_batch(1, make_mesh()) == n, round_up_batch(8 * n, make_mesh()) == 8 * n
    (True, True)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(batch_size / mesh.size) * mesh.size


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pads every array's leading axis to ``size`` with zeros; mask True for the real rows.

    Zeros (not copies of a real row) so that padding is inert in sums and obviously fake
    when inspected; the mask is what keeps it out of losses and metrics. All arrays must
    have the same number of rows ``n <= size``; dtypes are kept (bool pads with False).

    >>> import numpy as np
    >>> b, mask = pad_batch({"x": np.array([[1, 2], [3, 4]]), "y": np.array([True, True])}, 3)
    >>> b["x"].tolist(), b["y"].tolist(), mask.tolist()
    ([[1, 2], [3, 4], [0, 0]], [True, True, False], [True, True, False])
    """
    arrays = {k: np.asarray(v) for k, v in batch.items()}
    rows = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if any(r is None for r in rows.values()):
        raise ValueError(f"every array needs a leading batch axis; got scalars for {[k for k, r in rows.items() if r is None]}")
    if len(set(rows.values())) > 1:
        raise ValueError(f"arrays disagree on the number of rows: {rows}")
    n = next(iter(rows.values()), 0)
    if size < n:
        raise ValueError(f"size {size} is smaller than the batch ({n} rows)")
    padded = {}
    for k, v in arrays.items():
        out = np.zeros((size,) + v.shape[1:], dtype=v.dtype)
        out[:n] = v
        padded[k] = out
    mask = np.zeros((size,), dtype=bool)
    mask[:n] = True
    return padded, mask


def process_slice(n_global: int, process_index: int, process_count: int) -> slice:
    """The contiguous rows of a global batch of ``n_global`` that process ``process_index`` loads.

    ``n_global`` must be divisible by ``process_count`` (pad first with
    :func:`round_up_batch`, which rounds to a multiple of the device count and hence of
    the process count when every process has the same number of devices).

    >>> process_slice(8, 1, 2)
    slice(4, 8, None)
    >>> process_slice(8, 0, 1)
    slice(0, 8, None)
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index {process_index} for process_count {process_count}")
    if n_global % process_count:
        raise ValueError(f"global batch {n_global} is not divisible by {process_count} processes")
    per = n_global // process_count
    return slice(process_index * per, (process_index + 1) * per)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (a pytree of arrays) as global ``jax.Array`` sharded along axis 0.

    Each process passes its *local* rows (``batch[process_slice(...)]`` of the global
    batch); ``jax.make_array_from_process_local_data`` assembles the global arrays, whose
    leading axis is ``process_count`` times the local one. The local leading axis must be
    divisible by the number of this process's devices in ``mesh``.

    >>> import numpy as np
    >>> n = make_mesh().size
    >>> out = shard_batch({"x": np.arange(2.0 * n)}, make_mesh())
    >>> float(out["x"].sum()) == float(np.arange(2.0 * n).sum())
    True
    """
    sharding = data_sharding(mesh)
    local_devices = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())

    def place(x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"leading axis of shape {x.shape} must be divisible by the {local_devices} local devices "
                "(pad with pad_batch(batch, round_up_batch(n, mesh)))"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts every leaf of ``tree`` on every device of ``mesh`` (replicated sharding).

    Host values and fully addressable arrays must be equal on all processes (parameters
    initialised from the same seed are). Typed PRNG keys stay typed keys.

    >>> import jax.numpy as jnp
    >>> out = replicate({"w": jnp.ones(3), "step": 0}, make_mesh())
    >>> out["w"].sharding.spec, int(out["step"])
    (P(), 0)
    """
    sharding = replicated(mesh)
    single = jax.process_count() == 1

    def place(x: Any) -> jax.Array:
        if isinstance(x, jax.Array):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                impl = jax.random.key_impl(x)
                return jax.random.wrap_key_data(place(jax.random.key_data(x)), impl=impl)
            if single or not x.is_fully_addressable:
                return jax.device_put(x, sharding)
        elif single:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, host, host.shape)

    return jax.tree.map(place, tree)


def initialize_distributed(
    coordinator_address: str | None,
    num_processes: int,
    process_id: int,
    *,
    cpu_collectives: str | None = "gloo",
) -> None:
    """Joins this process to a multi-process JAX job; a no-op when ``num_processes <= 1``.

    Call it before anything else touches a device (``jax.devices()`` included). For
    ``num_processes > 1`` it sets ``jax_cpu_collectives_implementation`` to
    ``cpu_collectives`` (``"gloo"``: cross-process all-reduce on CPU; without it CPU
    processes cannot communicate) and calls ``jax.distributed.initialize``. The option
    only concerns the CPU client, so it is set unconditionally rather than by probing the
    backend, which would initialise it too early; on GPU/TPU it has no effect. Pass
    ``cpu_collectives=None`` to leave the setting alone. ``coordinator_address`` is
    ``"host:port"`` of process 0; ``None`` lets JAX auto-detect a cluster (SLURM, TPU).

    >>> initialize_distributed(None, 1, 0)  # single process: nothing happens
    """
    if num_processes <= 1:
        return
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, reports and plots).

    Checkpoints are *not* gated on it: every process must take part in a save.

    >>> is_main_process()
    True
    """
    return jax.process_index() == 0


def force_host_devices(n: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment (a copy of ``env`` or ``os.environ``) whose XLA_FLAGS fake ``n`` CPU devices.

    For tests and CPU experiments: must be set before jax initialises its backend, so use
    it for a subprocess's environment.

    >>> force_host_devices(4, {})["XLA_FLAGS"]
    '--xla_force_host_platform_device_count=4'
    """
    out = dict(os.environ if env is None else env)
    flags = [f for f in out.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    out["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    return out


def round_up(batch_size: int, multiple: int) -> int:
  """``batch_size`` rounded up to a multiple of ``multiple`` (e.g. the number of devices).

  >>> round_up(10, 4)
  12
  """
  multiple = max(1, int(multiple))
  return -(-int(batch_size) // multiple) * multiple


def process_local(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's slice of a global host batch (the whole batch in a single-process run).

  Every process builds the same global batch from the run's seed and feeds only its slice to
  ``shard_batch`` (``jax.make_array_from_process_local_data``).
  """
  if jax.process_count() == 1:
    return dict(batch)
  out = {}
  for k, v in batch.items():
    out[k] = v[process_slice(len(v), jax.process_index(), jax.process_count())]
  return out


def sync(name: str) -> None:
  """A barrier across processes (no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """Host numpy copies of every leaf, gathered from all processes when a leaf spans several.

  In a single process (or for replicated/addressable arrays) this is ``jax.device_get``; an
  array sharded over other processes' devices is assembled with ``process_allgather`` (every
  process must call it, with the same arrays).

  >>> import numpy as np
  >>> to_host({"x": shard_batch({"x": np.arange(2.0 * make_mesh().size)}, make_mesh())["x"]})["x"].shape[0] == 2 * jax.device_count()
  True
  """
  def fetch(x: Any) -> Any:
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)
