"""CAMERA's account representation and micro-influencer ranking (paper III-C, III-D, eq. 5-18).

Pure functions, one per equation:

* :func:`historical_distribution` (eq. 5), :func:`top_concepts` and
  :func:`historical_representation` (eq. 6) -- the account historical activities
  representation e_h; :func:`normalize_history` its optional rescaling (not in the paper,
  ``history_norm``);
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
import numpy as np
from jax import lax

from camera_jax.models import precision
from camera_jax.models.cosmic import uniform_init
from camera_jax.models.visual import LEAKY_SLOPE

AttentionScale = Literal["inner", "mean"]
HistoryNorm = Literal["none", "l2"]


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


def top_concepts(z_prime_sum: jax.Array, k: int = 10) -> tuple[jax.Array, jax.Array]:
  """The top-k concepts U_a of an account and their w_a weights (eq. 6 keeps the top 10).

  The concepts are ranked by the summed z' of eq. 5, not by w_a: softmax is monotone, so the
  order is the same, but a float32 w_a is exactly 0 for every concept more than about 87 below
  the account's largest sum (an account whose posts all show one concept), and ranking those
  zeros would put concepts the account never showed before its real secondary ones. Any
  per-row shift of the sums ranks the same (``log w_a`` of a saved w_a included).

  The weights are w_a = softmax(sums) at those concepts, NOT renormalised: eq. 6 sums
  w_a^k u_k with the original weights, so the top-10 weights sum to at most 1. Ties are
  resolved towards the lower concept index.

  Args:
    z_prime_sum: [..., n] the input of eq. 5 (or any per-row shift of it).
    k: number of concepts kept.

  Returns:
    (idx int32 [..., k], weights float32 [..., k]) in descending order.
  """
  s = jnp.asarray(z_prime_sum, jnp.float32)
  _, idx = jax.lax.top_k(s, k)
  weights = jnp.take_along_axis(historical_distribution(s), idx, axis=-1)
  return idx.astype(jnp.int32), weights


def supported_concepts(z_prime_sum: jax.Array, idx: jax.Array,
                       shown: jax.Array | None = None) -> jax.Array:
  """Which of an account's top-k concepts (:func:`top_concepts`) it actually showed: bool [..., k].

  Eq. 5 gives every concept some mass (softmax of a sum that is 0 for a concept the account
  never showed), so an account with fewer than k concepts gets padding concepts in its top-k,
  ordered by index. Padding slots are masked out of the BCAM attention (eq. 7) so that the
  marketing-direction weights only spread over concepts of the account's history. The first
  slot is always valid.

  With ``shown`` (bool [..., n]: the concepts some history post of the account shows, h summed
  per account > 0) a slot is supported when its concept is shown. Without it, a slot is
  supported when its sum is above the row's minimum, the level of a never-shown concept under
  ``--zprime_mode=masked``, by more than 1e-5 (w_a above the minimum w_a by a factor 1 + 1e-5).
  Under ``faithful`` that level is not the minimum (a shown concept whose caption cosine is
  negative sums below it), so only ``shown`` tells.

  Args:
    z_prime_sum: [..., n] the input of eq. 5, or any per-row shift of it (``log w_a``, where
      -inf marks an underflowed weight).
    idx: [..., k] the top-k concepts.
    shown: optional bool [..., n], see above.
  """
  if shown is not None:
    mask = jnp.take_along_axis(jnp.asarray(shown, bool), jnp.asarray(idx), axis=-1)
    return mask.at[..., 0].set(True)
  s = jnp.asarray(z_prime_sum, jnp.float32)
  floor = jnp.min(s, axis=-1, keepdims=True)
  mask = jnp.take_along_axis(s, jnp.asarray(idx), axis=-1) > floor + 1e-5
  return mask.at[..., 0].set(True)


def historical_representation(weights: jax.Array, vectors: jax.Array) -> jax.Array:
  """Eq. 6: e_h = sum_{k, u_k in U_a} w_a^k u_k.

  Args:
    weights: [..., k] w_a weights of the account's top concepts.
    vectors: [..., k, d] their concept representations u_k.

  Returns:
    e_h: [..., d].
  """
  return jnp.einsum("...k,...kd->...d", weights, vectors)


def normalize_history(e_h: jax.Array, mode: HistoryNorm = "none") -> jax.Array:
  """An optional rescaling of eq. 6's e_h before psi and gamma (not in the paper).

  ``"none"`` is eq. 6 as written. ``"l2"`` rescales every e_h to the norm sqrt(d_u), the norm of
  a row of the standardised U_C (unit mean square per feature): e_h / |e_h| x sqrt(d_u).

  Why: eq. 6 sums the top-10 w_a weights without renormalising them, and w_a (eq. 5, a softmax
  of summed z') is peaked for some accounts and flat for others, so |e_h| mostly measures how
  peaked an account's history is (on the small synthetic preset the top-1 weight ranges from
  0.06 to 1.0 over accounts). S_con (eq. 17) is an inner product, so that norm becomes a
  per-account popularity term that has nothing to do with content; see docs/deviations.md for
  the measured effect.

  Args:
    e_h: [..., d_u] historical representations (eq. 6).
    mode: "none" or "l2".

  Returns:
    [..., d_u] float32 (an all-zero e_h stays zero).
  """
  e_h = jnp.asarray(e_h, jnp.float32)
  if mode == "none":
    return e_h
  if mode != "l2":
    raise ValueError(f"unknown history_norm {mode!r}")
  sq = jnp.sum(e_h * e_h, axis=-1, keepdims=True)
  scale = jnp.sqrt(jnp.float32(e_h.shape[-1])) * jax.lax.rsqrt(jnp.maximum(sq, 1e-30))
  return jnp.where(sq > 0, e_h * scale, 0.0)


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
  return marketing_weights_from_logits(logits, psi_e_h.shape[-1], mask, scale=scale)


def marketing_weights_from_logits(logits: jax.Array, p: int, mask: jax.Array | None = None,
                                  *, scale: AttentionScale = "inner") -> jax.Array:
  """Eq. 7 given the inner products psi(e_h^{m/b}) . rho(u_i) [..., k] (see marketing_weights).

  The fast paths form the inner products per concept (``q = psi(e_h) rho(U_C)^T``, then a
  gather of the k columns of the side's concepts) instead of gathering rho rows first.

  Args:
    logits: [..., k] inner products; p: the feature width of psi and rho (for ``"mean"``).
    mask: optional bool [..., k]; False slots get weight 0. scale: "inner" or "mean".

  Returns:
    w: [..., k] float32, sums to 1.
  """
  logits = jnp.asarray(logits, jnp.float32)
  if scale == "mean":
    logits = logits / p
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


def fuse(gamma: Callable[[jax.Array], jax.Array], e_h: jax.Array, e_r: jax.Array,
         axis: int = -1) -> jax.Array:
  """Eq. 9: e_a = gamma(concat(e_h, e_r)) (the paper's order; the authors concat(e_r, e_h)).

  Args:
    gamma: the 3-layer MLP.
    e_h: [..., d_h]; e_r: [..., d_r] (features on ``axis``: the last, or 0 for feature-major
      [d, rows] arrays).

  Returns:
    e_a: [..., d_a].
  """
  return gamma(jnp.concatenate([e_h, e_r], axis=axis))


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


def content_score(e_a_brand: jax.Array, e_a_influencer: jax.Array, axis: int = -1) -> jax.Array:
  """Eq. 17: S_con = e_a^b . e_a^m (inner product over the feature axis, the last by default)."""
  return jnp.sum(e_a_brand.astype(jnp.float32) * e_a_influencer.astype(jnp.float32), axis=axis)


def ranking_score(s_con: jax.Array, s_ed: jax.Array, s_in: jax.Array) -> jax.Array:
  """Eq. 18: S = S_con x S_ed x S_in."""
  return s_con * s_ed * s_in


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective 32-bit integer mixer (the "lowbias32" finaliser: xor-shift, multiply)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _hash_counters(shape: tuple[int, ...], feature_major: bool) -> jax.Array:
  """uint32 element counters: row-major order of ``shape``, or of ``shape[1:] + shape[:1]``."""
  size = 1
  for d in shape:
    size *= int(d)
  if size >= 2 ** 32:
    raise ValueError(f"hash_keep_mask: {size} elements do not fit a 32-bit counter")
  if not feature_major:
    return jax.lax.iota(jnp.uint32, size).reshape(shape)
  # element (f, *r) of a feature-major [F, *lead] array counts as (*r, f) of [*lead, F]
  i = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  stride = int(shape[0])
  for d in reversed(range(1, len(shape))):
    i = i + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride)
    stride *= int(shape[d])
  return i


def _row_counters(shape: tuple[int, ...], feature_major: bool, row_ids: Any) -> jax.Array:
  """uint32 counters ``row_id * F + f`` of a [*lead, F] activation (or its feature-major
  [F, *lead] transpose), ``row_ids`` [*lead] non-negative ints (numpy ones are checked to fit
  32 bits; a traced array's caller bounds it)."""
  f = int(shape[0] if feature_major else shape[-1])
  lead = shape[1:] if feature_major else shape[:-1]
  if tuple(row_ids.shape) != tuple(lead):
    raise ValueError(f"hash_keep_mask: row_ids of shape {row_ids.shape} for rows {tuple(lead)}")
  if isinstance(row_ids, np.ndarray) and row_ids.size and (
      int(row_ids.min()) < 0 or (int(row_ids.max()) + 1) * f > 2 ** 32):
    raise ValueError("hash_keep_mask: row ids x features do not fit a 32-bit counter")
  rows = jnp.asarray(row_ids).astype(jnp.uint32) * jnp.uint32(f)
  if feature_major:
    return rows[None] + jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  return rows[..., None] + jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)


def hash_keep_mask(key: jax.Array, shape: Sequence[int], keep_prob: float, *,
                   feature_major: bool = False, row_ids: Any = None) -> jax.Array:
  """A Bernoulli(keep_prob) bool mask from a counter-based hash (the fast dropout RNG).

  Two 32-bit seeds are drawn from ``key`` with ``jax.random.bits``; element i of the mask is
  ``mix(mix(i ^ s0) ^ s1) < round(keep_prob * 2^32)``, ``mix`` a bijective 32-bit mixer. The
  keep probability is exact to 2^-32 (jax.random.bernoulli: 2^-23), elements are distinct
  hashes of distinct counters, and the whole mask is one elementwise expression of an iota that
  XLA fuses into its consumer. XLA:CPU lowers jax's threefry as a rolled loop that fuses with
  nothing; on the 2-core development machine it cost more than the ranking step's matmuls at
  large batches (see benchmarks/README.md).

  ``feature_major``: ``shape`` is ``[F, *lead]``, the transpose of a row-major ``[*lead, F]``
  activation, and the mask is the transpose of that activation's mask (the same key gives the
  same dropout in both layouts of :class:`MLP`).

  ``row_ids``: ints [*lead], one per row: element f of row r counts as
  ``row_ids[r] * F + f`` instead of by its position, so a row's mask does not move when rows
  are added before it (``arange`` gives the positional counters).
  """
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  shape = tuple(int(d) for d in shape)
  i = (_hash_counters(shape, feature_major) if row_ids is None
       else _row_counters(shape, feature_major, row_ids))
  threshold = min(int(round(keep_prob * 2.0 ** 32)), 2 ** 32 - 1)
  return _mix32(_mix32(i ^ seeds[0]) ^ seeds[1]) < jnp.uint32(threshold)


# Training calls with at least this many rows run feature-major on a single CPU device
# (MLP.layout="auto"). The benchmark's batch 512 (2,048 rows in gamma, 1,536 in psi before
# psi ran once per brand) gained 12 to 15 %; batch 8 (24 to 240 rows) lost 13 to 16 % when
# forced. rho over the 420 concepts stays below the threshold (row layout) except on
# score_groups' feature-major path, which runs it feature-major (benchmarks/README.md).
FEATURE_MAJOR_MIN_ROWS = 512

MLPLayout = Literal["auto", "rows", "features"]


class FeatureMajorDense(nn.Module):
  """``nn.Dense`` on feature-major activations: [d_in, ...] -> [features, ...].

  Its parameters are ``nn.Dense``'s (``kernel`` [d_in, features], ``bias`` [features], the same
  initialisers), so one parameter tree serves both layouts.
  """

  features: int
  init_scale: float
  constant_inputs: int = 0   # see precision.feature_major_matmul

  @nn.compact
  def __call__(self, x_t: jax.Array) -> jax.Array:
    init = uniform_init(self.init_scale)
    kernel = self.param("kernel", init, (x_t.shape[0], self.features))
    bias = self.param("bias", init, (self.features,))
    y = precision.feature_major_matmul(x_t, kernel, self.constant_inputs)
    return y + bias.reshape((self.features,) + (1,) * (y.ndim - 1))


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
    dtype: matmul precision: float32, or bfloat16 for bfloat16 operands with float32
      accumulation (``camera_jax.models.precision``); activations and parameters stay float32.
    dropout_rng: "threefry" (``nn.Dropout``: jax.random.bernoulli) or "hash" (the same
      Bernoulli(1 - rate) masks and 1 / (1 - rate) scaling, drawn with :func:`hash_keep_mask`).
    layout: how the activations are laid out in memory, which changes only the speed and the
      float rounding, not the function, the parameters or the dropout masks:
      "rows" (``[..., features]``, ``nn.Dense``), "features" (``[features, ...]`` inside the
      stack, :func:`precision.feature_major_matmul`; float32 with "hash" dropout or none), or
      "auto": "features" for a float32 training call (``deterministic=False``) on a single
      CPU device with at least :data:`FEATURE_MAJOR_MIN_ROWS` rows, "rows" otherwise. The
      feature-major stack flattens the leading axes into one row axis, so on several devices
      (a sharded batch axis merged with unsharded ones) XLA would gather the batch: "auto"
      keeps the row layout there.
  """

  features: Sequence[int]
  rate: float = 0.0
  dropout_layers: int | None = None
  init_scale: float = 0.1
  dtype: Any = jnp.float32
  dropout_rng: Literal["threefry", "hash"] = "threefry"
  layout: MLPLayout = "auto"

  def _feature_major_possible(self, deterministic: bool) -> bool:
    return (jnp.dtype(self.dtype) == jnp.float32
            and (self.rate == 0 or deterministic or self.dropout_rng == "hash"))

  def feature_major(self, x: Any, deterministic: bool) -> bool:
    """Whether a call on ``x`` (an array or anything with its ``shape``) runs feature-major
    (see ``layout``)."""
    possible = self._feature_major_possible(deterministic)
    if self.layout == "features":
      if not possible:
        raise ValueError("MLP layout 'features' needs float32 matmuls and hash dropout")
      return True
    if self.layout == "rows":
      return False
    rows = 1
    for d in x.shape[:-1]:
      rows *= int(d)
    return (possible and not deterministic and rows >= FEATURE_MAJOR_MIN_ROWS
            and jax.default_backend() == "cpu" and jax.device_count() == 1)

  def _keep(self, x: jax.Array, i: int, n_drop: int, deterministic: bool,
            feature_major: bool = False, row_ids: Any = None) -> jax.Array:
    """Dropout on layer i's input (hash masks; in the given layout)."""
    if i >= n_drop or self.rate <= 0 or deterministic:
      return x
    keep = 1.0 - self.rate
    mask = hash_keep_mask(self.make_rng("dropout"), x.shape, keep, feature_major=feature_major,
                          row_ids=row_ids)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool, transposed: bool = False,
               constant_inputs: int = 0, row_ids: Any = None) -> jax.Array:
    """[..., d_in] -> [..., features[-1]].

    ``transposed``: x is already feature-major, [d_in, rows], and so is the result,
    [features[-1], rows] (the feature-major layout, whatever ``layout`` says; a caller that
    keeps its own activations feature-major saves the two transposes). Rows are in the order
    of the row layout's flattened leading axes, so the dropout masks are the same.
    ``constant_inputs``: the first c input features are constants (``lax.stop_gradient``), for
    inputs that depend on no parameter; in the feature-major layout their part of layer 0's
    input gradient is then never formed.
    ``row_ids``: ints, one per row (shaped as the row layout's leading axes), that seed
    the rows' hash dropout masks in place of their positions (:func:`hash_keep_mask`); the
    threefry masks ignore them.
    """
    n_drop = len(self.features) if self.dropout_layers is None else self.dropout_layers
    init = uniform_init(self.init_scale)
    x = x.astype(jnp.float32)
    if transposed and not self._feature_major_possible(deterministic):
      raise ValueError("MLP(transposed=True) needs float32 matmuls and hash dropout")
    if transposed or self.feature_major(x, deterministic):
      # the leading axes flattened into rows: with them kept (dots with several free axes)
      # the batch-512 step ran 91.6 to 93.8 ms against 83.4 to 84.5 ms
      lead = x.shape[:-1]
      x_t = x if transposed else precision.materialized_transpose(x.reshape(-1, x.shape[-1]))
      ids = None if row_ids is None else row_ids.reshape(x_t.shape[1:])
      for i, f in enumerate(self.features):
        x_t = self._keep(x_t, i, n_drop, deterministic, feature_major=True, row_ids=ids)
        x_t = FeatureMajorDense(f, self.init_scale, constant_inputs if i == 0 else 0,
                                name=f"dense{i}")(x_t)
        x_t = nn.leaky_relu(x_t, negative_slope=LEAKY_SLOPE)
      if transposed:
        return x_t
      return precision.materialized_transpose(x_t).reshape(lead + (x_t.shape[0],))
    if constant_inputs:
      x = jnp.concatenate([lax.stop_gradient(x[..., :constant_inputs]),
                           x[..., constant_inputs:]], axis=-1)
    dot_general = precision.dense_dot_general(self.dtype)
    for i, f in enumerate(self.features):
      if self.dropout_rng == "hash":
        x = self._keep(x, i, n_drop, deterministic, row_ids=row_ids)
      elif i < n_drop and self.rate > 0:
        x = nn.Dropout(self.rate, deterministic=deterministic)(x)
      x = nn.Dense(f, kernel_init=init, bias_init=init, dot_general=dot_general,
                   name=f"dense{i}")(x)
      x = nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)
    return x

  def dense_params(self) -> list[tuple[jax.Array, jax.Array]]:
    """(kernel, bias) of every layer, in order (the module must be bound to its params)."""
    params = self.variables["params"]
    return [(params[f"dense{i}"]["kernel"], params[f"dense{i}"]["bias"])
            for i in range(len(self.features))]

  def from_first_preactivation(self, pre: jax.Array) -> jax.Array:
    """The MLP's output given layer 0's pre-activation ``x W_0 + b_0`` (deterministic only).

    Applies leaky_relu, then layers 1.. exactly as ``__call__`` does without dropout. Used by
    the catalogue scorer, which forms layer 0's pre-activation by linearity from per-account
    and per-concept parts.
    """
    x = nn.leaky_relu(jnp.asarray(pre, jnp.float32), negative_slope=LEAKY_SLOPE)
    for kernel, bias in self.dense_params()[1:]:
      x = precision.matmul(x, kernel, self.dtype) + bias
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


