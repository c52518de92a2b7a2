"""Tests of camera_jax.metrics: hand-computed values, a literal reference, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from camera_jax import metrics
from camera_jax.metrics import aggregate, evaluate, evaluate_per_brand, paired_bootstrap


# --------------------------------------------------------------------------
# hand-computed example
# --------------------------------------------------------------------------
def _example():
  rows = [
      # brand A: ties at 0.8 (one negative, two positives), three positives
      ("A", "m1", 0.9, 0, "x"),
      ("A", "m2", 0.8, 1, "x"),
      ("A", "m3", 0.8, 0, "y"),
      ("A", "m4", 0.8, 1, "y"),
      ("A", "m5", 0.5, 0, "x"),
      ("A", "m6", 0.1, 1, "y"),
      # brand B: a single positive
      ("B", "m1", 0.3, 0, "x"),
      ("B", "m2", 0.7, 0, "x"),
      ("B", "m3", 0.2, 0, "y"),
      ("B", "m4", 0.6, 1, "x"),
      # brand C: no positive -> skipped everywhere
      ("C", "m1", 0.4, 0, "x"),
      ("C", "m2", 0.3, 0, "y"),
      # brand D: only positives, tied -> no AUC, no cAUC
      ("D", "m1", 0.5, 1, "x"),
      ("D", "m2", 0.5, 1, "y"),
  ]
  b, m, s, y, c = (list(col) for col in zip(*rows))
  return b, m, s, y, c


def test_hand_computed_per_brand():
  b, m, s, y, c = _example()
  pb = evaluate_per_brand(b, m, s, y, c, ks=(1, 4, 5))
  assert pb["brand"].tolist() == ["A", "B", "D"]
  assert pb["skipped"].tolist() == ["C"]
  assert pb["n_pairs"] == 14
  assert pb["n_pos"].tolist() == [3, 1, 2]
  assert pb["n_neg"].tolist() == [3, 3, 0]
  # A: ranks 0.9 -> 1, the three 0.8 -> 4 (worst of the tie), 0.5 -> 5, 0.1 -> 6.
  #    positives at ranks 4, 4, 6.  B: 0.7 -> 1, 0.6 -> 2 (positive).  D: both 0.5 -> 2.
  assert pb["rank_first"].tolist() == [4, 2, 2]
  np.testing.assert_allclose(pb["mrr"], [1 / 4, 1 / 2, 1 / 2])
  # recall@1: no positive at rank 1 anywhere.
  np.testing.assert_allclose(pb["recall@1"], [0, 0, 0])
  # recall@4: A 2 of 3 (ranks 4, 4), B 1 of 1, D 2 of 2 (rank 2).
  np.testing.assert_allclose(pb["recall@4"], [2 / 3, 1, 1])
  np.testing.assert_allclose(pb["recall@5"], [2 / 3, 1, 1])
  # AP: A (1/4 + 2/4 + 3/6) / 3 = 1.25 / 3; B 1/2; D (1/2 + 2/2) / 2 = 0.75.
  np.testing.assert_allclose(pb["map"], [1.25 / 3, 0.5, 0.75])
  # AUC: A, 9 pairs; m2 beats m5 only (tie with m3 is wrong), m4 the same, m6 none: 2/9.
  #      B, m4 (0.6) beats 0.3 and 0.2, not 0.7: 2/3.  D: no negative -> NaN.
  np.testing.assert_allclose(pb["auc"], [2 / 9, 2 / 3, np.nan])
  # cAUC: A, cat x: m2 vs m1 (no), m5 (yes); cat y: m4 vs m3 (tie, no), m6 vs m3 (no): 1/4.
  #       B, cat x: m4 vs m1 (yes), m2 (no): 1/2.  D: NaN.
  np.testing.assert_allclose(pb["cauc"], [1 / 4, 1 / 2, np.nan])


def test_hand_computed_aggregate():
  b, m, s, y, c = _example()
  r = evaluate(b, m, s, y, c, ks=(1, 4, 5))
  assert r["n_brands"] == 3 and r["n_skipped"] == 1 and r["n_pairs"] == 14
  assert r["n_brands_auc"] == 2 and r["n_brands_cauc"] == 2
  assert r["recall@1"] == 0
  assert r["recall@4"] == pytest.approx((2 / 3 + 1 + 1) / 3)     # 8/9
  assert r["mrr"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)       # 5/12
  assert r["map"] == pytest.approx((1.25 / 3 + 0.5 + 0.75) / 3)  # 5/9
  assert r["medr"] == 2.0                                        # sorted [2, 2, 4]
  assert r["auc"] == pytest.approx((2 / 9 + 2 / 3) / 2)          # 4/9, D excluded
  assert r["cauc"] == pytest.approx((1 / 4 + 1 / 2) / 2)         # 3/8
  assert set(r) == {"auc", "cauc", "recall@1", "recall@4", "recall@5", "mrr", "map",
                    "medr", "n_brands", "n_skipped", "n_pairs", "n_brands_auc",
                    "n_brands_cauc"}


def test_no_category_no_cauc_and_default_ks():
  b, m, s, y, _ = _example()
  r = evaluate(b, m, s, y)
  assert "cauc" not in r and "n_brands_cauc" not in r
  assert "recall@10" in r and "recall@50" in r
  assert r["recall@10"] == 1.0  # every brand has <= 6 candidates


def test_medr_even_number_of_brands_takes_lower_middle():
  # brand 1: positive at rank 1; brand 2: positive at rank 3 -> lower middle = 1, not 2.
  r = evaluate([1, 1, 1, 2, 2, 2], [1, 2, 3, 1, 2, 3],
               [3, 2, 1, 3, 2, 1], [1, 0, 0, 0, 0, 1])
  assert r["medr"] == 1.0
  assert r["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_all_tied_scores_are_pessimistic():
  # every candidate ties: each positive takes rank C; every pair is a wrong pair.
  n = 7
  y = [1, 0, 1, 0, 0, 0, 0]
  r = evaluate(["b"] * n, range(n), [0.5] * n, y, ["c"] * n, ks=(6, 7))
  assert r["mrr"] == pytest.approx(1 / 7) and r["medr"] == 7
  assert r["recall@6"] == 0 and r["recall@7"] == 1
  assert r["map"] == pytest.approx((1 / 7 + 2 / 7) / 2)
  assert r["auc"] == 0 and r["cauc"] == 0


def test_evaluate_is_aggregation_of_per_brand():
  rng = np.random.default_rng(1)
  b, m, s, y, c = _random_long(rng, n_brands=12, n_cand=30)
  pb = evaluate_per_brand(b, m, s, y, c)
  r = evaluate(b, m, s, y, c)
  assert r == aggregate(pb)
  assert r["mrr"] == pytest.approx(pb["mrr"].mean())
  assert r["recall@10"] == pytest.approx(pb["recall@10"].mean())
  assert r["auc"] == pytest.approx(np.nanmean(pb["auc"]))
  assert r["medr"] == np.sort(pb["rank_first"])[(len(pb["rank_first"]) - 1) // 2]


# --------------------------------------------------------------------------
# literal reference
# --------------------------------------------------------------------------
def _reference(b, m, s, y, c, ks):
  """Slow, literal definitions: Python loops over brands and candidates."""
  per = {}
  for brand in sorted(set(b)):
    rows = [i for i in range(len(b)) if b[i] == brand]
    pos = [i for i in rows if y[i]]
    neg = [i for i in rows if not y[i]]
    if not pos:
      continue
    # pessimistic rank: candidates of the brand with score >= this score.
    rank = {i: sum(1 for j in rows if s[j] >= s[i]) for i in rows}
    pr = sorted(rank[i] for i in pos)
    d = {f"recall@{k}": sum(1 for r in pr if r <= k) / len(pos) for k in ks}
    d["rank_first"] = pr[0]
    d["mrr"] = 1 / pr[0]
    d["map"] = sum((i + 1) / r for i, r in enumerate(pr)) / len(pos)
    pairs = [(p, q) for p in pos for q in neg]
    d["auc"] = (sum(1 for p, q in pairs if s[p] > s[q]) / len(pairs)) if pairs else math.nan
    cp = [(p, q) for p, q in pairs if c[p] == c[q]]
    d["cauc"] = (sum(1 for p, q in cp if s[p] > s[q]) / len(cp)) if cp else math.nan
    per[brand] = d
  return per


@st.composite
def _long_format(draw):
  n_brands = draw(st.integers(1, 5))
  rows = []
  for brand in range(n_brands):
    n_cand = draw(st.integers(1, 10))
    for j in range(n_cand):
      rows.append((brand, j, draw(st.integers(0, 4)) / 4, draw(st.booleans()),
                   draw(st.sampled_from("xyz"))))
  perm = draw(st.permutations(range(len(rows))))
  rows = [rows[i] for i in perm]
  return tuple(list(col) for col in zip(*rows))


@settings(max_examples=150, deadline=None)
@given(_long_format(), st.sampled_from([(1, 3), (2, 5, 10)]))
def test_matches_literal_reference(data, ks):
  b, m, s, y, c = data
  ref = _reference(b, m, s, y, c, ks)
  pb = evaluate_per_brand(b, m, s, y, c, ks=ks)
  assert pb["brand"].tolist() == sorted(ref)
  assert pb["skipped"].tolist() == sorted(set(b) - set(ref))
  for key in ["rank_first", "mrr", "map", "auc", "cauc"] + [f"recall@{k}" for k in ks]:
    expected = [ref[brand][key] for brand in sorted(ref)]
    np.testing.assert_allclose(pb[key], expected, rtol=1e-12, atol=0, err_msg=key)
  r = evaluate(b, m, s, y, c, ks=ks)
  if ref:
    firsts = sorted(d["rank_first"] for d in ref.values())
    assert r["medr"] == firsts[(len(firsts) - 1) // 2]
    assert r["map"] == pytest.approx(np.mean([d["map"] for d in ref.values()]))
    aucs = [d["auc"] for d in ref.values() if not math.isnan(d["auc"])]
    if aucs:
      assert r["auc"] == pytest.approx(np.mean(aucs))
    else:
      assert math.isnan(r["auc"])
  else:
    assert r["n_brands"] == 0 and math.isnan(r["mrr"]) and math.isnan(r["medr"])


# --------------------------------------------------------------------------
# invariances and special cases
# --------------------------------------------------------------------------
def _random_long(rng, n_brands, n_cand, n_levels=20, p_pos=0.1):
  b = np.repeat(np.arange(n_brands), n_cand)
  m = np.tile(np.arange(n_cand), n_brands)
  s = rng.integers(0, n_levels, len(b)) / n_levels
  y = rng.random(len(b)) < p_pos
  c = rng.integers(0, 4, len(b))
  return b, m, s, y, c


def test_invariant_to_row_order_and_id_type():
  rng = np.random.default_rng(0)
  b, m, s, y, c = _random_long(rng, n_brands=15, n_cand=40)
  r0 = evaluate(b, m, s, y, c)
  perm = rng.permutation(len(b))
  r1 = evaluate(b[perm], m[perm], s[perm], y[perm], c[perm])
  # string ids in the same sort order as the ints
  bs = np.array([f"brand{x:03d}" for x in b])
  ms = np.array([f"inf{x:03d}" for x in m])
  r2 = evaluate(bs[perm], ms[perm], s[perm], y[perm].astype(int), c[perm].astype(str))
  for r in (r1, r2):
    assert r.keys() == r0.keys()
    for k in r0:
      assert r[k] == pytest.approx(r0[k], rel=1e-12), k


def test_interleaved_brands_grouped_by_id_not_position():
  # the authors' fixed 797-row blocks misread everything after a repeated brand;
  # here a brand's rows may be anywhere.
  b = ["a", "b", "a", "b", "a", "b"]
  r = evaluate(b, [1, 1, 2, 2, 3, 3], [3, 1, 2, 2, 1, 3], [1, 0, 0, 0, 0, 1], ks=(1,))
  assert r["recall@1"] == 1 and r["mrr"] == 1 and r["n_brands"] == 2


def test_perfect_scores():
  rng = np.random.default_rng(3)
  b, m, _, y, c = _random_long(rng, n_brands=20, n_cand=60, p_pos=0.2)
  s = y + rng.permutation(len(y)) / (2.0 * len(y))  # positives above negatives, no ties
  pb = evaluate_per_brand(b, m, s, y, c, ks=(1, 5, 10))
  for k in (1, 5, 10):
    np.testing.assert_allclose(pb[f"recall@{k}"], np.minimum(k, pb["n_pos"]) / pb["n_pos"])
  r = evaluate(b, m, s, y, c)
  assert r["mrr"] == 1 and r["map"] == 1 and r["medr"] == 1
  assert r["auc"] == 1 and r["cauc"] == 1
  # reversed scores: worst possible
  r = evaluate(b, m, -s, y, c)
  assert r["auc"] == 0 and r["cauc"] == 0


def test_random_scores_auc_near_half():
  rng = np.random.default_rng(4)
  b, m, _, y, c = _random_long(rng, n_brands=60, n_cand=200)
  r = evaluate(b, m, rng.random(len(b)), y, c)
  assert abs(r["auc"] - 0.5) < 0.03 and abs(r["cauc"] - 0.5) < 0.05


def test_brand_without_positives_skipped_and_counted():
  r = evaluate([1, 1, 2, 2, 3], [1, 2, 1, 2, 1], [0.2, 0.1, 0.5, 0.9, 0.3],
               [1, 0, 0, 0, False])
  assert r["n_brands"] == 1 and r["n_skipped"] == 2 and r["n_pairs"] == 5
  assert r["mrr"] == 1 and r["auc"] == 1


def test_empty_input():
  r = evaluate([], [], [], [])
  assert r["n_brands"] == 0 and r["n_pairs"] == 0 and math.isnan(r["auc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scores=[0.1, np.nan, 0.3]), "finite"),
        (dict(scores=[0.1, np.inf, 0.3]), "finite"),
        (dict(labels=[1, 0]), "same length"),
        (dict(labels=[1, 2, 0]), "0/1"),
        (dict(labels=["1", "0", "0"]), "0/1"),
        (dict(brands=[[1], [1], [1]]), "1-D"),
        (dict(influencers=["a", "b", "a"]), r"duplicate .*\(1, 'a'\)"),
        (dict(ks=(0,)), "ks"),
        (dict(influencer_category=["x"]), "same length"),
    ],
)
def test_validation(kwargs, match):
  args = dict(brands=[1, 1, 1], influencers=["a", "b", "c"], scores=[0.1, 0.2, 0.3],
              labels=[1, 0, 0])
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    evaluate(**args)


def test_paper_size_structure():
  """The paper's test structure (74 x 797) evaluates every brand; speed is measured in benchmarks/."""
  rng = np.random.default_rng(5)
  b, m, s, y, c = _random_long(rng, n_brands=74, n_cand=797, n_levels=1000, p_pos=0.0144)
  r = evaluate(b, m, s, y, c)
  assert r["n_pairs"] == 58_978
  assert r["n_brands"] + r["n_skipped"] == 74


