"""Tests for camera_jax.models.visual."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.models import visual


def _count(tree):
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


@pytest.mark.parametrize("side,window", [(8, 2), (9, 2), (7, 3), (9, 3), (5, 1)])
def test_max_pool_equals_valid_max_pool(side, window):
  x = jax.random.normal(jax.random.key(side * 10 + window), (2, side, side + 1, 3))
  want = nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")
  got = visual.max_pool(x, window)
  assert got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(visual.inference_max_pool(x, window)), np.asarray(want))


def test_eval_mode_pools_like_training():
  """The encoder's eval mode (reduce-window pool) equals the training pool with the same stats."""
  enc = visual.VisualEncoder(channels=(4, 4, 4, 4, 4), fc=8)
  x = jax.random.uniform(jax.random.key(7), (3, 24, 24, 3))
  v = enc.init(jax.random.key(0), x, train=False)
  got = enc.apply(v, x, train=False)
  real = visual.inference_max_pool
  try:
    visual.inference_max_pool = visual.max_pool
    want = enc.apply(v, x, train=False)
  finally:
    visual.inference_max_pool = real
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_a_window_larger_than_the_map_is_refused_in_both_modes():
  x = jnp.zeros((1, 2, 5, 1))
  for pool in (visual.max_pool, visual.inference_max_pool):
    with pytest.raises(ValueError, match=r"spatial size \(2, 5\) smaller than window 3"):
      pool(x, 3)


def test_max_pool_hand_values():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  # windows 2x2: maxima are the bottom-right element of each block: 5, 7, 13, 15
  np.testing.assert_array_equal(np.asarray(visual.max_pool(x, 2))[0, :, :, 0], [[5, 7], [13, 15]])
  # window 3 on a 4x4 input crops to 3x3: a single window with max 10
  assert float(visual.max_pool(x, 3)[0, 0, 0, 0]) == 10.0


def test_output_side():
  assert visual.output_side(64, (3, 1, 2, 1, 2)) == 5     # 64 -> 21 -> 10 -> 5
  assert visual.output_side(224, (3, 1, 2, 1, 2)) == 18   # 224 -> 74 -> 37 -> 18


# conv kernels (3*3*c_in*c_out, no bias): 3*32 + 32*64 + 64*64 + 64*128 + 128*128 = 30,816 -> x9
CONV = 9 * (3 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)   # = 277,344
BN = 2 * (32 + 64 + 64 + 128 + 128 + 1024)                         # scale + bias = 2,880


@pytest.mark.parametrize("side,flat", [(64, 5 * 5 * 128), (224, 18 * 18 * 128)])
def test_shapes_and_parameter_count(side, flat):
  enc = visual.VisualEncoder()
  x = jnp.zeros((2, side, side, 3))
  variables = jax.eval_shape(lambda: enc.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: enc.apply(v, x, train=False), variables)
  assert out.shape == (2, 1024)
  assert variables["params"]["fc"]["kernel"].shape == (flat, 1024)
  # 64 px: 277,344 + 2,880 + 3,200 * 1,024 (3,276,800) = 3,557,024
  # 224 px: 277,344 + 2,880 + 41,472 * 1,024 (42,467,328) = 42,747,552
  expected = CONV + BN + flat * 1024
  assert _count(variables["params"]) == expected
  assert _count(variables["batch_stats"]) == BN   # mean + var per BatchNorm channel
  assert CONV == 277_344
  assert {64: 3_557_024, 224: 42_747_552}[side] == expected


def test_batchnorm_train_vs_eval_and_dtype():
  enc = visual.VisualEncoder(channels=(4, 4, 4, 4, 4), fc=8)
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 3))
  v = enc.init(jax.random.key(0), x, train=False)
  y, upd = enc.apply(v, x, train=True, mutable=["batch_stats"])
  assert y.shape == (3, 8)
  before = v["batch_stats"]["bn1"]["mean"]
  after = upd["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(before, after)              # running mean moved
  # eval mode is a pure function of the variables
  a = enc.apply(v, x, train=False)
  b = enc.apply(v, x, train=False)
  np.testing.assert_array_equal(a, b)
  assert enc.apply(v, x, train=False).dtype == jnp.float32
  bf = visual.VisualEncoder(channels=(4, 4, 4, 4, 4), fc=8, dtype=jnp.bfloat16)
  assert bf.apply(v, x, train=False).dtype == jnp.bfloat16


def test_rejects_mismatched_layout():
  with pytest.raises(ValueError):
    visual.VisualEncoder(channels=(4, 4), pools=(2,)).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def test_padding_rows_do_not_change_batch_statistics():
  """A masked last batch (real rows + zero padding) trains exactly like the real rows alone."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from camera_jax.models.visual import VisualEncoder
  enc = VisualEncoder(channels=(4, 4, 4, 4, 4), pools=(3, 1, 2, 1, 2), fc=8)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 24, 24, 3))
  variables = enc.init(jax.random.PRNGKey(0), x, train=False)
  real, stats_real = enc.apply(variables, x, train=True, mutable=["batch_stats"])
  padded = jnp.concatenate([x, jnp.zeros((2, 24, 24, 3))])
  mask = jnp.array([True, True, True, False, False])
  out, stats_pad = enc.apply(variables, padded, train=True, mask=mask, mutable=["batch_stats"])
  np.testing.assert_allclose(out[:3], real, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(stats_real), jax.tree_util.tree_leaves(stats_pad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  _, stats_unmasked = enc.apply(variables, padded, train=True, mutable=["batch_stats"])
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(stats_real),
                                                    jax.tree_util.tree_leaves(stats_unmasked)))


@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (6, 7)])
def test_row_masked_batchnorm_equals_flax_batchnorm(shape):
  """Same outputs, same running statistics and same parameter tree as nn.BatchNorm(mask=...)."""
  x = jax.random.normal(jax.random.PRNGKey(3), shape) * 3.0 + 1.5
  mask = jnp.array([True, False, True, True, False, True])
  ours = visual.RowMaskedBatchNorm(momentum=0.9, epsilon=1e-3)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
  v_ours = ours.init(jax.random.PRNGKey(0), x, train=False)
  v_ref = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v_ref)
  params = {"scale": jnp.linspace(0.5, 2.0, shape[-1]), "bias": jnp.linspace(-1, 1, shape[-1])}
  for m in (mask, None):
    full = None if m is None else jnp.broadcast_to(m.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    y, s = ours.apply({"params": params, "batch_stats": v_ours["batch_stats"]}, x, train=True,
                      mask=m, mutable=["batch_stats"])
    y_ref, s_ref = ref.apply({"params": params, "batch_stats": v_ref["batch_stats"]}, x,
                             mask=full, mutable=["batch_stats"])
    keep = np.ones(shape[0], bool) if m is None else np.asarray(m)
    np.testing.assert_allclose(np.asarray(y)[keep], np.asarray(y_ref)[keep], rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
      np.testing.assert_allclose(s["batch_stats"][key], s_ref["batch_stats"][key], rtol=1e-5)
    # by hand: the statistics of the kept rows only
    flat = np.asarray(x)[keep].reshape(-1, shape[-1])
    np.testing.assert_allclose(s["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0), rtol=1e-5)
  y_eval = ours.apply({"params": params, "batch_stats": v_ours["batch_stats"]}, x, train=False)
  np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-3) * params["scale"] + params["bias"],
                             rtol=1e-5, atol=1e-5)
