"""The concept generator: a multi-label post classifier (paper IV-D).

"Based on the post-concept dataset, we trained a multi-label post classification as concept
generator. By using this concept generator, all posts in the brand-micro-influencer dataset are
labeled with several social media concepts" -- this module gives the classifier
(:class:`ConceptGenerator`), its loss (:func:`multilabel_bce`), the rule turning its scores
into the multi-hot vector h (:func:`predict_multi_hot`) and numpy metrics
(:func:`multilabel_metrics`, :func:`precision_at_k`).

The backbone is the project's :class:`~camera_jax.models.visual.VisualEncoder` (the authors
used a similar small VGG-style CNN at 96 px with a 1024-unit dense layer and a sigmoid per
label).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from camera_jax.models.visual import VisualEncoder


class ConceptGenerator(nn.Module):
  """Multi-label classifier: image [B, S, S, 3] -> concept logits [B, num_concepts].

  Attributes:
    num_concepts: n, the size of the concept vocabulary.
    channels, pools, fc: the :class:`VisualEncoder` backbone sizes.
    dropout: dropout rate on v1 before the output layer (0 disables it; needs a
      ``'dropout'`` rng when > 0 and ``train``).
    dtype: computation dtype of the backbone; the logits are always float32.
  """

  num_concepts: int
  channels: Sequence[int] = (32, 64, 64, 128, 128)
  pools: Sequence[int] = (3, 1, 2, 1, 2)
  fc: int = 1024
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
    """Returns float32 logits [B, num_concepts]; sigmoid(logits) are the label probabilities."""
    v1 = VisualEncoder(self.channels, self.pools, self.fc, dtype=self.dtype, name="encoder")(
        x, train=train, mask=mask)
    v1 = v1.astype(jnp.float32)
    if self.dropout > 0:
      v1 = nn.Dropout(self.dropout, deterministic=not train)(v1)
    return nn.Dense(self.num_concepts, name="head")(v1)


def multilabel_bce(logits: jax.Array, targets: jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
  """Sigmoid binary cross-entropy, mean over the valid rows and all labels.

  Args:
    logits: [B, n].
    targets: [B, n] multi-hot (bool or {0, 1} float).
    mask: bool [B]; False rows (padding) contribute nothing. None = all rows valid.

  Returns:
    Scalar float32; 0 when no row is valid.
  """
  logits = logits.astype(jnp.float32)
  per = optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32))
  per_row = jnp.mean(per, axis=-1)
  if mask is None:
    mask = jnp.ones(per_row.shape, bool)
  m = mask.astype(jnp.float32)
  return jnp.sum(per_row * m) / jnp.maximum(jnp.sum(m), 1.0)


def predict_multi_hot(logits: jax.Array, *, threshold: float = 0.5, min_k: int = 1,
                      max_k: int | None = None) -> jax.Array:
  """Turns classifier scores into the multi-hot concept vector h.

  A concept is selected when sigmoid(logit) >= ``threshold``; in addition the ``min_k``
  highest-scoring concepts of each row are always selected (so no post is left without a
  concept when ``min_k >= 1``), and at most the ``max_k`` highest-scoring concepts are kept
  (``max_k`` wins over ``min_k`` if smaller). Ties in score are ranked by lower concept index.

  Args:
    logits: [..., n].
    threshold: probability threshold.
    min_k: number of top concepts always selected.
    max_k: cap on the number of selected concepts; None = no cap.

  Returns:
    bool [..., n].
  """
  logits = jnp.asarray(logits, jnp.float32)
  order = jnp.argsort(-logits, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)  # rank[i] = position of concept i
  sel = (jax.nn.sigmoid(logits) >= threshold) | (rank < min_k)
  if max_k is not None:
    sel = sel & (rank < max_k)
  return sel


def precision_at_k(scores: np.ndarray, target: np.ndarray, k: int,
                   mask: np.ndarray | None = None) -> float:
  """Mean over rows of |top-k scored concepts ∩ true concepts| / k.

  Ties in score are broken by lower concept index. Rows where ``mask`` is False are skipped;
  returns 0.0 when no row remains.
  """
  scores = np.asarray(scores, np.float64)
  target = np.asarray(target).astype(bool)
  if mask is not None:
    keep = np.asarray(mask, bool)
    scores, target = scores[keep], target[keep]
  if scores.shape[0] == 0:
    return 0.0
  k = min(k, scores.shape[-1])
  top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
  hits = np.take_along_axis(target, top, axis=-1).sum(-1)
  return float(np.mean(hits / k))


def multilabel_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                       *, scores: np.ndarray | None = None,
                       ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
  """Multi-label classification metrics in numpy.

  Args:
    pred: bool [B, n] predicted multi-hot.
    target: bool [B, n] true multi-hot.
    mask: bool [B]; rows where False are ignored. None = all rows.
    scores: optional [B, n] scores (logits or probabilities) for precision@k.
    ks: the k of the ``precision_at_{k}`` entries (only when ``scores`` is given).

  Returns:
    dict with ``micro_precision``, ``micro_recall``, ``micro_f1`` (over all (row, label)
    cells), ``macro_f1`` (mean per-label F1 over the labels that occur in the target or the
    prediction of a valid row; labels absent from both are left out rather than counted as 0
    or 1), ``samples_f1`` (mean per-row F1, a row with empty target and prediction counts 1),
    ``exact_match`` and, with ``scores``, ``precision_at_{k}`` for each k. Ratios with a zero
    denominator are 0.
  """
  pred = np.asarray(pred).astype(bool)
  target = np.asarray(target).astype(bool)
  if mask is not None:
    keep = np.asarray(mask, bool)
    pred, target = pred[keep], target[keep]
    if scores is not None:
      scores = np.asarray(scores)[keep]

  def ratio(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)

  tp = (pred & target).sum(0).astype(np.float64)
  fp = (pred & ~target).sum(0).astype(np.float64)
  fn = (~pred & target).sum(0).astype(np.float64)
  p = float(ratio(tp.sum(), tp.sum() + fp.sum()))
  r = float(ratio(tp.sum(), tp.sum() + fn.sum()))
  micro_f1 = float(ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
  label_f1 = ratio(2 * tp, 2 * tp + fp + fn)
  present = (tp + fp + fn) > 0
  macro_f1 = float(label_f1[present].mean()) if present.any() else 0.0
  rtp = (pred & target).sum(1)
  rden = pred.sum(1) + target.sum(1)
  row_f1 = np.where(rden > 0, ratio(2 * rtp, rden), 1.0)
  out = dict(
      micro_precision=p,
      micro_recall=r,
      micro_f1=micro_f1,
      macro_f1=macro_f1,
      samples_f1=float(row_f1.mean()) if len(row_f1) else 0.0,
      exact_match=float(np.all(pred == target, axis=1).mean()) if len(pred) else 0.0,
  )
  if scores is not None:
    for k in ks:
      out[f"precision_at_{k}"] = precision_at_k(scores, target, k)
  return out