# --------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------
def _per_brand(values, key="mrr"):
  return {"brand": np.arange(len(values)), key: np.asarray(values, dtype=float)}


def test_bootstrap_detects_clear_difference():
  rng = np.random.default_rng(6)
  base = rng.random(74)
  a, b = _per_brand(base + 0.2 + 0.05 * rng.standard_normal(74)), _per_brand(base)
  r = paired_bootstrap(a, b, "mrr", n_resamples=2000, seed=0)
  assert r["diff"] == pytest.approx(0.2, abs=0.03)
  assert 0 < r["ci_low"] < r["diff"] < r["ci_high"]
  assert r["p_value"] < 0.01
  # reversed roles: b leads, so a's lead is never positive
  assert paired_bootstrap(b, a, "mrr", n_resamples=500)["p_value"] > 0.99


def test_bootstrap_null_difference():
  rng = np.random.default_rng(7)
  a, b = _per_brand(rng.random(74)), _per_brand(rng.random(74))
  r = paired_bootstrap(a, b, "mrr", n_resamples=2000, seed=1)
  assert r["ci_low"] < 0 < r["ci_high"]
  assert 0.05 < r["p_value"] < 0.95
  same = paired_bootstrap(a, a, "mrr", n_resamples=100)
  assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_bootstrap_medr_lower_is_better_and_seeded():
  rng = np.random.default_rng(8)
  ranks_b = rng.integers(5, 30, 74)
  a = _per_brand(np.maximum(ranks_b - 4, 1), "rank_first")
  b = _per_brand(ranks_b, "rank_first")
  r = paired_bootstrap(a, b, "medr", n_resamples=500, seed=3)
  assert r["diff"] < 0 and r["p_value"] < 0.05
  assert r == paired_bootstrap(a, b, "medr", n_resamples=500, seed=3)


