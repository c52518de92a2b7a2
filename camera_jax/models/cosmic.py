"""COSMIC: cross-modal social media concept learning (paper III-B, Fig. 3, eq. 2-4).

A post image gives v1 (the 5-layer CNN), then the post visual embedding v2 (eq. 2); the
visual concept distribution z is the softmax of v2's inner products with the rows u_i of the
learned concept matrix U_C (eq. 3). The target is the semantic distribution z', built from the
post's caption embedding t, the concept word embeddings l and the post's multi-hot concepts h
(text after eq. 2); the loss is the cross-entropy between them (eq. 4). After training, U_C is
standardised per dimension and used by CAMERA (:func:`export_concept_matrix`).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from camera_jax.models.visual import LEAKY_SLOPE, VisualEncoder

LogitScale = Literal["inner", "mean"]
ZPrimeMode = Literal["masked", "faithful"]


def uniform_init(scale: float):
  """Initializer drawing uniform(-scale, scale) (``jax.nn.initializers.uniform`` is [0, s))."""

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def visual_embedding(v1: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """Eq. 2: v2 = leaky_relu(W_1^v v1 + b_1^v), slope 0.01.

  Args:
    v1: [..., d_v1] post visual feature.
    kernel: [d_v1, d_u] (W_1^v transposed, the row-vector convention).
    bias: [d_u].

  Returns:
    v2: [..., d_u].
  """
  return nn.leaky_relu(v1 @ kernel + bias, negative_slope=LEAKY_SLOPE)


def concept_logits(v2: jax.Array, concept_matrix: jax.Array,
                   scale: LogitScale = "inner") -> jax.Array:
  """Eq. 3: the logits whose softmax over the concepts is z.

  z = softmax{(v2 . u_1), ..., (v2 . u_n)}; this returns the bracket. ``scale="inner"`` is the
  paper's inner product; ``scale="mean"`` is the authors' code, the mean over the d_u
  dimensions of v2 * u_i, i.e. the inner product divided by d_u (a softmax temperature of d_u).

  Args:
    v2: [..., d_u].
    concept_matrix: U_C [n, d_u].
    scale: "inner" or "mean".

  Returns:
    [..., n] float32 logits.
  """
  logits = jnp.einsum("...d,nd->...n", v2.astype(jnp.float32),
                      concept_matrix.astype(jnp.float32))
  if scale == "mean":
    logits = logits / concept_matrix.shape[-1]
  elif scale != "inner":
    raise ValueError(f"unknown logit scale {scale!r}")
  return logits


class COSMIC(nn.Module):
  """Image -> (concept logits, v2) with the learned concept matrix U_C (paper Fig. 3).

  Attributes:
    num_concepts: n.
    d_u: length of a concept representation (100 in the paper).
    channels, pools, fc: the :class:`VisualEncoder` sizes (fc = d_v1 = 1024).
    logit_scale: "inner" (paper eq. 3) or "mean" (authors' code); see :func:`concept_logits`.
    dtype: computation dtype of the CNN; v2 and the logits are float32.

  Parameters: the encoder's, ``embed_kernel`` [fc, d_u] and ``embed_bias`` [d_u] (eq. 2) and
  ``concept_matrix`` [n, d_u], initialised uniform(-1, 1) as in the authors' code.
  """

  num_concepts: int
  d_u: int = 100
  channels: Sequence[int] = (32, 64, 64, 128, 128)
  pools: Sequence[int] = (3, 1, 2, 1, 2)
  fc: int = 1024
  logit_scale: LogitScale = "inner"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Returns dict(logits=[B, n] float32, v2=[B, d_u] float32)."""
    v1 = VisualEncoder(self.channels, self.pools, self.fc, dtype=self.dtype, name="encoder")(
        x, train=train, mask=mask).astype(jnp.float32)
    kernel = self.param("embed_kernel", nn.initializers.lecun_normal(), (self.fc, self.d_u))
    bias = self.param("embed_bias", nn.initializers.zeros, (self.d_u,))
    u = self.param("concept_matrix", uniform_init(1.0), (self.num_concepts, self.d_u))
    v2 = visual_embedding(v1, kernel, bias)
    return dict(logits=concept_logits(v2, u, self.logit_scale), v2=v2)


def semantic_weights(t: jax.Array, l: jax.Array, h: jax.Array,
                     has_text: jax.Array) -> jax.Array:
  """weight_t = [(t . l_1), ..., (t . l_n)] o h; for posts without text weight_t = h.

  The paper's definition right after eq. 2.

  Args:
    t: [B, d] post caption embeddings (any value for posts without text).
    l: [n, d] concept word embeddings.
    h: [B, n] multi-hot concepts (bool or {0, 1}).
    has_text: bool [B].

  Returns:
    float32 [B, n].
  """
  h = jnp.asarray(h).astype(jnp.float32)
  sim = jnp.einsum("bd,nd->bn", jnp.asarray(t, jnp.float32), jnp.asarray(l, jnp.float32))
  return jnp.where(jnp.asarray(has_text, bool)[:, None], sim * h, h)


def semantic_distribution(t: jax.Array, l: jax.Array, h: jax.Array, has_text: jax.Array, *,
                          mode: ZPrimeMode = "masked", semantic: bool = True) -> jax.Array:
  """The semantic concept weight distribution z' of each post (paper III-B).

  Modes:
    * ``"faithful"``: z' = softmax(weight_t) over all n concepts, exactly as written. Concepts
      absent from the post have weight 0 and so still get exp(0) mass; a post without any
      concept (h all zero) gets the uniform distribution 1/n.
    * ``"masked"``: the softmax is restricted to the concepts with h = 1; absent concepts get
      exactly 0. A post without any concept gets the all-zero row, which
      :func:`cosmic_loss` ignores.
    * ``semantic=False`` (the C-w/o-SI ablation): weight_t = h for every post (no caption
      information), then the mode's softmax: h / sum(h) in masked mode (an empty h gives the
      all-zero row), softmax(h) over all n in faithful mode.

  Args:
    t, l, h, has_text: as in :func:`semantic_weights`.
    mode: "masked" or "faithful".
    semantic: False for the C-w/o-SI ablation.

  Returns:
    float32 [B, n]; each row sums to 1, or is all zero (masked / C-w/o-SI, empty h).
  """
  h = jnp.asarray(h).astype(jnp.float32)
  # C-w/o-SI: weight_t = h for every post (the paper's rule for a post without text), then the
  # same normalisation as CAMERA, so that the ablation changes only the semantic information
  # (masked: h / sum(h), as before; faithful: softmax(h) over all n, not h / sum(h)).
  w = semantic_weights(t, l, h, has_text) if semantic else h
  if mode == "faithful":
    return jax.nn.softmax(w, axis=-1)
  if mode != "masked":
    raise ValueError(f"unknown z' mode {mode!r}")
  present = h > 0
  wmax = jnp.max(jnp.where(present, w, -jnp.inf), axis=-1, keepdims=True)
  wmax = jnp.where(jnp.isfinite(wmax), wmax, 0.0)
  e = jnp.where(present, jnp.exp(w - wmax), 0.0)
  s = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(s > 0, s, 1.0)


def cosmic_loss(logits: jax.Array, z_prime: jax.Array,
                mask: jax.Array | None = None) -> jax.Array:
  """Eq. 4: L_u = -sum_i z'_i log z_i with z = softmax(logits), mean over the valid rows.

  Computed with a log-softmax (``optax.softmax_cross_entropy``). A row is valid when ``mask``
  is True and its z' sums to more than 0 (all-zero z' rows -- posts without any concept in
  masked mode or C-w/o-SI -- carry no target and are ignored).

  Args:
    logits: [B, n] (from :func:`concept_logits`).
    z_prime: [B, n] target distributions.
    mask: bool [B]; None = all rows.

  Returns:
    Scalar float32; 0 when no row is valid.
  """
  logits = logits.astype(jnp.float32)
  z_prime = z_prime.astype(jnp.float32)
  per_row = optax.softmax_cross_entropy(logits, z_prime)
  valid = jnp.sum(z_prime, axis=-1) > 0
  if mask is not None:
    valid = valid & jnp.asarray(mask, bool)
  v = valid.astype(jnp.float32)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(v), 1.0)


def export_concept_matrix(params: Mapping[str, Any], eps: float = 1e-8) -> np.ndarray:
  """The trained U_C, standardised per dimension, as CAMERA consumes it.

  Each of the d_u columns is z-scored over the n concepts: (u - mean) / (std + eps), std with
  ddof=0, as the authors do after training.

  Reads the model parameter ``concept_matrix`` -- never optimizer state. (The authors'
  extraction script read an Adam moment slot of the embedding instead of the embedding
  itself: a bug, not a design.)

  Args:
    params: the COSMIC ``params`` collection, or a variables dict holding it under
      ``"params"``.
    eps: added to the standard deviation.

  Returns:
    float32 [n, d_u].
  """
  if "concept_matrix" not in params and "params" in params:
    params = params["params"]
  if "concept_matrix" not in params:
    raise KeyError("export_concept_matrix: no 'concept_matrix' parameter; pass the COSMIC "
                   "params (not optimizer state)")
  u = np.asarray(jax.device_get(params["concept_matrix"]), np.float64)
  out = (u - u.mean(axis=0, keepdims=True)) / (u.std(axis=0, ddof=0, keepdims=True) + eps)
  return out.astype(np.float32)
