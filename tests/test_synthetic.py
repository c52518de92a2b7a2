"""Tests of camera_jax.data.synthetic (tiny preset plus a micro preset for the slower checks)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from camera_jax.data import format as fmt
from camera_jax.data import synthetic
from conftest import REPO, repo_on_pythonpath

TINY = synthetic.PRESETS["tiny"]
# A very small preset for the checks that generate several datasets.
MICRO = dataclasses.replace(TINY, name="micro", categories=("Auto", "Food"), brands_per_category=3,
                            influencers=12, posts_per_account=3, labeled_posts=30,
                            positives_per_brand=2.5)


def _tree_hash(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
    return synthetic.generate(tmp_path_factory.mktemp("tiny") / "data", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_records(tiny):
    return dict(
        concepts=(tiny / "concepts.txt").read_text(encoding="utf-8").splitlines(),
        accounts=_jsonl(tiny / "accounts.jsonl"),
        posts=_jsonl(tiny / "posts.jsonl"),
        cooperations=_jsonl(tiny / "cooperations.jsonl"),
        labeled=_jsonl(tiny / "labeled_posts.jsonl"),
    )


def test_files_and_manifest(tiny):
    names = sorted(p.name for p in tiny.iterdir())
    assert names == ["accounts.jsonl", "concepts.txt", "cooperations.jsonl", "images",
                     "labeled_posts.jsonl", "posts.jsonl", "synthetic.json"]
    manifest = json.loads((tiny / "synthetic.json").read_text())
    assert (manifest["version"], manifest["preset"], manifest["seed"], manifest["image_size"]) == (
        1, "tiny", 0, 64)
    assert not list(tiny.parent.glob("*.tmp-*"))


def test_counts_match_preset(tiny_records):
    r = tiny_records
    kinds = collections.Counter(a["kind"] for a in r["accounts"])
    assert kinds == {"brand": TINY.num_brands, "influencer": TINY.influencers}
    brand_cats = collections.Counter(a["category"] for a in r["accounts"] if a["kind"] == "brand")
    assert brand_cats == {c: TINY.brands_per_category for c in TINY.categories}
    assert len(r["posts"]) == TINY.num_posts
    per_account = collections.Counter(p["account"] for p in r["posts"])
    assert set(per_account.values()) == {TINY.posts_per_account}
    assert len(r["labeled"]) == TINY.labeled_posts
    assert r["concepts"] == list(synthetic.vocabulary("tiny"))
    assert len(r["concepts"]) == TINY.num_concepts == 40
    per_brand = collections.Counter(c["brand"] for c in r["cooperations"])
    assert len(per_brand) == TINY.num_brands and min(per_brand.values()) >= 2
    assert 4.0 <= len(r["cooperations"]) / TINY.num_brands <= 6.0
    for p in r["posts"] + r["labeled"]:
        assert TINY.min_concepts_per_post <= len(p["concepts"]) <= TINY.max_concepts_per_post
        assert len(set(p["concepts"])) == len(p["concepts"])


def test_fields_are_sane(tiny_records):
    r = tiny_records
    vocab = set(r["concepts"])
    for a in r["accounts"]:
        assert list(a) == ["id", "kind", "category", "followers", "bio"]
        assert isinstance(a["followers"], int) and a["followers"] > 0 and a["bio"]
    for p in r["posts"]:
        assert list(p) == ["id", "account", "image", "caption", "likes", "comments", "concepts"]
        assert p["likes"] >= 0 and p["comments"] >= 0 and set(p["concepts"]) <= vocab
    for p in r["labeled"]:
        assert p["concepts"] and set(p["concepts"]) <= vocab
    fol = np.array([a["followers"] for a in r["accounts"] if a["kind"] == "influencer"])
    assert 10_000 <= np.median(fol) <= 100_000 and fol.min() >= 2_000 and fol.max() <= 500_000
    # Every concept is in the labeled set (the concept generator can learn it).
    seen = collections.Counter(c for p in r["labeled"] for c in p["concepts"])
    assert set(seen) == vocab and min(seen.values()) >= 5


def test_images_decode_with_requested_size(tiny, tiny_records):
    formats = collections.Counter()
    for p in tiny_records["posts"] + tiny_records["labeled"]:
        with Image.open(tiny / p["image"]) as im:
            im.load()
            assert im.size == (64, 64) and im.mode == "RGB"
            formats[im.format] += 1
    assert formats == {"JPEG": TINY.num_posts, "PNG": TINY.labeled_posts}


def test_image_size_flag(tmp_path):
    out = synthetic.generate(tmp_path / "d", preset=MICRO, seed=0, image_size=48)
    post = _jsonl(out / "posts.jsonl")[0]
    with Image.open(out / post["image"]) as im:
        assert im.size == (48, 48)


def test_cooperations_reference_own_posts(tiny_records):
    r = tiny_records
    kind = {a["id"]: a["kind"] for a in r["accounts"]}
    owner = {p["id"]: p["account"] for p in r["posts"]}
    for c in r["cooperations"]:
        assert kind[c["brand"]] == "brand" and kind[c["influencer"]] == "influencer"
        assert owner[c["post"]] == c["influencer"]
    pairs = [(c["brand"], c["influencer"]) for c in r["cooperations"]]
    assert len(set(pairs)) == len(pairs)
    assert len({c["post"] for c in r["cooperations"]}) == len(pairs)  # one sponsored post per deal
    cat = {a["id"]: a["category"] for a in r["accounts"]}
    within = np.mean([cat[c["brand"]] == cat[c["influencer"]] for c in r["cooperations"]])
    assert 0.7 <= within < 1.0  # mostly, not only, within the category


def test_captions(tiny_records):
    captions = [p["caption"] for p in tiny_records["posts"]]
    empty = np.mean([c == "" for c in captions])
    assert 0.08 <= empty <= 0.25
    # Non-empty captions mention some concept word of the post.
    lex = synthetic.concept_lexicon(tiny_records["concepts"])
    hits = [any(w.lstrip("#") in p["caption"].lower() for c in p["concepts"] for w in lex[c])
            for p in tiny_records["posts"] if p["caption"]]
    assert np.mean(hits) > 0.95


def _rank_metrics(scores: np.ndarray, positives: list[set[int]]) -> tuple[float, float]:
    """MRR and recall@10 of per-brand rankings (ties broken by index)."""
    mrr, r10 = [], []
    for s, pos in zip(scores, positives):
        order = np.argsort(-s, kind="stable")
        rank = np.empty(len(s), int)
        rank[order] = np.arange(1, len(s) + 1)
        ranks = sorted(rank[list(pos)])
        mrr.append(1.0 / ranks[0])
        r10.append(sum(r <= 10 for r in ranks) / len(ranks))
    return float(np.mean(mrr)), float(np.mean(r10))


def test_content_beats_popularity(tiny_records):
    r = tiny_records
    ci = {c: i for i, c in enumerate(r["concepts"])}
    ai = {a["id"]: i for i, a in enumerate(r["accounts"])}
    hist = np.zeros((len(ai), len(ci)))
    for p in r["posts"]:
        for c in p["concepts"]:
            hist[ai[p["account"]], ci[c]] += 1
    hist /= np.linalg.norm(hist, axis=1, keepdims=True)
    brands = [i for i, a in enumerate(r["accounts"]) if a["kind"] == "brand"]
    infl = [i for i, a in enumerate(r["accounts"]) if a["kind"] == "influencer"]
    col = {a: j for j, a in enumerate(infl)}
    positives = [set() for _ in brands]
    row = {b: k for k, b in enumerate(brands)}
    for c in r["cooperations"]:
        positives[row[ai[c["brand"]]]].add(col[ai[c["influencer"]]])
    content = hist[brands] @ hist[infl].T
    followers = np.tile([float(r["accounts"][i]["followers"]) for i in infl], (len(brands), 1))
    rand = np.random.default_rng(0).random(content.shape)
    c_mrr, c_r10 = _rank_metrics(content, positives)
    f_mrr, f_r10 = _rank_metrics(followers, positives)
    r_mrr, r_r10 = _rank_metrics(rand, positives)
    assert c_mrr > f_mrr + 0.3 and c_r10 > f_r10 + 0.3, (c_mrr, c_r10, f_mrr, f_r10)
    assert c_mrr > r_mrr + 0.3 and c_r10 > r_r10 + 0.3, (c_mrr, c_r10, r_mrr, r_r10)


def test_validate_accepts_tiny(tiny):
    assert fmt.validate(tiny) == []
    dataset = fmt.load(tiny)
    assert len(dataset.posts) == TINY.num_posts and dataset.split.test


def test_same_seed_same_bytes_and_different_seed_differs(tiny, tmp_path):
    again = synthetic.generate(tmp_path / "again", preset="tiny", seed=0)
    assert _tree_hash(again) == _tree_hash(tiny)
    other = synthetic.generate(tmp_path / "other", preset="tiny", seed=1)
    assert _tree_hash(other) != _tree_hash(tiny)


def test_output_does_not_depend_on_workers(tmp_path):
    one = synthetic.generate(tmp_path / "one", preset=MICRO, seed=3, workers=1)
    two = synthetic.generate(tmp_path / "two", preset=MICRO, seed=3, workers=2)
    assert _tree_hash(one) == _tree_hash(two)


def test_existing_directory_rules(tmp_path):
    out = synthetic.generate(tmp_path / "d", preset=MICRO, seed=0)
    stamp = (out / "posts.jsonl").stat().st_mtime_ns
    # A completed dataset with the same arguments is returned as is.
    assert synthetic.generate(out, preset=MICRO, seed=0) == out
    assert (out / "posts.jsonl").stat().st_mtime_ns == stamp
    # Different arguments, or foreign content, are refused.
    with pytest.raises(FileExistsError):
        synthetic.generate(out, preset=MICRO, seed=1)
    with pytest.raises(FileExistsError):
        synthetic.generate(out, preset=MICRO, seed=0, image_size=32)
    # A dataset of an older generator version is refused with a message naming the versions.
    manifest = json.loads((out / "synthetic.json").read_text())
    (out / "synthetic.json").write_text(json.dumps({**manifest, "generator_version": 1}))
    with pytest.raises(FileExistsError, match="generator version 1, this is version 2"):
        synthetic.generate(out, preset=MICRO, seed=0)
    (out / "synthetic.json").write_text(json.dumps(manifest))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        synthetic.generate(foreign, preset=MICRO, seed=0)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # An empty directory is filled.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (synthetic.generate(empty, preset=MICRO, seed=0) / "synthetic.json").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(job)

    real = synthetic._render_job
    monkeypatch.setattr(synthetic, "_render_job", boom)
    with pytest.raises(RuntimeError):
        synthetic.generate(tmp_path / "d", preset=MICRO, seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "a", preset="huge")
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "b", preset="tiny", image_size=8)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_refuses_non_empty_directory_without_traceback(tmp_path):
    (tmp_path / "x").write_text("occupied")
    env = repo_on_pythonpath()
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "synthetic.py"), f"--out={tmp_path}", "--preset=tiny"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_vocabulary_structure():
    paper = synthetic.vocabulary("paper")
    assert len(paper) == len(set(paper)) == 420
    assert all(n and n == n.strip() for n in paper)
    for name in ("car", "motorcycle", "road", "wristwatch", "luxury", "food", "ready_to_eat",
                 "human_face", "portrait", "eyeshadow", "hairstyle", "nature_landscape", "sky",
                 "home_interior", "high_angle_view", "architecture"):
        assert name in paper
    small, tiny = synthetic.vocabulary("small"), synthetic.vocabulary("tiny")
    assert len(small) == 120 and set(tiny) <= set(small) <= set(paper)
    assert synthetic.concept_group("eyeshadow") == "Makeup"
    assert synthetic.concept_group("sky") == synthetic.GENERIC_GROUP
    lex = synthetic.concept_lexicon(["ready_to_eat"])["ready_to_eat"]
    assert lex[:4] == ["ready", "to", "eat", "#readytoeat"] and len(lex) == 6


def test_glyphs_are_distinct():
    names = synthetic.vocabulary("paper")
    tiles = np.stack([synthetic.concept_glyph(n, 8) for n in names]).reshape(len(names), -1)
    d = np.abs(tiles[:, None, :] - tiles[None, :, :]).mean(-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 10.0  # mean absolute RGB difference between any two concepts' tiles
    img = synthetic.render_image(["car", "road"], "Auto", image_size=64, seed=0)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
