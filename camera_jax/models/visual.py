"""The 5-layer CNN visual encoder shared by COSMIC and the concept generator.

Paper III-B: "We extract the post visual feature v1 from the post image by utilizing a
5-layer convolutional neural network". The layout follows the authors' code (see
``shared/notes/reference-implementation.md``): five 3x3 'SAME' convolutions with 32, 64, 64,
128 and 128 channels, each followed by BatchNorm and ReLU, a max pool with window = stride = 3
after conv1 and window = stride = 2 after conv3 and conv5, then flatten, a fully connected
layer of 1024 units, BatchNorm and leaky_relu (slope 0.01). The result is v1.

The input side is free (the paper uses 224 px, this project defaults to 64 px); the flattened
size, and so the parameter count of the fully connected layer, follows from it.

Neither the convolutions nor the fully connected layer carry a bias: each is followed by a
BatchNorm whose learned offset makes a bias redundant (same function class, fewer parameters).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LEAKY_SLOPE = 0.01
"""Negative slope of every leaky_relu in the models (the authors' code uses 0.01)."""


#: ``UNIT_TABLE[v]`` = v / 255 in float32, correctly rounded: the numbers of
#: ``input_pipeline.to_unit`` (the same ``np.divide``), for :func:`unit_pixels`.
UNIT_TABLE = np.divide(np.arange(256, dtype=np.uint8), np.float32(255.0), dtype=np.float32)


def unit_pixels(x: jax.Array) -> jax.Array:
  """uint8 pixels as float32 in [0, 1] on the device; any other dtype is returned unchanged.

  The image stages send uint8 batches (a quarter of float32's bytes to the device) and the
  encoder converts them here, by a lookup in :data:`UNIT_TABLE`: the same numbers as the
  host's ``input_pipeline.to_unit`` on every backend. ``x / 255`` would not be: XLA rewrites a
  division by a constant into a multiplication by its reciprocal, which differs from the
  division in 126 of the 256 values (by one unit in the last place).

  >>> import numpy as np
  >>> v = np.arange(256, dtype=np.uint8)
  >>> bool((np.asarray(unit_pixels(v)) == np.divide(v, np.float32(255), dtype=np.float32)).all())
  True
  >>> unit_pixels(np.ones(2, np.float32)).dtype
  dtype('float32')
  """
  if x.dtype != jnp.uint8:
    return x
  return jnp.asarray(UNIT_TABLE)[x]


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping max pool (window = stride) over the two spatial axes of NHWC ``x``.

  Implemented by reshape-and-max, whose gradient XLA:CPU runs faster than ``nn.max_pool``'s
  (select-and-scatter; see ``shared/notes/performance.md``): the form for training. Without a
  gradient, reduce-window is the faster one (:func:`inference_max_pool`). When a spatial
  side is not a multiple of ``window`` the trailing rows/columns are cropped first, which is
  exactly what a VALID max pool with window = stride does, so the forward result is identical
  to ``nn.max_pool(x, (window, window), strides=(window, window), padding='VALID')``.
  (Gradients differ only where a window holds tied maxima: the reduction splits the
  gradient between the ties, select-and-scatter gives it to one of them.)

  Args:
    x: [B, H, W, C].
    window: pool window and stride; 1 returns ``x`` unchanged.

  Returns:
    [B, H // window, W // window, C].
  """
  if window == 1:
    return x
  _check_window(x, window)
  b, h, w, c = x.shape
  ho, wo = h // window, w // window
  x = x[:, : ho * window, : wo * window, :]
  x = x.reshape(b, ho, window, wo, window, c)
  return jnp.max(x, axis=(2, 4))


def inference_max_pool(x: jax.Array, window: int) -> jax.Array:
  """:func:`max_pool`'s result by XLA's reduce-window: the faster form where no gradient is taken.

  ``nn.max_pool`` with window = stride and VALID padding, the same values as :func:`max_pool`
  (a maximum is exact). Its gradient would be select-and-scatter, slow on XLA:CPU, so training
  uses :func:`max_pool`; inference (the encoder with ``train=False``: concept extraction and
  prediction) uses this: the COSMIC predict step at 64 px, batch 256, ran 1,774 and 1,963
  images/s against 1,199 and 1,200 with :func:`max_pool`, alternating on the 2-core CPU
  (benchmarks/README.md).
  """
  if window == 1:
    return x
  _check_window(x, window)
  return nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")


def _check_window(x: jax.Array, window: int) -> None:
  if x.shape[1] // window == 0 or x.shape[2] // window == 0:
    raise ValueError(f"max_pool: spatial size {tuple(x.shape[1:3])} smaller than window {window}")


class RowMaskedBatchNorm(nn.Module):
  """BatchNorm over every axis but the last, with a per-row (batch) mask on its statistics.

  Same parameters (``scale``, ``bias``), statistics (``batch_stats``: ``mean``, ``var``),
  momentum rule and formulas as ``nn.BatchNorm`` (biased batch variance by E[x^2] - E[x]^2,
  clipped at 0), so checkpoints of either load in the other. The mask is one bool per row
  (padding rows of a last partial batch are False and never bias the statistics). Where
  ``nn.BatchNorm(mask=...)`` needs the mask broadcast to the activation's full shape and reduces
  with ``where=``, this weights the row sums, which XLA fuses into the reductions: the COSMIC
  train step at 64 px, batch 32, ran 27% faster with it (109 -> 138 images/s side by side on
  the 2-core CPU, benchmarks/README.md).
  """

  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
    """Normalises ``x`` [B, ..., C]; ``mask`` is bool [B] or None (every row counts)."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if not train:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      if mask is None:
        mean, mean_sq = jnp.mean(xf, axes), jnp.mean(xf * xf, axes)
      else:
        m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        n = jnp.maximum(jnp.sum(m), 1.0) * math.prod(x.shape[1:-1])
        mean, mean_sq = jnp.sum(xf * m, axes) / n, jnp.sum(xf * xf * m, axes) / n
      var = jnp.maximum(mean_sq - mean * mean, 0.0)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return (x * inv.astype(self.dtype) + (bias - mean * inv).astype(self.dtype)).astype(self.dtype)


def output_side(side: int, pools: Sequence[int]) -> int:
  """Spatial side of the last feature map for an input of ``side`` pixels ('SAME' convs)."""
  for p in pools:
    side //= p
  return side


class VisualEncoder(nn.Module):
  """5-layer CNN: image [B, S, S, 3] -> v1 [B, fc] (paper III-B, the authors' layout).

  Attributes:
    channels: output channels of the 3x3 convolutions, one per layer.
    pools: max-pool window (= stride) after each convolution; 1 means no pool.
    fc: width of the fully connected layer (d_v1 = 1024 in the paper).
    dtype: computation dtype (parameters stay float32).
    bn_momentum: BatchNorm running-average momentum (Keras and flax default 0.99).
    bn_epsilon: BatchNorm epsilon (Keras default 1e-3).
  """

  channels: Sequence[int] = (32, 64, 64, 128, 128)
  pools: Sequence[int] = (3, 1, 2, 1, 2)
  fc: int = 1024
  dtype: Any = jnp.float32
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
    """Encodes images.

    Args:
      x: images [B, S, S, 3]: uint8 pixels (converted by :func:`unit_pixels`, as the image
        stages send them) or floats (any range; ``input_pipeline.to_unit`` gives [0, 1]).
      train: batch statistics (and their running averages in the mutable ``batch_stats``
        collection) when True, the running averages when False.
      mask: optional bool [B]: rows that count in the batch statistics (the padding rows of a
        last partial batch are False, so they never bias BatchNorm).

    Returns:
      v1: [B, fc] in ``dtype``.
    """
    row_mask = None if mask is None else jnp.asarray(mask, bool)
    if len(self.channels) != len(self.pools):
      raise ValueError("channels and pools must have the same length")
    x = unit_pixels(x).astype(self.dtype)
    for i, (ch, pool) in enumerate(zip(self.channels, self.pools)):
      x = nn.Conv(ch, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                  name=f"conv{i + 1}")(x)
      x = RowMaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                             name=f"bn{i + 1}")(x, train=train, mask=row_mask)
      x = nn.relu(x)
      x = max_pool(x, pool) if train else inference_max_pool(x, pool)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.fc, use_bias=False, dtype=self.dtype, name="fc")(x)
    x = RowMaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype, name="bn_fc")(
        x, train=train, mask=row_mask)
    return nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)
