"""Tests for camera_jax.models.cosmic (eq. 2-4, z', U_C export)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.models import cosmic

E = math.e


def test_visual_embedding_eq2_hand():
  v1 = jnp.array([[1.0, -2.0]])
  kernel = jnp.array([[1.0, 0.0], [1.0, 1.0]])   # [d_v1=2, d_u=2]
  bias = jnp.array([0.5, 0.0])
  # v1 @ W + b = [1 - 2 + 0.5, -2 + 0] = [-0.5, -2] -> leaky 0.01 -> [-0.005, -0.02]
  np.testing.assert_allclose(cosmic.visual_embedding(v1, kernel, bias), [[-0.005, -0.02]],
                             rtol=1e-6)
  np.testing.assert_allclose(cosmic.visual_embedding(-v1, kernel, bias), [[1.5, 2.0]],
                             rtol=1e-6)


def test_eq3_eq4_three_concepts_by_hand():
  v2 = jnp.array([[1.0, 2.0]])
  u = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  logits = cosmic.concept_logits(v2, u, "inner")
  np.testing.assert_allclose(logits, [[1.0, 2.0, 3.0]])            # v2 . u_i
  np.testing.assert_allclose(cosmic.concept_logits(v2, u, "mean"), [[0.5, 1.0, 1.5]])  # / d_u
  # log z_i = logit_i - logsumexp; logsumexp(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.4076059644
  lse = 3.0 + math.log(1.0 + math.exp(-1.0) + math.exp(-2.0))
  assert lse == pytest.approx(3.4076059644)
  z_prime = jnp.array([[0.2, 0.3, 0.5]])
  # L = -(0.2 (1 - lse) + 0.3 (2 - lse) + 0.5 (3 - lse)) = lse - 2.3 = 1.1076059644
  want = lse - (0.2 * 1 + 0.3 * 2 + 0.5 * 3)
  assert float(cosmic.cosmic_loss(logits, z_prime, jnp.array([True]))) == pytest.approx(
      1.1076059644, rel=1e-6)
  assert want == pytest.approx(1.1076059644)


def test_cosmic_loss_masks_rows_and_empty_targets():
  logits = jnp.array([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  z = jnp.array([[0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  first = 1.1076059644
  third = math.log(3.0)   # -log(1/3)
  # row 1 has an all-zero z' -> ignored even though mask is True
  assert float(cosmic.cosmic_loss(logits, z, jnp.array([True, True, True]))) == pytest.approx(
      (first + third) / 2, rel=1e-6)
  assert float(cosmic.cosmic_loss(logits, z, jnp.array([True, True, False]))) == pytest.approx(
      first, rel=1e-6)
  assert float(cosmic.cosmic_loss(logits, z, jnp.array([False] * 3))) == 0.0


def _zprime_inputs():
  t = jnp.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
  l = jnp.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  h = jnp.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
  has_text = jnp.array([True, False, True])
  return t, l, h, has_text


def test_semantic_weights_and_no_text_posts_use_h():
  w = cosmic.semantic_weights(*_zprime_inputs())
  # row 0: t . l = [2, 1, 0] o h [1, 1, 0]; row 1 (no text): h itself; row 2: h = 0
  np.testing.assert_allclose(w, [[2, 1, 0], [0, 1, 1], [0, 0, 0]])


def test_faithful_vs_masked():
  faithful = np.asarray(cosmic.semantic_distribution(*_zprime_inputs(), mode="faithful"))
  masked = np.asarray(cosmic.semantic_distribution(*_zprime_inputs(), mode="masked"))
  # faithful row 0: softmax([2, 1, 0]); the absent concept 2 keeps exp(0) mass
  z0 = np.array([E ** 2, E, 1.0]) / (E ** 2 + E + 1.0)     # [0.66524, 0.24473, 0.09003]
  np.testing.assert_allclose(faithful[0], z0, rtol=1e-6)
  assert faithful[0, 2] == pytest.approx(0.0900306, rel=1e-5)
  # masked row 0: softmax over the present concepts only
  np.testing.assert_allclose(masked[0], [E ** 2 / (E ** 2 + E), E / (E ** 2 + E), 0.0], rtol=1e-6)
  assert masked[0, 2] == 0.0
  # row 1 (no text, weight_t = h = [0, 1, 1])
  np.testing.assert_allclose(faithful[1], np.array([1.0, E, E]) / (1 + 2 * E), rtol=1e-6)
  np.testing.assert_allclose(masked[1], [0.0, 0.5, 0.5], rtol=1e-6)
  # row 2 (no concept): faithful = uniform (softmax of zeros), masked = all zeros
  np.testing.assert_allclose(faithful[2], [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_array_equal(masked[2], [0.0, 0.0, 0.0])
  np.testing.assert_allclose(faithful.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(masked[:2].sum(-1), 1.0, rtol=1e-6)


def test_without_semantic_information_is_normalised_h():
  t, l, h, has_text = _zprime_inputs()
  z = np.asarray(cosmic.semantic_distribution(t, l, h, has_text, mode="masked", semantic=False))
  np.testing.assert_allclose(z, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
  # faithful: weight_t = h for every post, then CAMERA's own softmax over all n (e / (2e + 1))
  z = np.asarray(cosmic.semantic_distribution(t, l, h, has_text, mode="faithful", semantic=False))
  e = np.e
  np.testing.assert_allclose(z, [[e / (2 * e + 1)] * 2 + [1 / (2 * e + 1)],
                                 [1 / (2 * e + 1)] + [e / (2 * e + 1)] * 2, [1 / 3] * 3], rtol=1e-6)


def test_cosmic_module_forward():
  model = cosmic.COSMIC(7, d_u=6, channels=(4, 4, 4, 4, 4), fc=8)
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
  v = model.init(jax.random.key(1), x, train=False)
  u = v["params"]["concept_matrix"]
  assert u.shape == (7, 6)
  assert float(jnp.min(u)) >= -1.0 and float(jnp.max(u)) <= 1.0   # uniform(-1, 1)
  assert float(jnp.std(u)) > 0.3                                    # not a tiny init
  out = model.apply(v, x, train=False)
  assert out["logits"].shape == (2, 7) and out["v2"].shape == (2, 6)
  np.testing.assert_allclose(out["logits"], out["v2"] @ u.T, rtol=1e-5, atol=1e-6)
  mean = cosmic.COSMIC(7, d_u=6, channels=(4, 4, 4, 4, 4), fc=8, logit_scale="mean")
  np.testing.assert_allclose(mean.apply(v, x, train=False)["logits"], out["logits"] / 6,
                             rtol=1e-5, atol=1e-7)


def test_export_concept_matrix_standardises_the_param():
  rng = np.random.default_rng(0)
  u = rng.uniform(-1, 1, (50, 4)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32) + 5
  params = {"concept_matrix": jnp.asarray(u), "embed_bias": jnp.zeros(4)}
  out = cosmic.export_concept_matrix(params)
  assert out.shape == (50, 4) and out.dtype == np.float32
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(out.std(0), 1.0, atol=1e-5)
  want = (u - u.mean(0)) / u.std(0)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cosmic.export_concept_matrix({"params": params}), out)
  with pytest.raises(KeyError):   # e.g. an optimizer state: no concept_matrix param
    cosmic.export_concept_matrix({"mu": params})


def test_topk_agreement_by_hand_and_with_fewer_concepts_than_k():
  from camera_jax.training import concepts as concepts_lib
  # 3 concepts (fewer than k = 5): row 0's z' supports concepts 0 and 2, z ranks 2 > 1 > 0:
  # top-2 by z = {2, 1}, by z' = {0, 2}: 1 of 2. Row 1 supports concept 1 only, z's top-1 is 1.
  z_prime = np.array([[0.6, 0.0, 0.4], [0.0, 1.0, 0.0]], np.float32)
  logits = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]], np.float32)
  out = concepts_lib.topk_agreement(logits, z_prime, k=5)
  assert out["top5_agreement"] == pytest.approx((0.5 + 1.0) / 2)
  assert out["n_held_out"] == 2 and 0.0 <= out["top5_chance"] <= 1.0


def test_uint8_images_train_and_predict_exactly_as_their_float32_pixels():
  """The image stages send uint8 batches: a train step and a prediction on them give the same
  numbers, bit for bit, as on ``input_pipeline.to_unit`` of the same pixels (the float32 batches
  the stages sent before)."""
  import jax
  from camera_jax.data import input_pipeline
  from camera_jax.training import concepts as concepts_lib, trainer

  model = cosmic.COSMIC(num_concepts=6, d_u=4, channels=(4, 4, 4, 4, 4), fc=8)
  tx = trainer.make_optimizer(1e-2, 1.0, 10)
  fresh = lambda: concepts_lib.create_image_state(model, 16, jax.random.PRNGKey(0), tx)  # noqa: E731
  step, predict = concepts_lib.make_image_steps(
      lambda out, b: cosmic.cosmic_loss(out["logits"], b["target"], b["mask"]), 1e-3)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (5, 16, 16, 3), np.uint8)
  target = rng.random((5, 6)).astype(np.float32)
  batch = {"target": target / target.sum(1, keepdims=True), "mask": np.ones(5, bool)}
  key = jax.random.PRNGKey(1)
  outs = []
  for image in (pixels, input_pipeline.to_unit(pixels)):
    new, metrics = step(fresh(), {**batch, "image": image}, key)  # the step donates its state
    outs.append((jax.device_get((new.params, new.batch_stats, new.opt_state, metrics)),
                 np.asarray(predict(new, image)["logits"])))
  leaves = [jax.tree_util.tree_leaves(o) for o in outs]
  assert len(leaves[0]) == len(leaves[1]) > 10
  for a, b in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(outs[0][1], np.asarray(predict(fresh(), pixels)["logits"]))  # it trained
