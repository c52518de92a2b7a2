"""Dataset format v1: records, validation and loading.

A dataset is a directory holding

* ``concepts.txt``         the concept vocabulary, one name per line;
* ``accounts.jsonl``       brands and micro-influencers;
* ``posts.jsonl``          their posts (image, caption, likes, comments, optional concepts);
* ``cooperations.jsonl``   (brand, influencer, sponsored post) triples: the positives;
* ``labeled_posts.jsonl``  optional, the post-concept set that trains the concept generator;
* ``split.json``           optional, the train/test brands and the candidate influencers.

``docs/dataset-format.md`` is the full specification. :func:`validate` reports every problem as a
line ``FILE:LINE: message`` (FILE relative to the dataset directory, LINE 1-based, 0 for a
whole-file problem); :func:`load` validates and returns a frozen :class:`Dataset`.

Files are read line by line and images are checked one at a time, so validating the paper-scale
dataset (205,400 posts and 40,000 labeled posts) needs memory only for the records themselves.
This module never reads absl flags.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import heapq
import json
import math
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

FORMAT_VERSION = 1

CONCEPTS_FILE = "concepts.txt"
ACCOUNTS_FILE = "accounts.jsonl"
POSTS_FILE = "posts.jsonl"
COOPERATIONS_FILE = "cooperations.jsonl"
LABELED_POSTS_FILE = "labeled_posts.jsonl"
SPLIT_FILE = "split.json"

BRAND = "brand"
INFLUENCER = "influencer"
KINDS = (BRAND, INFLUENCER)

# The paper's split: 286 train and 74 test brands out of 360.
TEST_BRANDS = 74
ALL_BRANDS = 360
TEST_FRACTION = TEST_BRANDS / ALL_BRANDS

#: Pillow's names of the accepted image formats. MPO is a JPEG with extra frames (phone and
#: camera photos with a depth map or a gain map): its first frame is the JPEG image.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO")

# At most this many error lines per file; the rest are counted in one "... N more problems" line.
MAX_ERRORS_PER_FILE = 50
#: The largest follower, like or comment count accepted: 2^53, above which a float64 (the
#: engagement rate of eq. 10) no longer holds every integer.
MAX_COUNT = 2**53

_SHOW_MAX = 60


class DatasetError(Exception):
    """A dataset directory is invalid.

    Attributes:
      errors: the problems, each a line ``FILE:LINE: message``.
    """

    def __init__(self, errors: Sequence[str]):
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """A brand or micro-influencer account (one line of ``accounts.jsonl``)."""

    id: str
    kind: str
    category: str
    followers: int
    bio: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Post:
    """A post (one line of ``posts.jsonl``); ``image`` is relative to the dataset root.

    ``concepts`` is the ground-truth concept list where known, else None.
    """

    id: str
    account: str
    image: str
    caption: str
    likes: int
    comments: int
    concepts: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Cooperation:
    """A brand sponsored an influencer's post (one line of ``cooperations.jsonl``)."""

    brand: str
    influencer: str
    post: str


