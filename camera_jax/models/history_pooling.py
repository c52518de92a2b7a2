"""Hp+MR: multi-modal history pooling (Gan et al. 2019, paper ref. [5]) + CAMERA's ranking module.

The paper's baseline 5 (IV-E) replaces CAMERA's concept-based account representation with the
history pooling of Gan et al.: an account is the average of its posts' multi-modal features. Here
a post's features are

* ``t``: its caption embedding (mean Word2Vec vector of the caption's tokens, unit norm; the same
  ``t`` as COSMIC's semantic attention; posts without text are left out of the text mean), and
* ``v2``: its post visual embedding, the output of the trained COSMIC image encoder (eq. 2) of the
  same run, computed from the image alone.

Both means are z-scored per dimension over all accounts (label-free) and concatenated into
``x_a`` [d_t + d_u]. The ranking module is CAMERA's (III-D) without concepts and without BCAM:
``e_a = gamma(x_a)`` (the same 3-layer MLP and dropout as CAMERA's gamma), ``S_con = e_a^b . e_a^m``
(eq. 17), ``S_ed`` and ``S_in`` (eq. 11, 14) from the same engagement features, ``S = S_con x S_ed x
S_in`` (eq. 18). It is trained by ``camera_jax.training.ranker.train_ranker`` with
``model=HP_MODEL``: the same triplets, loss, optimiser, leak-free endorsement rule and scorer as
CAMERA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from camera_jax.models import camera as camera_lib
from camera_jax.training import ranker as ranker_lib
from camera_jax.training import sharding

__all__ = ["HistoryPoolingRanker", "HpTables", "HP_MODEL", "make_hp_model", "hp_pair_inputs",
           "mean_pool", "standardize", "account_features"]


# --------------------------------------------------------------------------- pooling (numpy)


def mean_pool(values: np.ndarray, post_account: np.ndarray, n_accounts: int,
              where: np.ndarray | None = None) -> np.ndarray:
  """Mean of post rows per account: [P, d] -> [A, d] float32 (zeros for an account without rows).

  Args:
    values: [P, d] one feature row per post.
    post_account: int [P] account row of each post.
    n_accounts: A.
    where: optional bool [P]; only these posts are averaged (e.g. posts that have text).
  """
  values = np.asarray(values, np.float64)
  post_account = np.asarray(post_account, np.int64)
  if values.ndim != 2 or len(values) != len(post_account):
    raise ValueError(f"values [P, d] and post_account [P] must align, got {values.shape} and "
                     f"{post_account.shape}")
  keep = np.ones(len(values), bool) if where is None else np.asarray(where, bool)
  sums = np.zeros((n_accounts, values.shape[1]), np.float64)
  np.add.at(sums, post_account[keep], values[keep])
  counts = np.bincount(post_account[keep], minlength=n_accounts).astype(np.float64)
  return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def standardize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Per-column z-score over rows (a constant column becomes 0): [A, d] float32."""
  x = np.asarray(x, np.float64)
  std = x.std(0)
  return ((x - x.mean(0)) / np.where(std > eps, std, 1.0)).astype(np.float32)


def account_features(t: np.ndarray, has_text: np.ndarray, v2: np.ndarray,
                     post_account: np.ndarray, n_accounts: int) -> np.ndarray:
  """x_a = concat(z(mean t over posts with text), z(mean v2 over posts)): [A, d_t + d_u]."""
  text = standardize(mean_pool(t, post_account, n_accounts, where=has_text))
  visual = standardize(mean_pool(v2, post_account, n_accounts))
  return np.concatenate([text, visual], axis=1)


# --------------------------------------------------------------------------- the ranking module


