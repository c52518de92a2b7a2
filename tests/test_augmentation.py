"""The flip-and-shift augmentation: host draws, the jitted index map, and the batches that use it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camera_jax.data import augmentation
from camera_jax.data import input_pipeline as ip

from conftest import noise_source
from test_input_pipeline import _all_batches



def test_index_maps_by_hand():
  # 5 px side: no flip, shift right by 1 / down by -1; then a flip with no shift
  ys, xs = augmentation.index_maps(np.array([[0, -1, 1], [1, 0, 0]]), 5, 5)
  assert ys.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]   # row y reads row clip(y - 1)
  assert xs.tolist() == [[1, 2, 3, 4, 4], [4, 3, 2, 1, 0]]   # edge replicated; mirrored


@pytest.mark.parametrize("size,dtype", [(20, np.uint8), (33, np.float32), (8, np.uint8)])
def test_apply_shifts_is_augment_batch(size, dtype):
  rng = np.random.default_rng(size)
  images = (rng.integers(0, 256, (7, size, size, 3)).astype(dtype) if dtype == np.uint8
            else rng.random((7, size, size, 3), dtype=np.float32))
  seeds = [[3, size, j] for j in range(7)]
  expected = ip.augment_batch(images, [np.random.default_rng(s) for s in seeds])
  shifts = augmentation.draw_shifts([np.random.default_rng(s) for s in seeds], size, size)
  assert shifts.dtype == np.int32 and shifts.shape == (7, 3)
  assert set(shifts[:, 0]) <= {0, 1} and np.abs(shifts[:, 1:]).max() <= int(size * 0.1)
  got = jax.jit(augmentation.apply_shifts)(jnp.asarray(images), jnp.asarray(shifts))
  assert got.dtype == images.dtype
  np.testing.assert_array_equal(np.asarray(got), expected)
  if size >= 10:   # shifts of a pixel or more were drawn, and some images flipped
    assert (shifts[:, 1:] != 0).any() and shifts[:, 0].any()
    assert not np.array_equal(expected, images)


def test_draw_shifts_pads_with_the_identity():
  shifts = augmentation.draw_shifts([np.random.default_rng(j) for j in range(2)], 30, 30, rows=4)
  assert shifts.shape == (4, 3) and (shifts[2:] == 0).all()
  images = np.arange(4 * 30 * 30 * 3, dtype=np.float32).reshape(4, 30, 30, 3)
  out = np.asarray(augmentation.apply_shifts(jnp.asarray(images), jnp.asarray(shifts)))
  np.testing.assert_array_equal(out[2:], images[2:])
  with pytest.raises(ValueError, match="3 generators for 2 rows"):
    augmentation.draw_shifts([np.random.default_rng(0)] * 3, 30, 30, rows=2)


# 11 posts: the last batch has 3 rows and a padding row. 35 posts with the draws made 3 batches
# at a time: chunk edges at batches 3, 6 (from batch 0) or 5, 8 (from batch 2).
@pytest.mark.parametrize("n,seed,epoch,prefetch,start_batch,draw_batches", [
    (11, 4, 2, False, 0, None), (11, 4, 2, True, 0, None),
    (35, 1, 3, False, 0, 3), (35, 1, 3, False, 2, 3)])
def test_device_augment_batches_give_the_host_augmented_pixels(
    monkeypatch, n, seed, epoch, prefetch, start_batch, draw_batches):
  source = noise_source(n, 20)
  kw = dict(shuffle=True, seed=seed, epoch=epoch, augment=True, dtype=np.uint8,
            start_batch=start_batch)
  host = _all_batches(ip.ImageBatches(source, 4, 20, **kw))
  if draw_batches:
    monkeypatch.setattr(ip.ImageBatches, "draw_batches", draw_batches)
  device = _all_batches(ip.ImageBatches(source, 4, 20, device_augment=True,
                                        prefetch=prefetch, num_threads=2 * prefetch, **kw))
  plain = _all_batches(ip.ImageBatches(source, 4, 20, **{**kw, "augment": False}))
  assert len(host) == len(device) == -(-n // 4) - start_batch
  for h, d, p in zip(host, device, plain):
    assert set(d) == {"image", "row", "mask", "shift"} and "shift" not in h
    np.testing.assert_array_equal(d["image"], p["image"])   # the pixels leave the host as they are
    np.testing.assert_array_equal(d["shift"][~d["mask"]], 0)
    np.testing.assert_array_equal(
        np.asarray(augmentation.apply_shifts(jnp.asarray(d["image"]), jnp.asarray(d["shift"]))),
        h["image"])
  assert any(not np.array_equal(h["image"], p["image"]) for h, p in zip(host, plain))


def _generator_draws(seed, epoch, batch, position, h, w):
  return augmentation.draw_shifts(
      [augmentation.image_rng(seed, epoch, int(k), int(j)) for k, j in zip(batch, position)], h, w)


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 3**50])   # one to three entropy words
def test_image_draws_are_the_generators_draws(seed):
  rng = np.random.default_rng(seed % 1000)
  for h, w in [(64, 64), (224, 224), (20, 33), (9, 40), (40, 9), (5, 5), (1, 1)]:
    batch, position = rng.integers(0, 3000, 50), rng.integers(0, 512, 50)
    epoch = int(rng.integers(0, 100))
    got = augmentation.image_draws(seed, epoch, batch, position, h, w)
    assert got.dtype == np.int32 and got.shape == (50, 3)
    np.testing.assert_array_equal(got, _generator_draws(seed, epoch, batch, position, h, w))
    if h >= 20 and w >= 20:   # not a constant: flips and shifts both ways were drawn
      assert set(got[:, 0]) == {0, 1} and got[:, 1].min() < 0 < got[:, 1].max()


def test_image_draws_redraw_what_lemire_rejects():
  # Found by a search over batches: at 2990 px (shifts up to 299, 599 values) the dy integer of
  # image (epoch 0, batch 213738, position 56) of seed 0 is rejected once by Lemire's method,
  # and that of (25223, 55) falls in the range that may be rejected but is not.
  batch, position = np.array([213738, 25223, 5]), np.array([56, 55, 0])
  got = augmentation.image_draws(0, 0, batch, position, 2990, 2990)
  np.testing.assert_array_equal(got, _generator_draws(0, 0, batch, position, 2990, 2990))


def test_image_draws_edge_cases():
  assert augmentation.image_draws(0, 0, [], [], 64, 64).shape == (0, 3)
  with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
    augmentation.image_draws(0, 0, [-1], [0], 64, 64)
  with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
    augmentation.image_draws(0, 2**32, [0], [0], 64, 64)
  with pytest.raises(ValueError, match="non-negative"):
    augmentation.image_draws(-1, 0, [0], [0], 64, 64)
