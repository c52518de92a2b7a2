"""Per-module learning rates: ``trainer.make_optimizer(lr_scales=)`` and the ranker's use of it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camera_jax.training import checkpoint as ckpt_lib
from camera_jax.training import ranker
from camera_jax.training import trainer
from conftest import ranker_cfg as _cfg, ranker_tables as _tables


def test_first_adam_step_is_lr_times_the_scale_of_each_subtree():
  """Adam's first update is -lr * g / (|g| + eps) = -lr * sign(g) for |g| >> eps."""
  params = {"psi": {"w": jnp.ones(3)}, "phi": {"w": jnp.ones(2)}}
  grads = {"psi": {"w": jnp.array([2.0, -3.0, 0.5])}, "phi": {"w": jnp.array([-1.0, 4.0])}}
  tx = trainer.make_optimizer(0.01, 0.5, 10, lr_scales={"psi": 0.1, "missing": 3.0})
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["psi"]["w"], [-0.001, 0.001, -0.001], rtol=1e-5)
  np.testing.assert_allclose(updates["phi"]["w"], [0.01, -0.01], rtol=1e-5)


def test_unit_scales_give_plain_adam():
  params = {"psi": {"w": jnp.ones(3)}}
  plain = optax.adam(trainer.learning_rate_schedule(1e-3, 0.95, 10)).init(params)
  for scales in (None, {}, {"psi": 1.0}):
    state = trainer.make_optimizer(1e-3, 0.95, 10, lr_scales=scales).init(params)
    assert jax.tree.structure(state) == jax.tree.structure(plain)


def test_guarded_adam_is_optax_adam_bit_for_bit():
  """trainer.adam with ok=True: optax.adam's numbers and state, step after step, jitted."""
  rng = np.random.default_rng(0)
  params = {"k": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(32), jnp.float32)}
  schedule = trainer.learning_rate_schedule(1e-2, 0.5, 3)
  ours, ref = trainer.adam(schedule), optax.adam(schedule)
  jax.tree.map(np.testing.assert_array_equal, ours.init(params), ref.init(params))
  step_ours = jax.jit(lambda g, s, p: ours.update(g, s, p, ok=jnp.array(True)))
  step_ref = jax.jit(ref.update)
  s_ours, s_ref = ours.init(params), ref.init(params)
  for i in range(7):
    g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 10.0 ** (i - 3),
                                           jnp.float32), params)
    u_ours, s_ours = step_ours(g, s_ours, params)
    u_ref, s_ref = step_ref(g, s_ref, params)
    jax.tree.map(np.testing.assert_array_equal, u_ours, u_ref)
    jax.tree.map(np.testing.assert_array_equal, s_ours, s_ref)
  assert int(s_ours[1].count) == 7


def test_guarded_adam_skips_per_group_with_scales():
  """ok=False reaches every group of the lr_scales optimizer: no update, no count, no moment."""
  params = {"psi": {"w": jnp.ones(3)}, "phi": {"w": jnp.ones(2)}}
  grads = {"psi": {"w": jnp.array([2.0, jnp.nan, 0.5])}, "phi": {"w": jnp.array([-1.0, 4.0])}}
  tx = trainer.make_optimizer(0.01, 0.5, 10, lr_scales={"psi": 0.1})
  state = tx.init(params)
  updates, new = tx.update(grads, state, params, ok=jnp.array(False))
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
  jax.tree.map(np.testing.assert_array_equal, new, state)
  updates, new = tx.update(grads, state, params)          # ok defaults to True
  assert np.isnan(updates["psi"]["w"][1]) and float(updates["phi"]["w"][0]) > 0


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_ranker_checkpoint_restores_with_its_optimizer(scale, tmp_path):
  """restore_params rebuilds the same optimizer state layout the training run saved."""
  cfg = _cfg(representation_lr_scale=scale)
  tables = _tables()
  params = ranker.init_params(cfg, tables, jax.random.PRNGKey(1))
  assert set(ranker.REPRESENTATION_PARAMS) <= set(params)
  tx = ranker.make_optimizer(cfg, 5)
  state = trainer.TrainState.create(apply_fn=None, params=params, tx=tx)
  grads = jax.tree.map(jnp.ones_like, params)
  state = state.apply_gradients(grads=grads)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, params)
  assert moved["psi"]["dense0"]["kernel"] == pytest.approx(1e-3 * scale, rel=1e-3)
  assert moved["phi_followers"]["w1"] == pytest.approx(1e-3, rel=1e-3)
  with ckpt_lib.Checkpointer(tmp_path / "ranker") as ck:
    ck.save(1, jax.device_get(state), {"epoch": 1})
    ck.wait()
  got = ranker.restore_params(cfg, tables, tmp_path / "ranker")
  jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(state.params))


def test_l1_penalty_covers_every_weight_matrix_of_the_ranker_and_no_bias():
  """The phi score MLPs' W_1, W_2 (eq. 12-16, named w1/w2) are weight matrices too."""
  params = ranker.init_params(_cfg(), _tables(), jax.random.PRNGKey(0))
  grads = jax.grad(trainer.l1_penalty)(params)
  names = []
  for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads)):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    names.append(name)
    want = np.sign(w) if w.ndim >= 2 else np.zeros_like(w)
    np.testing.assert_array_equal(g, want, err_msg=name)
  assert {"phi_ed_brand/w1", "phi_ed_brand/w2", "phi_followers/w1"} <= set(names), names
  assert float(trainer.l1_penalty(params)) == pytest.approx(
      sum(float(np.abs(w).sum()) for w in jax.tree.leaves(params) if w.ndim >= 2), rel=1e-5)
