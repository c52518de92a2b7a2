"""Label-free baselines: the paper's RAND and MIV (IV-E), and POP, ENG and CONTENT (ours).

POP (followers), ENG (engagement rate) and CONTENT (w_a cosine) are not in the paper; they are
this project's sanity checks of the single signals CAMERA combines.

Every baseline is a pure function ``f(pairs, features, rng=None) -> scores``
with no label argument, so it cannot see which pairs cooperated:

``pairs``: ``dict(brand=int [N], influencer=int [N])``, account rows (indices
into the feature arrays) of the scored (brand, influencer) pairs.

``features``: a dict of arrays indexed by account row (``A`` accounts):

* ``followers`` [A]: follower count (POP, MIV's normalisation set is the
  candidates, see below);
* ``mean_engagement`` [A]: average engagement rate, mean over the account's
  posts of eq. (10) ``(likes + comments) / followers``
  (``camera_jax.data.engagement.account_engagement``);
* ``n_posts`` [A]: number of posts of the account;
* ``w_a`` [A, n]: historical concept distribution of eq. (5) (CONTENT);
* ``post_engagement_std`` [A], optional: standard deviation of eq. (10) over
  the account's posts (MIV's steadiness factor when present).

Only the keys a baseline uses must be present. Scores are float64 [N]; a
larger score ranks the influencer higher for the pair's brand.

* ``RAND``: i.i.d. uniform [0, 1) scores drawn from ``rng`` (a seeded
  ``np.random.Generator``, required).
* ``POP``: the influencer's follower count.
* ``ENG``: the influencer's mean engagement rate.
* ``MIV``: activeness-based influence (Li et al. 2011, "Discovering
  influencers for marketing in the blogosphere", Information Sciences
  181(23)), adapted as the paper did ("we adopted the activeness-based
  factors module"). Our reading, not the authors' code: the mean of
  min-max normalised activeness factors of the influencer,

  - activity ``log1p(n_posts)``,
  - response ``log10(mean_engagement + 1e-4)`` (engagement received per
    post relative to followers, on the project's engagement scale),
  - steadiness ``-log1p(post_engagement_std / (mean_engagement + 1e-4))``
    (only when ``post_engagement_std`` is given: a steady response is more
    active than a few viral posts),

  each min-max normalised to [0, 1] over the distinct candidate influencers
  in ``pairs`` (a constant factor contributes 0). The score depends on the
  candidate set but not on labels or row order.
* ``CONTENT``: cosine similarity of the brand's and the influencer's ``w_a``
  (0 when either is all zero).

Example:

>>> pairs = dict(brand=np.array([0, 0]), influencer=np.array([1, 2]))
>>> feats = dict(followers=np.array([1e6, 2e4, 5e4]),
...              mean_engagement=np.array([.01, .08, .02]),
...              n_posts=np.array([50, 50, 50]),
...              w_a=np.array([[.8, .2], [.7, .3], [.1, .9]]))
>>> score_baseline("POP", pairs, feats).tolist()
[20000.0, 50000.0]
>>> score_baseline("MIV", pairs, feats).tolist()    # posts constant -> 0
[0.5, 0.0]
>>> np.round(score_baseline("CONTENT", pairs, feats), 3).tolist()
[0.987, 0.348]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "BASELINES",
    "score_baseline",
    "random_scores",
    "popularity_scores",
    "engagement_scores",
    "miv_scores",
    "content_scores",
    "MIV_ENGAGEMENT_EPS",
]

#: Added to engagement rates before log10 / division in MIV (as in
#: ``camera_jax.data.engagement.ENGAGEMENT_EPS``).
MIV_ENGAGEMENT_EPS = 1e-4

Pairs = Mapping[str, Any]
Features = Mapping[str, Any]
Baseline = Callable[..., np.ndarray]


def _pair_rows(pairs: Pairs, features: Features, key: str) -> tuple[np.ndarray, np.ndarray]:
  """Validated (brand rows, influencer rows) against ``features[key]``."""
  for k in ("brand", "influencer"):
    if k not in pairs:
      raise ValueError(f"pairs needs key {k!r}, got {sorted(pairs)}")
  b = np.asarray(pairs["brand"])
  m = np.asarray(pairs["influencer"])
  if b.ndim != 1 or m.ndim != 1 or len(b) != len(m):
    raise ValueError(f"pairs brand/influencer must be 1-D of equal length, "
                     f"got shapes {b.shape} and {m.shape}")
  if len(b) and (b.dtype.kind not in "iu" or m.dtype.kind not in "iu"):
    raise ValueError("pairs brand/influencer must be integer account rows")
  if key not in features:
    raise ValueError(f"features needs key {key!r}, got {sorted(features)}")
  n_acc = len(np.asarray(features[key]))
  for name, rows in (("brand", b), ("influencer", m)):
    if len(rows) and (rows.min() < 0 or rows.max() >= n_acc):
      raise ValueError(f"pairs {name} rows must lie in [0, {n_acc}), got "
                       f"[{rows.min()}, {rows.max()}]")
  return b.astype(np.int64), m.astype(np.int64)


def _feature(features: Features, key: str) -> np.ndarray:
  x = np.asarray(features[key], dtype=np.float64)
  if not np.isfinite(x).all():
    raise ValueError(f"features[{key!r}] must be finite")
  return x


def random_scores(pairs: Pairs, features: Features,
                  rng: np.random.Generator | None = None) -> np.ndarray:
  """RAND: uniform [0, 1) scores, one draw per pair from ``rng`` (required).

  >>> p = dict(brand=np.array([0, 0, 0]), influencer=np.array([1, 2, 3]))
  >>> a = random_scores(p, {}, np.random.default_rng(0))
  >>> bool(np.array_equal(a, random_scores(p, {}, np.random.default_rng(0))))
  True
  """
  if rng is None:
    raise ValueError("RAND needs a seeded numpy Generator (rng)")
  n = len(np.asarray(pairs["brand"]))
  if len(np.asarray(pairs["influencer"])) != n:
    raise ValueError("pairs brand/influencer must have equal length")
  return rng.random(n)


def popularity_scores(pairs: Pairs, features: Features,
                      rng: np.random.Generator | None = None) -> np.ndarray:
  """POP: the influencer's follower count.

  >>> popularity_scores(dict(brand=[0], influencer=[1]),
  ...                   dict(followers=[9, 7])).tolist()
  [7.0]
  """
  _, m = _pair_rows(pairs, features, "followers")
  return _feature(features, "followers")[m]


def engagement_scores(pairs: Pairs, features: Features,
                      rng: np.random.Generator | None = None) -> np.ndarray:
  """ENG: the influencer's mean engagement rate (eq. 10 averaged over posts).

  >>> engagement_scores(dict(brand=[0], influencer=[1]),
  ...                   dict(mean_engagement=[.5, .03])).tolist()
  [0.03]
  """
  _, m = _pair_rows(pairs, features, "mean_engagement")
  return _feature(features, "mean_engagement")[m]


def _minmax(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """``x`` min-max normalised over ``x[rows]`` (0 where the range is 0)."""
  lo, hi = x[rows].min(), x[rows].max()
  if hi - lo <= 0:
    return np.zeros_like(x)
  return (x - lo) / (hi - lo)


def miv_scores(pairs: Pairs, features: Features,
               rng: np.random.Generator | None = None) -> np.ndarray:
  """MIV: activeness-based influence (our reading of Li et al. 2011).

  Mean of the min-max normalised factors ``log1p(n_posts)``,
  ``log10(mean_engagement + 1e-4)`` and, when ``post_engagement_std`` is
  given, ``-log1p(std / (mean_engagement + 1e-4))``; normalised over the
  distinct candidate influencers of ``pairs``.

  >>> p = dict(brand=np.array([0, 0, 0]), influencer=np.array([1, 2, 3]))
  >>> f = dict(n_posts=np.array([50, 10, 50, 30]),
  ...          mean_engagement=np.array([.1, .001, .1, .01]))
  >>> np.round(miv_scores(p, f), 3).tolist()    # factors (0, 0), (1, 1), (.68, .49)
  [0.0, 1.0, 0.583]
  """
  _, m = _pair_rows(pairs, features, "n_posts")
  if len(m) == 0:
    return np.zeros(0)
  cand = np.unique(m)
  eng = np.maximum(_feature(features, "mean_engagement"), 0.0)
  factors = [
      np.log1p(np.maximum(_feature(features, "n_posts"), 0.0)),
      np.log10(eng + MIV_ENGAGEMENT_EPS),
  ]
  if "post_engagement_std" in features:
    std = np.maximum(_feature(features, "post_engagement_std"), 0.0)
    factors.append(-np.log1p(std / (eng + MIV_ENGAGEMENT_EPS)))
  score = np.mean([_minmax(f, cand) for f in factors], axis=0)
  return score[m]


def content_scores(pairs: Pairs, features: Features,
                   rng: np.random.Generator | None = None) -> np.ndarray:
  """CONTENT: cosine similarity of the brand's and influencer's ``w_a``.

  >>> content_scores(dict(brand=[0, 0], influencer=[1, 2]),
  ...                dict(w_a=[[1., 0.], [2., 0.], [0., 0.]])).tolist()
  [1.0, 0.0]
  """
  b, m = _pair_rows(pairs, features, "w_a")
  w = _feature(features, "w_a")
  if w.ndim != 2:
    raise ValueError(f"features['w_a'] must be [A, n], got shape {w.shape}")
  norm = np.linalg.norm(w, axis=1)
  unit = np.divide(w, norm[:, None], out=np.zeros_like(w), where=norm[:, None] > 0)
  return np.einsum("ij,ij->i", unit[b], unit[m])


#: The baselines by name (upper case, as in the paper's tables).
BASELINES: dict[str, Baseline] = {
    "RAND": random_scores,
    "POP": popularity_scores,
    "ENG": engagement_scores,
    "MIV": miv_scores,
    "CONTENT": content_scores,
}


def score_baseline(name: str, pairs: Pairs, features: Features,
                   rng: np.random.Generator | None = None) -> np.ndarray:
  """Scores ``pairs`` with the baseline ``name`` (case-insensitive).

  Args:
    name: one of ``BASELINES`` (RAND, POP, ENG, MIV, CONTENT).
    pairs: ``dict(brand=int [N], influencer=int [N])`` account rows.
    features: per-account arrays (see the module docstring).
    rng: a seeded ``np.random.Generator``; required by RAND only.

  Returns:
    float64 scores [N], aligned with the pairs.

  >>> score_baseline("eng", dict(brand=[0], influencer=[1]),
  ...                dict(mean_engagement=[0., .2])).tolist()
  [0.2]
  """
  try:
    fn = BASELINES[name.upper()]
  except KeyError:
    raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}") from None
  return np.asarray(fn(pairs, features, rng), dtype=np.float64)
