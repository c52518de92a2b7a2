"""Atomic, resumable checkpoints: a thin wrapper over orbax's ``CheckpointManager``.

A checkpoint at step ``s`` is the directory ``<directory>/<s>/`` with two items:

* ``state``: any pytree of arrays and scalars, e.g. a flax ``TrainState`` holding params,
  optax optimiser state (namedtuples such as ``ScaleByAdamState``), ``batch_stats``, an
  integer step and a PRNG key;
* ``meta``: a JSON dict (epoch, data-order seed, metrics, ...). numpy / jax values in it
  are converted to plain Python (arrays become lists).

Atomicity: orbax writes a step into ``<s>.orbax-checkpoint-tmp*`` and renames it to
``<s>`` only when every item (and every process) has finished, so a crash mid-save
leaves the previous checkpoints untouched and the half-written directory is never
listed as a step; leftovers are removed when the next :class:`Checkpointer` opens the
directory. Saves are asynchronous (the device-to-host copy happens inside
:meth:`Checkpointer.save`, the writing in a background thread, so the caller may donate
or overwrite the state right after); :meth:`Checkpointer.wait` blocks until it is on
disk, and :meth:`Checkpointer.restore` waits first.

Multi-process: every process calls ``save`` and ``restore`` with its (global) arrays;
orbax writes each shard once and synchronises the processes. Do not gate saves on
process 0.

Typed PRNG keys (``jax.random.key``): saved as their ``jax.random.key_data`` (uint32) and
wrapped back with the key implementation of the corresponding leaf of the ``target``
template; without a template they come back as raw uint32 key data. (Raw ``uint32``
keys from ``jax.random.PRNGKey`` need nothing special.)

>>> import tempfile, jax, jax.numpy as jnp
>>> ckpt = Checkpointer(tempfile.mkdtemp())
>>> state = {"w": jnp.arange(3.0), "rng": jax.random.key(0), "step": 7}
>>> ckpt.save(7, state, {"epoch": 1})
>>> ckpt.latest_step()
7
>>> restored, meta = ckpt.restore(target=state)
>>> restored["w"].tolist(), restored["step"], meta
([0.0, 1.0, 2.0], 7, {'epoch': 1})
>>> bool(jnp.all(jax.random.key_data(restored["rng"]) == jax.random.key_data(state["rng"])))
True
>>> ckpt.close()
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointMismatchError"]

_STATE = "state"
_META = "meta"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tree structure or array shapes differ from the state it is restored into.

    Its message is one line naming the checkpoint's directory and the first array path that is
    missing on one side or has another shape (read from the checkpoint's metadata before any
    array is read).
    """


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(restored: Any, target: Any) -> Any:
    def wrap(template: Any, value: Any) -> Any:
        if _is_key(template):
            return jax.random.wrap_key_data(value, impl=jax.random.key_impl(template))
        return value

    return jax.tree.map(wrap, target, restored)


def _abstract(x: Any) -> Any:
    """The restore template of one leaf: shape, dtype and sharding; scalars stay scalars."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return ocp.utils.to_shape_dtype_struct(x)


def _jsonable(value: Any) -> Any:
    """``value`` with numpy / jax leaves turned into plain Python for ``json``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if _is_key(value):
        return np.asarray(jax.random.key_data(value)).tolist()
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    return value


class Checkpointer:
    """Saves and restores ``(state, meta)`` at integer steps under ``directory``.

    Args:
      directory: where the step directories live (created if missing; made absolute).
      max_to_keep: how many of the newest checkpoints to keep (``None``: all).
      async_save: write in a background thread (default) or block in :meth:`save`.

    >>> import tempfile, jax.numpy as jnp
    >>> with Checkpointer(tempfile.mkdtemp(), max_to_keep=2) as ckpt:
    ...     for step in (1, 2, 3):
    ...         ckpt.save(step, {"x": jnp.full(2, float(step))}, {"step": step})
    ...     ckpt.wait()
    ...     ckpt.all_steps(), ckpt.restore(2)[0]["x"].tolist()
    ([2, 3], [2.0, 2.0])
    """

    def __init__(self, directory: str | os.PathLike[str], max_to_keep: int | None = 2, *, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        # Handlers named up front (not only through the save/restore args), so that a fresh
        # manager can read a step's metadata before restoring it (_first_mismatch).
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Starts saving ``state`` (a pytree) and ``meta`` (a JSON dict) as checkpoint ``step``.

        Returns once the arrays are copied to host memory; the files are written in the
        background (see :meth:`wait`). Every process of a multi-process job must call it.
        Saving an existing step raises (orbax's ``StepAlreadyExistsError``).
        """
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(_keys_to_data(state)),
                _META: ocp.args.JsonSave(_jsonable(dict(meta or {}))),
            }
        )
        self._manager.save(int(step), args=args, force=True)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)`` of ``step`` (default: the latest).

        With ``target`` (a pytree like the saved state, e.g. a freshly initialised
        ``TrainState``, made of arrays, ``jax.ShapeDtypeStruct`` or scalars) the state
        comes back with the target's tree structure (namedtuples, dataclasses), dtypes and
        shardings, and typed PRNG keys are re-wrapped. Without it, orbax returns nested
        dicts/lists of arrays. Raises ``FileNotFoundError`` when there is no checkpoint and
        :class:`CheckpointMismatchError` when the saved state does not fit ``target``.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if target is None:
            state_args = ocp.args.StandardRestore()
        else:
            abstract = jax.tree.map(_abstract, _keys_to_data(target))
            problem = self._first_mismatch(int(step), abstract)
            if problem:
                raise self._mismatch(int(step), problem)
            state_args = ocp.args.StandardRestore(abstract)
        restored = self._manager.restore(
            int(step), args=ocp.args.Composite(**{_STATE: state_args, _META: ocp.args.JsonRestore()})
        )
        state = restored[_STATE]
        if target is not None:
            state = _data_to_keys(state, target)
        return state, dict(restored[_META] or {})

    def _first_mismatch(self, step: int, abstract: Any) -> str | None:
        """The first array path whose presence or shape differs between the saved state and
        ``abstract``, from the checkpoint's metadata (no array is read); None when they agree or
        the metadata cannot be read (orbax's restore then finds any mismatch itself)."""
        def flat(tree: Any) -> dict[str, Any]:  # paths tell a list index from a dict key
            leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
            return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}

        try:
            saved = flat(self._manager.item_metadata(step)[_STATE].tree)
        except Exception:  # noqa: BLE001 -- no usable metadata: leave the check to the restore
            return None
        wanted = flat(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
        for key in sorted(set(saved) | set(wanted)):
            if key not in saved:
                return f"{key}: in this run's state, not in the checkpoint"
            if key not in wanted:
                return f"{key}: in the checkpoint, not in this run's state"
            have, want = tuple(getattr(saved[key], "shape", ())), tuple(np.shape(wanted[key]))
            if have != want:
                return f"{key}: saved with shape {have}, this run's is {want}"
        return None

    def _mismatch(self, step: int, problem: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"{os.path.join(str(self.directory), str(step))}: the checkpoint does not fit this "
            f"run's state ({problem}); it was saved with other settings (model sizes, "
            "--image_size, --representation_lr_scale, ...): rerun with the settings it was "
            f"trained with, or delete {self.directory} to train this stage afresh")

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