class HistoryPoolingRanker(nn.Module):
  """Pooled account features -> CAMERA's ranking module: dict(S, S_con, S_ed, S_in).

  Attributes:
    gamma: gamma layer widths (CAMERA's, paper 1024, 1024, 512).
    d_score: hidden width of the four phi score MLPs.
    dropout: dropout rate of gamma's first two layers (as CAMERA's gamma).
    init_scale: uniform(-init_scale, init_scale) init of every weight and bias.
    use_interaction: False: S = S_con (no phi parameters; S_ed, S_in returned as ones).
    dtype: gamma's matmul precision (``--matmul_dtype``, as CAMERA's).
  """

  gamma: Sequence[int] = (1024, 1024, 512)
  d_score: int = 64
  dropout: float = 0.6
  dropout_rng: str = "threefry"     # "hash": masks that follow the pair (make_hp_model)
  init_scale: float = 0.1
  use_interaction: bool = True
  dtype: Any = jnp.float32

  def setup(self) -> None:
    self.gamma_mlp = camera_lib.MLP(self.gamma, self.dropout, 2, self.init_scale, self.dtype,
                                    dropout_rng=self.dropout_rng)
    if self.use_interaction:
      self.phi_ed_post = camera_lib.ScoreMLP(self.d_score, self.init_scale)
      self.phi_ed_brand = camera_lib.ScoreMLP(self.d_score, self.init_scale)
      self.phi_followers = camera_lib.ScoreMLP(self.d_score, self.init_scale)
      self.phi_eng_inf = camera_lib.ScoreMLP(self.d_score, self.init_scale)

  def __call__(self, batch: Mapping[str, jax.Array], concepts: Any = None, *,
               deterministic: bool) -> dict[str, jax.Array]:
    """Scores a batch of (brand, influencer) pairs.

    Args:
      batch: ``brand_x``, ``inf_x`` [B, d] pooled account features; ``ed_post``, ``ed_brand``,
        ``followers``, ``eng_inf`` [B] scaled engagement features (as CAMERA's batch).
      concepts: unused (the ranker trainer's common call signature).
      deterministic: disables dropout; otherwise a ``'dropout'`` rng is needed.

    Returns:
      dict(S, S_con, S_ed, S_in: float32 [B]).
    """
    del concepts
    x = jnp.stack([jnp.asarray(batch["brand_x"], jnp.float32),
                   jnp.asarray(batch["inf_x"], jnp.float32)])          # [2, B, d]
    # side s of pair i is row 2 i + s: its hash dropout mask follows the pair, not the padded
    # batch's width (as camera.group_row_ids), so a batch padded for 4 devices trains as on one
    pair = np.arange(x.shape[1])
    e_a = self.gamma_mlp(x, deterministic=deterministic,
                         row_ids=np.stack([2 * pair, 2 * pair + 1])).astype(jnp.float32)
    s_con = camera_lib.content_score(e_a[0], e_a[1])
    if self.use_interaction:
      s_ed = camera_lib.endorsement_score(self.phi_ed_post(batch["ed_post"]),
                                          self.phi_ed_brand(batch["ed_brand"]))
      s_in = camera_lib.influence_score(self.phi_followers(batch["followers"]),
                                        self.phi_eng_inf(batch["eng_inf"]))
      s = camera_lib.ranking_score(s_con, s_ed, s_in)
    else:
      s_ed = s_in = jnp.ones_like(s_con)
      s = s_con
    return dict(S=s, S_con=s_con, S_ed=s_ed, S_in=s_in)


@dataclasses.dataclass
class HpTables:
  """Per-account inputs of the Hp+MR ranker, indexed by account row (numpy on the host)."""

  features: np.ndarray       # [A, d] pooled, standardised x_a
  engagement: np.ndarray     # [A] scaled mean engagement rate
  followers: np.ndarray      # [A] scaled follower count

  def device(self, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    return sharding.replicate({k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}, mesh)


def make_hp_model(cfg: ranker_lib.RankerConfig) -> HistoryPoolingRanker:
  """The Hp+MR module with the ranker's gamma, phi, dropout and init settings."""
  return HistoryPoolingRanker(gamma=tuple(cfg.gamma_features), d_score=cfg.d_score,
                              dropout=cfg.dropout, dropout_rng=cfg.dropout_rng,
                              init_scale=cfg.init_scale,
                              use_interaction=cfg.use_interaction,
                              dtype=jnp.dtype(cfg.matmul_dtype))


def hp_pair_inputs(tables: Mapping[str, jax.Array], brand: jax.Array, influencer: jax.Array,
                   ed_post: jax.Array | None = None) -> dict[str, jax.Array]:
  """Gathers Hp+MR's pair inputs; ``ed_post`` defaults to the leak-free E(m) (as CAMERA)."""
  eng_inf = tables["engagement"][influencer]
  return {
      "brand_x": tables["features"][brand], "inf_x": tables["features"][influencer],
      "ed_post": eng_inf if ed_post is None else ed_post,
      "ed_brand": tables["engagement"][brand],
      "followers": tables["followers"][influencer],
      "eng_inf": eng_inf,
  }


#: The hook that makes ``ranker.train_ranker`` / ``make_score_fn`` train and score Hp+MR.
HP_MODEL = ranker_lib.RankerModel(make=make_hp_model, inputs=hp_pair_inputs)
