"""Tests of camera_jax.baselines: definitions, leak-freedom, registry."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from camera_jax import baselines
from camera_jax.baselines import BASELINES, score_baseline
from camera_jax.metrics import evaluate

N_ACC = 30


def _features(rng, with_std=False):
  f = {
      "followers": rng.integers(1_000, 100_000, N_ACC).astype(float),
      "mean_engagement": rng.uniform(0.001, 0.2, N_ACC),
      "n_posts": rng.integers(5, 51, N_ACC),
      "w_a": rng.dirichlet(np.ones(8), N_ACC),
  }
  if with_std:
    f["post_engagement_std"] = rng.uniform(0.0, 0.1, N_ACC)
  return f


def _pairs(brand_rows=(0, 1, 2), influencer_rows=range(5, N_ACC)):
  b = np.repeat(np.asarray(brand_rows), len(influencer_rows))
  m = np.tile(np.asarray(influencer_rows), len(brand_rows))
  return {"brand": b, "influencer": m}


def test_registry_names_and_no_label_argument():
  assert set(BASELINES) == {"RAND", "POP", "ENG", "MIV", "CONTENT"}
  for fn in list(BASELINES.values()) + [score_baseline]:
    params = inspect.signature(fn).parameters
    assert not any("label" in p or "positive" in p or "target" in p for p in params), fn
  for fn in BASELINES.values():
    assert list(inspect.signature(fn).parameters) == ["pairs", "features", "rng"]


@pytest.mark.parametrize("name", ["POP", "ENG", "MIV", "CONTENT"])
@pytest.mark.parametrize("with_std", [False, True])
def test_deterministic_scores_follow_pair_permutation(name, with_std):
  rng = np.random.default_rng(0)
  f, p = _features(rng, with_std), _pairs()
  s = score_baseline(name, p, f)
  assert s.shape == (len(p["brand"]),) and s.dtype == np.float64
  assert np.isfinite(s).all()
  perm = rng.permutation(len(s))
  sp = score_baseline(name, {k: v[perm] for k, v in p.items()}, f)
  np.testing.assert_array_equal(sp, s[perm])


def test_scores_independent_of_labels():
  # labels only reach the metric: permuting them changes the metric, never the scores.
  rng = np.random.default_rng(1)
  f, p = _features(rng), _pairs()
  y = rng.random(len(p["brand"])) < 0.2
  for name in BASELINES:
    s1 = score_baseline(name, p, f, np.random.default_rng(5))
    y_perm = rng.permutation(y)
    s2 = score_baseline(name, p, f, np.random.default_rng(5))
    np.testing.assert_array_equal(s1, s2)
    evaluate(p["brand"], p["influencer"], s1, y)
    evaluate(p["brand"], p["influencer"], s2, y_perm)


def test_rand_seeded_uniform():
  p = _pairs()
  a = score_baseline("RAND", p, {}, np.random.default_rng(3))
  np.testing.assert_array_equal(a, score_baseline("rand", p, {}, np.random.default_rng(3)))
  assert not np.array_equal(a, score_baseline("RAND", p, {}, np.random.default_rng(4)))
  assert ((0 <= a) & (a < 1)).all() and len(np.unique(a)) == len(a)
  with pytest.raises(ValueError, match="Generator"):
    score_baseline("RAND", p, {})


def test_rand_auc_near_half():
  rng = np.random.default_rng(2)
  p = _pairs(brand_rows=range(40), influencer_rows=range(40, 300))
  y = rng.random(len(p["brand"])) < 0.05
  s = score_baseline("RAND", p, {}, np.random.default_rng(0))
  assert abs(evaluate(p["brand"], p["influencer"], s, y)["auc"] - 0.5) < 0.03


def test_pop_and_eng_are_influencer_features():
  rng = np.random.default_rng(3)
  f, p = _features(rng), _pairs()
  np.testing.assert_array_equal(score_baseline("POP", p, f), f["followers"][p["influencer"]])
  np.testing.assert_array_equal(score_baseline("ENG", p, f),
                                f["mean_engagement"][p["influencer"]])
  # the brand does not matter
  s = score_baseline("POP", p, f).reshape(3, -1)
  assert (s == s[0]).all()


def test_miv_formula_and_monotonicity():
  rng = np.random.default_rng(4)
  f, p = _features(rng), _pairs()
  s = score_baseline("MIV", p, f)
  m = p["influencer"]
  cand = np.unique(m)

  def mm(x):
    return (x - x[cand].min()) / (x[cand].max() - x[cand].min())

  expected = 0.5 * mm(np.log1p(f["n_posts"].astype(float)))[m] + \
      0.5 * mm(np.log10(f["mean_engagement"] + 1e-4))[m]
  np.testing.assert_allclose(s, expected, rtol=1e-12)
  assert s.min() >= 0 and s.max() <= 1
  # more posts, more engagement -> higher score; more variable engagement -> lower
  i = 10
  for key, factor in (("n_posts", 2), ("mean_engagement", 1.5)):
    g = dict(f)
    g[key] = f[key].copy()
    g[key][i] = f[key][i] * factor
    before, after = score_baseline("MIV", p, f), score_baseline("MIV", p, g)
    assert (after[m == i] > before[m == i]).all() or f[key][i] == f[key][cand].max(), key
  fs = _features(np.random.default_rng(4), with_std=True)
  g = dict(fs)
  g["post_engagement_std"] = fs["post_engagement_std"].copy()
  j = int(np.argmin(fs["post_engagement_std"][cand])) + cand[0]
  g["post_engagement_std"][j] = fs["post_engagement_std"].max() * 2
  assert (score_baseline("MIV", p, g)[m == j] < score_baseline("MIV", p, fs)[m == j]).all()


def test_miv_constant_features_give_zero():
  f = {"n_posts": np.full(N_ACC, 50), "mean_engagement": np.full(N_ACC, 0.03)}
  np.testing.assert_array_equal(score_baseline("MIV", _pairs(), f), 0.0)


def test_content_cosine():
  rng = np.random.default_rng(5)
  f, p = _features(rng), _pairs()
  s = score_baseline("CONTENT", p, f)
  w = f["w_a"]
  for k in range(0, len(s), 7):
    u, v = w[p["brand"][k]], w[p["influencer"][k]]
    assert s[k] == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
  w2 = np.zeros((4, 3))
  w2[0] = [1, 2, 0]
  w2[1] = [2, 4, 0]     # same direction, scaled
  w2[2] = [0, 0, 5]     # orthogonal
  s2 = score_baseline("CONTENT", {"brand": np.zeros(3, int), "influencer": np.array([1, 2, 3])},
                      {"w_a": w2})
  np.testing.assert_allclose(s2, [1.0, 0.0, 0.0])   # row 3 all zero -> 0
  # the brand's own concepts matter: a brand identical to an influencer ranks it first
  q = {"brand": np.full(N_ACC - 1, 0), "influencer": np.arange(1, N_ACC)}
  g = dict(f)
  g["w_a"] = f["w_a"].copy()
  g["w_a"][0] = f["w_a"][7]
  assert np.argmax(score_baseline("CONTENT", q, g)) == 6


@pytest.mark.parametrize(
    "name, pairs, features, match",
    [
        ("NOPE", {"brand": [0], "influencer": [1]}, {}, "unknown baseline"),
        ("POP", {"brand": [0], "influencer": [N_ACC]}, None, r"\[0, 30\)"),
        ("POP", {"brand": [0, 1], "influencer": [1]}, None, "equal length"),
        ("POP", {"brand": [0]}, None, "influencer"),
        ("CONTENT", {"brand": [0], "influencer": [1]}, {"followers": np.ones(3)}, "w_a"),
        ("ENG", {"brand": [0.0], "influencer": [1.0]}, None, "integer"),
    ],
)
def test_validation(name, pairs, features, match):
  f = _features(np.random.default_rng(0)) if features is None else features
  with pytest.raises(ValueError, match=match):
    score_baseline(name, pairs, f)
