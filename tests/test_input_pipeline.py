"""Tests for camera_jax.data.tfds_builder and camera_jax.data.input_pipeline.

A tiny format-v1 dataset is written into a temporary directory: 11 posts whose images are solid
colours that encode their row (PNG and JPEG, various sizes), so every decoded image can be traced
back to its post.
"""

from __future__ import annotations

import gc
import io
import json
import pathlib
import threading
import weakref

import numpy as np
import pytest
from PIL import Image

from camera_jax.data import input_pipeline as ip
from camera_jax.data import tfds_builder

N_POSTS = 11
N_LABELED = 3


def _colour(row: int, labeled: bool = False) -> tuple[int, int, int]:
    return (row * 20 + 10, 200 - row * 15, 128 if labeled else 40)


def _encode(colour, size, fmt: str, mode: str = "RGB") -> bytes:
    im = Image.new("RGB", size, colour)
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_dataset(root: pathlib.Path, n_posts: int = N_POSTS, n_labeled: int = N_LABELED) -> pathlib.Path:
    """Writes a valid format-v1 dataset: 1 brand, 2 influencers, n_posts posts, n_labeled labeled."""
    (root / "images").mkdir(parents=True)
    (root / "concepts.txt").write_text("food\nbeach\n", encoding="utf-8")
    _write_jsonl(
        root / "accounts.jsonl",
        [
            {"id": "b1", "kind": "brand", "category": "Food", "followers": 1000},
            {"id": "m1", "kind": "influencer", "category": "Food", "followers": 200},
            {"id": "m2", "kind": "influencer", "category": "Food", "followers": 300},
        ],
    )
    posts = []
    for row in range(n_posts):
        fmt = "PNG" if row % 3 else "JPEG"
        name = f"images/post_{row}.{'png' if fmt == 'PNG' else 'jpg'}"
        size = (16 + row, 12 + 2 * row)
        (root / name).write_bytes(_encode(_colour(row), size, fmt, mode="L" if row == 4 else "RGB"))
        posts.append(
            {
                "id": f"p{row}",
                "account": ("b1", "m1", "m2")[row % 3],
                "image": name,
                "caption": f"caption number {row} #Food ✓" if row != 5 else "",
                "likes": row,
                "comments": 1,
            }
        )
    _write_jsonl(root / "posts.jsonl", posts)
    _write_jsonl(root / "cooperations.jsonl", [{"brand": "b1", "influencer": "m1", "post": "p1"}])
    labeled = []
    for row in range(n_labeled):
        name = f"images/labeled_{row}.png"
        (root / name).write_bytes(_encode(_colour(row, True), (20, 20), "PNG", mode="RGBA"))
        labeled.append({"id": f"l{row}", "image": name, "caption": f"labeled {row}", "concepts": ["food"]})
    if labeled:
        _write_jsonl(root / "labeled_posts.jsonl", labeled)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    data_dir = make_dataset(base / "data")
    sources = ip.prepare(data_dir, base / "tfds")
    return data_dir, base / "tfds", sources


def _all_batches(batches) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in b.items()} for b in batches]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# --- tfds_builder / prepare --------------------------------------------------------------------


