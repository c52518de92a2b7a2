"""Tests for camera_jax.training.checkpoint.Checkpointer (orbax CheckpointManager wrapper)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from camera_jax.training.checkpoint import CheckpointMismatchError, Checkpointer
from conftest import free_port

REPO = pathlib.Path(__file__).resolve().parents[1]


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(3)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)


class State(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array


def _make_state(seed: int, steps: int) -> State:
    """A TrainState with Adam moments, batch stats, a typed key and `steps` updates applied."""
    net = _Net()
    variables = net.init(jax.random.key(seed), jnp.ones((4, 2)))
    state = State.create(
        apply_fn=net.apply,
        params=variables["params"],
        tx=optax.adam(1e-2),
        batch_stats=variables["batch_stats"],
        rng=jax.random.key(seed + 100),
    )
    x = jnp.arange(8.0).reshape(4, 2) + seed
    for _ in range(steps):

        def loss(params):
            y, upd = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(y**2), upd

        grads, upd = jax.grad(loss, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads).replace(
            batch_stats=upd["batch_stats"], rng=jax.random.split(state.rng)[0]
        )
    return state


def _assert_trees_equal(a: Any, b: Any) -> None:
    # Static fields (apply_fn, tx) come from the restore template: compare paths, not treedefs.
    paths_a, leaves_a = zip(*jax.tree.flatten_with_path(a)[0])
    paths_b, leaves_b = zip(*jax.tree.flatten_with_path(b)[0])
    assert paths_a == paths_b
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_of_a_train_state_with_adam_key_and_batch_stats(tmp_path: pathlib.Path) -> None:
    saved = _make_state(seed=0, steps=3)
    assert saved.step == 3
    mu = saved.opt_state[0].mu["Dense_0"]["kernel"]
    assert float(jnp.abs(mu).sum()) > 0  # real Adam moments, not zeros
    meta = {"epoch": 2, "data_seed": np.int64(11), "metrics": {"loss": np.float32(0.5)}, "rng": jax.random.key(5)}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(3, saved, meta)
        ckpt.wait()
        template = _make_state(seed=1, steps=0)  # same structure, different values
        restored, restored_meta = ckpt.restore(target=template)

    _assert_trees_equal(restored, saved)
    assert isinstance(restored, State)
    assert type(restored.opt_state[0]) is type(saved.opt_state[0])  # ScaleByAdamState namedtuple
    assert type(restored.opt_state[0]).__name__ == "ScaleByAdamState"
    assert int(restored.step) == 3
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    # Keys still behave as keys and give the same stream.
    np.testing.assert_array_equal(jax.random.normal(restored.rng, (3,)), jax.random.normal(saved.rng, (3,)))
    assert restored_meta == {
        "epoch": 2,
        "data_seed": 11,
        "metrics": {"loss": 0.5},
        "rng": np.asarray(jax.random.key_data(jax.random.key(5))).tolist(),
    }
    # The restored state trains on as the saved one would.
    assert restored.apply_gradients(grads=jax.tree.map(jnp.ones_like, restored.params)).step == 4


def test_restore_keeps_the_target_sharding(tmp_path: pathlib.Path) -> None:
    from camera_jax.training.sharding import make_mesh, replicate, replicated

    mesh = make_mesh()
    state = replicate({"w": jnp.arange(4.0), "rng": jax.random.key(2)}, mesh)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, state)
        restored, meta = ckpt.restore(target=state)
    assert meta == {}
    assert restored["w"].sharding == replicated(mesh)
    _assert_trees_equal(restored, state)


def test_restore_without_target_gives_raw_arrays(tmp_path: pathlib.Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(2), "rng": jax.random.key(0)}, {"epoch": 0})
        state, meta = ckpt.restore()
    np.testing.assert_array_equal(np.asarray(state["w"]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(state["rng"]), np.asarray(jax.random.key_data(jax.random.key(0))))
    assert meta == {"epoch": 0}


def test_a_checkpoint_of_other_settings_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    """A state saved with one optimiser layout or shape does not restore into another."""
    from camera_jax.training import trainer

    params = {"psi": {"w": jnp.ones(3)}, "phi": {"w": jnp.ones(2)}}

    def state(p: Any, **kw: Any) -> Any:
        return trainer.TrainState.create(apply_fn=None, params=p, tx=trainer.make_optimizer(1e-3, 0.9, 10, **kw))

    with Checkpointer(tmp_path / "ranker") as ckpt:
        ckpt.save(1, state(params), {"epoch": 1})
        # --representation_lr_scale != 1 makes the optimiser a multi_transform: another tree
        with pytest.raises(CheckpointMismatchError) as tree:
            ckpt.restore(target=state(params, lr_scales={"psi": 0.1}))
        with pytest.raises(CheckpointMismatchError) as shape:
            ckpt.restore(target=state({"psi": {"w": jnp.ones(4)}, "phi": {"w": jnp.ones(2)}}))
        restored, _ = ckpt.restore(target=state(params))  # the same settings still restore
    assert int(restored.step) == 0
    for err in (tree, shape):
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{tmp_path / 'ranker' / '1'}: the checkpoint does not fit")
        assert f"delete {tmp_path / 'ranker'}" in msg
    # found from the checkpoint's metadata, before any array is read
    assert "(['opt_state']['inner_states']" in str(tree.value)
    assert ": in this run's state, not in the checkpoint)" in str(tree.value)
    assert "(['opt_state'][0]['mu']['psi']['w']: saved with shape (3,), this run's is (4,))" in str(shape.value)


def test_other_restore_errors_are_not_called_a_settings_mismatch(tmp_path: pathlib.Path, monkeypatch) -> None:
    """A missing or corrupt file is not a settings change: orbax's error comes through as it is."""
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, state)
        ckpt.wait()

        def broken(*a: Any, **k: Any) -> Any:
            raise ValueError("NOT_FOUND: Error opening \"zarr\" driver: missing chunk")

        monkeypatch.setattr(ckpt._manager, "restore", broken)
        with pytest.raises(ValueError, match="NOT_FOUND") as err:
            ckpt.restore(target=state)
        assert not isinstance(err.value, CheckpointMismatchError)