def test_bootstrap_on_evaluate_per_brand_output_and_errors():
  rng = np.random.default_rng(9)
  b, m, s, y, c = _random_long(rng, n_brands=40, n_cand=100, p_pos=0.1)
  good = evaluate_per_brand(b, m, s + 2.0 * y, y, c)
  bad = evaluate_per_brand(b, m, s, y, c)
  for metric in ("auc", "cauc", "recall@10", "map", "mrr", "medr"):
    assert paired_bootstrap(good, bad, metric, n_resamples=300)["p_value"] < 0.05, metric
  with pytest.raises(ValueError, match="same brands"):
    paired_bootstrap(good, _per_brand(np.zeros(3), "auc"), "auc")
  with pytest.raises(ValueError, match="unknown metric"):
    paired_bootstrap(good, bad, "ndcg")


def test_bootstrap_interval_is_the_95_percent_percentile_interval():
  """ci_low, ci_high: the 2.5th and 97.5th percentiles of the resampled mean differences."""
  a = {"brand": np.arange(6), "mrr": np.array([1., .5, .2, 1., .25, .5])}
  b = {"brand": np.arange(6), "mrr": np.array([.5, .5, .5, .2, .2, .1])}
  r = metrics.paired_bootstrap(a, b, "mrr", n_resamples=500, seed=3)
  rng = np.random.default_rng(3)
  idx = rng.integers(0, 6, size=(500, 6))
  diffs = a["mrr"][idx].mean(1) - b["mrr"][idx].mean(1)
  assert (r["ci_low"], r["ci_high"]) == tuple(np.percentile(diffs, [2.5, 97.5]))


