"""Tests for camera_jax.models.concept_generator."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.models import concept_generator as cg

SMALL = dict(channels=(4, 4, 4, 4, 4), fc=8)


def test_forward_shapes_and_dropout():
  model = cg.ConceptGenerator(5, dropout=0.5, **SMALL)
  x = jax.random.uniform(jax.random.key(0), (3, 12, 12, 3))
  v = model.init(jax.random.key(1), x, train=False)
  logits = model.apply(v, x, train=False)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert v["params"]["head"]["kernel"].shape == (8, 5)
  a, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                     mutable=["batch_stats"])
  b, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(3)},
                     mutable=["batch_stats"])
  assert not np.allclose(a, b)   # dropout is active in training only


def test_multilabel_bce_hand_value():
  logits = jnp.array([[0.0, 2.0], [5.0, -5.0]])
  targets = jnp.array([[1, 0], [0, 1]])
  # row 0: bce(0, 1) = log(1 + e^0) = log 2; bce(2, 0) = log(1 + e^2)
  want = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2   # 1.410038
  got = cg.multilabel_bce(logits, targets, jnp.array([True, False]))
  assert float(got) == pytest.approx(want, rel=1e-6)
  # all rows: row 1 is bce(5, 0) = bce(-5, 1) = log(1 + e^5)
  row1 = math.log(1.0 + math.exp(5.0))
  assert float(cg.multilabel_bce(logits, targets)) == pytest.approx((want + row1) / 2, rel=1e-6)
  assert float(cg.multilabel_bce(logits, targets, jnp.array([False, False]))) == 0.0


def test_predict_multi_hot():
  logits = jnp.array([[-3.0, 1.0, 0.5, -1.0], [-2.0, -3.0, -4.0, -5.0]])
  np.testing.assert_array_equal(cg.predict_multi_hot(logits),
                                [[0, 1, 1, 0], [1, 0, 0, 0]])   # row 1: top-1 only (min_k)
  np.testing.assert_array_equal(cg.predict_multi_hot(logits, min_k=0),
                                [[0, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(cg.predict_multi_hot(logits, max_k=1),
                                [[0, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(cg.predict_multi_hot(logits, min_k=2),
                                [[0, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(cg.predict_multi_hot(logits, threshold=0.9),   # logit >= 2.197
                                [[0, 1, 0, 0], [1, 0, 0, 0]])
  # ties go to the lower index
  np.testing.assert_array_equal(cg.predict_multi_hot(jnp.full((1, 3), -1.0), min_k=2),
                                [[1, 1, 0]])


def test_multilabel_metrics_hand_example():
  pred = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]], bool)
  target = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
  mask = np.array([True, True, False])   # row 2 is padding
  scores = np.array([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.7, 0.0], [9, 9, 9, 9]])
  m = cg.multilabel_metrics(pred, target, mask, scores=scores, ks=(1, 2))
  # tp = 2 (l0 row 0, l1 row 1), fp = 1 (l1 row 0), fn = 1 (l2 row 1)
  assert m["micro_precision"] == pytest.approx(2 / 3)
  assert m["micro_recall"] == pytest.approx(2 / 3)
  assert m["micro_f1"] == pytest.approx(2 / 3)
  # per-label F1: l0 = 1, l1 = 2/3, l2 = 0; l3 never occurs -> left out
  assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
  # per-row F1: 2*1/(2+1) and 2*1/(1+2)
  assert m["samples_f1"] == pytest.approx(2 / 3)
  assert m["exact_match"] == 0.0
  assert m["precision_at_1"] == pytest.approx(1.0)
  # top-2: row 0 {l0, l2} -> 1 hit; row 1 {l1, l2} -> 2 hits
  assert m["precision_at_2"] == pytest.approx((0.5 + 1.0) / 2)


def test_precision_at_k_ties_and_mask():
  target = np.array([[0, 1, 0]], bool)
  assert cg.precision_at_k(np.zeros((1, 3)), target, 1) == 0.0   # tie -> index 0
  assert cg.precision_at_k(np.zeros((1, 3)), target, 2) == 0.5
  assert cg.precision_at_k(np.zeros((1, 3)), target, 1, mask=np.array([False])) == 0.0


def test_held_out_metrics_without_held_out_rows_are_undefined():
  """--cg_held_out=0 holds nothing out: the metrics are NaN (null in concept_generator.json),
  as COSMIC's top-5 agreement is, not 0.0 (which reads as a generator that scored 0)."""
  import math

  from camera_jax.training import concepts

  m = concepts.evaluate_concept_predictions(np.zeros((0, 5), np.float32), np.zeros((0, 5), bool),
                                            np.eye(5, dtype=bool), threshold=0.5, min_k=1, max_k=5)
  assert m["n_held_out"] == 0 and len(m) == 6
  assert all(math.isnan(v) for k, v in m.items() if k != "n_held_out")