@dataclasses.dataclass(frozen=True, slots=True)
class LabeledPost:
    """A post of the post-concept set (one line of ``labeled_posts.jsonl``)."""

    id: str
    image: str
    caption: str
    concepts: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """Train and test brand ids and the candidate influencer ids, in account file order."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    candidates: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset. Records keep their file order; rows index these tuples.

    The index helpers are computed once and cached on the instance; the returned dicts are shared,
    so treat them as read-only.
    """

    root: pathlib.Path
    concepts: tuple[str, ...]
    accounts: tuple[Account, ...]
    posts: tuple[Post, ...]
    cooperations: tuple[Cooperation, ...]
    labeled_posts: tuple[LabeledPost, ...]
    split: Split

    @functools.cached_property
    def _account_index(self) -> dict[str, int]:
        return {a.id: i for i, a in enumerate(self.accounts)}

    @functools.cached_property
    def _post_index(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.posts)}

    @functools.cached_property
    def _concept_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.concepts)}

    @functools.cached_property
    def _posts_of(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {a.id: [] for a in self.accounts}
        for row, post in enumerate(self.posts):
            out.setdefault(post.account, []).append(row)
        return out

    @functools.cached_property
    def _positives(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {a.id: set() for a in self.accounts if a.kind == BRAND}
        for coop in self.cooperations:
            out.setdefault(coop.brand, set()).add(coop.influencer)
        return out

    def account_index(self) -> dict[str, int]:
        """Account id -> row in ``accounts``."""
        return self._account_index

    def post_index(self) -> dict[str, int]:
        """Post id -> row in ``posts``."""
        return self._post_index

    def concept_index(self) -> dict[str, int]:
        """Concept name -> row in ``concepts``."""
        return self._concept_index

    def brands(self) -> tuple[Account, ...]:
        """The brand accounts, in file order."""
        return tuple(a for a in self.accounts if a.kind == BRAND)

    def influencers(self) -> tuple[Account, ...]:
        """The influencer accounts, in file order."""
        return tuple(a for a in self.accounts if a.kind == INFLUENCER)

    def posts_of(self) -> dict[str, list[int]]:
        """Account id -> the rows of its posts in ``posts`` (file order); every account is a key."""
        return self._posts_of

    def positives(self) -> dict[str, set[str]]:
        """Brand id -> ids of the influencers that cooperated with it; every brand is a key."""
        return self._positives


# ----------------------------------------------------------------------------------------------
# Error collection.


class _FileErrors:
    """The problems of one file: keeps the MAX_ERRORS_PER_FILE lowest lines and a total count."""

    def __init__(self, name: str, cap: int = MAX_ERRORS_PER_FILE):
        self.name = name
        self.cap = cap
        self.count = 0
        self._heap: list[tuple[int, int, str]] = []  # (-line, -seq, message): a max-heap.
        self._seq = 0

    def add(self, line: int, message: str) -> None:
        self.count += 1
        item = (-line, -self._seq, message)
        self._seq += 1
        if len(self._heap) < self.cap:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def first(self) -> tuple[int, str] | None:
        """(line, message) of the lowest-numbered problem kept, None when there is none."""
        if not self._heap:
            return None
        line, _, message = min((-l, -s, m) for l, s, m in self._heap)
        return line, message

    def lines(self) -> list[str]:
        kept = sorted(((-l, -s, m) for l, s, m in self._heap))
        # An unpaired surrogate (a JSON "\\ud83d") quoted in a message is written as its escape.
        out = [f"{self.name}:{line}: {message}".encode("utf-8", "backslashreplace").decode("utf-8")
               for line, _, message in kept]
        if self.count > len(kept):
            out.append(
                f"{self.name}:0: ... {self.count - len(kept)} more problems "
                f"(only the first {len(kept)} are shown)"
            )
        return out


def _show(value: Any) -> str:
    """A value as JSON text (NaN, Infinity, true, "str"), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def has_line_break(text: str) -> bool:
    """True when ``text`` holds any of ``str.splitlines``'s boundaries (\\n, \\r, \\x0b, \\x0c,
    \\x1c-\\x1e, \\x85, \\u2028, \\u2029), which the run's one-per-line files would split on.

    >>> has_line_break("anna.eats"), has_line_break("a\\u2028b"), has_line_break("tab\\tok")
    (False, True, False)
    """
    return text.splitlines() != [text]


def _decode_line(raw: bytes, lineno: int, errs: _FileErrors) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        field = _undecodable_field(raw)
        where = f'field "{field}": ' if field else ""
        errs.add(lineno, f"{where}not valid UTF-8 ({e.reason} at byte {e.start})")
        return None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _iter_jsonl(path: pathlib.Path, errs: _FileErrors) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number, object) for each non-blank line that holds a JSON object.

    Blank lines are skipped silently; every other problem is reported to ``errs``.
    """
    lineno = 0
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                text = _decode_line(raw, lineno, errs)
                if text is None or not text.strip():
                    continue
                try:
                    obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
                except _DuplicateKey as e:
                    errs.add(lineno, f'field "{e.key}" appears more than once')
                    continue
                except json.JSONDecodeError as e:
                    errs.add(lineno, f"malformed JSON: {e.msg} (column {e.colno})")
                    continue
                except (ValueError, RecursionError) as e:
                    errs.add(lineno, f"malformed JSON: {type(e).__name__}: {e}")
                    continue
                if not isinstance(obj, dict):
                    errs.add(lineno, f"expected a JSON object, got {_json_type(obj)}")
                    continue
                # Strict UTF-8 decoding leaves a lone surrogate only to a \u escape.
                bad = _surrogate_field(obj) if "\\u" in text else None
                if bad is not None:
                    errs.add(lineno, _unpaired_surrogate(*bad))
                    continue
                yield lineno, obj
    except OSError as e:
        errs.add(lineno, f"cannot read file ({e.strerror or e})")


def _undecodable_field(raw: bytes) -> str | None:
    """The field of a JSON Lines record whose text holds the line's invalid UTF-8 bytes, or None
    when the line does not parse even with the bytes kept as escapes.

    >>> _undecodable_field(b'{"id": "p1", "caption": "caf\\xe9"}')
    'caption'
    >>> _undecodable_field(b'{"id": "p1", "capti\\xe9n": "x"}') is None   # in a name: none to name
    True
    """
    try:
        obj = json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    found = _surrogate_field(obj) if isinstance(obj, dict) else None
    if not found or not found[0].isprintable():   # a surrogate is not printable
        return None   # the bytes are in a field's name: no field to name
    return found[0]


def _unpaired_surrogate(field: str, escape: str) -> str:
    return (f'field "{field}" holds an unpaired UTF-16 surrogate {escape} (text cut inside a '
            f'character?): not valid Unicode')


def _read_json_object(path: pathlib.Path, errs: _FileErrors) -> tuple[str, dict[str, Any]] | None:
    """(text, object) of a file holding one JSON object (``split.json``, a new brand's
    ``account.json``), or None with its problem reported on the line it is on: unreadable, not
    UTF-8 (a byte-order mark is allowed), malformed or duplicate-key JSON, not an object, an
    unpaired surrogate."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        errs.add(0, f"cannot read file ({e.strerror or e})")
        return None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1)   # in the line, as _decode_line
        errs.add(raw.count(b"\n", 0, e.start) + 1, f"not valid UTF-8 ({e.reason} at byte {column})")
        return None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        errs.add(_key_line(text, e.key), f'field "{e.key}" appears more than once')
        return None
    except json.JSONDecodeError as e:
        errs.add(e.lineno, f"malformed JSON: {e.msg} (column {e.colno})")
        return None
    except (ValueError, RecursionError) as e:
        errs.add(0, f"malformed JSON: {type(e).__name__}: {e}")
        return None
    if not isinstance(obj, dict):
        errs.add(1, f"expected a JSON object, got {_json_type(obj)}")
        return None
    bad = _surrogate_field(obj)
    if bad is not None:
        errs.add(_key_line(text, bad[0]) or 1, _unpaired_surrogate(*bad))
        return None
    return text, obj


def _surrogate_field(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(field, escape) of the first string in ``obj`` (keys, values, nested) that holds a lone
    surrogate such as JSON's ``"\\ud83d"``: Python's json accepts it, but it is not text that
    UTF-8 can encode (the TFDS build and every file written later would fail on it).

    >>> _surrogate_field({"id": "p1", "caption": "ok \\ud83d"})
    ('caption', '\\\\ud83d')
    >>> _surrogate_field({"id": "p1", "concepts": ["a"]}) is None
    True
    """
    def bad(x: Any) -> str | None:
        if isinstance(x, str):
            try:
                x.encode("utf-8")  # at C speed: every caption of a dataset passes through here
            except UnicodeEncodeError as e:
                return x[e.start].encode("utf-8", "backslashreplace").decode("ascii")
            return None
        if isinstance(x, list):
            return next((b for b in map(bad, x) if b), None)
        if isinstance(x, dict):
            return next((b for k, v in x.items() for b in (bad(k), bad(v)) if b), None)
        return None

    for key, value in obj.items():
        found = bad(key) or bad(value)
        if found:
            return key, found
    return None


# ----------------------------------------------------------------------------------------------
# Field checks.


class _Record:
    """Typed access to the fields of one JSON object; each failed check reports one error."""

    def __init__(self, obj: dict[str, Any], line: int, errs: _FileErrors):
        self.obj = obj
        self.line = line
        self.errs = errs
        self.ok = True

    def error(self, message: str) -> None:
        self.ok = False
        self.errs.add(self.line, message)

    def _get(self, name: str, required: bool) -> tuple[bool, Any]:
        if name not in self.obj:
            if required:
                self.error(f'missing required field "{name}"')
            return False, None
        return True, self.obj[name]

    def string(self, name: str, *, nonempty: bool = True, required: bool = True) -> str | None:
        """A string field (None when absent or invalid); optional fields may also be null."""
        present, value = self._get(name, required)
        if not present or (value is None and not required):
            return None
        if not isinstance(value, str) or (nonempty and not value):
            kind = "a non-empty string" if nonempty else "a string"
            self.error(f'field "{name}" must be {kind}, got {_show(value)}')
            return None
        return value

    def identifier(self, name: str) -> str | None:
        """A non-empty string without a line break: ids are written one per line (the run's
        ``concepts/accounts.txt``) and read back by lines."""
        value = self.string(name)
        if value is not None and has_line_break(value):
            self.error(f'field "{name}": {value!r} holds a line break')
            return None
        return value

    def integer(self, name: str, *, minimum: int, note: str = "") -> int | None:
        """An int field in [minimum, MAX_COUNT]; bools, floats (even 3.0) and non-finite numbers
        are errors."""
        present, value = self._get(name, True)
        if not present:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_COUNT:
            self.error(f'field "{name}" must be an int <= 2^53 = {MAX_COUNT}, got {_show(value)}')
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        bound = f">= {minimum}" if minimum <= 0 else f"> {minimum - 1}"
        why = ""
        if isinstance(value, float):
            why = " (not a finite number)" if not math.isfinite(value) else " (a float, not an int)"
        elif isinstance(value, bool):
            why = " (a boolean, not an int)"
        elif isinstance(value, int) and note and value == minimum - 1:
            why = f" ({note})"
        self.error(f'field "{name}" must be an int {bound}, got {_show(value)}{why}')
        return None

    def concept_list(
        self, name: str, vocab: dict[str, int] | None, *, required: bool
    ) -> tuple[bool, tuple[str, ...] | None]:
        """A list of unique concept names from the vocabulary; returns (present, value)."""
        present, value = self._get(name, required)
        if not present or (value is None and not required):
            return False, None
        if not isinstance(value, list):
            self.error(f'field "{name}" must be a list of concept names, got {_show(value)}')
            return True, None
        if required and not value:
            self.error(f'field "{name}" must be a non-empty list of concept names')
            return True, None
        seen: set[str] = set()
        good = True
        for item in value:
            if not isinstance(item, str) or not item:
                self.error(f'field "{name}": concept names must be non-empty strings, got {_show(item)}')
                good = False
            elif item in seen:
                self.error(f'field "{name}": concept {item!r} is listed twice')
                good = False
            elif vocab is not None and item not in vocab:
                self.error(f'field "{name}": concept {item!r} is not in {CONCEPTS_FILE}')
                good = False
            else:
                seen.add(item)
        return True, (tuple(value) if good else None)


def record_line(path: str | os.PathLike[str], record_id: str) -> int:
    """The 1-based line of the JSONL file ``path`` whose record has ``"id": record_id`` (0: none).

    Used to name the line of a record found bad after loading (an image that cannot be read or
    decoded when the dataset was loaded with ``check_images=False``).
    """
    for number, line in jsonl_lines(path):
        try:
            if json.loads(line).get("id") == record_id:
                return number
        except (ValueError, AttributeError):
            continue
    return 0


def jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a JSONL file, numbered as the validator
    numbers them: split on ``\\n`` only (a ``\\r`` is JSON whitespace inside a line, not a line
    break; text mode's universal newlines would split there), a byte-order mark dropped from line
    1, lines that are not UTF-8 skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue
            if line:
                yield number, line


def image_error(dataset: "Dataset", post_id: str, row: int, reason: str) -> str:
    """``ROOT/FILE:LINE: field "image": cannot decode IMAGE (REASON)`` for a record found bad.

    The record is the one with id ``post_id`` at ``row`` of ``dataset.posts``, else of
    ``dataset.labeled_posts`` (a post id may appear in both files, so the row decides); the
    line is looked up in that file.
    """
    for name, records in ((POSTS_FILE, dataset.posts), (LABELED_POSTS_FILE, dataset.labeled_posts)):
        if 0 <= row < len(records) and records[row].id == post_id:
            image = records[row].image
            break
    else:
        name, image = POSTS_FILE, None
    path = dataset.root / name
    line = record_line(path, post_id) if path.is_file() else 0
    what = f"{image!r}" if image else f"the image of post {post_id!r}"
    return f'{path}:{line}: field "image": cannot decode {what} ({reason})'


def _image_problem(rel: str, root: pathlib.Path, check_images: bool,
                   root_name: str = "the dataset directory") -> str | None:
    """Why the image at ``rel`` (relative to ``root``, called ``root_name`` in the messages) is
    unusable, or None if it is fine.

    Without ``check_images`` only the path's form is checked (relative, inside the root).
    Symlinks inside the root are followed, so images may live on another disk.
    """
    if "\x00" in rel:
        return f'field "image": path {rel!r} contains a NUL character'
    if os.path.isabs(rel) or pathlib.PurePosixPath(rel).is_absolute():
        return f'field "image": path {rel!r} must be relative to {root_name}'
    norm = os.path.normpath(rel)
    if norm == os.curdir or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return f'field "image": path {rel!r} escapes {root_name}'
    if not check_images:
        return None
    path = root / rel
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        return f'field "image": file {rel!r} {what}'
    reason = decode_problem(path)
    if reason is not None:
        return f'field "image": cannot decode {rel!r} ({reason})'
    return None


def decode_problem(path: pathlib.Path) -> str | None:
    """Opens and fully decodes one image (JPEG at 1/8 scale); returns why it failed, or None."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    from camera_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

    input_pipeline.quiet_large_images()
    try:
        with Image.open(path) as im:
            if im.format not in IMAGE_FORMATS:
                return f"{im.format} image, expected PNG or JPEG"
            if im.format in ("JPEG", "MPO"):
                im.draft(None, (1, 1))  # Decodes every coefficient, but skips the full-size IDCT.
            im.load()
    except Exception as e:  # pylint: disable=broad-except
        # The relative path is already in the error line: drop the absolute one from the reason.
        reason = str(e).replace(f" {str(path)!r}", "").replace(str(path), path.name)
        return f"{type(e).__name__}: {reason}" if reason else type(e).__name__
    return None


# ----------------------------------------------------------------------------------------------
# The scan: one pass over every file.


@dataclasses.dataclass
class _Scan:
    errors: list[str]
    concepts: list[str]
    accounts: list[Account]
    posts: list[Post]
    cooperations: list[Cooperation]
    labeled_posts: list[LabeledPost]
    split: Split | None


def _none_read(kind: str, path: pathlib.Path, errs: _FileErrors) -> None:
    """Reports a records file from which no record's id could be read, once, on line 0 (so
    that it is the file's first line), with the first line's problem when there is one; a file
    that could not be read at all has that problem on line 0 already."""
    first = errs.first()
    if first is not None and first[0] == 0:
        return
    try:
        empty = path.is_file() and path.stat().st_size == 0
    except OSError:
        empty = False
    why = " (the file is empty)" if empty else f" (line {first[0]}: {first[1]})" if first else ""
    errs.add(0, f"no {kind} could be read{why}")


def _read_concepts(root: pathlib.Path, errs: _FileErrors) -> list[str] | None:
    path = root / CONCEPTS_FILE
    if not path.exists():
        errs.add(0, "file is missing")
        return None
    names: list[str] = []
    first: dict[str, int] = {}
    lineno = 0
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                text = _decode_line(raw, lineno, errs)
                if text is None:
                    continue
                name = text.rstrip("\n").rstrip("\r")
                if not name.strip():
                    errs.add(lineno, "blank line (concept names must be non-empty)")
                elif name != name.strip():
                    errs.add(lineno, f"concept name {name!r} has leading or trailing whitespace")
                elif has_line_break(name):
                    errs.add(lineno, f"concept name {name!r} holds a line break")
                elif name in first:
                    errs.add(lineno, f"duplicate concept {name!r} (first on line {first[name]})")
                else:
                    first[name] = lineno
                    names.append(name)
    except OSError as e:
        errs.add(lineno, f"cannot read file ({e.strerror or e})")
        return None
    if lineno == 0:
        errs.add(0, "vocabulary is empty")
    return names


def _scan(data_dir: str | os.PathLike[str], check_images: bool) -> _Scan:
    root = pathlib.Path(data_dir)
    scan = _Scan([], [], [], [], [], [], None)
    if not root.exists():
        scan.errors.append(f"{data_dir}: dataset directory does not exist")
        return scan
    if not root.is_dir():
        scan.errors.append(f"{data_dir}: not a directory")
        return scan

    files = {
        name: _FileErrors(name)
        for name in (CONCEPTS_FILE, ACCOUNTS_FILE, POSTS_FILE, COOPERATIONS_FILE, LABELED_POSTS_FILE, SPLIT_FILE)
    }

    # concepts.txt
    names = _read_concepts(root, files[CONCEPTS_FILE])
    vocab = None if names is None else {n: i for i, n in enumerate(names)}
    scan.concepts = names or []

    # accounts.jsonl: ids are registered even when other fields are bad, to avoid cascades.
    account_line: dict[str, int] = {}
    account_kind: dict[str, str] = {}
    errs = files[ACCOUNTS_FILE]
    have_accounts = (root / ACCOUNTS_FILE).exists()
    if not have_accounts:
        errs.add(0, "file is missing")
    else:
        for line, obj in _iter_jsonl(root / ACCOUNTS_FILE, errs):
            rec = _Record(obj, line, errs)
            aid = rec.identifier("id")
            if aid is not None:
                if aid in account_line:
                    rec.error(f'field "id": duplicate id {aid!r} (first on line {account_line[aid]})')
                    aid = None
                else:
                    account_line[aid] = line
            kind = rec.string("kind", nonempty=False)
            if kind is not None and kind not in KINDS:
                rec.error(f'field "kind" must be "brand" or "influencer", got {_show(kind)}')
                kind = None
            if aid is not None and kind is not None:
                account_kind[aid] = kind
            category = rec.string("category")
            followers = rec.integer("followers", minimum=1, note="engagement rate is undefined")
            bio = rec.string("bio", nonempty=False, required=False)
            if rec.ok:
                scan.accounts.append(Account(aid, kind, category, followers, bio or ""))
        kinds = set(account_kind.values())
        if not account_line:
            _none_read("account", root / ACCOUNTS_FILE, errs)
        else:
            if BRAND not in kinds:
                errs.add(0, "no brand accounts")
            if INFLUENCER not in kinds:
                errs.add(0, "no influencer accounts")
    # A file none of whose lines gave an id (unreadable, empty, another encoding) is reported
    # once, above; the checks against it are skipped, as for a missing file, so that its own
    # problem is the first line, not one "unknown account" per post.
    have_accounts = bool(account_line)
    hint = _NormalizationHint(account_line)

    # posts.jsonl
    post_line: dict[str, int] = {}
    post_account: dict[str, str] = {}
    n_posts: dict[str, int] = {}
    errs = files[POSTS_FILE]
    have_posts = (root / POSTS_FILE).exists()
    if not have_posts:
        errs.add(0, "file is missing")
    else:
        for line, obj in _iter_jsonl(root / POSTS_FILE, errs):
            rec = _Record(obj, line, errs)
            pid = rec.identifier("id")
            if pid is not None:
                if pid in post_line:
                    rec.error(f'field "id": duplicate id {pid!r} (first on line {post_line[pid]})')
                    pid = None
                else:
                    post_line[pid] = line
            account = rec.string("account")
            if account is not None:
                n_posts[account] = n_posts.get(account, 0) + 1
                if have_accounts and account not in account_line:
                    rec.error(f'field "account": unknown account {account!r}{hint(account)}')
                if pid is not None:
                    post_account[pid] = account
            image = rec.string("image")
            if image is not None:
                problem = _image_problem(image, root, check_images)
                if problem:
                    rec.error(problem)
            caption = rec.string("caption", nonempty=False)
            likes = rec.integer("likes", minimum=0)
            comments = rec.integer("comments", minimum=0)
            _, concepts = rec.concept_list("concepts", vocab, required=False)
            if rec.ok:
                scan.posts.append(Post(pid, account, image, caption, likes, comments, concepts))
        if not post_line:
            _none_read("post", root / POSTS_FILE, errs)
        have_posts = bool(post_line)
        if have_accounts and have_posts and n_posts:   # (no post named an account: reported there)
            for aid, line in account_line.items():
                if n_posts.get(aid, 0) == 0:
                    files[ACCOUNTS_FILE].add(line, f'field "id": account {aid!r} has no posts in {POSTS_FILE}')

    # cooperations.jsonl
    errs = files[COOPERATIONS_FILE]
    if not (root / COOPERATIONS_FILE).exists():
        errs.add(0, "file is missing")
    else:
        coop_line: dict[tuple[str, str, str], int] = {}
        for line, obj in _iter_jsonl(root / COOPERATIONS_FILE, errs):
            rec = _Record(obj, line, errs)
            brand = rec.string("brand")
            influencer = rec.string("influencer")
            post = rec.string("post")
            for field, aid, want in (("brand", brand, BRAND), ("influencer", influencer, INFLUENCER)):
                if aid is None or not have_accounts:
                    continue
                if aid not in account_line:
                    rec.error(f'field "{field}": unknown {want} {aid!r}{hint(aid)}')
                elif account_kind.get(aid, want) != want:
                    rec.error(f'field "{field}": account {aid!r} is {_a(account_kind[aid])}, not {_a(want)}')
            if post is not None and have_posts:
                if post not in post_line:
                    rec.error(f'field "post": unknown post {post!r}')
                elif (
                    influencer is not None
                    and account_kind.get(influencer) == INFLUENCER
                    and post in post_account
                    and post_account[post] != influencer
                ):
                    rec.error(
                        f'field "post": post {post!r} belongs to account {post_account[post]!r}, '
                        f"not to influencer {influencer!r}"
                    )
            if brand is not None and influencer is not None and post is not None:
                key = (brand, influencer, post)
                if key in coop_line:
                    rec.error(f'field "post": duplicate cooperation (first on line {coop_line[key]})')
                else:
                    coop_line[key] = line
            if rec.ok:
                scan.cooperations.append(Cooperation(brand, influencer, post))

    # labeled_posts.jsonl (optional)
    errs = files[LABELED_POSTS_FILE]
    if (root / LABELED_POSTS_FILE).exists():
        labeled_line: dict[str, int] = {}
        for line, obj in _iter_jsonl(root / LABELED_POSTS_FILE, errs):
            rec = _Record(obj, line, errs)
            lid = rec.identifier("id")
            if lid is not None:
                if lid in labeled_line:
                    rec.error(f'field "id": duplicate id {lid!r} (first on line {labeled_line[lid]})')
                else:
                    labeled_line[lid] = line
            image = rec.string("image")
            if image is not None:
                problem = _image_problem(image, root, check_images)
                if problem:
                    rec.error(problem)
            caption = rec.string("caption", nonempty=False)
            _, concepts = rec.concept_list("concepts", vocab, required=True)
            if rec.ok:
                scan.labeled_posts.append(LabeledPost(lid, image, caption, concepts))

    # split.json (optional)
    if (root / SPLIT_FILE).exists():
        scan.split = _read_split(root / SPLIT_FILE, files[SPLIT_FILE], account_kind if have_accounts else None,
                                 set(account_line))

    for errs in files.values():
        scan.errors.extend(errs.lines())
    return scan


def _a(kind: str) -> str:
    return "an influencer" if kind == INFLUENCER else "a brand"


def _key_line(text: str, key: str) -> int:
    """The line of ``"key":`` in the JSON ``text``; 0 when not found."""
    match = re.search(r'"%s"\s*:' % re.escape(key), text)
    return 0 if match is None else text.count("\n", 0, match.start()) + 1


def _item_line(text: str, key: str, item: str, nth: int = 0) -> int:
    """The line of the ``nth`` (0-based) occurrence of ``item`` (as a JSON string) after
    ``"key":`` in ``text``.

    Falls back to the key's line, or 0. A heuristic: split.json has no other place to name lines.
    """
    match = re.search(r'"%s"\s*:' % re.escape(key), text)
    if match is None:
        return 0
    for encoded in (json.dumps(item), json.dumps(item, ensure_ascii=False)):
        pos = text.find(encoded, match.end())
        for _ in range(nth):
            if pos < 0:
                break
            pos = text.find(encoded, pos + 1)
        if pos >= 0:
            return text.count("\n", 0, pos) + 1
    return text.count("\n", 0, match.start()) + 1


class _NormalizationHint:
    """For an unknown id that equals a known one up to Unicode normalisation (NFC): a hint saying
    so, since the two print alike (ids are compared exactly, as their bytes). The index of the
    known ids' NFC forms is built on the first unknown id only."""

    def __init__(self, known: Iterable[str]):
        self._known = known
        self._index: dict[str, str] | None = None

    def __call__(self, aid: str) -> str:
        if self._index is None:
            self._index = {}
            for k in self._known:
                self._index.setdefault(unicodedata.normalize("NFC", k), k)
        k = self._index.get(unicodedata.normalize("NFC", aid))
        if k is None:
            return ""
        return (f" (the same text as the account id {ascii(k)} in {ACCOUNTS_FILE}, in another "
                f"Unicode normalization: {ascii(aid)}; ids must match exactly)")



def _read_split(path: pathlib.Path, errs: _FileErrors, account_kind: dict[str, str] | None,
                known_ids: set[str]) -> Split | None:
    """``known_ids``: every id of accounts.jsonl, its kind valid or not (a bad kind is reported
    there, not as an unknown id here)."""
    read = _read_json_object(path, errs)
    if read is None:
        return None
    text, obj = read

    start = errs.count
    lists: dict[str, list[str]] = {}
    hint = _NormalizationHint(account_kind or ())
    for key, want in (("train", BRAND), ("test", BRAND), ("candidates", INFLUENCER)):
        if key not in obj:
            if key != "candidates":
                errs.add(0, f'missing required field "{key}"')
            continue
        value = obj[key]
        key_line = _key_line(text, key)
        if not isinstance(value, list):
            errs.add(key_line, f'field "{key}" must be a list of account ids, got {_show(value)}')
            continue
        seen: set[str] = set()
        for k, item in enumerate(value):
            if not isinstance(item, str) or not item:
                errs.add(key_line, f'field "{key}": account ids must be non-empty strings, got {_show(item)}')
                continue
            line = _item_line(text, key, item, value[:k].count(item))
            if item in seen:
                errs.add(line, f'field "{key}": {item!r} is listed twice')
                continue
            seen.add(item)
            if account_kind is not None:
                if item not in known_ids:
                    errs.add(line, f'field "{key}": unknown {want} {item!r}{hint(item)}')
                    continue
                if account_kind.get(item, want) != want:
                    errs.add(line, f'field "{key}": account {item!r} is {_a(account_kind[item])}, not {_a(want)}')
                    continue
            if key == "test" and item in lists.get("train", ()):
                errs.add(line, f'field "test": brand {item!r} is in both train and test')
        lists[key] = list(value)
    if errs.count > start:
        return None
    if "candidates" in lists:
        candidates = tuple(lists["candidates"])
    elif account_kind is not None:
        candidates = tuple(a for a, k in account_kind.items() if k == INFLUENCER)
    else:
        candidates = ()
    return Split(tuple(lists["train"]), tuple(lists["test"]), candidates)


# ----------------------------------------------------------------------------------------------
# Public API.


def validate(data_dir: str | os.PathLike[str], *, check_images: bool = True) -> list[str]:
    """Checks a format-v1 dataset directory and returns its problems ([] when it is valid).

    Each problem is a line ``FILE:LINE: message``; at most MAX_ERRORS_PER_FILE lines per file are
    kept, then one ``FILE:0: ... N more problems`` line. Never raises for bad data.

    Args:
      data_dir: the dataset directory.
      check_images: also check that every image file exists and decodes as PNG or JPEG (one at a
        time); without it only the image paths' form is checked.
    """
    return _scan(data_dir, check_images).errors


def load(data_dir: str | os.PathLike[str], *, seed: int = 0, check_images: bool = True) -> Dataset:
    """Validates and loads a format-v1 dataset.

    Args:
      data_dir: the dataset directory.
      seed: the seed of :func:`default_split`, used only when there is no ``split.json``.
      check_images: as in :func:`validate`.

    Returns:
      The Dataset; records are in file order.

    Raises:
      DatasetError: the dataset is invalid; ``.errors`` lists every problem.
    """
    scan = _scan(data_dir, check_images)
    if scan.errors:
        raise DatasetError(scan.errors)
    accounts = tuple(scan.accounts)
    split = scan.split
    if split is None:
        split = default_split(accounts, seed)
    return Dataset(
        root=pathlib.Path(data_dir),
        concepts=tuple(scan.concepts),
        accounts=accounts,
        posts=tuple(scan.posts),
        cooperations=tuple(scan.cooperations),
        labeled_posts=tuple(scan.labeled_posts),
        split=split,
    )


def default_split(accounts: Iterable[Account], seed: int) -> Split:
    """Splits the brands into train and test per category in the paper's proportion (74/360 test).

    The number of test brands is round(B * 74 / 360) over all B brands (74 of 360 as in the paper),
    shared out over the categories by largest remainder of n_c * 74 / 360 (ties broken by the
    seed); a category with at least 2 brands gets at least one test and one train brand, a
    category with one brand keeps it in train. Which brands of a category go to test is a seeded
    permutation. Deterministic given ``seed`` (a numpy Generator).

    Args:
      accounts: all accounts (influencers become the candidates).
      seed: the seed.

    Returns:
      The Split; train, test and candidates keep the accounts' order.
    """
    accounts = tuple(accounts)
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[str]] = {}
    for a in accounts:
        if a.kind == BRAND:
            by_category.setdefault(a.category, []).append(a.id)
    categories = sorted(by_category)
    sizes = [len(by_category[c]) for c in categories]
    target = (sum(sizes) * TEST_BRANDS + ALL_BRANDS // 2) // ALL_BRANDS
    low = [1 if n >= 2 else 0 for n in sizes]
    high = [n - 1 if n >= 2 else 0 for n in sizes]
    quota = [min(max((n * TEST_BRANDS) // ALL_BRANDS, lo), hi) for n, lo, hi in zip(sizes, low, high)]
    remainder = [(n * TEST_BRANDS) % ALL_BRANDS for n in sizes]
    tiebreak = rng.permutation(len(categories)) if categories else np.zeros(0, np.int64)
    # Largest remainders first (ties in seeded order) when adding, smallest first when removing.
    order = sorted(range(len(categories)), key=lambda i: (-remainder[i], tiebreak[i]))
    excess = sum(quota) - target
    while excess < 0 and any(quota[i] < high[i] for i in order):
        for i in order:
            if excess < 0 and quota[i] < high[i]:
                quota[i] += 1
                excess += 1
    while excess > 0 and any(quota[i] > low[i] for i in order):
        for i in reversed(order):
            if excess > 0 and quota[i] > low[i]:
                quota[i] -= 1
                excess -= 1
    test: set[str] = set()
    for c, k in zip(categories, quota):
        ids = by_category[c]
        perm = rng.permutation(len(ids))
        test.update(ids[j] for j in perm[:k])
    brands = [a.id for a in accounts if a.kind == BRAND]
    return Split(
        train=tuple(b for b in brands if b not in test),
        test=tuple(b for b in brands if b in test),
        candidates=tuple(a.id for a in accounts if a.kind == INFLUENCER),
    )


def summary(dataset: Dataset) -> str:
    """One paragraph describing a dataset: accounts by kind and category, posts, cooperations,
    positives per brand (mean/min/max), concepts, labeled posts and the split sizes."""
    brands = dataset.brands()
    influencers = dataset.influencers()
    per_category: dict[str, list[int]] = {}
    for a in dataset.accounts:
        counts = per_category.setdefault(a.category, [0, 0])
        counts[0 if a.kind == BRAND else 1] += 1
    categories = ", ".join(
        f"{c} {b + m} ({b} brands, {m} influencers)" for c, (b, m) in sorted(per_category.items())
    )
    with_concepts = sum(p.concepts is not None for p in dataset.posts)
    positives = [len(dataset.positives().get(b.id, ())) for b in brands]
    if positives:
        pos = f"mean {np.mean(positives):.2f}, min {min(positives)}, max {max(positives)}"
    else:
        pos = "none (no brands)"
    split = dataset.split
    return (
        f"Dataset {dataset.root} (format v{FORMAT_VERSION}): {len(dataset.accounts)} accounts "
        f"({len(brands)} brands, {len(influencers)} influencers) in {len(per_category)} categories: "
        f"{categories}; {len(dataset.posts)} posts ({with_concepts} with ground-truth concepts); "
        f"{len(dataset.cooperations)} cooperations; positives per brand: {pos}; "
        f"{len(dataset.concepts)} concepts; {len(dataset.labeled_posts)} labeled posts; "
        f"split: {len(split.train)} train brands, {len(split.test)} test brands, "
        f"{len(split.candidates)} candidates."
    )
