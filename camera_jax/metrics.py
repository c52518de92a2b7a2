"""Ranking metrics of the CAMERA paper (IV-F, Table II), vectorised with numpy.

The input is the *long format*: one row per scored (brand, influencer) pair,
given as equal-length 1-D sequences ``brands``, ``influencers``, ``scores``,
``labels`` and optionally ``influencer_category``. Rows are grouped by brand
id (never by position) and, per brand, candidates are ranked by score,
descending. Ties count against the positive everywhere: the rank of a
candidate is the number of the brand's candidates whose score is ``>=`` its
score, so every member of a tie group takes the worst rank of the group.

Per evaluated brand ``b`` with ``P`` positives, ``N`` negatives and ranks
``r_1 <= ... <= r_P`` of its positives:

* ``recall@k = #{i : r_i <= k} / P``
* ``mrr``: ``1 / r_1`` (reciprocal rank of the best-ranked positive)
* ``rank_first``: ``r_1`` (``medr`` is the lower median of it over brands)
* ``map``: ``AP = (1 / P) * sum_i i / r_i``
* ``auc``: share of the ``P * N`` (positive, negative) pairs with positive
  score strictly greater (ties count as wrong); NaN when ``N == 0``.
* ``cauc``: the same over pairs whose influencers share a category; NaN when
  the brand has no such pair.

Aggregates are means over brands (``medr``: the lower middle element of the
sorted ``rank_first``, as the authors' code does). Brands without a positive
are skipped everywhere and counted in ``n_skipped``. See ``docs/metrics.md``
for the formulas and the differences from the authors' ``metrics_all.py``.

Example:

>>> r = evaluate(["b1"] * 4, ["m1", "m2", "m3", "m4"],
...              [0.9, 0.5, 0.5, 0.1], [0, 1, 0, 0])
>>> r["mrr"], r["medr"], r["auc"]   # m2 tied with m3 -> rank 3; beats m4 only
(0.3333333333333333, 3.0, 0.3333333333333333)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["evaluate", "evaluate_per_brand", "aggregate", "paired_bootstrap", "LOWER_IS_BETTER"]

#: Metric names for which a smaller value is better (used by paired_bootstrap).
LOWER_IS_BETTER = frozenset({"medr", "rank_first"})


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def _as_1d(name: str, x: Any) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
  return a


def _check_ids(name: str, a: np.ndarray | None) -> None:
  """Ids and categories must be present and of one kind: a None or NaN (a missing category
  would otherwise group with the other missing ones, and np.unique cannot sort None among
  strings) or a mix of strings and numbers is refused with the first bad row.

  >>> _check_ids("influencer_category", np.array(["food", None, "auto"], dtype=object))
  Traceback (most recent call last):
  ...
  ValueError: influencer_category: missing value (None) at row 1
  """
  if a is None or a.dtype.kind in "iubSU":
    return
  if a.dtype.kind == "f":
    bad = np.flatnonzero(np.isnan(a))
    if len(bad):
      raise ValueError(f"{name}: missing value (nan) at row {int(bad[0])}")
    return
  kinds = set()
  for i, v in enumerate(a.tolist()):
    if v is None or (isinstance(v, float) and v != v):
      raise ValueError(f"{name}: missing value ({v}) at row {i}")
    kinds.add("string" if isinstance(v, str) else
              "number" if isinstance(v, (int, float, np.number)) else type(v).__name__)
    if len(kinds) > 1:
      raise ValueError(f"{name}: mixed {' and '.join(sorted(kinds))} values (row {i} is {v!r}); "
                       "use one kind")


def _validate(brands, influencers, scores, labels, influencer_category, ks):
  b = _as_1d("brands", brands)
  m = _as_1d("influencers", influencers)
  s = _as_1d("scores", scores)
  try:
    s = s.astype(np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"scores must be numeric: {e}") from e
  y = _as_1d("labels", labels)
  arrays = {"brands": b, "influencers": m, "scores": s, "labels": y}
  c = None
  if influencer_category is not None:
    c = _as_1d("influencer_category", influencer_category)
    arrays["influencer_category"] = c
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"all inputs must have the same length, got {lengths}")
  for name in ("brands", "influencers", "influencer_category"):
    _check_ids(name, arrays.get(name))
  bad = ~np.isfinite(s)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(
        f"scores must be finite: {int(bad.sum())} non-finite value(s), "
        f"first at row {i} (brand {b[i]!r}, influencer {m[i]!r}): {s[i]}")
  if y.dtype != np.bool_:
    if y.dtype.kind not in "iuf":
      raise ValueError(f"labels must be 0/1 or bool, got dtype {y.dtype}")
    ok = (y == 0) | (y == 1)
    if not ok.all():
      i = int(np.flatnonzero(~ok)[0])
      raise ValueError(f"labels must be 0/1 or bool, got {y[i]!r} at row {i}")
    y = y == 1
  ks = tuple(int(k) for k in ks)
  if any(k < 1 for k in ks):
    raise ValueError(f"ks must be positive, got {ks}")
  return b, m, s, y, c, ks


def _py(x: Any) -> Any:
  return x.item() if isinstance(x, np.generic) else x


def _check_duplicates(bcode: np.ndarray, influencers: np.ndarray,
                      brand_ids: np.ndarray) -> None:
  order = np.lexsort((influencers, bcode))
  bs, ms = bcode[order], influencers[order]
  dup = (bs[1:] == bs[:-1]) & (ms[1:] == ms[:-1])
  if dup.any():
    j = int(np.flatnonzero(dup)[0])
    raise ValueError(
        f"duplicate (brand, influencer) pair {(_py(brand_ids[bs[j]]), _py(ms[j]))!r}: "
        f"{int(dup.sum())} duplicate row(s) in total; each pair must be scored once")


# --------------------------------------------------------------------------
# core: one sort, ranks with pessimistic ties, pairwise counts
# --------------------------------------------------------------------------
def _small_int(code: np.ndarray, n_codes: int) -> np.ndarray:
  """Casts dense codes to the smallest unsigned dtype (radix sort when <= 16 bit)."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if n_codes <= np.iinfo(dt).max + 1:
      return code.astype(dt)
  return code.astype(np.int64)


