"""Matmul precision of the ranker: float32, or bfloat16 operands with float32 accumulation.

``RankerConfig.matmul_dtype = "bfloat16"`` (``--matmul_dtype``, off by default) runs every
matmul of psi, rho and gamma, and the attention logits q = psi rho(U_C)^T where they are one
product -- the forward product and both gradients -- on bfloat16 operands with float32
accumulation and float32 results, the mixed precision of GPU tensor cores. Activations,
biases, the per-slot logits of small batches, attention weights, scores, the loss and the
parameters stay float32. On a CPU with AMX (Intel Sapphire Rapids and later) XLA:CPU sends such
dots to its YNNPACK library fusion, which ran about 5x faster than float32 on the development
machine (1,274 to 1,450 against about 285 GFLOP/s for 2048^3, benchmarks/README.md); on a GPU
they run on the tensor cores. Without AMX expect no gain.

Two layout details decide whether XLA:CPU takes that path (measured, jax 0.10.2):

* a dot whose result is bfloat16 is upcast to float32 (no gain), so the result is float32
  (``preferred_element_type``);
* a dot whose left operand contracts its leading (major) axis is upcast too. The weight
  gradient x^T g of a layer is such a dot, and XLA folds a plain transpose of x back into the
  dot's dimension numbers, so :func:`materialized_transpose` writes x^T through a reshape that
  XLA cannot fold (4x faster than the folded form at 2048 x 1024 x 1024, transpose included).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

BF16 = jnp.bfloat16


def materialized_transpose(x: jax.Array) -> jax.Array:
  """x with its last axis moved to the front ([..., k] -> [k, ...]), written to memory.

  For 2-D x this is ``x.T``. ``x.reshape(..., k // c, c)``, moved and merged back, equals the
  plain move element for element; splitting the axis stops XLA from turning the transpose into
  a layout or into the consuming dot's dimension numbers. The last axis is split in blocks of 4
  (or 2) where it divides: inside the ranker's batch-512 bf16 step that ran 74.5 ms against
  86.2 ms for splitting the row axis in blocks of 8 (development CPU, side by side). With an odd
  last axis the first axis is split instead; with both odd it is a plain move. The leading axes
  are never merged, so a batch axis sharded over devices stays sharded.
  """
  lead, k = x.shape[:-1], x.shape[-1]
  nd = x.ndim
  for c in (4, 2):
    if k % c == 0:
      y = x.reshape(lead + (k // c, c))
      return jnp.transpose(y, (nd - 1, nd) + tuple(range(nd - 1))).reshape((k,) + lead)
  m = x.shape[0] if nd > 1 else 1
  for c in (8, 4, 2):
    if nd > 1 and m % c == 0:
      y = x.reshape((m // c, c) + x.shape[1:])
      perm = (nd,) + (0, 1) + tuple(range(2, nd))
      return jnp.transpose(y, perm).reshape((k,) + lead)
  return jnp.moveaxis(x, -1, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def bf16_matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
  """x [..., k] @ w [k, n] (or @ w.T for w [n, k]) on bfloat16 operands, float32 accumulation.

  The gradients are the same kind of product: dx = bf16(g) bf16(w)^T and dw = bf16(x)^T bf16(g)
  summed over x's leading axes (dw^T = bf16(g)^T bf16(x) when ``transpose_w``), accumulated in
  float32 and returned in the inputs' dtypes. x's leading axes are contracted as they are,
  never merged by a reshape, so a batch axis sharded over a mesh stays sharded (a merge of a
  sharded axis with an unsharded one would make XLA gather the batch on every device).
  ``transpose_w`` exists so that no transpose follows a dot: XLA folds such a transpose into
  the dot, and the folded bfloat16 dot then fails on XLA:CPU ("Unsupported element type for
  DotThunk", jax 0.10.2).
  """
  return _bf16_dot(x.astype(BF16), w.astype(BF16), transpose_w)


def _bf16_dot(xb: jax.Array, wb: jax.Array, transpose_w: bool) -> jax.Array:
  """xb [..., k] . wb over xb's last axis and wb's first (second with ``transpose_w``)."""
  rc = 1 if transpose_w else 0
  return lax.dot_general(xb, wb, (((xb.ndim - 1,), (rc,)), ((), ())),
                         preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x, w, transpose_w):
  xb, wb = x.astype(BF16), w.astype(BF16)
  dtypes = (jnp.zeros((), x.dtype), jnp.zeros((), w.dtype))   # residuals must be arrays
  return _bf16_dot(xb, wb, transpose_w), (xb, wb, dtypes)


def _sum_over_leading(at: jax.Array, b: jax.Array) -> jax.Array:
  """at [p, ...] . b [..., q] over the shared leading axes of b: [p, q] in float32."""
  lead = tuple(range(1, at.ndim))
  return lax.dot_general(at, b, ((lead, tuple(range(b.ndim - 1))), ((), ())),
                         preferred_element_type=jnp.float32)


def _bf16_matmul_bwd(transpose_w, res, g):
  xb, wb, (x_like, w_like) = res
  gb = g.astype(BF16)
  dx = _bf16_dot(gb, wb, not transpose_w)                              # g w^T (or g w)
  if transpose_w:                                                      # dw = g^T x, [n, k]
    dw = _sum_over_leading(materialized_transpose(gb), xb)
  else:                                                                # dw = x^T g, [k, n]
    dw = _sum_over_leading(materialized_transpose(xb), gb)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def feature_major_matmul(x_t: jax.Array, w: jax.Array, constant_inputs: int = 0) -> jax.Array:
  """w^T x_t for feature-major activations: x_t [k, ...] (features first), w [k, n] -> [n, ...].

  float32. The three products of a dense layer in this layout are all forms XLA:CPU sends to
  its YNNPACK dot fusion: the forward ``(w^T) x_t`` (w^T written out by
  :func:`materialized_transpose`, a small copy of the kernel), the input gradient ``w g_t`` and
  the weight gradient ``x_t g_t^T`` (both operands contracted on their trailing axes). In the
  row-major layout XLA runs the weight gradient x^T g, which contracts the rows' leading axis,
  on its Eigen dot: alone at 2048 x 1024 x 1024 that took 11.3 ms against 9.0 to 9.7 ms for
  the YNNPACK forms (2-core AMD EPYC, benchmarks/README.md). The weight gradient is computed
  before the input gradient and ordered ahead of it in XLA's schedule (an
  ``optimization_barrier`` on ``g_t`` and ``dw``), meant to keep the two from running side by
  side on the same cores (two independent 2048 x 1024 x 1024 dots in one program took 20.6 ms
  against 17.6 ms one after the other). XLA:CPU's thunk executor follows data, not the
  schedule, and in a batch-512 trace psi's two still overlapped; a real data dependency (dx
  from ``w + 0 * dw[0, 0]``) serialised them without moving the step (81.4 to 85.1 ms against
  82.1 to 85.2, two alternating rounds). The kernel stays out of the barrier: with it inside
  (up to commit 47cc8dd) the parameters were bit-identical and the batch-512 step 0.30 ms
  slower (paired median of 16 alternating calls in one process, within the noise: quartiles
  -0.87 and +0.36 ms).

  ``constant_inputs``: the first c input features are constants (as under
  ``lax.stop_gradient``): their input gradient is zero and its product is never formed (gamma's
  e_h half, which depends on no parameter: about 0.42 GFLOP of the batch-512 step).
  """
  del constant_inputs
  return lax.dot_general(materialized_transpose(w), x_t, (((1,), (0,)), ((), ())))


def _feature_major_fwd(x_t, w, constant_inputs):
  return feature_major_matmul(x_t, w, constant_inputs), (x_t, w)


def _feature_major_bwd(constant_inputs, res, g_t):
  x_t, w = res
  free = tuple(range(1, x_t.ndim))
  dw = lax.dot_general(x_t, g_t, ((free, free), ((), ())))                # [k, n]
  g_t, dw = lax.optimization_barrier((g_t, dw))                           # dw first, then dx
  c = constant_inputs
  dx_t = lax.dot_general(w[c:], g_t, (((1,), (0,)), ((), ())))           # [k - c, ...]
  if c:
    dx_t = jnp.concatenate([jnp.zeros((c,) + dx_t.shape[1:], dx_t.dtype), dx_t])
  return dx_t, dw


feature_major_matmul.defvjp(_feature_major_fwd, _feature_major_bwd)


@jax.custom_vjp
def feature_major_product(a: jax.Array, x_t: jax.Array) -> jax.Array:
  """a x_t for a row-major a [n, k] and feature-major x_t [k, ...] -> [n, ...] (float32).

  :func:`feature_major_matmul` with the kernel given as its transpose, for a product whose left
  factor is itself an activation in rows (the attention logits ``q^T = rho(U_C) psi^T``): the
  forward product and the gradient ``da = g_t x_t^T`` take ``a`` and ``x_t`` as they are, and
  only the input gradient ``a^T g_t`` writes ``a^T`` out (:func:`materialized_transpose`).
  """
  return lax.dot_general(a, x_t, (((1,), (0,)), ((), ())))


def _feature_major_product_fwd(a, x_t):
  return feature_major_product(a, x_t), (a, x_t)


def _feature_major_product_bwd(res, g_t):
  a, x_t = res
  free = tuple(range(1, x_t.ndim))
  da = lax.dot_general(g_t, x_t, ((free, free), ((), ())))                # [n, k]
  dx_t = lax.dot_general(materialized_transpose(a), g_t, (((1,), (0,)), ((), ())))
  return da, dx_t


feature_major_product.defvjp(_feature_major_product_fwd, _feature_major_product_bwd)


MATMUL_DTYPES = ("float32", "bfloat16")


def check_dtype(dtype: Any) -> Any:
  """``dtype`` as a numpy dtype when it is float32 or bfloat16; ValueError otherwise."""
  d = jnp.dtype(dtype)
  if d.name not in MATMUL_DTYPES:
    raise ValueError(f"matmul dtype {d.name}: must be one of {', '.join(MATMUL_DTYPES)}")
  return d


def matmul(x: jax.Array, w: jax.Array, dtype: Any = jnp.float32, *,
           transpose_w: bool = False) -> jax.Array:
  """x [..., k] @ w [k, n] (``transpose_w``: @ w.T for w [n, k]) in the given precision.

  ``dtype`` float32 is the plain ``jnp.dot``; bfloat16 is :func:`bf16_matmul` (bfloat16
  operands, float32 accumulation and result).
  """
  if check_dtype(dtype) != jnp.dtype(BF16):
    return jnp.dot(x, w.T if transpose_w else w)
  return bf16_matmul(x, w, transpose_w)


def dense_dot_general(dtype: Any = jnp.float32):
  """A ``dot_general`` for ``nn.Dense(dot_general=...)`` that multiplies in ``dtype``'s precision.

  float32 returns ``lax.dot_general`` itself; bfloat16 returns a function for Dense's product
  (x's last axis against the kernel's first) that calls :func:`matmul`.
  """
  if check_dtype(dtype) != jnp.dtype(BF16):
    return lax.dot_general

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lb) or tuple(rb) or tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or rhs.ndim != 2:
      raise ValueError(f"bf16 dense_dot_general: unsupported dimension numbers {dimension_numbers}")
    return matmul(lhs, rhs, BF16)

  return dot_general