def test_prepare_every_post_exactly_once(prepared):
    data_dir, _, sources = prepared
    posts = sources["posts"]
    assert len(posts) == N_POSTS
    records = posts.__getitems__(list(range(N_POSTS)))
    rows = sorted(int(r["row"]) for r in records)
    assert rows == list(range(N_POSTS))
    lines = [json.loads(l) for l in (data_dir / "posts.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in records:
        line = lines[int(r["row"])]
        assert r["id"].decode() == line["id"]
        assert r["caption"].decode("utf-8") == line["caption"]
        assert r["image"] == (data_dir / line["image"]).read_bytes()  # stored as encoded on disk
        assert ip.decode_image(r["image"], 8).shape == (8, 8, 3)


def test_prepare_labeled_split(prepared):
    data_dir, _, sources = prepared
    labeled = sources["labeled"]
    assert labeled is not None and len(labeled) == N_LABELED
    by_row = {int(r["row"]): r for r in labeled.__getitems__(list(range(N_LABELED)))}
    assert sorted(by_row) == list(range(N_LABELED))
    assert by_row[2]["id"] == b"l2" and by_row[2]["caption"] == b"labeled 2"
    assert by_row[1]["image"] == (data_dir / "images/labeled_1.png").read_bytes()


def test_prepare_reuses_then_rebuilds_on_change(tmp_path):
    data_dir = make_dataset(tmp_path / "data", n_posts=4, n_labeled=0)
    tfds_dir = tmp_path / "tfds"
    first = ip.prepare(data_dir, tfds_dir)
    assert len(first["posts"]) == 4 and first["labeled"] is None  # empty split left out
    key = tfds_builder.fingerprint(data_dir)
    files = sorted((tfds_dir / key).rglob("*.array_record*"))
    assert files
    stamps = [f.stat().st_mtime_ns for f in files]
    again = ip.prepare(data_dir, tfds_dir)
    assert len(again["posts"]) == 4
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not rewritten
    # A changed dataset (one more post) gets a new fingerprint and is rebuilt.
    lines = (data_dir / "posts.jsonl").read_text(encoding="utf-8")
    (data_dir / "images/extra.png").write_bytes(_encode((1, 2, 3), (5, 5), "PNG"))
    extra = {"id": "px", "account": "m1", "image": "images/extra.png", "caption": "x", "likes": 0, "comments": 0}
    (data_dir / "posts.jsonl").write_text(lines + json.dumps(extra) + "\n", encoding="utf-8")
    new_key = tfds_builder.fingerprint(data_dir)
    assert new_key != key
    changed = ip.prepare(data_dir, tfds_dir)
    assert len(changed["posts"]) == 5
    assert sorted(p.name for p in tfds_dir.iterdir()) == [new_key]  # the stale build is removed
    # Rewriting an image file (same jsonl) changes the fingerprint too.
    (data_dir / "images/extra.png").write_bytes(_encode((9, 9, 9), (6, 6), "PNG"))
    assert tfds_builder.fingerprint(data_dir) != new_key


def test_interrupted_build_is_not_trusted(tmp_path, monkeypatch):
    data_dir = make_dataset(tmp_path / "data", n_posts=5, n_labeled=0)
    tfds_dir = tmp_path / "tfds"
    original = tfds_builder.CameraPosts._generate_examples

    def failing(self, root, records):
        for i, example in enumerate(original(self, root, records)):
            if i == 3:
                raise RuntimeError("interrupted")
            yield example

    monkeypatch.setattr(tfds_builder.CameraPosts, "_generate_examples", failing)
    with pytest.raises(Exception, match="interrupted"):
        ip.prepare(data_dir, tfds_dir)
    key = tfds_builder.fingerprint(data_dir)
    assert not list((tfds_dir / key).rglob("*.array_record*"))
    assert not list((tfds_dir / key).rglob("dataset_info.json"))
    # A build killed outright leaves TFDS's incomplete directory behind: it must not be trusted.
    junk = tfds_dir / key / "camera_posts" / "manual" / "incomplete.KILLED_1.0.0"
    junk.mkdir(parents=True)
    (junk / "camera_posts-posts.array_record-00000-of-00001").write_bytes(b"garbage")
    monkeypatch.setattr(tfds_builder.CameraPosts, "_generate_examples", original)
    sources = ip.prepare(data_dir, tfds_dir)
    assert len(sources["posts"]) == 5
    rows = sorted(int(r["row"]) for r in sources["posts"].__getitems__(list(range(5))))
    assert rows == list(range(5))


def test_invalid_dataset_raises_dataset_error(tmp_path):
    from camera_jax.data import format as fmt

    data_dir = make_dataset(tmp_path / "data", n_posts=3, n_labeled=0)
    (data_dir / "cooperations.jsonl").write_text('{"brand": "nobody"}\n', encoding="utf-8")
    with pytest.raises(fmt.DatasetError):
        ip.prepare(data_dir, tmp_path / "tfds")


# --- decode_image / augment --------------------------------------------------------------------


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB")])
def test_decode_image(fmt, mode):
    data = _encode((200, 100, 50), (30, 17), fmt, mode=mode)
    img = ip.decode_image(data, 24)
    assert img.shape == (24, 24, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)[0, 0] / 255.0
    np.testing.assert_allclose(img[12, 12], expected, atol=3 / 255)


def test_decode_16_bit_grey_png_keeps_its_high_byte():
    grey = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    pixels = ip.decode_uint8(buf.getvalue(), 16)
    np.testing.assert_array_equal(pixels, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, -1))


def test_decode_mpo_reads_its_first_frame_and_the_validator_accepts_it(tmp_path):
    from camera_jax.data import format as fmt
    first, second = Image.new("RGB", (16, 16), (200, 40, 10)), Image.new("RGB", (16, 16), (0, 0, 255))
    path = tmp_path / "photo.jpg"
    first.save(path, format="MPO", save_all=True, append_images=[second])
    assert Image.open(path).format == "MPO"
    assert fmt.decode_problem(path) is None
    np.testing.assert_allclose(ip.decode_uint8(path.read_bytes(), 16)[8, 8], [200, 40, 10], atol=4)


def test_decode_image_keeps_exact_pixels_at_native_size():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    np.testing.assert_array_equal(ip.decode_image(buf.getvalue(), 8), pixels.astype(np.float32) / 255.0)


def test_augment_flip_and_shift():
    image = np.random.default_rng(1).random((20, 20, 3), dtype=np.float32)
    outs = [ip.augment(image, np.random.default_rng(s)) for s in range(40)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == image.dtype
        assert out.min() >= image.min() and out.max() <= image.max()
    flipped = image[:, ::-1]
    # Every output is the image or its mirror shifted by at most 2 pixels (10 % of 20).
    for out in outs:
        ok = False
        for base in (image, flipped):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    src = np.pad(base, ((2, 2), (2, 2), (0, 0)), mode="edge")[2 + dy : 22 + dy, 2 + dx : 22 + dx]
                    ok |= np.array_equal(out, src)
        assert ok
    assert any(not np.array_equal(o, image) for o in outs)
    np.testing.assert_array_equal(
        ip.augment(image, np.random.default_rng(5)), ip.augment(image, np.random.default_rng(5))
    )


# --- ImageBatches ------------------------------------------------------------------------------


def test_batches_cover_every_post_once_with_padding(prepared):
    _, _, sources = prepared
    batches = ip.ImageBatches(sources["posts"], 4, 8, shuffle=True, seed=0)
    assert len(batches) == 3
    out = _all_batches(batches)
    assert len(out) == 3
    for b in out:
        assert b["image"].shape == (4, 8, 8, 3) and b["image"].dtype == np.float32
        assert b["row"].dtype == np.int32 and b["mask"].dtype == bool
    mask = np.concatenate([b["mask"] for b in out])
    rows = np.concatenate([b["row"] for b in out])
    images = np.concatenate([b["image"] for b in out])
    assert mask.sum() == N_POSTS
    assert sorted(rows[mask].tolist()) == list(range(N_POSTS))
    assert np.all(rows[~mask] == -1)
    np.testing.assert_array_equal(images[~mask], 0.0)
    assert not out[0]["mask"].all() or not out[-1]["mask"].all()
    assert out[-1]["mask"].tolist() == [True, True, True, False]
    for image, row in zip(images[mask], rows[mask]):
        expected = np.array(_colour(int(row)), np.float32) / 255.0
        if row == 4:  # saved as greyscale
            grey = Image.new("RGB", (1, 1), _colour(4)).convert("L").getpixel((0, 0))
            expected = np.full(3, grey / 255.0, np.float32)
        np.testing.assert_allclose(image[4, 4], expected, atol=4 / 255)  # JPEG tolerance


def test_order_depends_on_seed_and_epoch_only(prepared):
    _, _, sources = prepared
    src = sources["posts"]

    def rows(**kw):
        return np.concatenate([b["row"] for b in ip.ImageBatches(src, 4, 8, **kw)])

    a = rows(shuffle=True, seed=3, epoch=1)
    np.testing.assert_array_equal(a, rows(shuffle=True, seed=3, epoch=1))
    assert not np.array_equal(a, rows(shuffle=True, seed=3, epoch=2))
    assert not np.array_equal(a, rows(shuffle=True, seed=4, epoch=1))
    # order() is the permutation of source indices; rows follow it.
    batches = ip.ImageBatches(src, 4, 8, shuffle=True, seed=3, epoch=1)
    order = batches.order()
    assert sorted(order.tolist()) == list(range(N_POSTS))
    np.testing.assert_array_equal(a[a >= 0], ip.rows_of(src)[order])
    # Without shuffling the source order is kept, whatever the epoch.
    np.testing.assert_array_equal(rows(shuffle=False, seed=0, epoch=0), rows(shuffle=False, seed=9, epoch=5))
    np.testing.assert_array_equal(rows(shuffle=False, seed=0)[:N_POSTS], ip.rows_of(src))


def test_start_batch_resume_reproduces_the_tail(prepared):
    _, _, sources = prepared
    kw = dict(shuffle=True, seed=11, epoch=4, augment=True)
    full = _all_batches(ip.ImageBatches(sources["posts"], 3, 8, **kw))
    assert len(full) == 4
    tail = _all_batches(ip.ImageBatches(sources["posts"], 3, 8, start_batch=2, **kw))
    _assert_same_batches(full[2:], tail)
    assert len(ip.ImageBatches(sources["posts"], 3, 8, start_batch=2, **kw)) == 4
    assert _all_batches(ip.ImageBatches(sources["posts"], 3, 8, start_batch=4, **kw)) == []
    with pytest.raises(ValueError):
        ip.ImageBatches(sources["posts"], 3, 8, start_batch=5, **kw)


def test_augment_is_seeded_and_changes_images(prepared):
    _, _, sources = prepared
    src = sources["posts"]
    plain = _all_batches(ip.ImageBatches(src, 4, 16, shuffle=True, seed=2))
    aug1 = _all_batches(ip.ImageBatches(src, 4, 16, shuffle=True, seed=2, augment=True))
    aug2 = _all_batches(ip.ImageBatches(src, 4, 16, shuffle=True, seed=2, augment=True))
    _assert_same_batches(aug1, aug2)
    for p, a in zip(plain, aug1):
        np.testing.assert_array_equal(p["row"], a["row"])
        np.testing.assert_array_equal(a["image"][~a["mask"]], 0.0)


def test_threads_and_prefetch_give_identical_batches(prepared):
    _, _, sources = prepared
    kw = dict(shuffle=True, seed=5, epoch=1, augment=True)
    reference = _all_batches(ip.ImageBatches(sources["posts"], 4, 8, **kw))
    _assert_same_batches(reference, _all_batches(ip.ImageBatches(sources["posts"], 4, 8, num_threads=2, **kw)))
    _assert_same_batches(
        reference, _all_batches(ip.ImageBatches(sources["posts"], 4, 8, prefetch=True, num_threads=2, **kw))
    )


@pytest.mark.parametrize("size", [20, 8, 33])
def test_augment_batch_is_augment_of_each_image(size):
    images = np.random.default_rng(size).random((6, size, size, 3), dtype=np.float32)
    seeds = [[7, size, j] for j in range(6)]
    expected = np.stack([ip.augment(im, np.random.default_rng(sd)) for im, sd in zip(images, seeds)])
    got = ip.augment_batch(images, [np.random.default_rng(sd) for sd in seeds])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32 and got.shape == images.shape
    with pytest.raises(ValueError, match="6 images but 2 generators"):
        ip.augment_batch(images, [np.random.default_rng(0)] * 2)


def _files(d: pathlib.Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_decoded_images_give_the_same_batches(prepared, tmp_path):
    _, _, sources = prepared
    raw = sources["posts"]
    dec = ip.DecodedImages(raw, 8, tmp_path / "decoded" / "posts_8px.npy", num_threads=2, chunk=4)
    variants = [
        dict(shuffle=False, seed=0),
        dict(shuffle=True, seed=3, epoch=2, augment=True),
        dict(shuffle=True, seed=3, epoch=2, augment=True, start_batch=1),
        dict(shuffle=True, seed=1, indices=[9, 0, 4, 7], augment=True),
        dict(shuffle=True, seed=5, augment=True, num_threads=2, prefetch=True),
    ]
    for kw in variants:
        _assert_same_batches(_all_batches(ip.ImageBatches(raw, 4, 8, **kw)),
                             _all_batches(ip.ImageBatches(dec, 4, 8, **kw)))
    # The file holds every post's pixels, data-source order, beside its rows; no temporary left.
    assert _files(tmp_path / "decoded") == ["posts_8px.npy", "posts_8px.rows.npy"]
    pixels = np.load(tmp_path / "decoded" / "posts_8px.npy")
    assert pixels.dtype == np.uint8 and pixels.shape == (N_POSTS, 8, 8, 3)
    np.testing.assert_array_equal(ip.to_unit(pixels[3]), ip.decode_image(raw[3]["image"], 8))
    np.testing.assert_array_equal(ip.rows_of(dec), ip.rows_of(raw))
    assert len(dec) == N_POSTS and dec.nbytes == N_POSTS * 8 * 8 * 3
    # Another size decodes from the source and writes nothing.
    _assert_same_batches(_all_batches(ip.ImageBatches(raw, 4, 12, shuffle=False, seed=0)),
                         _all_batches(ip.ImageBatches(dec, 4, 12, shuffle=False, seed=0)))
    assert _files(tmp_path / "decoded") == ["posts_8px.npy", "posts_8px.rows.npy"]


def test_uint8_batches_are_the_pixels_of_the_float32_batches(prepared, tmp_path):
    """dtype=uint8 (what the image stages ask for) gives the pixels that to_unit turns into the
    float32 batches, from the source or the decoded file, augmented or not; padding is 0."""
    _, _, sources = prepared
    raw = sources["posts"]
    dec = ip.DecodedImages(raw, 8, tmp_path / "posts_8px.npy")
    for src in (raw, dec):
        for kw in (dict(shuffle=False, seed=0), dict(shuffle=True, seed=3, epoch=2, augment=True),
                   dict(shuffle=True, seed=5, augment=True, num_threads=2, prefetch=True)):
            f32 = _all_batches(ip.ImageBatches(src, 3, 8, **kw))
            u8 = _all_batches(ip.ImageBatches(src, 3, 8, dtype=np.uint8, **kw))
            assert len(f32) == len(u8) and N_POSTS % 3  # a padded last batch
            for a, b in zip(f32, u8):
                assert b["image"].dtype == np.uint8 and a["image"].dtype == np.float32
                np.testing.assert_array_equal(ip.to_unit(b["image"]), a["image"])
                np.testing.assert_array_equal(a["row"], b["row"])
                np.testing.assert_array_equal(a["mask"], b["mask"])
                assert not b["image"][~b["mask"]].any()
    with pytest.raises(ValueError, match="float32 or uint8"):
        ip.ImageBatches(raw, 3, 8, shuffle=False, seed=0, dtype=np.float64)


def test_decoded_images_are_reused_and_a_wrong_file_is_rebuilt(prepared, tmp_path, monkeypatch):
    _, _, sources = prepared
    raw, path = sources["posts"], tmp_path / "posts_8px.npy"
    reference = _all_batches(ip.ImageBatches(ip.DecodedImages(raw, 8, path), 4, 8, shuffle=False, seed=0))
    calls = []
    real = ip.decode_uint8
    monkeypatch.setattr(ip, "decode_uint8", lambda data, size: calls.append(size) or real(data, size))
    again = _all_batches(ip.ImageBatches(ip.DecodedImages(raw, 8, path), 4, 8, shuffle=False, seed=0))
    _assert_same_batches(reference, again)
    assert calls == []   # opened, not decoded
    np.save(path, np.zeros((N_POSTS - 1, 8, 8, 3), np.uint8))   # e.g. written for other data
    (tmp_path / ".posts_8px.npy.123.abcd").write_bytes(b"left by a killed build")
    rebuilt = _all_batches(ip.ImageBatches(ip.DecodedImages(raw, 8, path), 4, 8, shuffle=False, seed=0))
    _assert_same_batches(reference, rebuilt)
    assert len(calls) == N_POSTS
    assert _files(tmp_path) == ["posts_8px.npy", "posts_8px.rows.npy"]
    (tmp_path / "posts_8px.rows.npy").write_bytes(b"")   # e.g. a crash before the data reached the disk
    dec = ip.DecodedImages(raw, 8, path)
    assert dec.usable() and len(calls) == 2 * N_POSTS and dec.build_seconds > 0
    _assert_same_batches(reference, _all_batches(ip.ImageBatches(dec, 4, 8, shuffle=False, seed=0)))


def test_a_decoded_file_that_cannot_be_written_falls_back_to_decoding(prepared, tmp_path):
    _, _, sources = prepared
    raw = sources["posts"]
    (tmp_path / "not_a_dir").write_text("")
    dec = ip.DecodedImages(raw, 8, tmp_path / "not_a_dir" / "posts_8px.npy")
    kw = dict(shuffle=True, seed=3, augment=True)
    _assert_same_batches(_all_batches(ip.ImageBatches(raw, 4, 8, **kw)),
                         _all_batches(ip.ImageBatches(dec, 4, 8, **kw)))
    assert not dec.usable() and "not_a_dir" in dec.unavailable
    np.testing.assert_array_equal(ip.rows_of(dec), ip.rows_of(raw))
    assert _files(tmp_path) == ["not_a_dir"]


def test_a_failed_decoding_pass_leaves_no_file(prepared, tmp_path):
    _, _, sources = prepared
    records = [dict(sources["posts"][i]) for i in range(N_POSTS)]
    records[6] = {**records[6], "image": b"not an image"}
    path = tmp_path / "d" / "posts_8px.npy"
    with pytest.raises(ip.ImageDecodeError) as err:
        ip.DecodedImages(records, 8, path, num_threads=2, chunk=4).usable()
    assert err.value.post_id == records[6]["id"].decode() and err.value.row == records[6]["row"]
    assert _files(tmp_path / "d") == []


def test_prefetch_thread_stops_when_iteration_is_abandoned(prepared):
    _, _, sources = prepared
    before = threading.active_count()
    it = iter(ip.ImageBatches(sources["posts"], 2, 8, shuffle=True, seed=0, prefetch=True))
    next(it)
    it.close()
    assert threading.active_count() == before


def test_prefetch_propagates_errors():
    class Broken:
        def __len__(self):
            return 3

        def __getitems__(self, indices):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(ip.ImageBatches(Broken(), 2, 8, shuffle=False, seed=0, prefetch=True))


def test_indices_subset_and_split_indices(prepared):
    _, _, sources = prepared
    src = sources["posts"]
    train, test = ip.split_indices(len(src), 0.25, seed=0)
    assert len(test) == 3 and len(train) == N_POSTS - 3
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(N_POSTS))
    np.testing.assert_array_equal(ip.split_indices(len(src), 0.25, seed=0)[1], test)
    assert not np.array_equal(ip.split_indices(len(src), 0.25, seed=1)[1], test)
    rows = ip.rows_of(src)
    assert sorted(rows.tolist()) == list(range(N_POSTS))
    batches = ip.ImageBatches(src, 2, 8, shuffle=True, seed=0, indices=test)
    assert len(batches) == 2
    got = np.concatenate([b["row"][b["mask"]] for b in batches])
    assert sorted(got.tolist()) == sorted(rows[test].tolist())
    # row -> source index by inverting rows_of.
    source_of_row = np.argsort(rows)
    assert [int(r["row"]) for r in src.__getitems__(source_of_row[[0, 7]].tolist())] == [0, 7]
    with pytest.raises(ValueError):
        ip.ImageBatches(src, 2, 8, shuffle=False, seed=0, indices=[N_POSTS])
    assert ip.split_indices(10, 0.0, 0)[1].size == 0
    assert ip.split_indices(10, 0.01, 0)[1].size == 1


def test_iteration_does_not_accumulate_batches(prepared):
    _, _, sources = prepared
    for prefetch in (False, True):
        refs = []
        batches = ip.ImageBatches(sources["posts"], 1, 32, shuffle=True, seed=0, prefetch=prefetch)
        alive_max = 0
        for batch in batches:
            refs.append(weakref.ref(batch["image"]))
            del batch
            gc.collect()
            alive_max = max(alive_max, sum(r() is not None for r in refs))
        assert len(refs) == N_POSTS
        # The consumer's batch plus at most the prefetch queue (2) and the one being built.
        assert alive_max <= (4 if prefetch else 1)
        gc.collect()
        assert sum(r() is not None for r in refs) == 0


# --- the synthetic config ----------------------------------------------------------------------


def test_synthetic_config_builds(tmp_path):
    synthetic = pytest.importorskip("camera_jax.data.synthetic")
    from camera_jax.data import format as fmt

    config = tfds_builder.CameraPostsConfig(name="synthetic_24px", preset="tiny", seed=0, image_size=24)
    builder = tfds_builder.CameraPosts(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    posts = builder.as_data_source(split="posts")
    generated = next(p for p in (tmp_path / "downloads").iterdir() if p.name.startswith("synthetic-"))
    dataset = fmt.load(generated, check_images=False)
    assert len(posts) == len(dataset.posts)
    assert len(builder.as_data_source(split="labeled")) == len(dataset.labeled_posts)
    record = posts[0]
    assert dataset.posts[int(record["row"])].id == record["id"].decode()
    assert ip.decode_image(record["image"], 24).shape == (24, 24, 3)
    del synthetic


def test_fingerprint_and_record_line_number_lines_as_the_validator(tmp_path):
    # A "\r" between two fields is JSON whitespace: the validator reads one line; text mode's
    # universal newlines split it, which dropped the record's image from the fingerprint (an
    # edited image then reused the stale TFDS build) and shifted every later line number.
    from camera_jax.data import format as fmt
    from camera_jax.data import synthetic, tfds_builder

    root = synthetic.generate(tmp_path / "d", preset="tiny", image_size=24)
    path = root / fmt.POSTS_FILE
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b', "image"', b',\r"image"', 1)
    path.write_bytes(b"\n".join(lines))
    assert fmt.validate(root, check_images=False) == []
    image = json.loads(lines[0])["image"]
    assert next(tfds_builder._jsonl_images(path)) == (1, image)
    assert fmt.record_line(path, json.loads(lines[1])["id"]) == 2
    before = tfds_builder.fingerprint(root)
    Image.new("RGB", (7, 5)).save(root / image)
    assert tfds_builder.fingerprint(root) != before


def test_processes_decode_only_their_part_of_the_global_batch(prepared, tmp_path, monkeypatch):
    """part=(width, index, count): each of count processes reads and decodes only its rows of the
    global batch padded to width; side by side the parts are that padded batch, whatever the
    source (records or the decoded file) and the augmentation (on the host or drawn for the
    device)."""
    from camera_jax.training import sharding

    _, _, sources = prepared
    raw = sources["posts"]
    dec = ip.DecodedImages(raw, 8, tmp_path / "posts_8px.npy")
    decodes = []
    real = ip._decode_record
    monkeypatch.setattr(ip, "_decode_record", lambda r, s: decodes.append(1) or real(r, s))
    for source in (raw, dec):
        for kw in (dict(augment=True, device_augment=True), dict(augment=True), {}):
            kw = dict(shuffle=True, seed=3, epoch=1, dtype=np.uint8, **kw)
            full = _all_batches(ip.ImageBatches(source, 5, 8, **kw))  # 5 rows, padded to 8
            decodes.clear()
            parts = [_all_batches(ip.ImageBatches(source, 5, 8, part=(8, i, 4), **kw))
                     for i in range(4)]
            if source is raw:
                n_images = sum(int(b["mask"].sum()) for b in full)
                assert len(decodes) == n_images  # each image decoded once, by one process
            for k, batch in enumerate(full):
                padded, _ = sharding.pad_batch(batch, 8)
                padded["row"][5:] = -1
                for key in padded:
                    np.testing.assert_array_equal(
                        np.concatenate([p[k][key] for p in parts]), padded[key], err_msg=key)
    with pytest.raises(ValueError, match="part"):
        ip.ImageBatches(raw, 5, 8, shuffle=False, seed=0, part=(6, 0, 4))
