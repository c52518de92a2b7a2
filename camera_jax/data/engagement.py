"""Engagement features for the endorsement and influence scores (paper section III-D-1).

* :func:`engagement_rate` is eq. (10): ``E(p) = (#likes + #comments) / #followers``.
* :func:`account_engagement` gives every account its follower count and its average engagement
  rate ``E_bar(a)``, the mean of eq. (10) over the account's posts.

Scaling fed to the score MLPs. The paper feeds the raw values into
``phi(x) = sigmoid(x W1 + b) W2`` (eqs. 12, 13, 15, 16). Raw follower counts of micro-influencers and
brands span 1e4..1e6 (and more), so ``x W1`` saturates the sigmoid for any weight of the initial
scale (0.1): every account then looks the same to phi. Engagement rates are the opposite, around
0.01..0.1, so they barely move it. This project therefore feeds:

* :func:`scale_followers`: ``log10(max(followers, 1)) - 4``: 10k followers -> 0, 100k -> 1, 1M -> 2,
  1k -> -1;
* :func:`scale_engagement`: ``log10(E + 1e-4) + 2``: 1 % -> ~0 (0.004), 10 % -> ~1, 0.1 % -> ~-1,
  no engagement at all -> -2 (the 1e-4 keeps log10 finite).

Both map the data into roughly [-2, 3], where the sigmoid is responsive. A follower count below 1
is treated as 1 in eq. (10) so that the rate stays finite (a data set passing the format validator
has positive counts anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from camera_jax.data.format import Dataset

__all__ = [
    "engagement_rate",
    "post_engagement",
    "account_engagement",
    "scale_followers",
    "scale_engagement",
    "FOLLOWERS_OFFSET",
    "ENGAGEMENT_EPS",
    "ENGAGEMENT_OFFSET",
]

FOLLOWERS_OFFSET = 4.0  # log10 of the follower count that scales to 0 (10,000)
ENGAGEMENT_EPS = 1e-4  # added to E before log10
ENGAGEMENT_OFFSET = 2.0  # added after log10, so a 1 % engagement rate scales to ~0


def engagement_rate(likes: ArrayLike, comments: ArrayLike, followers: ArrayLike) -> np.ndarray:
    """Eq. (10): ``E(p) = (#likes + #comments) / #followers``, vectorised, float64.

    Arguments broadcast against each other. Followers below 1 count as 1.

    >>> engagement_rate([90, 0], [10, 5], [1000, 500]).tolist()
    [0.1, 0.01]
    """
    likes = np.asarray(likes, dtype=np.float64)
    comments = np.asarray(comments, dtype=np.float64)
    followers = np.maximum(np.asarray(followers, dtype=np.float64), 1.0)
    return (likes + comments) / followers


def _post_arrays(dataset: "Dataset") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(post owner row [P], likes [P], comments [P], followers per account row [A])."""
    account_row = dataset.account_index()
    owner = np.fromiter((account_row[p.account] for p in dataset.posts), np.int64, len(dataset.posts))
    likes = np.fromiter((p.likes for p in dataset.posts), np.float64, len(dataset.posts))
    comments = np.fromiter((p.comments for p in dataset.posts), np.float64, len(dataset.posts))
    followers = np.fromiter((a.followers for a in dataset.accounts), np.float64, len(dataset.accounts))
    return owner, likes, comments, followers


def post_engagement(dataset: "Dataset") -> np.ndarray:
    """Eq. (10) for every post, float64 [P] in ``dataset.posts`` order.

    The follower count is the post's account's (the data have one count per account).
    """
    owner, likes, comments, followers = _post_arrays(dataset)
    return engagement_rate(likes, comments, followers[owner])


def history_post_mask(dataset: "Dataset") -> np.ndarray:
    """bool [P]: False for the posts named by a cooperation (sponsored posts), True otherwise.

    The history of ``--history=unsponsored``: a sponsored post is the outcome of its
    cooperation (in the synthetic data its concepts lean toward the brand and its engagement is
    lifted), so with every post as history (``--history=all``, the paper's data and the default)
    a test positive's own sponsored post is part of the candidate's features. Dropping every
    sponsored post (training brands' too, so training and test features are built alike) takes
    that evidence away, at the price of reading ``cooperations.jsonl`` to choose the posts: see
    docs/evaluation.md.

    >>> from types import SimpleNamespace as N
    >>> ds = N(posts=[N(id="p0"), N(id="p1"), N(id="p2")], cooperations=[N(post="p1")])
    >>> history_post_mask(ds).tolist()
    [True, False, True]
    """
    sponsored = {c.post for c in dataset.cooperations}
    return np.fromiter((p.id not in sponsored for p in dataset.posts), bool, len(dataset.posts))


def account_engagement(dataset: "Dataset", posts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Follower counts and average engagement rates per account (eq. 10 averaged).

    Args:
      dataset: the dataset.
      posts: optional bool [P]: the posts the engagement statistics average over (e.g.
        :func:`history_post_mask`); every post when None. ``n_posts`` counts the same posts.

    Returns:
      A dict of arrays indexed by account row (``dataset.accounts`` order):
        ``followers`` float64 [A]; ``mean_engagement`` float64 [A], ``E_bar(a)``, the mean of
        eq. (10) over the account's (selected) posts, 0 for an account without posts;
        ``post_engagement_std`` float64 [A], the population standard deviation of eq. (10) over
        the same posts (0 without posts); ``n_posts`` int64 [A], the account's number of
        (selected) posts.
    """
    owner, likes, comments, followers = _post_arrays(dataset)
    n_accounts = len(dataset.accounts)
    rates = engagement_rate(likes, comments, followers[owner])
    if posts is not None:
        keep = np.asarray(posts, bool)
        owner, rates = owner[keep], rates[keep]
    count = np.bincount(owner, minlength=n_accounts)
    n_posts = count.astype(np.int64)
    totals = np.bincount(owner, weights=rates, minlength=n_accounts)
    mean = np.divide(totals, count, out=np.zeros(n_accounts), where=count > 0)
    sq = np.bincount(owner, weights=(rates - mean[owner]) ** 2, minlength=n_accounts)
    std = np.sqrt(np.divide(sq, count, out=np.zeros(n_accounts), where=count > 0))
    return {"followers": followers, "mean_engagement": mean, "post_engagement_std": std,
            "n_posts": n_posts}


def scale_followers(followers: ArrayLike) -> np.ndarray:
    """Follower counts as the influence MLP gets them: ``log10(max(x, 1)) - 4``, float32.

    >>> scale_followers([1e4, 1e5, 1e6, 0]).tolist()
    [0.0, 1.0, 2.0, -4.0]
    """
    x = np.maximum(np.asarray(followers, dtype=np.float64), 1.0)
    return (np.log10(x) - FOLLOWERS_OFFSET).astype(np.float32)


def scale_engagement(rate: ArrayLike) -> np.ndarray:
    """Engagement rates as the score MLPs get them: ``log10(E + 1e-4) + 2``, float32.

    >>> [round(float(v), 3) for v in scale_engagement([0.01, 0.1, 0.0])]
    [0.004, 1.0, -2.0]
    """
    e = np.maximum(np.asarray(rate, dtype=np.float64), 0.0)
    return (np.log10(e + ENGAGEMENT_EPS) + ENGAGEMENT_OFFSET).astype(np.float32)