def psi_per_brand(n_brands: int, b: int) -> bool:
  """Whether :meth:`CAMERA.score_groups` runs psi once per numbered brand (T of them) rather than
  once per triplet (B): when the brands are fewer. Static (shapes)."""
  return n_brands < b


def group_row_ids(b: int, m: int, k: int, brand_slot: jax.Array | None = None,
                  table_rows: int | None = None) -> dict[str, Any]:
  """Hash-dropout row ids of :meth:`CAMERA.score_groups`' rows.

  Slot s of triplet t (0 its brand, 1..M its influencers) is row ``t (1 + M) + s``, or for the
  brand, when the batch numbers its brands (``brand_slot`` [B]: each triplet's brand among the
  training brands), ``brand_slot[t] (1 + M)``, and row r of a brand table (``table_rows``) is
  ``r (1 + M)``: one mask per brand and step, whether psi runs per triplet or per table brand.
  rho's gathered rows (the row path) are ``id K + slot``; gamma's side s of pair (t, j)
  ``2 (t M + j) + s``. A row's id, hence its dropout mask, depends on its triplet (or brand)
  alone, not on the batch's padded width: a batch padded for 4 devices draws the real rows'
  masks of the unpadded batch.

  >>> ids = group_row_ids(2, 2, 3)
  >>> ids["psi"].tolist(), ids["gamma"].tolist()
  ([0, 3, 1, 2, 4, 5], [[[0, 2], [4, 6]], [[1, 3], [5, 7]]])
  >>> ids["psi"].tolist() == group_row_ids(3, 2, 3)["psi"][[0, 1, 3, 4, 5, 6]].tolist()
  True
  """
  t = np.arange(b)[:, None] * (1 + m)
  infl = (t + 1 + np.arange(m)).reshape(-1)
  pair = 2 * np.arange(b * m).reshape(b, m)
  out: dict[str, Any] = {"gamma": np.stack([pair, pair + 1])}
  if brand_slot is None:
    rows = np.concatenate([t[:, 0], infl])
    out["psi"], out["rho"] = rows, rows[:, None] * k + np.arange(k)
    return out
  brand = jnp.asarray(brand_slot, jnp.int32) * (1 + m)
  rows = jnp.concatenate([brand, jnp.asarray(infl, jnp.int32)])
  out["rho"] = rows[:, None] * k + jnp.arange(k, dtype=jnp.int32)
  out["psi"] = rows if table_rows is None else jnp.concatenate(
      [jnp.arange(table_rows, dtype=jnp.int32) * (1 + m), rows[b:]])
  return out


