"""The image stages' flip-and-shift augmentation as draws on the host and an index map on the device.

:func:`camera_jax.data.input_pipeline.augment` is the reference: a horizontal flip with
probability 1/2, then a shift of up to 10 % of the side along each axis with the uncovered
border filled by the edge pixels. Both are an index map, ``out[y, x] = image[Y(y), X(x)]``, so
the host only has to draw (flip, dy, dx) per image (:func:`draw_shifts`, from the same per-image
generators in the same order) and the jitted train step gathers the pixels
(:func:`apply_shifts`): the same pixels as :func:`~camera_jax.data.input_pipeline.augment_batch`
(tested), with the two gathers per image off the host. On a GPU host those gathers, which run
in Python beside the training loop and hold the GIL, kept the input pipeline below the step's
rate (benchmarks/README.md, fourth GPU run).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: The largest shift along an axis, as a fraction of the side (the authors' Keras
#: ``width_shift_range`` / ``height_shift_range``).
MAX_SHIFT_FRACTION = 0.1


def draw(rng: np.random.Generator, h: int, w: int) -> tuple[bool, int, int]:
  """(flip, dy, dx) of one [h, w] image, drawn from ``rng`` in the reference's order."""
  flip = bool(rng.random() < 0.5)
  my, mx = int(h * MAX_SHIFT_FRACTION), int(w * MAX_SHIFT_FRACTION)
  if my == 0 and mx == 0:
    return flip, 0, 0
  return flip, int(rng.integers(-my, my + 1)), int(rng.integers(-mx, mx + 1))


def draw_shifts(rngs: Sequence[np.random.Generator], h: int, w: int, rows: int | None = None
                ) -> np.ndarray:
  """int32 [rows, 3] of (flip, dy, dx), row ``j`` drawn from ``rngs[j]``; rows past
  ``len(rngs)`` (padding) are (0, 0, 0), the identity."""
  n = len(rngs)
  out = np.zeros((n if rows is None else rows, 3), np.int32)
  if out.shape[0] < n:
    raise ValueError(f"{n} generators for {out.shape[0]} rows")
  for j, rng in enumerate(rngs):
    out[j] = draw(rng, h, w)
  return out


def index_maps(shifts: np.ndarray | jax.Array, h: int, w: int, xp=np):
  """The source row [n, h] and column [n, w] of every output pixel for (flip, dy, dx) rows."""
  flip, dy, dx = shifts[:, 0:1], shifts[:, 1:2], shifts[:, 2:3]
  ys = xp.clip(xp.arange(h) + dy, 0, h - 1)
  xs = xp.clip(xp.arange(w) + dx, 0, w - 1)
  return ys, xp.where(flip != 0, w - 1 - xs, xs)


def apply_shifts(images: jax.Array, shifts: jax.Array) -> jax.Array:
  """Flips and shifts images [n, h, w, C] (any dtype) by ``shifts`` int32 [n, 3]; jittable.

  ``out[j, y, x] = images[j, Y_j(y), X_j(x)]``, exactly the pixels of
  :func:`~camera_jax.data.input_pipeline.augment_batch` with the same draws.
  """
  h, w = images.shape[1], images.shape[2]
  ys, xs = index_maps(shifts, h, w, xp=jnp)
  out = jnp.take_along_axis(images, ys[:, :, None, None], axis=1)
  return jnp.take_along_axis(out, xs[:, None, :, None], axis=2)