@pytest.mark.parametrize("field,values,why", [
    ("influencer_category", [np.nan, np.nan, 1.0], "missing value (nan) at row 0"),
    ("influencer_category", np.array(["food", None, "auto"], dtype=object), "missing value (None) at row 1"),
    ("brands", np.array(["b", None, "b"], dtype=object), "missing value (None) at row 1"),
    ("influencers", np.array(["m1", 2, "m3"], dtype=object), "mixed number and string values (row 1 is 2); use one kind"),
    ("brands", np.array([1, 2.5, 3], dtype=object), None),      # ints and floats: numbers
])
def test_missing_or_mixed_ids_and_categories_are_refused(field, values, why):
  """A missing category is not a category (two NaNs would count as one shared category in cAUC),
  and None among strings cannot be sorted: both are refused naming the field and the row."""
  args = {"brands": ["b"] * 3, "influencers": ["m1", "m2", "m3"], "influencer_category": None}
  args[field] = values
  run = lambda: metrics.evaluate(args["brands"], args["influencers"], [0.9, 0.5, 0.1],  # noqa: E731
                                 [1, 0, 0], args["influencer_category"])
  if why is None:
    assert run()["n_pairs"] == 3          # accepted
    return
  with pytest.raises(ValueError) as e:
    run()
  assert str(e.value) == f"{field}: {why}"
