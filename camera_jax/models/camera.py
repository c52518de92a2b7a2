"""CAMERA's account representation and micro-influencer ranking (paper III-C, III-D, eq. 5-18).

Pure functions, one per equation:

* :func:`historical_distribution` (eq. 5), :func:`top_concepts` and
  :func:`historical_representation` (eq. 6) -- the account historical activities
  representation e_h;
* :func:`marketing_weights` (eq. 7) and :func:`marketing_representation` (eq. 8) -- the
  bi-directional concept attention (BCAM) and the marketing direction representation e_r;
* :func:`fuse` (eq. 9) -- e_a = gamma(concat(e_h, e_r));
* :func:`score_mlp` (eq. 12, 13, 15, 16), :func:`endorsement_score` (eq. 11),
  :func:`influence_score` (eq. 14), :func:`content_score` (eq. 17), :func:`ranking_score`
  (eq. 18).

The module :class:`CAMERA` holds the parameters (psi, rho, gamma and the four phi) and
composes the functions. The concept matrix U_C is an input (the standardised export of
COSMIC), not a parameter. Brand and influencer share psi, rho and gamma: both sides live in one
space and S_con is their inner product.

Scoring a catalogue: :meth:`CAMERA.encode_accounts` computes e_h and psi(e_h) once per account,
:meth:`CAMERA.concept_table` computes rho(u) once per concept, and :meth:`CAMERA.score_pairs`
does only the per-pair work (attention, e_r, gamma, scores). In deterministic mode it returns
exactly what :meth:`CAMERA.__call__` returns for the same pairs.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from camera_jax.models.cosmic import uniform_init
from camera_jax.models.visual import LEAKY_SLOPE

AttentionScale = Literal["inner", "mean"]


# ----------------------------------------------------------------------------------------------
# III-C: account representation
# ----------------------------------------------------------------------------------------------


def historical_distribution(z_prime_sum: jax.Array) -> jax.Array:
  """Eq. 5: w_a = softmax(sum_{p in P_a} z'_p) over the n concepts.

  Args:
    z_prime_sum: [..., n] the sum of the z' of the account's posts.

  Returns:
    w_a: [..., n] float32, sums to 1.
  """
  return jax.nn.softmax(jnp.asarray(z_prime_sum, jnp.float32), axis=-1)


def top_concepts(w_a: jax.Array, k: int = 10) -> tuple[jax.Array, jax.Array]:
  """The top-k concepts U_a of an account and their w_a weights (eq. 6 keeps the top 10).

  The weights are NOT renormalised: eq. 6 sums w_a^k u_k with the original w_a weights, so the
  top-10 weights sum to at most 1. Ties are resolved towards the lower concept index.

  Args:
    w_a: [..., n] historical distributions.
    k: number of concepts kept.

  Returns:
    (idx int32 [..., k], weights float32 [..., k]) in descending weight order.
  """
  weights, idx = jax.lax.top_k(jnp.asarray(w_a, jnp.float32), k)
  return idx.astype(jnp.int32), weights


def historical_representation(weights: jax.Array, vectors: jax.Array) -> jax.Array:
  """Eq. 6: e_h = sum_{k, u_k in U_a} w_a^k u_k.

  Args:
    weights: [..., k] w_a weights of the account's top concepts.
    vectors: [..., k, d] their concept representations u_k.

  Returns:
    e_h: [..., d].
  """
  return jnp.einsum("...k,...kd->...d", weights, vectors)


def marketing_weights(psi_e_h: jax.Array, rho_u: jax.Array, mask: jax.Array | None = None,
                      *, scale: AttentionScale = "inner") -> jax.Array:
  """Eq. 7: w^i = softmax over u_i in U_{b/m} of psi(e_h^{m/b}) . rho(u_i).

  The bi-directional concept attention: a side's weights over ITS OWN top concepts are driven
  by the historical representation of the OTHER side (w_b uses psi(e_h^m), w_m uses
  psi(e_h^b)). ``scale="inner"`` is the paper's inner product (the default); ``scale="mean"``
  is the authors' code, the mean over the p features (inner product / p).

  Args:
    psi_e_h: [..., p] psi of the other side's e_h.
    rho_u: [..., k, p] rho of this side's top-k concepts.
    mask: optional bool [..., k]; False slots get weight 0 (at least one must be True).
    scale: "inner" or "mean".

  Returns:
    w: [..., k] float32, sums to 1.
  """
  logits = jnp.einsum("...p,...kp->...k", psi_e_h.astype(jnp.float32),
                      rho_u.astype(jnp.float32))
  if scale == "mean":
    logits = logits / psi_e_h.shape[-1]
  elif scale != "inner":
    raise ValueError(f"unknown attention scale {scale!r}")
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def marketing_representation(w: jax.Array, vectors: jax.Array) -> jax.Array:
  """Eq. 8: e_r = sum_{i, u_i in U_{b/m}} w^i u_i.

  Args:
    w: [..., k] marketing direction concept weights (eq. 7).
    vectors: [..., k, d] the side's top-k concept representations.

  Returns:
    e_r: [..., d].
  """
  return jnp.einsum("...k,...kd->...d", w, vectors)


def fuse(gamma: Callable[[jax.Array], jax.Array], e_h: jax.Array, e_r: jax.Array) -> jax.Array:
  """Eq. 9: e_a = gamma(concat(e_h, e_r)) (the paper's order; the authors concat(e_r, e_h)).

  Args:
    gamma: the 3-layer MLP.
    e_h: [..., d_h]; e_r: [..., d_r].

  Returns:
    e_a: [..., d_a].
  """
  return gamma(jnp.concatenate([e_h, e_r], axis=-1))


# ----------------------------------------------------------------------------------------------
# III-D: scores
# ----------------------------------------------------------------------------------------------


def score_mlp(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array) -> jax.Array:
  """Eq. 12, 13, 15, 16: phi(x) = sigmoid(x W_1 + b) W_2 for a scalar feature x.

  Args:
    x: [...] one scalar feature per row.
    w1: [1, d]; b1: [d]; w2: [d, 1] (no output bias, as in the paper).

  Returns:
    [...] float32.
  """
  x = jnp.asarray(x, jnp.float32)[..., None]
  return (jax.nn.sigmoid(x @ w1 + b1) @ w2)[..., 0]


def endorsement_score(phi_post: jax.Array, phi_brand: jax.Array) -> jax.Array:
  """Eq. 11: S_ed = sigmoid(phi_1(E(p~)) + phi_2(E_bar(b)))."""
  return jax.nn.sigmoid(phi_post + phi_brand)


def influence_score(phi_followers: jax.Array, phi_engagement: jax.Array) -> jax.Array:
  """Eq. 14: S_in = sigmoid(phi_3(#followers) + phi_4(E_bar(m)))."""
  return jax.nn.sigmoid(phi_followers + phi_engagement)


def content_score(e_a_brand: jax.Array, e_a_influencer: jax.Array) -> jax.Array:
  """Eq. 17: S_con = e_a^b . e_a^m (inner product over the last axis)."""
  return jnp.sum(e_a_brand.astype(jnp.float32) * e_a_influencer.astype(jnp.float32), axis=-1)


def ranking_score(s_con: jax.Array, s_ed: jax.Array, s_in: jax.Array) -> jax.Array:
  """Eq. 18: S = S_con x S_ed x S_in."""
  return s_con * s_ed * s_in


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
  """Fully connected stack with leaky_relu (slope 0.01) after every layer, the last included.

  Dropout: the paper has "a dropout layer with the rate of 0.6"; the authors drop entries of
  the weight matrices (DropConnect, keep 0.6) of psi's and rho's two layers and of gamma's
  first two. Here standard dropout (``nn.Dropout``, ``rate`` = drop probability) is applied to
  the input activations of the first ``dropout_layers`` layers (all layers when None), which
  for a single input row is the same as dropping whole rows of those weight matrices.

  Attributes:
    features: output width of each layer.
    rate: dropout rate; 0 disables dropout.
    dropout_layers: number of leading layers whose input is dropped out (None = all).
    init_scale: kernels and biases are initialised uniform(-init_scale, init_scale) (paper).
    dtype: computation dtype (parameters stay float32).
  """

  features: Sequence[int]
  rate: float = 0.0
  dropout_layers: int | None = None
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """[..., d_in] -> [..., features[-1]]."""
    n_drop = len(self.features) if self.dropout_layers is None else self.dropout_layers
    init = uniform_init(self.init_scale)
    x = x.astype(self.dtype)
    for i, f in enumerate(self.features):
      if i < n_drop and self.rate > 0:
        x = nn.Dropout(self.rate, deterministic=deterministic)(x)
      x = nn.Dense(f, dtype=self.dtype, kernel_init=init, bias_init=init, name=f"dense{i}")(x)
      x = nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)
    return x


class ScoreMLP(nn.Module):
  """phi of eq. 12, 13, 15, 16: a scalar feature -> sigmoid(x W_1 + b) W_2, hidden width d."""

  d: int = 64
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[...] -> [...] float32."""
    init = uniform_init(self.init_scale)
    w1 = self.param("w1", init, (1, self.d))
    b1 = self.param("b1", init, (self.d,))
    w2 = self.param("w2", init, (self.d, 1))
    return score_mlp(x, w1, b1, w2)


class CAMERA(nn.Module):
  """The CAMERA ranker: (brand, influencer) pairs -> S, S_con, S_ed, S_in, w_b, w_m.

  Attributes:
    d_hidden: psi and rho layer widths (paper 1024, 512).
    gamma: gamma layer widths (paper 1024, 1024, 512).
    d_score: hidden width d_ed = d_in of the phi MLPs (64).
    dropout: dropout rate (drop probability) of psi, rho (both layers) and gamma (first two
      layers), see :class:`MLP`. The paper says "rate of 0.6"; the authors' code keeps 0.6
      (drops 0.4).
    init_scale: uniform(-init_scale, init_scale) init of every weight and bias (paper 0.1).
    attention_scale: "inner" (paper eq. 7, the default) or "mean" (authors: inner product /
      512). In one check at the default init with synthetic top-10 weights (summing to about
      0.25) "inner"
      gives attention rows with a mean maximum weight of about 0.37 (not saturated), "mean"
      an almost uniform 0.10.
    use_interaction: False is the C-w/o-MR ablation: S = S_con, no phi parameters, and S_ed,
      S_in are returned as ones.
    dtype: computation dtype of psi, rho, gamma; attention and scores are float32.
    rho_path: "auto" (the static rule below), "table" or "rows" to force one path.

  Rho over the concept table: rho(u) depends only on the concept, so when a batch gathers more
  concept rows (2 B K) than the vocabulary has (n), rho is computed once over the whole table
  [n, p] and its rows are gathered; otherwise it is computed on the gathered rows. The choice
  is static (from shapes) and changes no result in deterministic mode. In training mode the
  table path draws one dropout mask per concept per step, shared by every row that gathers
  that concept, where the row path draws one per gathered row.
  """

  d_hidden: Sequence[int] = (1024, 512)
  gamma: Sequence[int] = (1024, 1024, 512)
  d_score: int = 64
  dropout: float = 0.6
  init_scale: float = 0.1
  attention_scale: AttentionScale = "inner"
  use_interaction: bool = True
  dtype: Any = jnp.float32
  rho_path: Literal["auto", "table", "rows"] = "auto"

  def setup(self) -> None:
    self.psi = MLP(self.d_hidden, self.dropout, None, self.init_scale, self.dtype)
    self.rho = MLP(self.d_hidden, self.dropout, None, self.init_scale, self.dtype)
    self.gamma_mlp = MLP(self.gamma, self.dropout, 2, self.init_scale, self.dtype)
    if self.use_interaction:
      self.phi_ed_post = ScoreMLP(self.d_score, self.init_scale)
      self.phi_ed_brand = ScoreMLP(self.d_score, self.init_scale)
      self.phi_followers = ScoreMLP(self.d_score, self.init_scale)
      self.phi_eng_inf = ScoreMLP(self.d_score, self.init_scale)

  # -- per-account and per-concept parts -------------------------------------------------------

  def encode_accounts(self, idx: jax.Array, w: jax.Array, concepts: jax.Array, *,
                      deterministic: bool = True) -> dict[str, jax.Array]:
    """Per-account quantities that do not depend on the partner.

    Args:
      idx: int32 [..., K] the accounts' top-K concept ids.
      w: [..., K] their w_a weights.
      concepts: U_C [n, d_u].
      deterministic: no dropout when True.

    Returns:
      dict(idx [..., K], w [..., K], u [..., K, d_u] (gathered concept rows),
      e_h [..., d_u] (eq. 6), psi [..., p] (psi(e_h), float32)).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    u = jnp.take(concepts, idx, axis=0)
    e_h = historical_representation(jnp.asarray(w, jnp.float32), u)
    psi = self.psi(e_h, deterministic=deterministic).astype(jnp.float32)
    return dict(idx=jnp.asarray(idx, jnp.int32), w=jnp.asarray(w, jnp.float32), u=u, e_h=e_h,
                psi=psi)

  def concept_table(self, concepts: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """rho(u) for every concept: [n, p] float32."""
    return self.rho(jnp.asarray(concepts, jnp.float32),
                    deterministic=deterministic).astype(jnp.float32)

  # -- per-pair part ---------------------------------------------------------------------------

  def _interaction(self, batch: Mapping[str, jax.Array], shape: tuple[int, ...]):
    if not self.use_interaction:
      one = jnp.ones(shape, jnp.float32)
      return one, one
    s_ed = endorsement_score(self.phi_ed_post(batch["ed_post"]),
                             self.phi_ed_brand(batch["ed_brand"]))
    if batch.get("ed_mask") is not None:
      s_ed = s_ed * jnp.asarray(batch["ed_mask"], jnp.float32)
    s_in = influence_score(self.phi_followers(batch["followers"]),
                           self.phi_eng_inf(batch["eng_inf"]))
    return s_ed, s_in

  def _pairs(self, brand: Mapping[str, jax.Array], influencer: Mapping[str, jax.Array],
             rho_b: jax.Array, rho_m: jax.Array, features: Mapping[str, jax.Array],
             deterministic: bool) -> dict[str, jax.Array]:
    w_b = marketing_weights(influencer["psi"], rho_b, scale=self.attention_scale)
    w_m = marketing_weights(brand["psi"], rho_m, scale=self.attention_scale)
    e_r_b = marketing_representation(w_b, brand["u"])
    e_r_m = marketing_representation(w_m, influencer["u"])
    # gamma on both sides in one call: [2, ..., 2 d] -> [2, ..., d_a]
    e_h = jnp.stack([brand["e_h"], influencer["e_h"]])
    e_r = jnp.stack([e_r_b, e_r_m])
    e_a = fuse(lambda x: self.gamma_mlp(x, deterministic=deterministic), e_h, e_r)
    e_a = e_a.astype(jnp.float32)
    s_con = content_score(e_a[0], e_a[1])
    s_ed, s_in = self._interaction(features, s_con.shape)
    s = ranking_score(s_con, s_ed, s_in) if self.use_interaction else s_con
    return dict(S=s, S_con=s_con, S_ed=s_ed, S_in=s_in, w_b=w_b, w_m=w_m)

  def score_pairs(self, brand: Mapping[str, jax.Array], influencer: Mapping[str, jax.Array],
                  rho_table: jax.Array, features: Mapping[str, jax.Array], *,
                  deterministic: bool = True) -> dict[str, jax.Array]:
    """Scores pairs from precomputed account encodings and the rho table.

    For a catalogue: ``encode_accounts`` once for all brands and all candidates,
    ``concept_table`` once, then per chunk of pairs gather the two encodings row-wise
    (``jax.tree.map(lambda a: a[rows], enc)``) and call this. In deterministic mode the result
    equals :meth:`__call__` on the same pairs.

    Args:
      brand, influencer: outputs of :meth:`encode_accounts` gathered to a common leading
        shape [P].
      rho_table: :meth:`concept_table` output [n, p].
      features: dict of [P] arrays ``ed_post``, ``ed_brand``, ``followers``, ``eng_inf`` and
        optionally ``ed_mask`` (see :meth:`__call__`); unused when ``use_interaction`` is False.
      deterministic: no dropout when True (gamma's dropout otherwise).

    Returns:
      dict(S, S_con, S_ed, S_in [P], w_b, w_m [P, K]).
    """
    rho_b = jnp.take(rho_table, brand["idx"], axis=0)
    rho_m = jnp.take(rho_table, influencer["idx"], axis=0)
    return self._pairs(brand, influencer, rho_b, rho_m, features, deterministic)

  def __call__(self, batch: Mapping[str, jax.Array], concepts: jax.Array, *,
               deterministic: bool) -> dict[str, jax.Array]:
    """Scores a batch of (brand, influencer) pairs.

    Args:
      batch: dict of arrays with leading dim B:
        ``brand_idx`` int32 [B, K], ``brand_w`` [B, K] -- the brand's top-K concepts and their
        w_a weights; ``inf_idx``, ``inf_w`` -- the same for the influencer;
        ``ed_post`` [B] -- scaled engagement feature of the pair's endorsement post (the
        caller chooses a leak-free estimate); ``ed_brand`` [B] -- the brand's scaled mean
        engagement; ``followers`` [B], ``eng_inf`` [B] -- the influencer's scaled followers
        and mean engagement; optional ``ed_mask`` [B] -- S_ed is multiplied by it (0 gives the
        paper's S_ed = 0 for sampled negatives).
      concepts: the fixed standardised U_C [n, d_u].
      deterministic: disables dropout; otherwise a ``'dropout'`` rng is needed.

    Returns:
      dict(S, S_con, S_ed, S_in: float32 [B]; w_b, w_m: float32 [B, K], each row sums to 1).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    idx = jnp.stack([batch["brand_idx"], batch["inf_idx"]])           # [2, B, K]
    w = jnp.stack([batch["brand_w"], batch["inf_w"]])
    enc = self.encode_accounts(idx, w, concepts, deterministic=deterministic)
    brand = jax.tree.map(lambda a: a[0], enc)
    influencer = jax.tree.map(lambda a: a[1], enc)
    use_table = {"auto": idx.size > concepts.shape[0], "table": True, "rows": False}[
        self.rho_path]
    if use_table:  # static: more gathered rows (2 B K) than concepts -> rho over the table once
      table = self.concept_table(concepts, deterministic=deterministic)
      rho = jnp.take(table, idx, axis=0)
    else:
      rho = self.rho(enc["u"], deterministic=deterministic).astype(jnp.float32)
    return self._pairs(brand, influencer, rho[0], rho[1], batch, deterministic)
