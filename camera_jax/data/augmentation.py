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

Image ``j`` of batch ``k`` of an epoch draws from its own generator, :func:`image_rng` (so any
thread, and a resumed epoch, draws the same). Creating a numpy generator costs about 10 us,
which then set the pipeline's rate (a fifth GPU run: 26,600 images/s against a 34,300 images/s
step at 64 px), so :func:`image_draws` computes the same draws for many images at once: numpy's
``SeedSequence`` hashing and ``PCG64`` generator written with uint64 array arithmetic, the same
numbers bit for bit (tested against the generators), about 0.13 us an image.
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


def image_rng(seed: int, epoch: int, batch: int, position: int) -> np.random.Generator:
  """The generator of the image at ``position`` in batch ``batch`` of ``epoch``."""
  return np.random.default_rng([seed, epoch, batch, 1, position])


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


# numpy's SeedSequence (numpy/random/bit_generator.pyx) and PCG64 (XSL-RR 128/64, pcg64.h).
_M32 = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_PCG_MULT_HI, _PCG_MULT_LO = 2549297995355413924, 4865540595714422341
_U64 = np.uint64


def _uint32_words(value: int) -> list[int]:
  """``SeedSequence``'s coercion of one non-negative int: its 32-bit words, least significant
  first (0 is one word)."""
  if value < 0:
    raise ValueError(f"seed entropy must be non-negative, got {value}")
  words = [value & _M32]
  while value > _M32:
    value >>= 32
    words.append(value & _M32)
  return words


def _seed_pool(entropy: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
  """``SeedSequence(entropy).pool`` (4 uint32 words) for n sequences at once: ``entropy`` holds
  one uint64 array [n] (values < 2^32) per entropy word."""
  words = [np.broadcast_to(np.asarray(e, _U64), (n,)) for e in entropy]
  const = _INIT_A

  def hashmix(value: np.ndarray) -> np.ndarray:
    nonlocal const
    value = value ^ _U64(const)
    const = (const * _MULT_A) & _M32
    value = (value * _U64(const)) & _U64(_M32)
    return value ^ (value >> _U64(16))

  def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = (_U64(_MIX_MULT_L) * x - _U64(_MIX_MULT_R) * y) & _U64(_M32)
    return out ^ (out >> _U64(16))

  pool = [hashmix(words[i] if i < len(words) else np.zeros(n, _U64)) for i in range(4)]
  for src in range(4):
    for dst in range(4):
      if src != dst:
        pool[dst] = mix(pool[dst], hashmix(pool[src]))
  for src in range(4, len(words)):
    for dst in range(4):
      pool[dst] = mix(pool[dst], hashmix(words[src]))
  return pool


def _generate_state(pool: list[np.ndarray], n_uint64: int) -> list[np.ndarray]:
  """``SeedSequence.generate_state(n_uint64, np.uint64)`` from the pool."""
  const, words = _INIT_B, []
  for i in range(2 * n_uint64):
    value = pool[i % 4] ^ _U64(const)
    const = (const * _MULT_B) & _M32
    value = (value * _U64(const)) & _U64(_M32)
    words.append(value ^ (value >> _U64(16)))
  return [words[2 * i] | (words[2 * i + 1] << _U64(32)) for i in range(n_uint64)]


def _mul_64x64(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The 128-bit product of uint64 arrays as (high, low) words."""
  m, s = _U64(_M32), _U64(32)
  a0, a1, b0, b1 = a & m, a >> s, b & m, b >> s
  p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
  mid = (p00 >> s) + (p01 & m) + (p10 & m)
  return p11 + (p01 >> s) + (p10 >> s) + (mid >> s), (mid << s) | (p00 & m)


def _add_128(ah, al, bh, bl):
  low = al + bl
  return ah + bh + (low < al).astype(_U64), low


def _pcg_step(state: tuple[np.ndarray, np.ndarray], inc: tuple[np.ndarray, np.ndarray]):
  """state * multiplier + inc (mod 2^128)."""
  hi, lo = state
  ph, pl = _mul_64x64(lo, _U64(_PCG_MULT_LO))
  return _add_128(ph + lo * _U64(_PCG_MULT_HI) + hi * _U64(_PCG_MULT_LO), pl, *inc)


def _pcg_output(state: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """XSL-RR: the 64-bit output of a (new) state."""
  hi, lo = state
  x, rot = hi ^ lo, hi >> _U64(58)
  return (x >> rot) | (x << ((_U64(64) - rot) & _U64(63)))


def image_draws(seed: int, epoch: int, batch: np.ndarray, position: np.ndarray, h: int, w: int
                ) -> np.ndarray:
  """int32 [n, 3]: row ``i`` is ``draw(image_rng(seed, epoch, batch[i], position[i]), h, w)``.

  Vectorized over the images: the generators' ``SeedSequence`` and ``PCG64`` seeding and their
  first two 64-bit outputs in uint64 arithmetic; the flip is ``random() < 0.5`` (the top bit of
  the first output is 0) and the shifts are Lemire's bounded integers from the two halves of
  the second, as ``Generator.integers`` takes them. A row whose integer might be rejected by
  Lemire's method (a probability of about 2 (2 m + 1) / 2^32 for shifts up to m) is drawn
  again from its generator, so every row is exact.
  """
  batch = np.asarray(batch, np.int64).reshape(-1)
  position = np.asarray(position, np.int64).reshape(-1)
  n = batch.shape[0]
  out = np.zeros((n, 3), np.int32)
  if n == 0:
    return out
  if min(batch.min(), position.min(), epoch) < 0 or max(batch.max(), position.max(), epoch) > _M32:
    raise ValueError("epoch, batch and position must be in [0, 2^32)")
  entropy = [*_uint32_words(int(seed)), int(epoch), batch.astype(_U64), 1, position.astype(_U64)]
  s_hi, s_lo, i_hi, i_lo = _generate_state(_seed_pool(entropy, n), 4)
  inc = ((i_hi << _U64(1)) | (i_lo >> _U64(63)), (i_lo << _U64(1)) | _U64(1))
  zero = np.zeros(n, _U64)
  state = _pcg_step(_add_128(*_pcg_step((zero, zero), inc), s_hi, s_lo), inc)
  state = _pcg_step(state, inc)
  first = _pcg_output(state)
  second = _pcg_output(_pcg_step(state, inc))
  out[:, 0] = (first >> _U64(63)) == 0
  my, mx = int(h * MAX_SHIFT_FRACTION), int(w * MAX_SHIFT_FRACTION)
  halves = [second & _U64(_M32), second >> _U64(32)]   # next_uint32: the low half, then the high
  redraw = np.zeros(n, bool)
  for col, m in ((1, my), (2, mx)):
    if m == 0:   # integers(0, 1) draws nothing
      continue
    span = _U64(2 * m + 1)
    product = halves.pop(0) * span
    out[:, col] = (product >> _U64(32)).astype(np.int64) - m
    redraw |= (product & _U64(_M32)) < span
  for i in np.flatnonzero(redraw):
    out[i] = draw(image_rng(seed, epoch, int(batch[i]), int(position[i])), h, w)
  return out
