"""Matmul precision (camera_jax.models.precision) and XLA compiler options (image steps, GPU
determinism)."""

import ast
import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.models import precision
from camera_jax.training import compiler_options
from camera_jax.training import ranker
from camera_jax.training import sharding
from camera_jax.training import trainer
from conftest import REPO
from conftest import ranker_cfg as _cfg, ranker_tables as _tables


def _bf16_exact(shape, seed):
  """Random float32 values that bfloat16 represents exactly (8 significant bits)."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("m,k", [(5, 8), (5, 6), (6, 5), (8, 5), (12, 7), (7, 5)])
def test_materialized_transpose_is_the_transpose(m, k):
  # every branch: columns split by 4 or 2; rows split by 8, 4 or 2; both odd (plain)
  x = np.arange(m * k, dtype=np.float32).reshape(m, k)
  np.testing.assert_array_equal(jax.jit(precision.materialized_transpose)(x), x.T)


@pytest.mark.parametrize("transpose_w", [False, True])
def test_bf16_matmul_and_its_gradients_on_bf16_exact_inputs_equal_float32(transpose_w):
  # operands that bfloat16 holds exactly, accumulated in float32: the product and both
  # gradients (whose cotangent is cast to bfloat16 too: make it exact as well) equal float32's
  x, w = _bf16_exact((12, 5), 0), _bf16_exact((3, 5) if transpose_w else (5, 3), 1)
  c = _bf16_exact((12, 3), 2)

  def loss(mm):
    return lambda x, w: jnp.sum(mm(x, w) * c)

  def f32(x, w):
    return jnp.dot(x, w.T if transpose_w else w, precision="highest")

  def bf16(x, w):
    return precision.matmul(x, w, jnp.bfloat16, transpose_w=transpose_w)

  out = jax.jit(bf16)(x, w)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, f32(x, w), rtol=1e-6, atol=1e-6)
  g_want = jax.grad(loss(f32), argnums=(0, 1))(x, w)
  g_got = jax.jit(jax.grad(loss(bf16), argnums=(0, 1)))(x, w)
  for got, want in zip(g_got, g_want):
    assert got.dtype == jnp.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_feature_major_matmul_and_its_gradients_by_hand():
  # integer-valued inputs: every product and sum is exact in float32, so the three dots of the
  # feature-major layout must equal numpy's row-major x w, (x w)^T-cotangent gradients exactly
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, (6, 5)).astype(np.float32)              # [rows, k]
  w = rng.integers(-3, 4, (5, 3)).astype(np.float32)              # [k, n]
  c = rng.integers(-3, 4, (6, 3)).astype(np.float32)              # cotangent of x w
  y_t = jax.jit(precision.feature_major_matmul)(x.T, w)
  np.testing.assert_array_equal(y_t, (x @ w).T)
  dx_t, dw = jax.jit(jax.grad(lambda a, b: jnp.sum(precision.feature_major_matmul(a, b) * c.T),
                              argnums=(0, 1)))(x.T, w)
  np.testing.assert_array_equal(dx_t, (c @ w.T).T)
  np.testing.assert_array_equal(dw, x.T @ c)
  # constant_inputs=2: the first 2 input features get no gradient, the rest and dw are unchanged
  dx_t, dw = jax.jit(jax.grad(lambda a, b: jnp.sum(precision.feature_major_matmul(a, b, 2) * c.T),
                              argnums=(0, 1)))(x.T, w)
  np.testing.assert_array_equal(dx_t[:2], 0.0)
  np.testing.assert_array_equal(dx_t[2:], (c @ w.T).T[2:])
  np.testing.assert_array_equal(dw, x.T @ c)


def test_feature_major_product_and_its_gradients_by_hand():
  # a [n, k] in rows times feature-major x_t [k, rows]; integer inputs, so exact
  rng = np.random.default_rng(1)
  a = rng.integers(-3, 4, (4, 5)).astype(np.float32)
  x_t = rng.integers(-3, 4, (5, 6)).astype(np.float32)
  c = rng.integers(-3, 4, (4, 6)).astype(np.float32)              # cotangent of a x_t
  np.testing.assert_array_equal(jax.jit(precision.feature_major_product)(a, x_t), a @ x_t)
  da, dx_t = jax.jit(jax.grad(lambda p, q: jnp.sum(precision.feature_major_product(p, q) * c),
                              argnums=(0, 1)))(a, x_t)
  np.testing.assert_array_equal(da, c @ x_t.T)
  np.testing.assert_array_equal(dx_t, a.T @ c)


def test_bf16_matmul_rounds_its_operands_to_bfloat16():
  # 1 + 2^-10 is not a bfloat16 (8 significant bits): it rounds to 1, so the product is 3, not
  # 3 + 3 * 2^-10; float32 keeps it
  x = jnp.full((2, 3), 1.0 + 2.0 ** -10, jnp.float32)
  w = jnp.ones((3, 1), jnp.float32)
  np.testing.assert_array_equal(precision.matmul(x, w, jnp.bfloat16), 3.0)
  np.testing.assert_allclose(precision.matmul(x, w, jnp.float32), 3.0 + 3 * 2.0 ** -10, rtol=1e-7)


def test_matmul_keeps_leading_axes_and_float32_is_plain_dot():
  x, w = _bf16_exact((2, 3, 4), 0), _bf16_exact((4, 5), 1)
  np.testing.assert_array_equal(precision.matmul(x, w), jnp.dot(x, w))
  want = jnp.dot(x, w, precision="highest")
  got = precision.matmul(x, w, jnp.bfloat16)
  assert got.shape == (2, 3, 5) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(precision.matmul(x, w.T, jnp.bfloat16, transpose_w=True), want,
                             rtol=1e-6, atol=1e-6)
  # the weight gradient sums over every leading axis: that of a [2, 3, k] input equals that of
  # its [6, k] reshape
  c = _bf16_exact((2, 3, 5), 2)
  gw = jax.grad(lambda w: jnp.sum(precision.matmul(x, w, jnp.bfloat16) * c))(w)
  gw2 = jax.grad(lambda w: jnp.sum(precision.matmul(x.reshape(6, 4), w, jnp.bfloat16)
                                   * c.reshape(6, 5)))(w)
  np.testing.assert_allclose(gw, gw2, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(gw, jnp.einsum("abk,abn->kn", x, c, precision="highest"),
                             rtol=1e-6, atol=1e-6)
  assert precision.dense_dot_general(jnp.float32) is jax.lax.dot_general


@pytest.mark.parametrize("shape", [(2, 3, 8), (2, 3, 5), (4, 3, 5), (3, 3, 5), (6, 7)])
def test_materialized_transpose_moves_the_last_axis_first(shape):
  x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  np.testing.assert_array_equal(jax.jit(precision.materialized_transpose)(x),
                                np.moveaxis(x, -1, 0))


def test_only_float32_and_bfloat16_are_matmul_dtypes():
  from camera_jax.models import history_pooling
  with pytest.raises(ValueError, match="float16: must be one of float32, bfloat16"):
    precision.matmul(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.float16)
  with pytest.raises(ValueError, match="must be one of"):
    precision.dense_dot_general("float64")
  cfg = dataclasses.replace(_cfg(), matmul_dtype="bfloat16")
  assert ranker.make_model(cfg).dtype == jnp.bfloat16
  assert history_pooling.make_hp_model(cfg).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="eval_chunk must be >= 1"):
    ranker.catalogue_chunk(100, 0)


def test_dense_dot_general_rejects_what_it_does_not_implement():
  dg = precision.dense_dot_general(jnp.bfloat16)
  with pytest.raises(ValueError, match="unsupported dimension numbers"):
    dg(jnp.ones((2, 3)), jnp.ones((2, 4)), (((0,), (0,)), ((), ())))


def test_bf16_ranker_trains_and_scores_close_to_float32():
  # the train step at matmul_dtype=bfloat16 (both rho paths) runs under jit, lowers the loss
  # like the float32 step, and its catalogue scores stay close to float32's
  t = _tables(n_accounts=60)
  mesh = sharding.make_mesh()
  dev = t.device(mesh)
  rng = np.random.default_rng(0)
  batches = []
  for b in (64, 2):   # the table path, and the row path (2 x 3 x K rows <= n = 30)
    host = {"brand": rng.integers(0, 10, b).astype(np.int32),
            "pos": rng.integers(10, 60, b).astype(np.int32),
            "neg": rng.integers(10, 60, (b, 1)).astype(np.int32),
            "ed_obs": np.zeros(b, np.float32), "mask": np.ones(b, bool)}
    batches.append(sharding.shard_batch(host, mesh))
  losses, trained = {}, {}
  for dtype in ("float32", "bfloat16"):
    cfg = dataclasses.replace(_cfg(), matmul_dtype=dtype, dropout=0.0, l1=0.0, learning_rate=1e-2,
                              loss_hparams=(("margin", 1.0),))
    params = ranker.init_params(cfg, t, jax.random.PRNGKey(0))
    state = trainer.TrainState.create(apply_fn=None, params=params,
                                      tx=ranker.make_optimizer(cfg, 10))
    step = ranker.make_train_step(cfg)
    hist = []
    for i in range(16):
      state, metrics = step(state, batches[i % 2], dev, jax.random.PRNGKey(i))
      hist.append(float(metrics["loss"]) / (64 if i % 2 == 0 else 2))
    losses[dtype] = np.array(hist)
    trained[dtype] = state.params
    assert np.all(np.isfinite(hist))
  # bfloat16 is wired in: the two precisions trained different parameters
  k32 = trained["float32"]["gamma_mlp"]["dense1"]["kernel"]
  k16 = trained["bfloat16"]["gamma_mlp"]["dense1"]["kernel"]
  assert not np.array_equal(k32, k16)
  for dtype, hist in losses.items():   # the fixed 64-row batch's loss goes down
    assert hist[-2] < hist[0] - 1e-3, (dtype, hist)
  # the same first step in both precisions (bfloat16 operands: close, not equal)
  np.testing.assert_allclose(losses["bfloat16"][:2], losses["float32"][:2], rtol=0.02)
  # catalogue scoring of the trained float32 params in both precisions
  brand, infl = rng.integers(0, 10, 200), rng.integers(10, 60, 200)
  cfg32 = dataclasses.replace(_cfg(), dropout=0.0)
  params = trained["float32"]
  s32 = ranker.score_pairs(cfg32, params, t, brand, infl, keys=("S",))["S"]
  s16 = ranker.score_pairs(dataclasses.replace(cfg32, matmul_dtype="bfloat16"), params, t,
                           brand, infl, keys=("S",))["S"]
  assert s16.dtype == np.float32 and not np.array_equal(s16, s32)
  np.testing.assert_allclose(s16, s32, atol=0.05 * float(np.max(np.abs(s32))))


def test_image_step_options_on_cpu_and_elsewhere():
  assert compiler_options.image_step_options("gpu") is None
  opts = compiler_options.image_step_options("cpu")
  # this jaxlib accepts the option (the development and CI stack); another may not: then None
  assert opts in (None, compiler_options.CPU_IMAGE_STEP)
  if jax.__version__.startswith("0.10."):
    assert opts == compiler_options.CPU_IMAGE_STEP
  bad = (("xla_cpu_experimental_ynn_fusion_type", "NOT_A_TYPE"),)
  assert compiler_options._accepted(bad) is False
  assert compiler_options.ranker_step_options("gpu") is None
  opts = compiler_options.ranker_step_options("cpu")
  assert opts in (None, compiler_options.CPU_RANKER_STEP)
  if jax.__version__.startswith("0.10."):
    assert opts == {"xla_cpu_prefer_vector_width": 512}


def test_deterministic_gpu_ops_are_added_once_and_a_users_setting_is_kept():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  compiler_options.use_deterministic_gpu_ops(env)
  compiler_options.use_deterministic_gpu_ops(env)
  assert env == {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"}
  env = {}
  compiler_options.use_deterministic_gpu_ops(env)
  assert env == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}
  for own in ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops"):
    env = {"XLA_FLAGS": own}
    compiler_options.use_deterministic_gpu_ops(env)
    assert env == {"XLA_FLAGS": own}


def test_this_jaxlib_accepts_the_determinism_flag():
  """XLA aborts a process whose XLA_FLAGS name a flag it does not know: every experiment sets
  this one, so a jaxlib without it would stop them all."""
  env = dict(os.environ)
  compiler_options.use_deterministic_gpu_ops(env)
  assert "--xla_gpu_deterministic_ops=true" in env["XLA_FLAGS"].split()
  proc = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()))"],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "6.0"


def test_every_experiment_starts_through_cli_run():
  """Each entry point's ``main`` is started by ``_cli.run`` (GPU determinism on), none by
  ``app.run`` directly."""
  mains = 0
  for path in sorted((REPO / "experiments").glob("*.py")):
    if path.name.startswith("_"):
      continue
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert "app.run" not in calls, path.name
    assert "_cli.run" in calls, path.name
    mains += 1
  assert mains == 9   # train, evaluate, paper_tables, search, search_eval, recommend, report, validate, synthetic


def test_bf16_keeps_the_batch_sharded_on_four_devices():
  """bf16 matmuls never merge a sharded batch axis with an unsharded one.

  Gamma's input is [2, B, M, d] with B sharded; flattening it to rows made XLA gather the whole
  batch on every device (two more all-gathers in the train step than float32's). The compiled
  bfloat16 train step must have exactly the float32 step's all-gathers, and the catalogue call
  none.
  """
  script = textwrap.dedent("""
      import dataclasses, re, sys
      import jax, numpy as np
      sys.path.insert(0, "tests")
      from conftest import ranker_cfg as _cfg, ranker_tables as _tables
      from camera_jax.training import ranker, sharding, trainer
      assert jax.device_count() == 4
      mesh = sharding.make_mesh()
      t = _tables(n_accounts=60)
      dev = t.device(mesh)
      rng = np.random.default_rng(0)
      host = {"brand": rng.integers(0, 10, 64).astype(np.int32),
              "pos": rng.integers(10, 60, 64).astype(np.int32),
              "neg": rng.integers(10, 60, (64, 1)).astype(np.int32),
              "ed_obs": np.zeros(64, np.float32), "mask": np.ones(64, bool)}
      batch = sharding.shard_batch(host, mesh)
      for dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(_cfg(), matmul_dtype=dtype)
        params = ranker.init_params(cfg, t, jax.random.PRNGKey(0))
        state = sharding.replicate(trainer.TrainState.create(
            apply_fn=None, params=params, tx=ranker.make_optimizer(cfg, 10)), mesh)
        key = sharding.replicate(jax.random.PRNGKey(1), mesh)
        step = ranker.make_train_step(cfg)
        hlo = step.lower(state, batch, dev, key).compile().as_text()
        scorer = ranker.make_score_fn(cfg)
        rp = sharding.replicate(params, mesh)
        parts = scorer.concept_parts(rp, dev)
        rows = sharding.replicate(np.arange(64, dtype=np.int32), mesh)
        enc = scorer.account_parts(rp, dev, rows, parts["rho"])
        z = sharding.shard_batch({"z": np.zeros(64, np.int32)}, mesh)["z"]
        cat = scorer.pair_scores.lower(rp, enc, parts["r1"], dev, z, z, z, z).compile().as_text()
        state, metrics = step(state, batch, dev, key)
        print(dtype, hlo.count("all-gather"), hlo.count("all-reduce") > 0,
              cat.count("all-gather"), int(metrics["nonfinite"]), float(metrics["loss"]) > 0)
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
  f32, bf16 = lines["float32"].split(), lines["bfloat16"].split()
  assert f32[1:] == bf16[1:] == ["True", "0", "0", "True"], proc.stdout
  # the float32 step's few all-gathers (small index tensors) and no more
  assert bf16[0] == f32[0], proc.stdout