def _ranked(scores: np.ndarray, by_score: np.ndarray, key: np.ndarray, n_keys: int):
  """Sorts rows by (key, -score); returns sorted-row statistics.

  ``by_score`` is a stable argsort of ``-scores``; a stable sort of it by the
  dense group code ``key`` gives the (key, -score) order. Returns
  (order, group, rank, tie_end, start): ``group`` is the dense key of each
  sorted row, ``rank`` the number of rows of its group with score >= its
  score, ``tie_end`` the sorted index of the last row of its tie group and
  ``start`` the sorted index of the first row of its group.
  """
  n = len(scores)
  k = _small_int(key, n_keys)[by_score]
  order = by_score[np.argsort(k, kind="stable")]
  s = scores[order]
  group = key[order]
  new_group = np.ones(n, dtype=bool)
  new_group[1:] = group[1:] != group[:-1]
  new_tie = new_group.copy()
  new_tie[1:] |= s[1:] != s[:-1]
  idx = np.arange(n)
  start = np.maximum.accumulate(np.where(new_group, idx, 0))
  last_of_tie = np.flatnonzero(np.append(new_tie[1:], True))
  tie_end = last_of_tie[np.cumsum(new_tie) - 1]
  rank = tie_end - start + 1
  return order, group, rank, tie_end, start


def _correct_pairs(group, is_pos, tie_end, start, n_groups):
  """Per group: (#(pos, neg) pairs with pos score > neg score, #pos, #neg)."""
  neg = ~is_pos
  cum = np.cumsum(neg)
  before = cum[start] - neg[start]
  neg_ge = cum[tie_end] - before            # negatives with score >= row score
  n_neg = np.bincount(group, weights=neg, minlength=n_groups)
  n_pos = np.bincount(group, weights=is_pos, minlength=n_groups)
  gp = group[is_pos]
  correct = np.bincount(gp, weights=n_neg[gp] - neg_ge[is_pos], minlength=n_groups)
  return correct, n_pos, n_neg