def test_latest_step_and_max_to_keep(tmp_path: pathlib.Path) -> None:
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError):
            ckpt.restore()
        for step in (10, 20, 30):
            ckpt.save(step, {"x": jnp.full((2,), float(step))}, {"step": step})
        ckpt.wait()
        assert ckpt.latest_step() == 30
        assert ckpt.all_steps() == [20, 30]
        state, meta = ckpt.restore(target={"x": jnp.zeros(2)})
        assert state["x"].tolist() == [30.0, 30.0] and meta == {"step": 30}
        state, meta = ckpt.restore(20, target={"x": jnp.zeros(2)})
        assert state["x"].tolist() == [20.0, 20.0] and meta == {"step": 20}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["20", "30"]
    # A new Checkpointer on the same directory sees the same steps (resume).
    with Checkpointer(tmp_path, max_to_keep=2) as again:
        assert again.latest_step() == 30


def test_save_returns_after_the_host_copy_so_the_state_can_be_donated(tmp_path: pathlib.Path) -> None:
    x = jnp.arange(1000.0) * 2
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"x": x})
        x.delete()  # what donation does to the buffer
        ckpt.wait()
        state, _ = ckpt.restore(target={"x": jax.ShapeDtypeStruct((1000,), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(state["x"]), np.arange(1000.0) * 2)


def test_a_stray_incomplete_tmp_directory_is_ignored(tmp_path: pathlib.Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"x": jnp.ones(2)}, {"epoch": 1})
        ckpt.save(2, {"x": jnp.full(2, 2.0)}, {"epoch": 2})
    # What a crash in the middle of writing step 3 leaves behind.
    stray = tmp_path / "3.orbax-checkpoint-tmp"
    (stray / "state").mkdir(parents=True)
    (stray / "state" / "partial").write_bytes(b"\x00" * 10)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        assert ckpt.all_steps() == [1, 2]
        state, meta = ckpt.restore(target={"x": jnp.zeros(2)})
        assert state["x"].tolist() == [2.0, 2.0] and meta == {"epoch": 2}
        # And step 3 can still be written for real.
        ckpt.save(3, {"x": jnp.full(2, 3.0)}, {"epoch": 3})
        ckpt.wait()
        assert ckpt.latest_step() == 3
        assert ckpt.restore(target={"x": jnp.zeros(2)})[0]["x"].tolist() == [3.0, 3.0]


_CRASH = textwrap.dedent(
    """
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from camera_jax.training.checkpoint import CheckpointMismatchError, Checkpointer

    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(1, {"x": jnp.ones(4)}, {"epoch": 1})
    ckpt.wait()
    if not hasattr(atomicity.AtomicRenameTemporaryPath, "finalize"):
        os._exit(5)

    async def die(self, *args, **kwargs):  # the process is killed after writing, before the rename
        os._exit(3)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    ckpt.save(2, {"x": jnp.full(4, 2.0)}, {"epoch": 2})
    ckpt.wait()
    os._exit(0)
    """
)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_restorable(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 5:
        pytest.skip("this orbax version has no AtomicRenameTemporaryPath.finalize to interrupt")
    assert proc.returncode == 3, proc.stderr[-3000:]
    leftovers = [p.name for p in tmp_path.iterdir() if "tmp" in p.name]
    assert leftovers, "the interrupted save should have left its temporary directory"
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore(target={"x": jnp.zeros(4)})
    assert state["x"].tolist() == [1.0] * 4 and meta == {"epoch": 1}


_WORKER = """
import sys
import numpy as np
from camera_jax.training import sharding as sh

port, pid, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sh.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
import jax, jax.numpy as jnp
from camera_jax.training.checkpoint import CheckpointMismatchError, Checkpointer

mesh = sh.make_mesh()
assert mesh.size == 4
rows = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
state = {
    "sharded": sh.shard_batch(rows[sh.process_slice(8, pid, 2)], mesh),
    "w": sh.replicate(np.array([1.0, -1.0], np.float32), mesh),
    "rng": sh.replicate(jax.random.key(3), mesh),
    "step": 5,
}
with Checkpointer(directory) as ckpt:
    ckpt.save(5, state, {"epoch": 1})          # every process saves
    ckpt.wait()
    template = jax.tree.map(lambda x: x, state)
    restored, meta = ckpt.restore(target=template)
assert meta == {"epoch": 1} and restored["step"] == 5
assert restored["sharded"].sharding == state["sharded"].sharding
assert restored["w"].sharding == state["w"].sharding
for shard in restored["sharded"].addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), rows[shard.index])
assert float(jax.jit(jnp.sum, out_shardings=sh.replicated(mesh))(restored["sharded"])) == float(rows.sum())
np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(jax.random.key(3)))
print(f"OK {pid}", flush=True)
jax.distributed.shutdown()
"""


def test_two_processes_save_and_restore_a_sharded_state(tmp_path: pathlib.Path) -> None:
    from camera_jax.training.sharding import force_host_devices

    port = free_port()
    env = {**force_host_devices(2), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(port), str(pid), str(tmp_path / "ckpt")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the 2-process checkpoint job did not finish within 120 s")
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert [out.strip().splitlines()[-1] for out, _ in outs] == ["OK 0", "OK 1"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith(".")) == ["5"]


def test_resume_on_another_device_count_warns(tmp_path: pathlib.Path, caplog) -> None:
    """A checkpoint's meta records the devices its epoch trained on; resuming it on another count
    is allowed but logged (the result then matches neither count's uninterrupted run)."""
    import logging as py_logging

    from camera_jax.training import trainer
    state = {"x": jnp.zeros(2)}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(3, {"x": jnp.ones(2)}, {"epoch": 3, "loss": 0.5, "devices": 4})
        ckpt.wait()
    log = trainer.TrainLog(None)
    for devices, epochs, warned in ((4, 5, False), (1, 5, True), (None, 5, False), (1, None, True),
                                    (1, 3, False)):   # finished: no step trains on this count
        caplog.clear()
        with caplog.at_level(py_logging.WARNING):
            checkpointer, restored, start = trainer.resume("ranker", state, tmp_path / "ckpt", log,
                                                           devices, epochs)
        checkpointer.close()
        assert start == 3 and restored["x"].tolist() == [1.0, 1.0]
        messages = [r.getMessage() for r in caplog.records if r.levelno >= py_logging.WARNING]
        assert bool(messages) == warned, (devices, epochs, messages)
        if warned:
            assert messages == ["ranker: epoch 3 was trained on 4 devices, this run has 1: the result "
                                "will not be byte-identical to an uninterrupted run on either count "
                                "(docs/workdir.md)"]