# The feature-major path pads psi's rows (its dots' column count) to a multiple of this.
PSI_ROW_MULTIPLE = 64


def _pad_psi_rows(e_h: jax.Array, row_ids: Any) -> tuple[jax.Array, Any]:
  """e_h [R, d] and its hash-dropout row ids padded to R' = a multiple of
  :data:`PSI_ROW_MULTIPLE` rows: zero rows with id 0, whose psi outputs nothing reads (their
  gradients are zero, so the padding changes no result but float rounding).

  On the 2-core development CPU, YNNPACK's float32 dots ran 8 to 15 % slower alone at some
  column counts (``[1024, 512] x [512, R]``: 3.50 ms at R = 1,384 and 1,392, 3.06 to 3.24 ms at
  1,400, 1,408 and 1,440; benchmarks/README.md); a multiple of 64 was among the fast ones in
  every shape timed. The batch-512 step has R = 360 + 1,024 = 1,384.

  >>> e_h, ids = _pad_psi_rows(jnp.ones((3, 2)), np.array([5, 7, 9]))
  >>> e_h.shape, ids[:4].tolist(), float(e_h[3:].sum())
  ((64, 2), [5, 7, 9, 0], 0.0)
  """
  pad = -e_h.shape[0] % PSI_ROW_MULTIPLE
  if not pad:
    return e_h, row_ids
  xp = np if isinstance(row_ids, np.ndarray) else jnp
  ids = xp.concatenate([row_ids, xp.zeros(pad, row_ids.dtype)])
  return jnp.pad(e_h, ((0, pad), (0, 0))), ids


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
    history_norm: "none" (eq. 6 as written, the default) or "l2" (e_h rescaled to norm
      sqrt(d_u) before psi and gamma, see :func:`normalize_history`).
    use_interaction: False is the C-w/o-MR ablation: S = S_con, no phi parameters, and S_ed,
      S_in are returned as ones.
    dtype: matmul precision: float32, or bfloat16 operands with float32 accumulation
      (:mod:`camera_jax.models.precision`) for psi, rho, gamma and the attention logits
      q = psi rho(U_C)^T where they are one product (the table path of :meth:`score_groups`,
      catalogue scoring); the per-slot logits of the row path and of :meth:`__call__`, the
      attention weights, e_r, the scores and the parameters stay float32.
    rho_path: "auto" (the static rule below), "table" or "rows" to force one path.
    dropout_rng: "threefry" (nn.Dropout) or "hash" (:func:`hash_keep_mask`), see :class:`MLP`.

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
  history_norm: HistoryNorm = "none"
  use_interaction: bool = True
  dtype: Any = jnp.float32
  rho_path: Literal["auto", "table", "rows"] = "auto"
  dropout_rng: Literal["threefry", "hash"] = "threefry"

  def setup(self) -> None:
    self.psi = MLP(self.d_hidden, self.dropout, None, self.init_scale, self.dtype,
                   self.dropout_rng)
    self.rho = MLP(self.d_hidden, self.dropout, None, self.init_scale, self.dtype,
                   self.dropout_rng)
    self.gamma_mlp = MLP(self.gamma, self.dropout, 2, self.init_scale, self.dtype,
                         self.dropout_rng)
    if self.use_interaction:
      self.phi_ed_post = ScoreMLP(self.d_score, self.init_scale)
      self.phi_ed_brand = ScoreMLP(self.d_score, self.init_scale)
      self.phi_followers = ScoreMLP(self.d_score, self.init_scale)
      self.phi_eng_inf = ScoreMLP(self.d_score, self.init_scale)

  # -- per-account and per-concept parts -------------------------------------------------------

  def _history(self, w: jax.Array, u: jax.Array) -> jax.Array:
    """e_h (eq. 6) of [..., K] weights and [..., K, d_u] concept rows, rescaled per history_norm."""
    return normalize_history(historical_representation(jnp.asarray(w, jnp.float32), u),
                             self.history_norm)

  def encode_accounts(self, idx: jax.Array, w: jax.Array, concepts: jax.Array, *,
                      deterministic: bool = True, mask: jax.Array | None = None
                      ) -> dict[str, jax.Array]:
    """Per-account quantities that do not depend on the partner.

    Args:
      idx: int32 [..., K] the accounts' top-K concept ids.
      w: [..., K] their w_a weights.
      concepts: U_C [n, d_u].
      deterministic: no dropout when True.
      mask: optional bool [..., K], the slots that take part in the BCAM attention
        (see :func:`supported_concepts`); all True when omitted.

    Returns:
      dict(idx [..., K], w [..., K], mask [..., K], u [..., K, d_u] (gathered concept rows),
      e_h [..., d_u] (eq. 6), psi [..., p] (psi(e_h), float32)).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    u = jnp.take(concepts, idx, axis=0)
    e_h = self._history(w, u)
    psi = self.psi(e_h, deterministic=deterministic).astype(jnp.float32)
    mask = jnp.ones(idx.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return dict(idx=jnp.asarray(idx, jnp.int32), w=jnp.asarray(w, jnp.float32), mask=mask, u=u,
                e_h=e_h, psi=psi)

  def concept_table(self, concepts: jax.Array, *, deterministic: bool = True,
                    feature_major: bool = False) -> jax.Array:
    """rho(u) for every concept: [n, p] float32.

    ``feature_major``: rho runs on U_C^T (:attr:`MLP.layout` "features", the same function
    and dropout masks) and its [p, n] output is transposed once; the feature-major training
    path's choice, whose weight gradients are then x_t g_t^T, not the x^T g that XLA runs on
    its Eigen dot (rho's two: 1.19 against 1.95 ms alone, benchmarks/README.md).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    if feature_major:
      return precision.materialized_transpose(self.rho(
          precision.materialized_transpose(concepts), deterministic=deterministic,
          transposed=True))
    return self.rho(concepts, deterministic=deterministic).astype(jnp.float32)

  # -- per-pair part ---------------------------------------------------------------------------

  def _result(self, batch: Mapping[str, jax.Array], s_con: jax.Array, w_b: jax.Array,
              w_m: jax.Array) -> dict[str, jax.Array]:
    """S_ed, S_in (eq. 11, 14; ones for C-w/o-MR) and S (eq. 18) around s_con: the outputs."""
    if not self.use_interaction:
      one = jnp.ones(s_con.shape, jnp.float32)
      return dict(S=s_con, S_con=s_con, S_ed=one, S_in=one, w_b=w_b, w_m=w_m)
    s_ed = endorsement_score(self.phi_ed_post(batch["ed_post"]),
                             self.phi_ed_brand(batch["ed_brand"]))
    s_in = influence_score(self.phi_followers(batch["followers"]),
                           self.phi_eng_inf(batch["eng_inf"]))
    return dict(S=ranking_score(s_con, s_ed, s_in), S_con=s_con, S_ed=s_ed, S_in=s_in,
                w_b=w_b, w_m=w_m)

  def _pairs(self, brand: Mapping[str, jax.Array], influencer: Mapping[str, jax.Array],
             rho_b: jax.Array, rho_m: jax.Array, features: Mapping[str, jax.Array],
             deterministic: bool) -> dict[str, jax.Array]:
    w_b = marketing_weights(influencer["psi"], rho_b, brand["mask"], scale=self.attention_scale)
    w_m = marketing_weights(brand["psi"], rho_m, influencer["mask"], scale=self.attention_scale)
    e_r_b = marketing_representation(w_b, brand["u"])
    e_r_m = marketing_representation(w_m, influencer["u"])
    # gamma on both sides in one call: [2, ..., 2 d] -> [2, ..., d_a]
    e_h = jnp.stack([brand["e_h"], influencer["e_h"]])
    e_r = jnp.stack([e_r_b, e_r_m])
    e_a = fuse(lambda x: self.gamma_mlp(x, deterministic=deterministic), e_h, e_r)
    e_a = e_a.astype(jnp.float32)
    s_con = content_score(e_a[0], e_a[1])
    return self._result(features, s_con, w_b, w_m)

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
      features: dict of [P] arrays ``ed_post``, ``ed_brand``, ``followers``, ``eng_inf`` (see
        :meth:`__call__`); unused when ``use_interaction`` is False.
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
        w_a weights; ``inf_idx``, ``inf_w`` -- the same for the influencer; optional
        ``brand_mask``, ``inf_mask`` bool [B, K] -- the slots that take part in the attention;
        ``ed_post`` [B] -- scaled engagement feature of the pair's endorsement post (the
        caller chooses a leak-free estimate); ``ed_brand`` [B] -- the brand's scaled mean
        engagement; ``followers`` [B], ``eng_inf`` [B] -- the influencer's scaled followers
        and mean engagement. (The paper's S_ed = 0 for sampled negatives, in training with
        ``--endorsement=observed``, is the train step's: ``ranker.make_train_step``.)
      concepts: the fixed standardised U_C [n, d_u].
      deterministic: disables dropout; otherwise a ``'dropout'`` rng is needed.

    Returns:
      dict(S, S_con, S_ed, S_in: float32 [B]; w_b, w_m: float32 [B, K], each row sums to 1).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    idx = jnp.stack([batch["brand_idx"], batch["inf_idx"]])           # [2, B, K]
    w = jnp.stack([batch["brand_w"], batch["inf_w"]])
    mask = None
    if batch.get("brand_mask") is not None:
      mask = jnp.stack([batch["brand_mask"], batch["inf_mask"]])
    enc = self.encode_accounts(idx, w, concepts, deterministic=deterministic, mask=mask)
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

  # -- fast paths ------------------------------------------------------------------------------
  # The same model, computed with algebra that changes no result (deterministic outputs equal
  # __call__'s to float rounding; tests/test_camera_model.py checks it):
  #   * psi(e_h) once per account of a triplet (the brand once for its positive and negatives),
  #     or, with numbered brands (ranker.brand_table) and more triplets than brands, once per
  #     brand;
  #   * rho(u) once per concept (the table path) or once per (account, slot) (the row path);
  #   * the attention logits psi . rho(u_i) as columns of q = psi rho(U_C)^T on the table path;
  #   * scoring a catalogue: gamma's first layer is linear in concat(e_h, e_r) and
  #     e_r = sum_i w_i u_i, so gamma_0(concat(e_h, e_r)) = (e_h W_h + b) + sum_i w_i (u_i W_r):
  #     e_h W_h + b per account, u W_r per concept, only the weighted sum per pair;
  #   * large float32 training batches on one CPU device: psi's, rho's and gamma's
  #     activations feature-major from e_h to S_con (_score_groups_feature_major), psi's rows
  #     padded with zero rows to a multiple of 64, gamma's input gradient without its e_h half
  #     (e_h depends on no parameter).

  def score_groups(self, batch: Mapping[str, jax.Array], concepts: jax.Array, *,
                   deterministic: bool) -> dict[str, jax.Array]:
    """Scores each brand against its own group of M influencers (the training triplets).

    Same outputs as :meth:`__call__` on the B x M pairs (brand b repeated for its group), with
    the brand encoded once per group. In deterministic mode the result equals ``__call__``'s to
    float rounding. In training mode one dropout mask is drawn per encoded row: the brand's
    psi(e_h) and, on the row path, rho of its concepts are computed once per group, so its
    positive and its negatives see the same brand representation (``__call__`` draws the
    brand's masks once per pair); gamma's masks are per pair side, as in ``__call__``. With
    numbered brands (``brand_table_idx``, ``brand_table_w`` [T, K], ``brand_slot`` [B]:
    :func:`camera_jax.training.ranker.group_inputs`) every triplet of a brand shares the
    brand's psi mask (and, on the row path, its rho masks) in the step (:func:`group_row_ids`;
    the table path likewise shares one rho mask per concept), and psi runs once per brand when
    there are fewer brands than triplets.

    Args:
      batch: ``brand_idx``, ``brand_w`` [B, K] (optional ``brand_mask`` bool [B, K]);
        ``inf_idx``, ``inf_w`` [B, M, K] (optional ``inf_mask``); ``ed_post``, ``ed_brand``,
        ``followers``, ``eng_inf`` [B, M] -- see :meth:`__call__`.
      concepts: U_C [n, d_u].
      deterministic: disables dropout; otherwise a ``'dropout'`` rng is needed.

    Returns:
      dict(S, S_con, S_ed, S_in [B, M]; w_b, w_m [B, M, K]).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    n = concepts.shape[0]
    b_idx, m_idx = batch["brand_idx"], batch["inf_idx"]
    b, k = b_idx.shape
    m = m_idx.shape[1]
    # the concept rows of each side gathered once, unchecked (top-k ids are in range), and
    # never sliced (a checked gather of all R K rows and its slices took about 6 ms of a
    # traced batch-512 step; the untraced step moved within its noise)
    u_b = concepts.at[b_idx].get(mode="promise_in_bounds")                       # [B, K, d]
    u_m = concepts.at[m_idx].get(mode="promise_in_bounds")                       # [B, M, K, d]
    d = concepts.shape[1]
    e_h_b = self._history(batch["brand_w"], u_b)                                  # eq. 6
    e_h_m = self._history(batch["inf_w"], u_m)
    # psi's rows: the brands (once per triplet, or once per brand of the table), then the
    # influencers; slot: each triplet's brand row
    e_h_psi_b, slot, brand_slot = self._brand_rows(batch, concepts, e_h_b)
    nb = e_h_psi_b.shape[0]
    e_h = jnp.concatenate([e_h_psi_b, e_h_m.reshape(b * m, d)])                   # [R, d]
    ids = group_row_ids(b, m, k, brand_slot, None if slot is None else nb)
    if self.groups_feature_major(b, m, k, n, deterministic=deterministic, brand_rows=nb):
      return self._score_groups_feature_major(batch, concepts, u_b, u_m, e_h, e_h_b, slot,
                                              ids, deterministic)
    use_table = self._groups_use_table(b, m, k, n)
    psi = self.psi(e_h, deterministic=deterministic,
                   row_ids=ids["psi"]).astype(jnp.float32)                        # [R, p]
    p = psi.shape[-1]
    psi_b, psi_m = psi[:nb], psi[nb:].reshape(b, m, p)
    if slot is not None:
      psi_b = jnp.take(psi_b, slot, axis=0)                                       # [B, p]
    if use_table:  # R K rows > n: rho once per concept; logits as columns of q = psi rho(U_C)^T
      table = self.concept_table(concepts, deterministic=deterministic)          # [n, p]
      q = precision.matmul(psi, table, self.dtype, transpose_w=True)              # [R, n]
      q_b, q_m = q[:nb], q[nb:].reshape(b, m, n)
      if slot is not None:
        q_b = jnp.take(q_b, slot, axis=0)                                         # [B, n]
      logits_b = jnp.take_along_axis(q_m, jnp.broadcast_to(b_idx[:, None, :], (b, m, k)), -1)
      logits_m = jnp.take_along_axis(jnp.broadcast_to(q_b[:, None, :], (b, m, n)), m_idx, -1)
    else:  # rho once per (account, slot)
      u = jnp.concatenate([u_b, u_m.reshape(b * m, k, d)])                        # [R, K, d]
      rho = self.rho(u, deterministic=deterministic,
                     row_ids=ids["rho"]).astype(jnp.float32)                      # [R, K, p]
      rho_b, rho_m = rho[:b], rho[b:].reshape(b, m, k, p)
      logits_b = jnp.einsum("bjp,bkp->bjk", psi_m, rho_b)
      logits_m = jnp.einsum("bp,bjkp->bjk", psi_b, rho_m)
    w_b, w_m, e_r = self._group_attention(batch, logits_b, logits_m, p, u_b, u_m)
    e_a = fuse(lambda x: self.gamma_mlp(x, deterministic=deterministic,           # eq. 9
                                        row_ids=ids["gamma"]),
               jnp.stack([jnp.broadcast_to(e_h_b[:, None, :], e_r.shape[1:]), e_h_m]),
               e_r).astype(jnp.float32)
    s_con = content_score(e_a[0], e_a[1])
    return self._result(batch, s_con, w_b, w_m)

  def _groups_use_table(self, b: int, m: int, k: int, n: int) -> bool:
    """score_groups' rho path: the table when its B (1 + M) K concept rows outnumber n."""
    return {"auto": b * (1 + m) * k > n, "table": True, "rows": False}[self.rho_path]

  def groups_feature_major(self, b: int, m: int, k: int, n: int, *, deterministic: bool,
                           brand_rows: int | None = None) -> bool:
    """Whether :meth:`score_groups` on B groups of M candidates, top-K concepts out of n, runs
    its feature-major path: the table path with psi's rows (``brand_rows``, default B, then the
    B M influencers) feature-major (:attr:`MLP.layout`). Static; works on an unbound model
    (``CAMERA(...).bind({})``)."""
    rows = jax.ShapeDtypeStruct(((b if brand_rows is None else brand_rows) + b * m, 1), jnp.float32)
    return self._groups_use_table(b, m, k, n) and self.psi.feature_major(rows, deterministic)

  def _brand_rows(self, batch: Mapping[str, jax.Array], concepts: jax.Array, e_h_b: jax.Array
                  ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """psi's brand rows for :meth:`score_groups`, each triplet's row among them, and its brand.

    With the brands numbered (``brand_slot`` [B], ``brand_table_idx``, ``brand_table_w`` [T, K]:
    :func:`camera_jax.training.ranker.group_inputs`) and fewer brands than triplets (T < B):
    e_h (eq. 6) of the T table brands, and the slots twice; with T >= B the triplets' own e_h_b,
    None and the slots (one dropout mask per brand either way, :func:`group_row_ids`); without
    numbered brands e_h_b, None, None.
    """
    if batch.get("brand_slot") is None:
      return e_h_b, None, None
    slot = jnp.asarray(batch["brand_slot"], jnp.int32)
    if not psi_per_brand(batch["brand_table_idx"].shape[0], e_h_b.shape[0]):
      return e_h_b, None, slot
    u_t = concepts.at[batch["brand_table_idx"]].get(mode="promise_in_bounds")    # [T, K, d]
    return self._history(batch["brand_table_w"], u_t), slot, slot

  def _group_attention(self, batch: Mapping[str, jax.Array], logits_b: jax.Array,
                       logits_m: jax.Array, p: int, u_b: jax.Array, u_m: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eq. 7 and 8 for :meth:`score_groups`: w_b, w_m [B, M, K] from the [B, M, K] logits, and
    e_r [2, B, M, d] (the brand sides, then the influencer sides) from u_b [B, K, d] (shared by
    the brand's group) and u_m [B, M, K, d]."""
    mask_b = batch.get("brand_mask")
    w_b = marketing_weights_from_logits(
        logits_b, p, None if mask_b is None else mask_b[:, None, :], scale=self.attention_scale)
    w_m = marketing_weights_from_logits(logits_m, p, batch.get("inf_mask"),
                                        scale=self.attention_scale)
    # eq. 8 both ways; the brand side is marketing_representation(w_b, u_b[:, None]) written
    # as one dot over the group's shared u_b, so the [B, M, K, d] broadcast is never formed
    e_r = jnp.stack([jnp.einsum("bjk,bkd->bjd", w_b, u_b), marketing_representation(w_m, u_m)])
    return w_b, w_m, e_r

  def _score_groups_feature_major(self, batch: Mapping[str, jax.Array], concepts: jax.Array,
                                  u_b: jax.Array, u_m: jax.Array, e_h: jax.Array,
                                  e_h_b: jax.Array, slot: jax.Array | None,
                                  ids: dict[str, np.ndarray], deterministic: bool
                                  ) -> dict[str, jax.Array]:
    """:meth:`score_groups`' table path with psi's, rho's and gamma's activations feature-major.

    For the training calls whose psi runs feature-major (:attr:`MLP.layout`; gamma, with at
    least as many rows, does too): psi's rows are padded to a multiple of
    :data:`PSI_ROW_MULTIPLE` (:func:`_pad_psi_rows`), its output stays [p, R'], rho runs on
    U_C^T and its [p, n] output is transposed once, the logits are entries of
    ``q^T = rho(U_C) psi^T`` [n, R'], gamma's input is assembled as [2 d, 2 B M] and its output
    [g, 2 B M] goes straight into eq. 17, so no activation is transposed back to rows (in the
    batch-512 step those transposes, and the gradients' transposes into the layout, took about
    5 ms). Rows keep the row path's order (the brands, then the influencers (b, j); gamma's
    brand sides, then its influencer sides), so the dropout masks are the row path's and only
    the float rounding differs. e_h depends on no parameter, so gamma's input gradient skips
    its half (``constant_inputs``).
    """
    b, _, d = u_b.shape
    m = u_m.shape[1]
    bm = b * m
    nb = e_h.shape[0] - bm                                                          # brand rows
    e_h, psi_ids = _pad_psi_rows(e_h, ids["psi"])
    e_h_t = precision.materialized_transpose(e_h)                                  # [d, R']
    psi_t = self.psi(e_h_t, deterministic=deterministic, transposed=True,
                     row_ids=psi_ids)                                             # [p, R']
    p = psi_t.shape[0]
    table = self.concept_table(concepts, deterministic=deterministic,
                               feature_major=True)                                # [n, p]
    q_t = precision.feature_major_product(table, psi_t)                             # [n, R']
    # eq. 7's inner products psi(e_h^{m/b}) . rho(u_i): entries of q^T [n, R]
    inf_col = nb + jnp.arange(bm, dtype=jnp.int32).reshape(b, m)
    brand_col = jnp.arange(b, dtype=jnp.int32) if slot is None else slot
    logits_b = q_t.at[batch["brand_idx"][:, None, :], inf_col[:, :, None]].get(
        mode="promise_in_bounds")                                                 # [B, M, K]
    logits_m = q_t.at[batch["inf_idx"], brand_col[:, None, None]].get(mode="promise_in_bounds")
    w_b, w_m, e_r = self._group_attention(batch, logits_b, logits_m, p, u_b, u_m)
    # e_r in rows, then transposed (eq. 8 written as "bjk,bkd->dbj" ran on XLA's Eigen dot,
    # 0.8 ms each way in the batch-512 step, against 0.2 to 0.3 ms)
    e_r_t = precision.materialized_transpose(e_r.reshape(2 * bm, d))              # [d, 2 B M]
    e_h_b_t = e_h_t[:, :b] if slot is None else precision.materialized_transpose(e_h_b)
    e_h_pairs = jnp.concatenate(
        [jnp.broadcast_to(e_h_b_t[:, :, None], (d, b, m)).reshape(d, bm), e_h_t[:, nb:nb + bm]],
        axis=1)
    e_a_t = fuse(lambda x: self.gamma_mlp(x, deterministic=deterministic, transposed=True,
                                          constant_inputs=d, row_ids=ids["gamma"]),
                 e_h_pairs, e_r_t, axis=0)
    s_con = content_score(e_a_t[:, :bm], e_a_t[:, bm:], axis=0).reshape(b, m)
    return self._result(batch, s_con, w_b, w_m)

  def catalogue_concepts(self, concepts: jax.Array) -> dict[str, jax.Array]:
    """Per-concept parts of catalogue scoring (deterministic).

    Returns:
      dict(rho [n, p] = rho(U_C), r1 [n, g_0] = U_C W_r, the e_r rows of gamma's first kernel).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    kernel0, _ = self.gamma_mlp.dense_params()[0]
    d_h = kernel0.shape[0] - concepts.shape[1]
    r1 = precision.matmul(concepts, kernel0[d_h:], self.dtype)
    return dict(rho=self.concept_table(concepts), r1=r1)

  def catalogue_accounts(self, idx: jax.Array, w: jax.Array, mask: jax.Array | None,
                         concepts: jax.Array, rho: jax.Array) -> dict[str, jax.Array]:
    """Per-account parts of catalogue scoring (deterministic).

    Args:
      idx, w, mask: [A, K] top-K concepts, their w_a weights, the attention mask (or None).
      concepts: U_C [n, d_u]. rho: :meth:`catalogue_concepts`' rho [n, p].

    Returns:
      dict(idx [A, K], mask [A, K], q [A, n] = psi(e_h) rho(U_C)^T (the attention logits of
      this account against every concept), h1 [A, g_0] = e_h W_h + b_0 (gamma's first layer on
      e_h)).
    """
    concepts = jnp.asarray(concepts, jnp.float32)
    u = jnp.take(concepts, idx, axis=0)
    e_h = self._history(w, u)                                                     # eq. 6
    psi = self.psi(e_h, deterministic=True).astype(jnp.float32)
    kernel0, bias0 = self.gamma_mlp.dense_params()[0]
    d_h = e_h.shape[-1]
    h1 = precision.matmul(e_h, kernel0[:d_h], self.dtype) + bias0
    mask = jnp.ones(idx.shape, bool) if mask is None else jnp.asarray(mask, bool)
    q = precision.matmul(psi, rho, self.dtype, transpose_w=True)
    return dict(idx=jnp.asarray(idx, jnp.int32), mask=mask, q=q, h1=h1)

  def catalogue_pairs(self, brand: Mapping[str, jax.Array], influencer: Mapping[str, jax.Array],
                      r1: jax.Array, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Scores pairs from :meth:`catalogue_accounts` rows gathered per pair (deterministic).

    Args:
      brand, influencer: :meth:`catalogue_accounts` outputs gathered to [P, ...].
      r1: :meth:`catalogue_concepts`' r1 [n, g_0].
      features: [P] arrays ``ed_post``, ``ed_brand``, ``followers``, ``eng_inf`` (see
        :meth:`__call__`).

    Returns:
      dict(S, S_con, S_ed, S_in [P]; w_b, w_m [P, K]) equal to :meth:`__call__`'s to float
      rounding.
    """
    p = self.d_hidden[-1]
    logits_b = jnp.take_along_axis(influencer["q"], brand["idx"], axis=-1)     # psi_m . rho(u_b)
    logits_m = jnp.take_along_axis(brand["q"], influencer["idx"], axis=-1)
    w_b = marketing_weights_from_logits(logits_b, p, brand["mask"], scale=self.attention_scale)
    w_m = marketing_weights_from_logits(logits_m, p, influencer["mask"],
                                        scale=self.attention_scale)
    w = jnp.stack([w_b, w_m])                                                     # [2, P, K]
    idx = jnp.stack([brand["idx"], influencer["idx"]])
    # eq. 8 and 9 by linearity: gamma_0(concat(e_h, e_r)) = h1 + sum_i w_i (u_i W_r), one
    # gather per slot so that XLA fuses the K row gathers into the sum ([2, P, K, g_0] is never
    # materialised: 6x faster than one gather of all slots on the development CPU)
    pre = jnp.stack([brand["h1"], influencer["h1"]])
    for i in range(idx.shape[-1]):
      pre = pre + w[..., i, None].astype(r1.dtype) * r1.at[idx[..., i]].get(
          mode="promise_in_bounds")
    e_a = self.gamma_mlp.from_first_preactivation(pre).astype(jnp.float32)
    s_con = content_score(e_a[0], e_a[1])
    return self._result(features, s_con, w_b, w_m)