def _lower_median(x: np.ndarray) -> float:
  if len(x) == 0:
    return float("nan")
  return float(np.sort(x)[(len(x) - 1) // 2])


def _nanmean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.mean()) if len(x) else float("nan")


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def evaluate_per_brand(
    brands: Sequence[Any],
    influencers: Sequence[Any],
    scores: Sequence[float],
    labels: Sequence[Any],
    influencer_category: Sequence[Any] | None = None,
    ks: Sequence[int] = (10, 50),
) -> dict[str, Any]:
  """Per-brand metrics of the paper, for per-category tables and bootstraps.

  Args:
    brands: brand id of each row (str or int).
    influencers: influencer id of each row; a (brand, influencer) pair may
      occur only once (duplicates raise ValueError naming the pair).
    scores: finite ranking score of each row (higher ranks first).
    labels: 1/True for a positive (cooperating) pair, 0/False otherwise.
    influencer_category: optional category of each row's influencer; enables
      ``cauc``.
    ks: cut-offs for ``recall@k``.

  Returns:
    A dict. Arrays aligned over the evaluated brands (those with at least one
    positive), sorted by brand id:
    ``brand`` (ids), ``n_pos``, ``n_neg`` (int), ``auc`` (NaN without
    negatives), ``cauc`` (only with categories; NaN without a same-category
    pair), ``recall@k`` per k, ``mrr`` (reciprocal rank of the best-ranked
    positive), ``map`` (average precision), ``rank_first`` (int rank of the
    best-ranked positive). Plus ``skipped`` (ids of the brands without a
    positive) and ``n_pairs`` (number of input rows).

  Example:

  >>> pb = evaluate_per_brand([1, 1, 1, 2, 2, 3], [7, 8, 9, 7, 8, 9],
  ...                         [3., 2., 1., 5., 5., 0.], [0, 1, 1, 1, 0, 0],
  ...                         ks=(1, 2))
  >>> pb["brand"].tolist(), pb["rank_first"].tolist(), pb["skipped"].tolist()
  ([1, 2], [2, 2], [3])
  >>> pb["map"].tolist()     # brand 1: (1/2 + 2/3) / 2; brand 2: 1/2
  [0.5833333333333333, 0.5]
  >>> pb["recall@2"].tolist(), pb["auc"].tolist()  # brand 2 tie counts as wrong
  ([0.5, 1.0], [0.0, 0.0])
  """
  b, m, s, y, c, ks = _validate(brands, influencers, scores, labels,
                                influencer_category, ks)
  n = len(s)
  brand_ids, bcode = np.unique(b, return_inverse=True)
  bcode = bcode.reshape(-1)
  nb = len(brand_ids)
  if n:
    _check_duplicates(bcode, m, brand_ids)

  out: dict[str, Any] = {}
  if n == 0:
    keep = np.zeros(0, dtype=bool)
    out["brand"] = brand_ids
    for key in ["n_pos", "n_neg", "rank_first"]:
      out[key] = np.zeros(0, dtype=np.int64)
    for key in ["auc"] + (["cauc"] if c is not None else []) + [
        f"recall@{k}" for k in ks] + ["mrr", "map"]:
      out[key] = np.zeros(0)
    out["skipped"] = brand_ids
    out["n_pairs"] = 0
    return out

  by_score = np.argsort(-s, kind="stable")
  order, g, rank, tie_end, start = _ranked(s, by_score, bcode, nb)
  ys = y[order]
  correct, n_pos_f, n_neg_f = _correct_pairs(g, ys, tie_end, start, nb)
  n_pos = n_pos_f.astype(np.int64)
  n_neg = n_neg_f.astype(np.int64)
  keep = n_pos > 0

  # Positives in sorted order: brands ascending, ranks non-decreasing.
  pg, pr = g[ys], rank[ys]
  first = np.ones(len(pg), dtype=bool)
  first[1:] = pg[1:] != pg[:-1]
  rank_first = np.zeros(nb, dtype=np.int64)
  rank_first[pg[first]] = pr[first]
  pos_start = np.maximum.accumulate(np.where(first, np.arange(len(pg)), 0))
  i_pos = np.arange(len(pg)) - pos_start + 1          # 1..P within each brand
  with np.errstate(invalid="ignore", divide="ignore"):
    ap = np.bincount(pg, weights=i_pos / pr, minlength=nb) / n_pos
    auc = np.where(n_neg > 0, correct / (n_pos_f * n_neg_f), np.nan)
    mrr = 1.0 / rank_first

  out["brand"] = brand_ids[keep]
  out["n_pos"] = n_pos[keep]
  out["n_neg"] = n_neg[keep]
  out["auc"] = auc[keep]
  if c is not None:
    cat_ids, ccode = np.unique(c, return_inverse=True)
    ccode = ccode.reshape(-1)
    nc = len(cat_ids)
    _, used = np.unique(bcode.astype(np.int64) * nc + ccode, return_inverse=True)
    used = used.reshape(-1)
    ng2 = int(used.max()) + 1
    o2, g2, _, te2, st2 = _ranked(s, by_score, used, ng2)
    corr2, p2, n2 = _correct_pairs(g2, y[o2], te2, st2, ng2)
    brand_of_group = np.zeros(ng2, dtype=np.int64)
    brand_of_group[g2] = bcode[o2]
    c_correct = np.bincount(brand_of_group, weights=corr2, minlength=nb)
    c_pairs = np.bincount(brand_of_group, weights=p2 * n2, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
      cauc = np.where(c_pairs > 0, c_correct / c_pairs, np.nan)
    out["cauc"] = cauc[keep]
  for k in ks:
    hits = np.bincount(pg, weights=pr <= k, minlength=nb)
    out[f"recall@{k}"] = (hits[keep] / n_pos[keep]).astype(np.float64)
  out["mrr"] = mrr[keep]
  out["map"] = ap[keep]
  out["rank_first"] = rank_first[keep]
  out["skipped"] = brand_ids[~keep]
  out["n_pairs"] = n
  return out


def aggregate(per_brand: Mapping[str, Any]) -> dict[str, Any]:
  """Aggregates :func:`evaluate_per_brand` output into the paper's table row.

  Means over brands; ``auc``/``cauc`` ignore brands where they are NaN;
  ``medr`` is the lower median of ``rank_first``. Also returns ``n_brands``,
  ``n_skipped``, ``n_pairs``, ``n_brands_auc`` and (with categories)
  ``n_brands_cauc``.

  Example:

  >>> pb = evaluate_per_brand(["a", "a", "b", "b"], [1, 2, 1, 2],
  ...                         [1., 0., 0., 1.], [1, 0, 1, 0], ks=(1,))
  >>> aggregate(pb)["medr"], aggregate(pb)["recall@1"]   # ranks 1 and 2
  (1.0, 0.5)
  """
  out: dict[str, Any] = {}
  out["auc"] = _nanmean(np.asarray(per_brand["auc"], dtype=np.float64))
  if "cauc" in per_brand:
    out["cauc"] = _nanmean(np.asarray(per_brand["cauc"], dtype=np.float64))
  for key in per_brand:
    if isinstance(key, str) and key.startswith("recall@"):
      out[key] = _nanmean(np.asarray(per_brand[key], dtype=np.float64))
  out["mrr"] = _nanmean(np.asarray(per_brand["mrr"], dtype=np.float64))
  out["map"] = _nanmean(np.asarray(per_brand["map"], dtype=np.float64))
  out["medr"] = _lower_median(np.asarray(per_brand["rank_first"]))
  out["n_brands"] = int(len(per_brand["brand"]))
  out["n_skipped"] = int(len(per_brand["skipped"]))
  out["n_pairs"] = int(per_brand["n_pairs"])
  out["n_brands_auc"] = int(np.sum(~np.isnan(np.asarray(per_brand["auc"], dtype=float))))
  if "cauc" in per_brand:
    out["n_brands_cauc"] = int(np.sum(~np.isnan(np.asarray(per_brand["cauc"], dtype=float))))
  return out


def evaluate(
    brands: Sequence[Any],
    influencers: Sequence[Any],
    scores: Sequence[float],
    labels: Sequence[Any],
    influencer_category: Sequence[Any] | None = None,
    ks: Sequence[int] = (10, 50),
) -> dict[str, Any]:
  """The paper's Table II metrics over the scored test pairs.

  Same arguments as :func:`evaluate_per_brand`; returns
  ``aggregate(evaluate_per_brand(...))``: keys ``auc``, ``cauc`` (only with
  categories), ``recall@k`` per k, ``mrr``, ``map``, ``medr`` (floats; NaN
  when nothing is evaluable), ``n_brands`` (brands with >= 1 positive),
  ``n_skipped`` (brands without positives, excluded from every metric),
  ``n_pairs`` (rows), ``n_brands_auc`` (brands with >= 1 negative, the AUC
  denominator) and ``n_brands_cauc`` (brands with a same-category pair).

  Example:

  >>> r = evaluate(["x"] * 3 + ["y"] * 3, ["a", "b", "c"] * 2,
  ...              [0.3, 0.2, 0.1, 0.3, 0.2, 0.1], [1, 0, 0, 0, 0, 1],
  ...              influencer_category=["u", "u", "v"] * 2, ks=(1, 2))
  >>> r["recall@1"], r["mrr"], r["medr"]   # ranks 1 and 3; lower median = 1
  (0.5, 0.6666666666666666, 1.0)
  >>> r["auc"], r["cauc"], r["n_brands_cauc"]   # y has no same-category pair
  (0.5, 1.0, 1)
  """
  return aggregate(evaluate_per_brand(brands, influencers, scores, labels,
                                      influencer_category, ks))


def paired_bootstrap(
    per_brand_a: Mapping[str, Any],
    per_brand_b: Mapping[str, Any],
    metric: str,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
  """Paired bootstrap over test brands of the difference ``a - b``.

  Brands are resampled with replacement (the same resample for both systems);
  the statistic is the mean over brands, or the lower median of
  ``rank_first`` for ``metric`` ``"medr"`` / ``"rank_first"``. Brands where
  either system's value is NaN (e.g. AUC of a brand without negatives) are
  dropped first. Both inputs must come from :func:`evaluate_per_brand` on the
  same brands.

  Args:
    per_brand_a: per-brand metrics of system a.
    per_brand_b: per-brand metrics of system b (same ``brand`` array).
    metric: a per-brand key (``auc``, ``cauc``, ``recall@k``, ``mrr``,
      ``map``, ``rank_first``) or ``medr``.
    n_resamples: number of bootstrap resamples.
    seed: seed of the numpy Generator drawing the resamples.

  Returns:
    ``diff`` (statistic of a minus statistic of b on the observed brands),
    ``ci_low``/``ci_high`` (2.5 and 97.5 percentiles of the resampled
    differences) and ``p_value``: one-sided, the share of resamples in which
    a's lead is <= 0, where the lead is ``a - b``, or ``b - a`` for the
    lower-is-better ``medr``/``rank_first``. A small p means a is better.

  Example:

  >>> a = {"brand": np.arange(4), "mrr": np.array([1., 1., .5, 1.])}
  >>> b = {"brand": np.arange(4), "mrr": np.array([.5, .5, .25, .5])}
  >>> r = paired_bootstrap(a, b, "mrr", n_resamples=200)
  >>> r["diff"], r["p_value"]
  (0.4375, 0.0)
  """
  if not np.array_equal(np.asarray(per_brand_a["brand"]),
                        np.asarray(per_brand_b["brand"])):
    raise ValueError("per_brand_a and per_brand_b must cover the same brands "
                     "in the same order")
  key = "rank_first" if metric == "medr" else metric
  if key not in per_brand_a or key not in per_brand_b:
    raise ValueError(f"unknown metric {metric!r}")
  a = np.asarray(per_brand_a[key], dtype=np.float64)
  b = np.asarray(per_brand_b[key], dtype=np.float64)
  ok = ~(np.isnan(a) | np.isnan(b))
  a, b = a[ok], b[ok]
  n = len(a)
  if n == 0:
    raise ValueError(f"no brand has a defined {metric!r} in both inputs")
  if n_resamples < 1:
    raise ValueError("n_resamples must be >= 1")
  median = metric in LOWER_IS_BETTER

  def stat(x: np.ndarray) -> np.ndarray:
    if median:
      return np.sort(x, axis=-1)[..., (x.shape[-1] - 1) // 2]
    return x.mean(axis=-1)

  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(n_resamples, n))
  diffs = stat(a[idx]) - stat(b[idx])
  lead = -diffs if median else diffs
  lo, hi = np.percentile(diffs, [2.5, 97.5])
  return {
      "diff": float(stat(a) - stat(b)),
      "ci_low": float(lo),
      "ci_high": float(hi),
      "p_value": float(np.mean(lead <= 0)),
  }
