"""Which of an account's top-K concepts the explanations show.

An account whose history posts show fewer than K concepts (h = 1 in some post,
``pipeline.account_shown``) has its K slots of ``top_idx`` filled with others
(``tables.top_mask`` False). The BCAM attention masks them out (their w_b / w_m are 0) and their w_a is the account's smallest; the recommendations' concept lists, the radar charts
and the search labels leave them out rather than show a food influencer's "car 0".
"""

from __future__ import annotations

from typing import Any

import numpy as np


def shown_concepts(run: Any, row: int) -> np.ndarray:
  """[K] bool: which of ``run.top_idx[row]`` the account's posts show. An account whose posts
  show fewer than K concepts (``pipeline.account_shown``) has its K slots filled with others (``tables.top_mask`` False):
  the attention masks them out (their w_b / w_m are 0), and neither the charts, the
  recommendations' concept lists nor the search labels show them as the account's. A run
  object without a mask (``tables.top_mask``), or an account none of whose slots its posts
  show, shows every slot (a chart needs a spoke)."""
  k = np.asarray(run.top_idx[row]).reshape(-1).shape[0]
  mask = getattr(getattr(run, "tables", None), "top_mask", None)
  shown = None if mask is None else np.asarray(mask[row], bool).reshape(-1)
  return np.ones(k, bool) if shown is None or not shown.any() else shown


def supported_top(run: Any, row: int) -> list[int]:
  """The concept indices of ``run.top_idx[row]`` that :func:`shown_concepts` keeps, in order."""
  idx = np.asarray(run.top_idx[row]).reshape(-1)
  return [int(c) for c in idx[shown_concepts(run, row)]]


def shown_w_a(run: Any, rows: Any) -> np.ndarray:
  """``run.w_a[rows]`` [len(rows), n] with every concept the account's posts do not show set to
  0: the historical distribution keyword search ranks and labels accounts by. A filler slot's
  w_a is small but not 0 (eq. 5's softmax gives every concept some mass), and a food influencer
  whose filler is "motorcycle" matched the query "motorcycle" through it. The shown concepts are
  ``run.shown`` (every concept some history post shows) where the run has it, else those of
  :func:`supported_top` (the run's top-K only)."""
  rows = [int(r) for r in rows]
  w_a = np.asarray(run.w_a)
  shown = getattr(run, "shown", None)
  if shown is not None:
    return np.where(np.asarray(shown)[rows], w_a[rows], 0).astype(w_a.dtype)
  out = np.zeros((len(rows), w_a.shape[1]), w_a.dtype)
  for j, r in enumerate(rows):
    keep = supported_top(run, r)
    out[j, keep] = w_a[r, keep]
  return out
