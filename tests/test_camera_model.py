"""Tests for camera_jax.models.camera (eq. 5-18 and the CAMERA module)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.models import camera

SMALL = dict(d_hidden=(16, 8), gamma=(16, 16, 8), d_score=4)


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


# -- equations on hand examples ------------------------------------------------------------------


def test_eq5_historical_distribution():
  w = camera.historical_distribution(jnp.array([0.0, math.log(2.0), math.log(3.0)]))
  np.testing.assert_allclose(w, [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)


def test_top_concepts_keeps_raw_weights():
  idx, w = camera.top_concepts(jnp.log(jnp.array([0.1, 0.4, 0.2, 0.3])) + 7.0, k=2)  # z' sums
  np.testing.assert_array_equal(idx, [1, 3])
  np.testing.assert_allclose(w, [0.4, 0.3], rtol=1e-6)  # w_a, not renormalised (sum 0.7)
  assert idx.dtype == jnp.int32
  # top-10 of 20 random distributions, batched
  sums = jax.random.normal(jax.random.key(0), (3, 20))
  w_a = jax.nn.softmax(sums, axis=-1)
  idx, w = camera.top_concepts(sums, k=10)
  assert idx.shape == (3, 10) and w.shape == (3, 10)
  for r in range(3):
    want = np.argsort(-np.asarray(w_a[r]), kind="stable")[:10]
    np.testing.assert_array_equal(idx[r], want)
    np.testing.assert_allclose(w[r], np.asarray(w_a[r])[want])
  assert np.all(np.diff(np.asarray(w), axis=-1) <= 0)
  # ties -> lower index
  np.testing.assert_array_equal(camera.top_concepts(jnp.full((5,), 0.2), k=3)[0], [0, 1, 2])


def test_top_concepts_and_support_survive_float32_underflow_of_w_a():
  """An account whose top concept leads by more than ~87: every other w_a is 0 in float32, yet
  U_a keeps its real secondary concepts (ranked by the sums) and they stay in the BCAM mask."""
  sums = np.zeros(40, np.float32)
  sums[[7, 30, 25, 39]] = [105.0, 6.0, 4.0, 2.0]
  assert np.count_nonzero(np.asarray(camera.historical_distribution(sums)) > 1e-30) == 1
  idx, w = camera.top_concepts(sums, k=6)
  np.testing.assert_array_equal(idx, [7, 30, 25, 39, 0, 1])
  np.testing.assert_allclose(w[0], 1.0)
  np.testing.assert_array_equal(camera.supported_concepts(sums, idx),
                                [True, True, True, True, False, False])
  # log w_a of an older run (a per-row shift, -inf where w_a underflowed): the same support
  with np.errstate(divide="ignore"):
    log_w = np.log(np.asarray([[0.5, 0.3, 0.2, 0.0, 0.0]], np.float32))
  idx, _ = camera.top_concepts(log_w, k=4)
  np.testing.assert_array_equal(idx, [[0, 1, 2, 3]])
  np.testing.assert_array_equal(camera.supported_concepts(log_w, idx), [[True, True, True, False]])


def test_supported_concepts_masks_the_padding_concepts():
  sums = jnp.array([[0.0, 2.5, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])  # 2nd: no posts
  idx, _ = camera.top_concepts(sums, k=3)
  np.testing.assert_array_equal(idx, [[1, 3, 0], [0, 1, 2]])
  np.testing.assert_array_equal(camera.supported_concepts(sums, idx),
                                [[True, True, False], [True, False, False]])


def test_supported_concepts_from_what_the_posts_show():
  """--zprime_mode=faithful: a shown concept whose caption cosine is negative sums below the
  never-shown ones (exp(0) each), so the row minimum is not the padding level; the shown mask
  (h summed per account) is. With masked z' both give the same mask."""
  sums = np.zeros((1, 12), np.float32)
  sums[0, 0], sums[0, 7] = 3.0, -0.5          # concepts 0 and 7 shown, 7 with a negative cosine
  shown = np.zeros((1, 12), bool)
  shown[0, [0, 7]] = True
  idx, _ = camera.top_concepts(sums, k=4)
  np.testing.assert_array_equal(idx, [[0, 1, 2, 3]])
  np.testing.assert_array_equal(camera.supported_concepts(sums, idx), [[True] * 4])  # wrong
  np.testing.assert_array_equal(camera.supported_concepts(sums, idx, shown),
                                [[True, False, False, False]])
  masked = jnp.array([[0.0, 2.5, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
  idx, _ = camera.top_concepts(masked, k=3)
  np.testing.assert_array_equal(camera.supported_concepts(masked, idx, np.asarray(masked) > 0),
                                camera.supported_concepts(masked, idx))


def test_eq6_eq8_weighted_sums():
  w = jnp.array([0.5, 0.25])
  u = jnp.array([[2.0, 0.0], [0.0, 4.0]])
  np.testing.assert_allclose(camera.historical_representation(w, u), [1.0, 1.0])
  np.testing.assert_allclose(camera.marketing_representation(w, u), [1.0, 1.0])
  # batched: [B=2, k=2, d=2]
  wb = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  ub = jnp.stack([u, u])
  np.testing.assert_allclose(camera.historical_representation(wb, ub), [[2, 0], [0, 4]])


def test_normalize_history_by_hand():
  e_h = jnp.array([[3.0, 4.0], [0.0, 0.0], [-0.5, 0.0]])
  np.testing.assert_allclose(camera.normalize_history(e_h, "none"), e_h)
  got = camera.normalize_history(e_h, "l2")
  want = [[0.6 * 2 ** 0.5, 0.8 * 2 ** 0.5], [0.0, 0.0], [-(2 ** 0.5), 0.0]]  # norm sqrt(d_u) = sqrt(2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="history_norm"):
    camera.normalize_history(e_h, "unit")


def test_history_norm_l2_ignores_how_peaked_w_a_is():
  """With history_norm="l2", scaling an account's top-k weights (its |e_h|) changes no score."""
  batch, concepts = _batch()
  scaled = dict(batch, brand_w=batch["brand_w"] * jnp.array([[0.3], [2.0], [1.0]]),
                inf_w=batch["inf_w"] * 0.5)
  outs = {}
  for norm in ("none", "l2"):
    model = camera.CAMERA(**SMALL, history_norm=norm)
    v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
    outs[norm] = [model.apply(v, b, concepts, deterministic=True)["S"] for b in (batch, scaled)]
  np.testing.assert_allclose(outs["l2"][0], outs["l2"][1], rtol=1e-5)
  assert not np.allclose(outs["none"][0], outs["none"][1], rtol=1e-3)


def test_eq7_marketing_weights():
  psi = jnp.array([[1.0, 0.0]])
  rho = jnp.array([[[math.log(3.0), 7.0], [0.0, 7.0], [math.log(2.0), 7.0]]])
  # inner products [ln 3, 0, ln 2] -> softmax = [3, 1, 2] / 6
  np.testing.assert_allclose(camera.marketing_weights(psi, rho), [[0.5, 1 / 6, 1 / 3]],
                             rtol=1e-6)
  # "mean": inner product / p (p = 2) -> [sqrt 3, 1, sqrt 2] / sum
  s = math.sqrt(3) + 1 + math.sqrt(2)
  np.testing.assert_allclose(camera.marketing_weights(psi, rho, scale="mean"),
                             [[math.sqrt(3) / s, 1 / s, math.sqrt(2) / s]], rtol=1e-6)
  np.testing.assert_allclose(
      camera.marketing_weights(psi, rho, jnp.array([[True, True, False]])),
      [[0.75, 0.25, 0.0]], rtol=1e-6)
  with pytest.raises(ValueError):
    camera.marketing_weights(psi, rho, scale="cosine")


def test_eq9_fuse_concatenates_h_then_r():
  e_a = camera.fuse(lambda x: x * 2, jnp.array([1.0, 2.0]), jnp.array([3.0]))
  np.testing.assert_allclose(e_a, [2.0, 4.0, 6.0])


def test_eq11_to_eq18_scores():
  w1 = jnp.array([[1.0, -1.0]])
  b1 = jnp.array([0.0, 2.0])
  w2 = jnp.array([[1.0], [2.0]])
  # x = 2: sigmoid([2, 0]) @ [1, 2] = 0.880797 + 2 * 0.5
  got = camera.score_mlp(jnp.array([2.0]), w1, b1, w2)
  np.testing.assert_allclose(got, [_sigmoid(2.0) + 1.0], rtol=1e-6)
  assert float(camera.endorsement_score(jnp.float32(0.5), jnp.float32(0.5))) == pytest.approx(
      _sigmoid(1.0))
  assert float(camera.influence_score(jnp.float32(-1.0), jnp.float32(1.0))) == pytest.approx(0.5)
  s_con = camera.content_score(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[4.0, 5.0, 6.0]]))
  np.testing.assert_allclose(s_con, [32.0])                          # 4 + 10 + 18
  np.testing.assert_allclose(camera.ranking_score(s_con, 0.5, 0.25), [4.0])


# -- the module ----------------------------------------------------------------------------------


def _batch(b=3, k=4, n=30, d_u=6, seed=0):
  rng = np.random.default_rng(seed)
  idx, w = camera.top_concepts(jnp.asarray(rng.normal(size=(2 * b, n)) * 2), k)
  batch = dict(brand_idx=idx[:b], brand_w=w[:b], inf_idx=idx[b:], inf_w=w[b:],
               ed_post=jnp.asarray(rng.random(b), jnp.float32),
               ed_brand=jnp.asarray(rng.random(b), jnp.float32),
               followers=jnp.asarray(rng.random(b), jnp.float32),
               eng_inf=jnp.asarray(rng.random(b), jnp.float32))
  concepts = jnp.asarray(rng.standard_normal((n, d_u)), jnp.float32)
  return batch, concepts


def test_forward_shapes_and_attention_sums():
  batch, concepts = _batch()
  model = camera.CAMERA(**SMALL)
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  out = model.apply(v, batch, concepts, deterministic=True)
  for key in ("S", "S_con", "S_ed", "S_in"):
    assert out[key].shape == (3,) and out[key].dtype == jnp.float32
  assert out["w_b"].shape == (3, 4) and out["w_m"].shape == (3, 4)
  np.testing.assert_allclose(out["w_b"].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(out["w_m"].sum(-1), 1.0, rtol=1e-6)
  assert np.all((out["S_ed"] > 0) & (out["S_ed"] < 1) & (out["S_in"] > 0) & (out["S_in"] < 1))
  np.testing.assert_allclose(out["S"], out["S_con"] * out["S_ed"] * out["S_in"], rtol=1e-6)
  # bf16 compute still returns float32 scores
  bf = camera.CAMERA(**SMALL, dtype=jnp.bfloat16).apply(v, batch, concepts, deterministic=True)
  assert bf["S"].dtype == jnp.float32


def test_rho_table_path_equals_gathered_path():
  batch, concepts = _batch()   # 2 * 3 * 4 = 24 gathered rows < n = 30: "auto" uses rows
  v = camera.CAMERA(**SMALL).init(jax.random.key(0), batch, concepts, deterministic=True)
  outs = {p: camera.CAMERA(**SMALL, rho_path=p).apply(v, batch, concepts, deterministic=True)
          for p in ("auto", "rows", "table")}
  for key in outs["rows"]:
    np.testing.assert_allclose(outs["table"][key], outs["rows"][key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs["auto"][key], outs["rows"][key])
  # training mode on the table path runs and still gives distributions
  tr = camera.CAMERA(**SMALL, rho_path="table").apply(
      v, batch, concepts, deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_allclose(tr["w_b"].sum(-1), 1.0, rtol=1e-6)


def test_score_pairs_equals_call():
  batch, concepts = _batch()
  model = camera.CAMERA(**SMALL)
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  want = model.apply(v, batch, concepts, deterministic=True)
  # catalogue style: encode 3 brands and 3 influencers once, the rho table once, then score
  # the pairs (i, i) gathered from the encodings in a different row order
  brands = model.apply(v, batch["brand_idx"], batch["brand_w"], concepts,
                       method=camera.CAMERA.encode_accounts)
  infs = model.apply(v, batch["inf_idx"], batch["inf_w"], concepts,
                     method=camera.CAMERA.encode_accounts)
  table = model.apply(v, concepts, method=camera.CAMERA.concept_table)
  assert table.shape == (30, 8)
  # eq. 7 is bi-directional: w_b from psi(e_h^m) over the brand's concepts, w_m from psi(e_h^b)
  np.testing.assert_allclose(want["w_b"], camera.marketing_weights(
      infs["psi"], table[batch["brand_idx"]]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(want["w_m"], camera.marketing_weights(
      brands["psi"], table[batch["inf_idx"]]), rtol=1e-5, atol=1e-6)
  order = jnp.array([2, 0, 1])
  pick = lambda enc: jax.tree.map(lambda a: a[order], enc)
  feats = {k: batch[k][order] for k in ("ed_post", "ed_brand", "followers", "eng_inf")}
  got = model.apply(v, pick(brands), pick(infs), table, feats, method=camera.CAMERA.score_pairs)
  for key in want:
    np.testing.assert_allclose(got[key], np.asarray(want[key])[np.asarray(order)], rtol=1e-5,
                               atol=1e-6)


def test_dropout_only_when_not_deterministic():
  batch, concepts = _batch()
  model = camera.CAMERA(**SMALL)
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  a = model.apply(v, batch, concepts, deterministic=True, rngs={"dropout": jax.random.key(1)})
  b = model.apply(v, batch, concepts, deterministic=True, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(a["S"], b["S"])   # repeatable, rng ignored
  c = model.apply(v, batch, concepts, deterministic=False, rngs={"dropout": jax.random.key(1)})
  d = model.apply(v, batch, concepts, deterministic=False, rngs={"dropout": jax.random.key(2)})
  c2 = model.apply(v, batch, concepts, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(c["S_con"], a["S_con"])
  assert not np.allclose(c["S_con"], d["S_con"])
  np.testing.assert_array_equal(c["S"], c2["S"])  # same rng, same masks
  no_drop = camera.CAMERA(**SMALL, dropout=0.0)
  e = no_drop.apply(v, batch, concepts, deterministic=False)   # no rng needed
  np.testing.assert_allclose(e["S"], a["S"], rtol=1e-6)


def test_without_interaction_s_equals_s_con():
  batch, concepts = _batch()
  model = camera.CAMERA(**SMALL, use_interaction=False)
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  assert not any(k.startswith("phi") for k in v["params"])
  out = model.apply(v, batch, concepts, deterministic=True)
  np.testing.assert_array_equal(out["S"], out["S_con"])
  np.testing.assert_array_equal(out["S_ed"], np.ones(3))
  np.testing.assert_array_equal(out["S_in"], np.ones(3))
  # the same psi/rho/gamma params give the same S_con inside the full model
  full = camera.CAMERA(**SMALL)
  vf = full.init(jax.random.key(0), batch, concepts, deterministic=True)
  vf = {"params": {**vf["params"], **v["params"]}}
  np.testing.assert_allclose(full.apply(vf, batch, concepts, deterministic=True)["S_con"],
                             out["S_con"], rtol=1e-6)


def test_default_sizes_init_range_and_parameter_count():
  batch, concepts = _batch(b=2, k=10, n=40, d_u=100)
  model = camera.CAMERA()
  v = jax.jit(lambda r: model.init(r, batch, concepts, deterministic=True))(jax.random.key(0))
  leaves = jax.tree.leaves(v["params"])
  lo = min(float(jnp.min(a)) for a in leaves)
  hi = max(float(jnp.max(a)) for a in leaves)
  assert -0.1 <= lo < -0.09 and 0.09 < hi <= 0.1       # uniform(-0.1, 0.1), biases included
  assert all(float(jnp.min(jnp.abs(a))) < 0.01 for a in leaves)   # no constant init
  # psi, rho: 100*1024 + 1024 + 1024*512 + 512 = 628,224 each
  # gamma: 200*1024 + 1024 + 1024*1024 + 1024 + 1024*512 + 512 = 1,780,224
  # phi: (64 + 64 + 64) x 4 = 768
  count = sum(int(np.prod(a.shape)) for a in leaves)
  assert count == 2 * 628_224 + 1_780_224 + 768 == 3_037_440
  assert v["params"]["gamma_mlp"]["dense0"]["kernel"].shape == (200, 1024)


def test_s_ed_and_s_in_read_the_features_of_eq_11_and_14():
  """S_ed and S_in recomputed by hand from the phi parameters: each phi reads its own feature
  (eq. 11: the post and the brand; eq. 14: the followers and the engagement)."""
  batch, concepts = _batch()
  model = camera.CAMERA(**SMALL)
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  out = model.apply(v, batch, concepts, deterministic=True)
  p = v["params"]
  phi = lambda name, x: camera.score_mlp(x, p[name]["w1"], p[name]["b1"], p[name]["w2"])  # noqa: E731
  np.testing.assert_allclose(out["S_ed"], camera.endorsement_score(
      phi("phi_ed_post", batch["ed_post"]), phi("phi_ed_brand", batch["ed_brand"])), rtol=1e-6)
  np.testing.assert_allclose(out["S_in"], camera.influence_score(
      phi("phi_followers", batch["followers"]), phi("phi_eng_inf", batch["eng_inf"])), rtol=1e-6)


def test_gamma_drops_only_its_first_two_layers_inputs():
  """Dropout (paper: "rate of 0.6") on the inputs of psi's and rho's layers and of gamma's
  first two only, as the authors' DropConnect."""
  model = camera.CAMERA(**SMALL, dropout=0.5)
  batch, concepts = _batch()
  v = model.init(jax.random.key(0), batch, concepts, deterministic=True)
  bound = model.bind(v)
  assert bound.gamma_mlp.dropout_layers == 2 and bound.psi.dropout_layers is None
