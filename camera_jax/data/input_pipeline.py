"""Image batches from the TFDS array_record data source (see :mod:`camera_jax.data.tfds_builder`).

:class:`ImageBatches` streams one epoch of a data source as fixed-shape batches

    {"image": float32 [B, S, S, 3] in [0, 1], "row": int32 [B], "mask": bool [B]}

or, with ``dtype=np.uint8`` (what the image stages ask for), the uint8 pixels themselves: a
quarter of the bytes to the device, where ``models.visual.unit_pixels`` turns them into the
same float32 numbers.

* The order is a permutation of the data-source indices drawn from ``(seed, epoch)`` only, so a
  resumed run reproduces it; ``start_batch`` skips the batches already consumed in that epoch.
* The last partial batch is padded to ``B`` (zero images, ``row = -1``, ``mask = False``): every
  record is seen exactly once per epoch and the batch shape never changes (one jit compilation).
* ``row`` is the record's row in ``Dataset.posts`` (or ``Dataset.labeled_posts``) order; TFDS
  stores records shuffled, so data-source index and row differ (:func:`rows_of` maps them).
* Only the current batch (plus at most ``prefetch`` finished ones) is in memory: records are read
  with one ``source.__getitems__(indices)`` call per batch and decoded with PIL.
* Augmentation draws from a generator per image, seeded by (seed, epoch, batch, position), and is
  applied to the batch's uint8 pixels in one pass (:func:`augment_batch`), so threads, prefetch
  and :class:`DecodedImages` give the same batches (tested). With ``device_augment`` the same
  draws are computed for 256 batches at a time (:func:`augmentation.image_draws`) and the step
  applies them.

Where the time goes (benchmarks/README.md). Decoding a JPEG with PIL holds the GIL for much of
its work: on the 2-core development VM a 224 px JPEG decoded to 64 px ran at about 1,050
images/s in one thread and 1,600 with 2 threads; on a 16-core GPU host (H100), with
augmentation, 630 images/s in one thread, 1,350 with 4 and 1,080 with 16 (so
:func:`auto_threads` stops at 4), against a COSMIC train step of 33,000 images/s there at 64 px.
Hence :class:`DecodedImages`: the training stages decode each image once into a uint8 file read
by memory map (``--image_cache_gb``), after which a uint8 batch is a gather and the
augmentation (about 24,000 images/s at 64 px with augmentation on the VM; 19,500 when the host
also converted to float32). On a 16-core H200 host the file fed 396,000 images/s at 64 px
plain but 13,300 with augmentation, against a COSMIC step of 28,400 there: the per-image
generators and gathers of :func:`augment_batch`, which hold the GIL, were the bottleneck
(benchmarks/README.md, fourth GPU run). Since then the image stages ask for
``device_augment``: the host only draws, and the train step gathers the pixels
(:mod:`camera_jax.data.augmentation`). On an H100 host the per-image generators then still
held it at 26,600 images/s at 64 px against a 34,300 images/s step, so the draws are now
vectorized, the same numbers: on the 2-core VM, from the file with augmentation, 447,000 to
503,000 images/s at 64 px and 131,000 to 136,000 at 224 px (72,000 to 73,000 and 39,000 to
54,000 with a generator per image, 38,000 and 7,400 to 7,800 with the host's gathers). Without it
(``num_threads`` > 0) a thread pool decodes the images of a batch; ``prefetch=True`` prepares
batches in one background thread, overlapping the training step.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from camera_jax import atomic
from camera_jax.data import augmentation

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

MAX_SHIFT_FRACTION = augmentation.MAX_SHIFT_FRACTION  # augment(): largest shift / side


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


MAX_AUTO_THREADS = 4   # 16 threads decoded slower than 4 on a 16-core host (module docstring)


def auto_threads() -> int:
    """Decoding threads for ``--input_threads=0``: the CPU cores this process may use, at most
    :data:`MAX_AUTO_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_THREADS, cores))


_QUIET_BOMB = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def quiet_large_images() -> None:
    """Silences Pillow's DecompressionBombWarning (images of about 89 to 179 megapixels).

    Such images are valid input (docs/dataset-format.md): the warning named neither the post nor
    the file and printed two anonymous lines. Larger images still raise DecompressionBombError,
    which the validator reports on the post's line. A process-wide filter, since the decoding
    threads share it; added again by each decode when a ``warnings.catch_warnings`` block has
    dropped it since (cheap: a look-up in the filter list), and left alone where it is present,
    so that a caller's own earlier filter (``-W error``) still wins.
    """
    if _QUIET_BOMB not in warnings.filters:
        # appended: a filter the caller set earlier (-W error) still comes first and wins
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, append=True)


quiet_large_images()


def decode_uint8(data: bytes, size: int) -> np.ndarray:
    """Decodes encoded image bytes (PNG, JPEG, ...) into uint8 [size, size, 3].

    The image is converted to RGB and, when it is not already ``size`` x ``size``, resized with
    bilinear filtering to exactly that (the aspect ratio is not kept, as in the authors' Keras
    ``load_img(target_size=...)``). Large JPEGs are decoded at a reduced scale first (PIL's draft
    mode), which is faster and keeps at least ``size`` pixels on each side. A 16-bit greyscale
    image keeps its 8 high bits (Pillow's own conversion would clip every value above 255).
    """
    quiet_large_images()
    with Image.open(io.BytesIO(data)) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (size, size))
        if im.mode.startswith("I;16") or im.mode == "I":
            grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8
            im = Image.fromarray(grey.astype(np.uint8), "L")
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def to_unit(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (``pixels / 255`` in float32), into ``out`` if given."""
    return np.divide(pixels, np.float32(255.0), out=out, dtype=np.float32)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """:func:`decode_uint8` as float32 [size, size, 3] in [0, 1]."""
    return to_unit(decode_uint8(data, size))


def _decode_record(record: dict[str, Any], size: int) -> np.ndarray:
    """:func:`decode_uint8` of a record's image; ImageDecodeError names the post and its row."""
    try:
        return decode_uint8(record["image"], size)
    except Exception as e:  # pylint: disable=broad-except  # As the validator's decode.
        post = record["id"]
        post = post.decode("utf-8") if isinstance(post, bytes) else str(post)
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
        raise ImageDecodeError(post, f"{type(e).__name__}: {reason}" if reason
                               else type(e).__name__, int(record["row"])) from None


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light training augmentation of one [S, S, C] image; returns a new array, same shape.

    * horizontal flip with probability 1/2;
    * a random shift of up to ``MAX_SHIFT_FRACTION`` (10 %) of the side along each axis, the
      uncovered border filled by replicating the edge pixels.

    A subset of the authors' Keras augmentation (flips and shifts; no rotation, shear or zoom,
    which need an interpolating warp per image). The pipeline applies the same draws to a whole
    batch with :func:`augment_batch`; this is the reference form it is tested against.
    """
    h, w = image.shape[:2]
    flip, dy, dx = augmentation.draw(rng, h, w)
    if flip:
        image = image[:, ::-1]
    my, mx = int(h * MAX_SHIFT_FRACTION), int(w * MAX_SHIFT_FRACTION)
    if my == 0 and mx == 0:
        return np.ascontiguousarray(image)
    padded = np.pad(image, ((my, my), (mx, mx), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[my + dy : my + dy + h, mx + dx : mx + dx + w])


def augment_batch(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """:func:`augment` of every image of a batch [n, S, S, C] (any dtype), image ``j`` with
    ``rngs[j]`` (the same result as augmenting each image on its own; tested).

    The flip and the edge-replicating shift are one index map per image, two gathers:
    ``out[j, y, x] = images[j, clip(y + dy_j), c_j(clip(x + dx_j))]`` with ``c_j`` the mirror when
    image ``j`` is flipped. On uint8 pixels before the float conversion it moves a quarter of the
    bytes.
    """
    n, h, w = images.shape[:3]
    if len(rngs) != n:
        raise ValueError(f"{n} images but {len(rngs)} generators")
    ys, xs = augmentation.index_maps(augmentation.draw_shifts(rngs, h, w), h, w)
    out = np.empty_like(images)
    for j in range(n):
        np.take(np.take(images[j], ys[j], axis=0), xs[j], axis=1, out=out[j])
    return out


#: Bumped whenever :func:`decode_uint8` changes its output; part of a decoded file's name
#: (:func:`decoder_key`), with Pillow's version, so pixels from another decoder are never reused.
DECODER_VERSION = 1


def decoder_key() -> str:
    """What decoded pixels depend on besides the bytes: ``"v<DECODER_VERSION>-pil<version>"``."""
    import PIL

    return f"v{DECODER_VERSION}-pil{PIL.__version__}"


class DecodedImages:
    """A data source's images decoded once to uint8 [S, S, 3], kept in a file, read by memory map.

    Decoding a JPEG costs the host far more than reading its pixels: on a GPU the image stages'
    steps outran a decoding input pipeline about 30-fold (benchmarks/README.md). :meth:`usable`
    decodes every record once, in data-source order (``num_threads`` threads), into ``path``
    (``.npy``, N x S x S x 3 uint8: S * S * 3 bytes per image on disk, never all in memory) and
    the records' rows into ``path`` with the suffix ``.rows.npy``. Both are written with plain
    writes (a full disk is an ``OSError``, not a memory-map fault), synced, under a temporary
    name and renamed, the images last, so an interrupted build leaves nothing that a later
    :meth:`usable` trusts (the next build deletes what it left); an existing pair of the right
    shape is opened as it is, an unreadable one is rebuilt. One process builds a given file at a
    time. When the file cannot be written (``OSError``: no space, no permission) the reason is
    logged, :attr:`unavailable` holds it, and readers decode from ``source`` instead.

    :class:`ImageBatches` takes a DecodedImages in place of its source: at image size S it reads
    batches from the file (the same pixels: :func:`decode_image` is ``to_unit`` of what is
    stored), at another size, or without the file, it decodes from ``source``.
    """

    def __init__(self, source: Sequence[dict[str, Any]], image_size: int,
                 path: str | os.PathLike, *, num_threads: int = 0, chunk: int = 256):
        self.source = source
        self.image_size = int(image_size)
        self.path = pathlib.Path(path)
        self.rows_path = self.path.with_suffix(".rows.npy")
        self.num_threads = int(num_threads)
        self.chunk = int(chunk)
        self.unavailable: str | None = None
        self.build_seconds: float | None = None
        self._pixels: np.ndarray | None = None
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def nbytes(self) -> int:
        """The images' size on disk (without the .npy header)."""
        return len(self) * self.image_size * self.image_size * 3

    def _open(self) -> bool:
        try:
            pixels = np.load(self.path, mmap_mode="r")
            rows = np.load(self.rows_path)
        except (OSError, ValueError, EOFError):  # Missing, truncated or not an .npy.
            return False
        s = self.image_size
        if pixels.dtype != np.uint8 or pixels.shape != (len(self), s, s, 3) or rows.shape != (len(self),):
            return False
        self._pixels, self._rows = pixels, rows.astype(np.int64)
        return True

    def usable(self) -> bool:
        """True when the file is open, after building it if it is missing or unreadable; False
        when it cannot be written (:attr:`unavailable` says why). ImageDecodeError propagates."""
        with self._lock:
            if self._pixels is None and self.unavailable is None and not self._open():
                t0 = time.perf_counter()
                try:
                    self._build()
                except OSError as e:
                    self.unavailable = f"{self.path}: {e.strerror or e}"
                    logging.warning("cannot keep decoded images (%s): decoding every epoch",
                                    self.unavailable)
                    return False
                self.build_seconds = time.perf_counter() - t0
                logging.info("decoded %d images in %.1f s", len(self), self.build_seconds)
                if not self._open():
                    raise OSError(f"{self.path}: written but unreadable")
            return self._pixels is not None

    def _build(self) -> None:
        s, n = self.image_size, len(self)
        logging.info("decoding %d images at %d px once into %s (%.1f MB)", n, s, self.path,
                     self.nbytes / 1e6)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for name in (self.path.name, self.rows_path.name):  # Left by a build that was killed.
            for stale in self.path.parent.glob(f".{name}.*"):
                stale.unlink(missing_ok=True)
        tmp, tmp_rows = atomic.temp_path(self.path), atomic.temp_path(self.rows_path)
        pool = (concurrent.futures.ThreadPoolExecutor(self.num_threads)
                if self.num_threads > 0 else None)
        try:
            rows = np.empty(n, np.int64)
            with open(tmp, "xb") as f:
                np.lib.format.write_array_header_1_0(f, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                    "fortran_order": False, "shape": (n, s, s, 3)})
                for start in range(0, n, self.chunk):
                    records = _read(self.source, list(range(start, min(start + self.chunk, n))))
                    decode = lambda j: _decode_record(records[j], s)  # noqa: E731
                    js = range(len(records))
                    pixels = list(pool.map(decode, js)) if pool else [decode(j) for j in js]
                    f.write(np.stack(pixels).tobytes())
                    rows[start : start + len(records)] = [int(r["row"]) for r in records]
                f.flush()
                os.fsync(f.fileno())
            with open(tmp_rows, "xb") as f:
                np.save(f, rows, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_rows, self.rows_path)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            tmp_rows.unlink(missing_ok=True)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def pixels(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [len(indices), S, S, 3] of these data-source indices (the file must be usable)."""
        if not self.usable():
            raise OSError(self.unavailable)
        return np.asarray(self._pixels[np.asarray(indices, np.int64)])

    @property
    def rows(self) -> np.ndarray:
        """Every record's ``row`` feature, data-source order (int64 [N])."""
        if not self.usable():
            raise OSError(self.unavailable)
        return self._rows


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
    if isinstance(source, DecodedImages):
        if source.usable():
            return source.rows.copy()
        source = source.source
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
      source: a random-access data source of records with ``image`` (encoded bytes) and ``row``,
        or a :class:`DecodedImages` of one (read from its file when its size is ``image_size``).
      batch_size: B.
      image_size: S; images are decoded (and resized) to S x S.
      shuffle: permute the indices with a generator seeded by (seed, epoch); else keep them in
        order.
      seed: data-order seed.
      epoch: the epoch whose order to produce.
      augment: apply :func:`augment` (random per image, seeded by (seed, epoch, batch number,
        position in the batch), so threads give the same batches).
      device_augment: with ``augment``, leave the pixels as they are and add the draws instead:
        ``shift`` int32 [B, 3] of (flip, dy, dx) per image (padding rows (0, 0, 0), the
        identity), which :func:`camera_jax.data.augmentation.apply_shifts` turns into the same
        pixels inside the jitted step. The image stages use it.
      indices: restrict to these data-source indices (e.g. from :func:`split_indices`); default
        all.
      start_batch: skip the first ``start_batch`` batches of the epoch (resume).
      num_threads: decoding threads; 0 decodes in the thread preparing the batch.
      prefetch: prepare batches in one background thread, at most 2 ahead.
      dtype: the images' dtype: float32 (:func:`to_unit`, in [0, 1]) or uint8 (the pixels
        themselves, a quarter of the bytes; ``models.visual.unit_pixels`` converts them on the
        device to the same numbers). The image stages use uint8.
      part: ``(width, index, count)`` for one process of ``count`` in a multi-process run: each
        batch is the global batch padded to ``width`` rows (a multiple of ``count``), and only
        process ``index``'s contiguous ``width // count`` rows of it are read, decoded and
        yielded (``sharding.process_slice``'s rows), so the processes share the decoding. None:
        the whole batch of ``batch_size`` rows.

    Iterating yields dicts ``image`` [B, S, S, 3] of ``dtype``, ``row`` int32 [B] (-1 for
    padding), ``mask`` bool [B] (False for padding; padding images are 0) and, with
    ``device_augment``, ``shift``. ``len()`` is the number of batches of the epoch, including any
    skipped by ``start_batch``.
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
        device_augment: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
        start_batch: int = 0,
        num_threads: int = 0,
        prefetch: bool = False,
        dtype: Any = np.float32,
        part: tuple[int, int, int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if part is not None:
            width, index, count = (int(x) for x in part)
            if width < batch_size or count < 1 or width % count or not 0 <= index < count:
                raise ValueError(f"part {part}: needs width >= batch_size {batch_size}, a multiple "
                                 "of count, and 0 <= index < count")
            part = (width, index, count)
        self.part = part
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.uint8):
            raise ValueError(f"dtype must be float32 or uint8, got {self.dtype}")
        self.source = source
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.augment = augment
        self.device_augment = bool(device_augment)
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

    #: ``device_augment`` draws this many batches' shifts in one vectorized call.
    draw_batches = 256

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def order(self) -> np.ndarray:
        """The epoch's data-source indices in iteration order (a function of seed and epoch)."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def decoded(self) -> DecodedImages | None:
        """The source's decoded file when it holds this size and could be built (a first call
        builds it, in the caller's thread)."""
        src = self.source
        if isinstance(src, DecodedImages) and src.image_size == self.image_size and src.usable():
            return src
        return None

    def _make_batch(
        self, k: int, order: np.ndarray, decoded: DecodedImages | None,
        pool: concurrent.futures.Executor | None, shift: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        b, s = self.batch_size, self.image_size
        idx = order[k * b : (k + 1) * b]
        lo = 0  # the batch's first row in the global batch
        if self.part is not None:  # this process's rows of the global batch padded to width
            width, index, count = self.part
            b = width // count
            lo = index * b
            idx = idx[lo : lo + b]
            if shift is not None:
                local = np.zeros((b, 3), np.int32)
                part_shift = shift[lo : lo + b]
                local[: len(part_shift)] = part_shift
                shift = local
        n = len(idx)
        row = np.full((b,), -1, dtype=np.int32)
        mask = np.zeros((b,), dtype=bool)
        if decoded is not None:
            pixels = decoded.pixels(idx)
            row[:n] = decoded.rows[idx]
        else:
            source = self.source.source if isinstance(self.source, DecodedImages) else self.source
            records = _read(source, [int(i) for i in idx])
            pixels = np.empty((n, s, s, 3), np.uint8)

            def fill(j: int) -> None:
                pixels[j] = _decode_record(records[j], s)

            if pool is None:
                for j in range(n):
                    fill(j)
            else:
                list(pool.map(fill, range(n)))
            row[:n] = [int(r["row"]) for r in records]
        if self.augment and not self.device_augment and n:
            # Its own generator per image: the same result in any thread.
            pixels = augment_batch(
                pixels, [augmentation.image_rng(self.seed, self.epoch, k, lo + j) for j in range(n)])
        if self.dtype == np.uint8 and n == b:
            image = pixels  # a fresh array (gathered or augmented): no second copy
        else:
            image = np.zeros((b, s, s, 3), dtype=self.dtype)
            if self.dtype == np.uint8:
                image[:n] = pixels
            else:
                to_unit(pixels, out=image[:n])
        mask[:n] = True
        batch = {"image": image, "row": row, "mask": mask}
        if shift is not None:
            batch["shift"] = shift
        return batch

    def _draws(self, k0: int, k1: int) -> np.ndarray:
        """The ``shift`` rows of batches [k0, k1) of the epoch, int32 [(k1 - k0) B, 3]: image j
        of batch k draws from ``augmentation.image_rng(seed, epoch, k, j)``, computed for all
        of them at once (:func:`augmentation.image_draws`); rows past the epoch's last image
        (padding) are (0, 0, 0)."""
        b, s = self.batch_size, self.image_size
        i = np.arange(k0 * b, min(k1 * b, len(self.indices)))
        out = np.zeros(((k1 - k0) * b, 3), np.int32)
        out[: len(i)] = augmentation.image_draws(self.seed, self.epoch, i // b, i % b, s, s)
        return out

    def _batches(self, stop: threading.Event | None = None) -> Iterator[dict[str, np.ndarray]]:
        order = self.order()
        decoded = self.decoded()
        pool = (
            concurrent.futures.ThreadPoolExecutor(self.num_threads)
            if self.num_threads > 0 and decoded is None else None
        )
        draws, first = None, 0
        try:
            for k in range(self.start_batch, len(self)):
                if stop is not None and stop.is_set():
                    return
                shift = None
                if self.augment and self.device_augment:
                    if draws is None or k >= first + self.draw_batches:
                        first = k
                        draws = self._draws(k, min(k + self.draw_batches, len(self)))
                    b = self.batch_size
                    shift = draws[(k - first) * b : (k - first + 1) * b]
                yield self._make_batch(k, order, decoded, pool, shift)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.decoded()  # A first use builds the file, in the caller's thread.
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
