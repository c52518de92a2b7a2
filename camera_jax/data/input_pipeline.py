"""Image batches from the TFDS array_record data source (see :mod:`camera_jax.data.tfds_builder`).

:class:`ImageBatches` streams one epoch of a data source as fixed-shape batches

    {"image": float32 [B, S, S, 3] in [0, 1], "row": int32 [B], "mask": bool [B]}

* The order is a permutation of the data-source indices drawn from ``(seed, epoch)`` only, so a
  resumed run reproduces it; ``start_batch`` skips the batches already consumed in that epoch.
* The last partial batch is padded to ``B`` (zero images, ``row = -1``, ``mask = False``): every
  record is seen exactly once per epoch and the batch shape never changes (one jit compilation).
* ``row`` is the record's row in ``Dataset.posts`` (or ``Dataset.labeled_posts``) order; TFDS
  stores records shuffled, so data-source index and row differ (:func:`rows_of` maps them).
* Only the current batch (plus at most ``prefetch`` finished ones) is in memory: records are read
  with one ``source.__getitems__(indices)`` call per batch and decoded with PIL.

Decoding threads (``num_threads``): PIL releases the GIL while decoding and resizing, so a small
pool can overlap images, but the float conversion holds it. Measured on the 2 shared CPU cores of
the development machine (batch 32, best of 3, noisy): JPEG 224 px decoded at 224 px ran at about
900 / 820 / 670 images/s with 0 / 2 / 4 threads, JPEG 224 px to 64 px about 3,050 / 3,050 / 3,100,
PNG 64 px at 64 px 4,200 / 3,300 / 3,100; only large JPEGs (400 px) gained from 4 threads (880 ->
1,550 images/s at 64 px). No consistent gain, and all of it is far above the CNN's training rate
on this machine (15-37 images/s at 224 px, 230-440 at 64 px), so the default is 0 (decode in the
thread preparing the batch). ``prefetch=True`` moves the whole batch preparation to one background
thread instead, overlapping it with the training step.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "decode_image",
    "ImageDecodeError",
    "augment",
    "ImageBatches",
    "split_indices",
    "rows_of",
    "prepare",
    "MAX_SHIFT_FRACTION",
]

MAX_SHIFT_FRACTION = 0.1  # augment(): largest shift, as a fraction of the image side


def prepare(data_dir: str | os.PathLike, tfds_dir: str | os.PathLike,
            key: str | None = None) -> dict[str, Any]:
    """Builds (once) and opens the array_record data sources of a format-v1 directory.

    See :func:`camera_jax.data.tfds_builder.prepare`; returns ``{"posts": source, "labeled":
    source or None}``.
    """
    from camera_jax.data import tfds_builder  # imports tensorflow_datasets: only when needed

    return tfds_builder.prepare(data_dir, tfds_dir, key)


class ImageDecodeError(ValueError):
    """A record's image bytes do not decode (possible when the dataset was validated without
    decoding its images, ``check_images=False``).

    Attributes:
      post_id: the record's post id.
      reason: the decoder's message.
      row: the record's row in its file (``Dataset.posts`` or ``Dataset.labeled_posts`` order).
    """

    def __init__(self, post_id: str, reason: str, row: int):
        self.post_id, self.reason, self.row = post_id, reason, row
        super().__init__(f"post {post_id!r}: cannot decode its image ({reason})")


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decodes encoded image bytes (PNG, JPEG, ...) into float32 [size, size, 3] in [0, 1].

    The image is converted to RGB and, when it is not already ``size`` x ``size``, resized with
    bilinear filtering to exactly that (the aspect ratio is not kept, as in the authors' Keras
    ``load_img(target_size=...)``). Large JPEGs are decoded at a reduced scale first (PIL's draft
    mode), which is faster and keeps at least ``size`` pixels on each side.
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out = np.asarray(im, dtype=np.float32)
    out /= 255.0
    return out


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light training augmentation of one [S, S, C] image; returns a new array, same shape.

    * horizontal flip with probability 1/2;
    * a random shift of up to ``MAX_SHIFT_FRACTION`` (10 %) of the side along each axis, the
      uncovered border filled by replicating the edge pixels.

    A subset of the authors' Keras augmentation (flips and shifts; no rotation, shear or zoom,
    which need an interpolating warp per image).
    """
    if rng.random() < 0.5:
        image = image[:, ::-1]
    h, w = image.shape[:2]
    my, mx = int(h * MAX_SHIFT_FRACTION), int(w * MAX_SHIFT_FRACTION)
    if my == 0 and mx == 0:
        return np.ascontiguousarray(image)
    dy = int(rng.integers(-my, my + 1))
    dx = int(rng.integers(-mx, mx + 1))
    padded = np.pad(image, ((my, my), (mx, mx), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[my + dy : my + dy + h, mx + dx : mx + dx + w])


def split_indices(
    source_len: int, held_out_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(source_len)`` into (train, held-out) index arrays.

    The held-out part has ``round(source_len * held_out_fraction)`` indices (at least 1 and at most
    ``source_len - 1`` when ``0 < held_out_fraction < 1`` and ``source_len >= 2``). Both arrays are
    sorted int64 and disjoint; their union is every index.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    n_held = int(round(source_len * held_out_fraction))
    if 0.0 < held_out_fraction < 1.0 and source_len >= 2:
        n_held = min(max(n_held, 1), source_len - 1)
    perm = np.random.default_rng(seed).permutation(source_len)
    return np.sort(perm[n_held:]).astype(np.int64), np.sort(perm[:n_held]).astype(np.int64)


def rows_of(source: Sequence[dict[str, Any]], *, batch_size: int = 512) -> np.ndarray:
    """``rows_of(source)[i]`` is the ``row`` feature of data-source record ``i`` (int64 [len]).

    Reads the records in batches (array_record cannot read a single feature; the images are read
    but not decoded). Invert with ``np.argsort`` to go from row to data-source index.
    """
    n = len(source)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        out[start : start + len(indices)] = [int(r["row"]) for r in _read(source, indices)]
    return out


def _read(source: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Reads records at ``indices`` in one call when the source supports it."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems(indices))
    return [source[i] for i in indices]


_END = object()


class ImageBatches:
    """One epoch of decoded image batches from a data source, in a (seed, epoch)-determined order.

    Args:
      source: a random-access data source of records with ``image`` (encoded bytes) and ``row``.
      batch_size: B.
      image_size: S; images are decoded (and resized) to S x S.
      shuffle: permute the indices with a generator seeded by (seed, epoch); else keep them in
        order.
      seed: data-order seed.
      epoch: the epoch whose order to produce.
      augment: apply :func:`augment` (random per image, seeded by (seed, epoch, batch number)).
      indices: restrict to these data-source indices (e.g. from :func:`split_indices`); default
        all.
      start_batch: skip the first ``start_batch`` batches of the epoch (resume).
      num_threads: decoding threads; 0 decodes in the thread preparing the batch.
      prefetch: prepare batches in one background thread, at most 2 ahead.

    Iterating yields dicts ``image`` float32 [B, S, S, 3] in [0, 1], ``row`` int32 [B] (-1 for
    padding), ``mask`` bool [B] (False for padding). ``len()`` is the number of batches of the
    epoch, including any skipped by ``start_batch``.
    """

    def __init__(
        self,
        source: Sequence[dict[str, Any]],
        batch_size: int,
        image_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        augment: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
        start_batch: int = 0,
        num_threads: int = 0,
        prefetch: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.augment = augment
        if indices is None:
            self.indices = np.arange(len(source), dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
                raise ValueError("indices out of range of the data source")
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.start_batch = int(start_batch)
        self.num_threads = int(num_threads)
        self.prefetch = prefetch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def order(self) -> np.ndarray:
        """The epoch's data-source indices in iteration order (a function of seed and epoch)."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def _make_batch(
        self, k: int, order: np.ndarray, pool: concurrent.futures.Executor | None
    ) -> dict[str, np.ndarray]:
        b, s = self.batch_size, self.image_size
        idx = order[k * b : (k + 1) * b]
        records = _read(self.source, [int(i) for i in idx])
        image = np.zeros((b, s, s, 3), dtype=np.float32)
        row = np.full((b,), -1, dtype=np.int32)
        mask = np.zeros((b,), dtype=bool)

        def fill(j: int) -> None:
            try:
                image[j] = decode_image(records[j]["image"], s)
            except Exception as e:  # pylint: disable=broad-except  # As the validator's decode.
                post = records[j]["id"]
                post = post.decode("utf-8") if isinstance(post, bytes) else str(post)
                reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
                raise ImageDecodeError(post, f"{type(e).__name__}: {reason}" if reason
                                       else type(e).__name__, int(records[j]["row"])) from None

        if pool is None:
            for j in range(len(records)):
                fill(j)
        else:
            list(pool.map(fill, range(len(records))))
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, k, 1])
            for j in range(len(records)):
                image[j] = augment(image[j], rng)
        row[: len(records)] = [int(r["row"]) for r in records]
        mask[: len(records)] = True
        return {"image": image, "row": row, "mask": mask}

    def _batches(self, stop: threading.Event | None = None) -> Iterator[dict[str, np.ndarray]]:
        order = self.order()
        pool = (
            concurrent.futures.ThreadPoolExecutor(self.num_threads) if self.num_threads > 0 else None
        )
        try:
            for k in range(self.start_batch, len(self)):
                if stop is not None and stop.is_set():
                    return
                yield self._make_batch(k, order, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if not self.prefetch:
            return self._batches()
        return self._prefetched()

    def _prefetched(self) -> Iterator[dict[str, np.ndarray]]:
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for batch in self._batches(stop):
                    if not put(batch):
                        return
                put(_END)
            except BaseException as e:  # pylint: disable=broad-except
                put(e)

        thread = threading.Thread(target=work, name="ImageBatches-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
