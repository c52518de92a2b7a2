"""Tests for camera_jax.data.format (dataset format v1) and the validator CLI."""

from __future__ import annotations

import collections
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from camera_jax.data import format as fmt
from camera_jax.data import validate as validate_cli
from conftest import REPO, repo_on_pythonpath

CONCEPTS = ["car", "road", "food", "snack", "beauty", "ready_to_eat"]
# (id, kind, category, followers)
ACCOUNTS = [
    ("b_auto1", "brand", "Auto", 1000),
    ("b_auto2", "brand", "Auto", 2000),
    ("b_food1", "brand", "Food", 1500),
    ("b_food2", "brand", "Food", 800),
    ("m1", "influencer", "Auto", 300),
    ("m2", "influencer", "Auto", 400),
    ("m3", "influencer", "Food", 500),
    ("m4", "influencer", "Food", 600),
]
POSTS_PER_ACCOUNT = 2
COOPERATIONS = [
    ("b_auto1", "m1", "p_m1_0"),
    ("b_auto1", "m2", "p_m2_0"),
    ("b_auto2", "m2", "p_m2_1"),
    ("b_food1", "m3", "p_m3_0"),
    ("b_food2", "m4", "p_m4_0"),
    ("b_food2", "m3", "p_m3_1"),
]


def account_line(aid: str) -> int:
    """1-based line of an account in accounts.jsonl."""
    return [a[0] for a in ACCOUNTS].index(aid) + 1


def post_line(aid: str, k: int) -> int:
    """1-based line of the k-th post of an account in posts.jsonl."""
    return (account_line(aid) - 1) * POSTS_PER_ACCOUNT + k + 1


def base_records() -> dict[str, Any]:
    """The records of a small valid dataset, as plain JSON-able dicts (one list per file)."""
    accounts = [
        {"id": i, "kind": k, "category": c, "followers": f, "bio": f"bio of {i}"} for i, k, c, f in ACCOUNTS
    ]
    del accounts[-1]["bio"]  # bio is optional.
    posts = []
    for n, (aid, *_) in enumerate(ACCOUNTS):
        for k in range(POSTS_PER_ACCOUNT):
            ext = "png" if (n + k) % 2 == 0 else "jpg"
            post = {
                "id": f"p_{aid}_{k}",
                "account": aid,
                "image": f"images/p_{aid}_{k}.{ext}",
                "caption": f"caption {k} of {aid} #food" if k else "",
                "likes": 10 * n + k,
                "comments": n,
            }
            if n % 3 == 0:
                post["concepts"] = ["car", "road"] if k == 0 else []
            posts.append(post)
    cooperations = [{"brand": b, "influencer": m, "post": p} for b, m, p in COOPERATIONS]
    labeled = [
        {"id": "l1", "image": "labeled/l1.png", "caption": "a car on the road", "concepts": ["car", "road"]},
        {"id": "l2", "image": "labeled/l2.jpg", "caption": "", "concepts": ["food"]},
        {"id": "l3", "image": "labeled/l3.png", "caption": "snack time", "concepts": ["snack", "ready_to_eat"]},
    ]
    return {
        "concepts": list(CONCEPTS),
        "accounts": accounts,
        "posts": posts,
        "cooperations": cooperations,
        "labeled_posts": labeled,
        "split": None,
        "skip_images": set(),  # image paths that write_dataset must not create
    }


def _write_image(path: pathlib.Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if seed % 3 == 0 else "RGB"  # grayscale and colour images are both fine
    im = Image.new("RGB", (12 + seed % 5, 9 + seed % 3), (seed * 40 % 256, 80, 160)).convert(mode)
    im.save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def write_dataset(root: pathlib.Path, records: dict[str, Any] | None = None) -> pathlib.Path:
    """Writes a dataset directory (images made with PIL) from ``records`` (default: base_records())."""
    records = base_records() if records is None else records
    root.mkdir(parents=True, exist_ok=True)
    (root / "concepts.txt").write_text("".join(c + "\n" for c in records["concepts"]))
    for name in ("accounts", "posts", "cooperations", "labeled_posts"):
        if records[name] is not None:
            with open(root / f"{name}.jsonl", "w") as f:
                for obj in records[name]:
                    f.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    if records["split"] is not None:
        (root / "split.json").write_text(json.dumps(records["split"], indent=2))
    images = []
    for obj in (records["posts"] or []) + (records["labeled_posts"] or []):
        if isinstance(obj, str):  # a raw line: create its image too when it parses
            try:
                obj = json.loads(obj)
            except ValueError:
                continue
        if isinstance(obj, dict) and "image" in obj:
            images.append(obj["image"])
    for n, rel in enumerate(images):
        if rel in records.get("skip_images", ()):
            continue
        if isinstance(rel, str) and not rel.startswith(("/", "..")) and not (root / rel).exists():
            _write_image(root / rel, n)
    return root


@pytest.fixture
def dataset_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------
# Valid datasets.


def test_valid_dataset_has_no_errors(dataset_dir):
    assert fmt.validate(dataset_dir) == []


def test_load_round_trips_every_record(dataset_dir):
    rec = base_records()
    ds = fmt.load(dataset_dir)
    assert ds.root == dataset_dir
    assert ds.concepts == tuple(CONCEPTS)
    assert ds.accounts == tuple(
        fmt.Account(a["id"], a["kind"], a["category"], a["followers"], a.get("bio", "")) for a in rec["accounts"]
    )
    assert ds.accounts[-1].bio == "" and ds.accounts[0].bio == "bio of b_auto1"
    expected_posts = tuple(
        fmt.Post(
            p["id"], p["account"], p["image"], p["caption"], p["likes"], p["comments"],
            tuple(p["concepts"]) if "concepts" in p else None,
        )
        for p in rec["posts"]
    )
    assert ds.posts == expected_posts
    assert ds.posts[0].concepts == ("car", "road") and ds.posts[1].concepts == ()
    assert ds.posts[2].concepts is None
    assert ds.cooperations == tuple(fmt.Cooperation(*c) for c in COOPERATIONS)
    assert ds.labeled_posts == tuple(
        fmt.LabeledPost(p["id"], p["image"], p["caption"], tuple(p["concepts"])) for p in rec["labeled_posts"]
    )
    assert isinstance(ds.labeled_posts[0].concepts, tuple)
    with pytest.raises(Exception):
        ds.posts[0].likes = 3  # frozen


def test_dataset_helpers(dataset_dir):
    ds = fmt.load(dataset_dir)
    assert ds.account_index() == {a[0]: i for i, a in enumerate(ACCOUNTS)}
    assert ds.post_index()["p_m1_1"] == post_line("m1", 1) - 1
    assert ds.concept_index() == {c: i for i, c in enumerate(CONCEPTS)}
    assert [a.id for a in ds.brands()] == ["b_auto1", "b_auto2", "b_food1", "b_food2"]
    assert [a.id for a in ds.influencers()] == ["m1", "m2", "m3", "m4"]
    posts_of = ds.posts_of()
    assert set(posts_of) == {a[0] for a in ACCOUNTS}
    assert posts_of["m3"] == [post_line("m3", 0) - 1, post_line("m3", 1) - 1]
    assert all(ds.posts[r].account == "m3" for r in posts_of["m3"])
    assert ds.positives() == {
        "b_auto1": {"m1", "m2"}, "b_auto2": {"m2"}, "b_food1": {"m3"}, "b_food2": {"m3", "m4"},
    }
    assert ds.posts_of() is posts_of  # cached


def test_default_split_used_without_split_file(dataset_dir):
    ds = fmt.load(dataset_dir, seed=3)
    assert ds.split == fmt.default_split(ds.accounts, 3)
    assert ds.split.candidates == ("m1", "m2", "m3", "m4")
    # Each category has 2 brands: one test and one train brand each.
    for cat in ("Auto", "Food"):
        ids = {a.id for a in ds.brands() if a.category == cat}
        assert len(ids & set(ds.split.test)) == 1 and len(ids & set(ds.split.train)) == 1


def test_split_file_is_used(tmp_path):
    rec = base_records()
    rec["split"] = {"train": ["b_auto1", "b_food1"], "test": ["b_auto2", "b_food2"]}
    ds = fmt.load(write_dataset(tmp_path / "ds", rec))
    assert ds.split == fmt.Split(("b_auto1", "b_food1"), ("b_auto2", "b_food2"), ("m1", "m2", "m3", "m4"))
    rec["split"]["candidates"] = ["m4", "m1"]
    ds = fmt.load(write_dataset(tmp_path / "ds2", rec))
    assert ds.split.candidates == ("m4", "m1")


def test_extra_fields_and_blank_lines_are_accepted(tmp_path):
    rec = base_records()
    rec["accounts"][0]["verified"] = True
    rec["posts"][0]["location"] = {"city": "Paris"}
    root = write_dataset(tmp_path / "ds", rec)
    text = (root / "posts.jsonl").read_text().splitlines()
    (root / "posts.jsonl").write_text("\n".join(text[:3] + ["", "   "] + text[3:]) + "\n\n")
    assert fmt.validate(root) == []
    assert len(fmt.load(root).posts) == len(text)
    # Line numbers stay physical: a problem after the blank lines names its real line.
    text[4] = text[4].replace('"likes": ', '"likes": -1, "x": ')
    (root / "posts.jsonl").write_text("\n".join(text[:3] + ["", "   "] + text[3:]) + "\n")
    errors = fmt.validate(root)
    assert len(errors) == 1 and errors[0].startswith('posts.jsonl:7: field "likes"')


def test_check_images_false_skips_decoding(tmp_path):
    root = write_dataset(tmp_path / "ds")
    (root / "images" / "p_m1_0.png").write_bytes(b"not an image")
    assert fmt.validate(root, check_images=False) == []
    assert fmt.load(root, check_images=False).posts[post_line("m1", 0) - 1].id == "p_m1_0"
    assert len(fmt.validate(root)) == 1


def test_summary_mentions_the_counts(dataset_dir):
    text = fmt.summary(fmt.load(dataset_dir))
    assert "\n" not in text
    for part in ("8 accounts", "4 brands", "4 influencers", "Auto 4 (2 brands, 2 influencers)",
                 "16 posts", "6 cooperations", "mean 1.50, min 1, max 2", "6 concepts",
                 "3 labeled posts", "2 train brands", "2 test brands", "4 candidates"):
        assert part in text, part


# ---------------------------------------------------------------------------------------------
# default_split.


def _accounts(sizes: dict[str, int], influencers: int = 3) -> list[fmt.Account]:
    out = [fmt.Account(f"{c}_{i}", "brand", c, 10) for c, n in sizes.items() for i in range(n)]
    out += [fmt.Account(f"m{i}", "influencer", "X", 10) for i in range(influencers)]
    return out


def test_default_split_paper_proportion():
    cats = ["Airline", "Auto", "Clothes", "Drink", "Electronics", "Entertainment", "Food", "Jewelry",
            "Makeup", "Nonprofit", "Shoes", "Services"]
    accounts = _accounts({c: 30 for c in cats})
    split = fmt.default_split(accounts, seed=0)
    assert (len(split.train), len(split.test)) == (286, 74)
    per_cat = collections.Counter(b.split("_")[0] for b in split.test)
    assert set(per_cat) == set(cats) and set(per_cat.values()) <= {6, 7}
    assert set(split.train).isdisjoint(split.test)
    assert set(split.train) | set(split.test) == {a.id for a in accounts if a.kind == "brand"}
    assert split.candidates == ("m0", "m1", "m2")
    # File order is kept inside train and test.
    order = {a.id: i for i, a in enumerate(accounts)}
    assert list(split.test) == sorted(split.test, key=order.get)


def test_default_split_deterministic_and_seeded():
    accounts = _accounts({"A": 10, "B": 7, "C": 2, "D": 1})
    assert fmt.default_split(accounts, 5) == fmt.default_split(accounts, 5)
    assert len({fmt.default_split(accounts, s).test for s in range(8)}) > 1
    for s in range(8):
        split = fmt.default_split(accounts, s)
        test = collections.Counter(b.split("_")[0] for b in split.test)
        train = collections.Counter(b.split("_")[0] for b in split.train)
        for c in "ABC":
            assert test[c] >= 1 and train[c] >= 1
        assert test["D"] == 0 and train["D"] == 1  # a single-brand category stays in train
        assert test["A"] == 2  # 10 * 74 / 360 = 2.06


# ---------------------------------------------------------------------------------------------
# Broken datasets: each variant names (file, line) and text that must appear in that error.

Mutator = Callable[[dict[str, Any], pathlib.Path], None]


def _set(file: str, index: int, **fields: Any) -> Mutator:
    def mutate(rec, root):
        rec[file][index].update(fields)
    return mutate


def _drop(file: str, index: int, field: str) -> Mutator:
    def mutate(rec, root):
        del rec[file][index][field]
    return mutate


def _missing_image(file: str, index: int, rel: str) -> Mutator:
    def mutate(rec, root):
        rec[file][index]["image"] = rel
        rec["skip_images"].add(rel)
    return mutate


def _raw(file: str, index: int, text: str) -> Mutator:
    def mutate(rec, root):
        rec[file][index] = text
    return mutate


def _bytes_image(rel: str, data: bytes) -> Mutator:
    def mutate(rec, root):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return mutate


def _truncated(rel: str, image_format: str) -> Mutator:
    def mutate(rec, root):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.effect_noise((64, 64), 80).convert("RGB").save(path, format=image_format)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return mutate


def _gif(rel: str) -> Mutator:
    def mutate(rec, root):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("P", (8, 8)).save(path, format="GIF")
    return mutate


def _concepts(names: list[str]) -> Mutator:
    def mutate(rec, root):
        rec["concepts"] = names
    return mutate


def _missing(file: str) -> Mutator:
    def mutate(rec, root):
        rec[file] = None
    return mutate


def _split(obj: Any) -> Mutator:
    def mutate(rec, root):
        rec["split"] = obj
    return mutate


def _split_text(text: str) -> Mutator:
    def mutate(rec, root):
        (root / "split.json").write_text(text)
    return mutate


def _remove_posts_of(aid: str) -> Mutator:
    def mutate(rec, root):
        rec["posts"] = [p for p in rec["posts"] if p["account"] != aid]
        rec["cooperations"] = [c for c in rec["cooperations"] if c["influencer"] != aid]
    return mutate


def _not_utf8(rec, root):
    """Placeholder: test_broken_variant_is_reported puts invalid UTF-8 into posts.jsonl line 1."""


A = "accounts.jsonl"
P = "posts.jsonl"
C = "cooperations.jsonl"
L = "labeled_posts.jsonl"
S = "split.json"
V = "concepts.txt"
pm1 = post_line("m1", 0) - 1  # index of the first post of m1
IMG_M1 = "images/p_m1_0.png"  # (n + k) % 2 == 0 for m1 (n=4), k=0

BROKEN: dict[str, tuple[Mutator, str, int, list[str]]] = {
    # JSON lines.
    "malformed_json": (_raw("accounts", 1, '{"id": "b_auto2", '), A, 2, ["malformed JSON"]),
    "not_an_object": (_raw("accounts", 1, "[1, 2]"), A, 2, ["expected a JSON object", "array"]),
    "duplicate_key": (_raw("accounts", 1, '{"id": "b_auto2", "id": "x", "kind": "brand"}'), A, 2, ['"id"', "more than once"]),
    "not_utf8": (_not_utf8, P, 1, ['field "caption": not valid UTF-8']),  # bytes written in the test
    # Accounts.
    "missing_followers": (_drop("accounts", 4, "followers"), A, 5, ['missing required field "followers"']),
    "followers_bool": (_set("accounts", 4, followers=True), A, 5, ['"followers"', "got true", "boolean"]),
    "followers_zero": (_set("accounts", 4, followers=0), A, 5, ['"followers"', "engagement rate is undefined"]),
    "followers_float": (_set("accounts", 4, followers=3.0), A, 5, ['field "followers" must be an int > 0, got 3.0']),
    "followers_string": (_set("accounts", 4, followers="300"), A, 5, ['"followers"', '"300"']),
    "unknown_kind": (_set("accounts", 2, kind="celebrity"), A, 3, ['field "kind"', "celebrity"]),
    "empty_id": (_set("accounts", 2, id=""), A, 3, ['field "id" must be a non-empty string']),
    "id_line_break": (_set("accounts", 2, id="b_x\u2028y"), A, 3, ['field "id": \'b_x\\u2028y\' holds a line break']),
    "bio_not_string": (_set("accounts", 2, bio=7), A, 3, ['field "bio" must be a string, got 7']),
    "category_missing": (_drop("accounts", 0, "category"), A, 1, ['"category"']),
    "duplicate_account": (_set("accounts", 3, id="b_auto1"), A, 4, ['field "id"', "duplicate id 'b_auto1' (first on line 1)"]),
    "account_without_posts": (_remove_posts_of("m4"), A, 8, ['field "id"', "'m4' has no posts"]),
    # Posts.
    "negative_likes": (_set("posts", 2, likes=-3), P, 3, ['field "likes" must be an int >= 0, got -3']),
    "nan_likes": (_raw("posts", 2, '{"id": "p_b_auto2_0", "account": "b_auto2", "image": "images/p_b_auto2_0.jpg", "caption": "", "likes": NaN, "comments": 1}'), P, 3, ['field "likes"', "NaN", "not a finite number"]),
    "infinite_comments": (_raw("posts", 2, '{"id": "p_b_auto2_0", "account": "b_auto2", "image": "images/p_b_auto2_0.jpg", "caption": "", "likes": 1, "comments": -Infinity}'), P, 3, ['field "comments"', "-Infinity"]),
    "float_comments": (_set("posts", 2, comments=2.5), P, 3, ['field "comments"', "2.5"]),
    "likes_above_2_53": (_set("posts", 2, likes=2**53 + 1), P, 3, ['field "likes" must be an int <= 2^53 = 9007199254740992']),
    "followers_huge": (_set("accounts", 4, followers=10**400), A, 5, ['field "followers" must be an int <= 2^53', "..."]),
    "caption_lone_surrogate": (_raw("posts", 2, '{"id": "p_b_auto2_0", "account": "b_auto2", "image": "images/p_b_auto2_0.jpg", "caption": "cut \\ud83d", "likes": 1, "comments": 1}'), P, 3, ['field "caption" holds an unpaired UTF-16 surrogate \\ud83d']),
    "concept_lone_surrogate": (_set("posts", 0, concepts=["car", "x\udc00"]), P, 1, ['field "concepts" holds an unpaired UTF-16 surrogate \\udc00']),
    "likes_bool": (_set("posts", 2, likes=False), P, 3, ['field "likes"', "false"]),
    "caption_missing": (_drop("posts", 5, "caption"), P, 6, ['missing required field "caption"']),
    "caption_null": (_set("posts", 5, caption=None), P, 6, ['field "caption" must be a string, got null']),
    "duplicate_post": (_set("posts", 3, id="p_b_auto1_0"), P, 4, ['field "id"', "duplicate id 'p_b_auto1_0' (first on line 1)"]),
    "unknown_account": (_set("posts", 1, account="nobody"), P, 2, ['field "account"', "unknown account 'nobody'"]),
    "post_concept_unknown": (_set("posts", 0, concepts=["car", "spaceship"]), P, 1, ['field "concepts"', "'spaceship' is not in concepts.txt"]),
    "post_concepts_not_list": (_set("posts", 0, concepts="car"), P, 1, ['field "concepts"']),
    "post_concept_twice": (_set("posts", 0, concepts=["car", "car"]), P, 1, ['field "concepts"', "twice"]),
    # Images.
    "image_missing": (_missing_image("posts", pm1, "images/nope.png"), P, pm1 + 1, ["field \"image\": file 'images/nope.png' does not exist"]),
    "image_escapes": (_set("posts", pm1, image="../outside.png"), P, pm1 + 1, ['field "image"', "escapes the dataset directory"]),
    "image_escapes_inner": (_missing_image("posts", pm1, "images/../../x.png"), P, pm1 + 1, ['field "image"', "escapes"]),
    "image_absolute": (_set("posts", pm1, image="/etc/hostname"), P, pm1 + 1, ['field "image"', "must be relative"]),
    "image_garbage": (_bytes_image(IMG_M1, b"\x89PNG garbage"), P, pm1 + 1, [f"field \"image\": cannot decode '{IMG_M1}' ("]),
    "image_empty_file": (_bytes_image(IMG_M1, b""), P, pm1 + 1, [f"field \"image\": cannot decode '{IMG_M1}' ("]),
    "image_truncated_jpeg": (_truncated("images/p_m1_1.jpg", "JPEG"), P, pm1 + 2, ["field \"image\": cannot decode 'images/p_m1_1.jpg' ("]),
    "image_truncated_png": (_truncated(IMG_M1, "PNG"), P, pm1 + 1, [f"field \"image\": cannot decode '{IMG_M1}' ("]),
    "image_gif": (_gif(IMG_M1), P, pm1 + 1, ['field "image"', "GIF image, expected PNG or JPEG"]),
    "image_not_string": (_set("posts", pm1, image=3), P, pm1 + 1, ['field "image" must be a non-empty string']),
    "labeled_image_missing": (_missing_image("labeled_posts", 1, "labeled/none.jpg"), L, 2, ['field "image"', "does not exist"]),
    # Cooperations.
    "coop_unknown_brand": (_set("cooperations", 0, brand="b_zzz"), C, 1, ['field "brand"', "unknown brand 'b_zzz'"]),
    "coop_unknown_influencer": (_set("cooperations", 0, influencer="m_zzz"), C, 1, ['field "influencer"', "unknown influencer"]),
    "coop_brand_is_influencer": (_set("cooperations", 1, brand="m1"), C, 2, ['field "brand"', "'m1' is an influencer, not a brand"]),
    "coop_influencer_is_brand": (_set("cooperations", 1, influencer="b_food1"), C, 2, ['field "influencer"', "is a brand, not an influencer"]),
    "coop_post_of_other_account": (_set("cooperations", 2, post="p_m1_0"), C, 3, ['field "post"', "belongs to account 'm1', not to influencer 'm2'"]),
    "coop_unknown_post": (_set("cooperations", 2, post="p_zzz"), C, 3, ['field "post"', "unknown post"]),
    "coop_missing_post": (_drop("cooperations", 2, "post"), C, 3, ['missing required field "post"']),
    "coop_duplicate": (_set("cooperations", 1, brand="b_auto1", influencer="m1", post="p_m1_0"), C, 2, ["duplicate cooperation (first on line 1)"]),
    # Vocabulary and labeled posts.
    "vocab_empty": (_concepts([]), V, 0, ["vocabulary is empty"]),
    "vocab_duplicate": (_concepts(["car", "road", "food", "car", "snack", "beauty", "ready_to_eat"]), V, 4, ["duplicate concept 'car' (first on line 1)"]),
    "vocab_blank_line": (_concepts(["car", "road", "", "food", "snack", "beauty", "ready_to_eat"]), V, 3, ["blank line"]),
    "vocab_whitespace": (_concepts(["car", "road ", "food", "snack", "beauty", "ready_to_eat"]), V, 2, ["whitespace"]),
    "vocab_line_break": (_concepts(["car", "ro\x85ad", "food", "snack", "beauty", "ready_to_eat"]), V, 2, ["concept name 'ro\\x85ad' holds a line break"]),
    "labeled_concept_unknown": (_set("labeled_posts", 2, concepts=["snack", "unicorn"]), L, 3, ['field "concepts"', "'unicorn' is not in concepts.txt"]),
    "labeled_concepts_empty": (_set("labeled_posts", 2, concepts=[]), L, 3, ['field "concepts" must be a non-empty list']),
    "labeled_concepts_missing": (_drop("labeled_posts", 0, "concepts"), L, 1, ['missing required field "concepts"']),
    "labeled_duplicate_id": (_set("labeled_posts", 2, id="l1"), L, 3, ['field "id"', "first on line 1"]),
    # Missing files.
    "missing_accounts": (_missing("accounts"), A, 0, ["file is missing"]),
    "missing_posts": (_missing("posts"), P, 0, ["file is missing"]),
    "missing_cooperations": (_missing("cooperations"), C, 0, ["file is missing"]),
    "missing_concepts": (_concepts(None), V, 0, ["file is missing"]),
    # Split.
    "split_unknown_brand": (_split({"train": ["b_auto1", "b_nope"], "test": ["b_food1"]}), S, 4, ['field "train"', "unknown brand 'b_nope'"]),
    "split_non_brand": (_split({"train": ["b_auto1"], "test": ["m2"]}), S, 6, ['field "test"', "'m2' is an influencer, not a brand"]),
    "split_unknown_candidate": (_split({"train": ["b_auto1"], "test": ["b_food1"], "candidates": ["m1", "m9"]}), S, 10, ['field "candidates"', "unknown influencer 'm9'"]),
    "split_brand_candidate": (_split({"train": ["b_auto1"], "test": ["b_food1"], "candidates": ["b_auto2"]}), S, 9, ['field "candidates"', "is a brand, not an influencer"]),
    "split_both": (_split({"train": ["b_auto1", "b_food1"], "test": ["b_food1"]}), S, 7, ['field "test"', "'b_food1' is in both train and test"]),
    "split_malformed": (_split_text('{"train": ["b_auto1"],\n "test": [}\n'), S, 2, ["malformed JSON"]),
    "split_not_object": (_split(["b_auto1"]), S, 1, ["expected a JSON object"]),
    "split_missing_test": (_split({"train": ["b_auto1"]}), S, 0, ['missing required field "test"']),
    "split_train_not_list": (_split({"train": "b_auto1", "test": []}), S, 2, ['field "train" must be a list']),
}


# Variants whose one problem also (rightly) makes other lines wrong: e.g. an account line that is
# unusable leaves that account's posts with an unknown account. All others give exactly one error.
CASCADING = {"duplicate_account", "duplicate_key", "empty_id", "id_line_break", "malformed_json",
             "not_an_object", "vocab_empty", "vocab_line_break", "vocab_whitespace"}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_variant_is_reported(tmp_path, name):
    mutate, file, line, parts = BROKEN[name]
    rec = base_records()
    root = tmp_path / "ds"
    root.mkdir()
    mutate(rec, root)
    if rec["concepts"] is None:
        rec["concepts"] = []
        write_dataset(root, rec)
        (root / "concepts.txt").unlink()
    else:
        write_dataset(root, rec)
    if name == "not_utf8":
        lines = (root / "posts.jsonl").read_bytes().split(b"\n")
        lines[0] = lines[0].replace(b'"caption": ""', b'"caption": "\xff\xfe"')
        (root / "posts.jsonl").write_bytes(b"\n".join(lines))
    errors = fmt.validate(root)
    prefix = f"{file}:{line}: "
    matching = [e for e in errors if e.startswith(prefix)]
    assert matching, f"no error starting with {prefix!r} in {errors}"
    assert any(all(p in e for p in parts) for e in matching), (parts, errors)
    if name not in CASCADING:
        assert len(errors) == 1, errors
    # Every error has the FILE:LINE: form.
    for e in errors:
        head, _, rest = e.partition(": ")
        fname, _, lno = head.rpartition(":")
        assert fname and lno.isdigit() and rest, e
    # load() raises with the same errors.
    with pytest.raises(fmt.DatasetError) as info:
        fmt.load(root)
    assert info.value.errors == errors
    assert str(info.value) == "\n".join(errors)


def test_single_problem_gives_single_error(tmp_path):
    """A broken field produces exactly one error line, without cascades into other files."""
    rec = base_records()
    rec["accounts"][4]["followers"] = -1  # m1: still a known influencer for posts and cooperations.
    errors = fmt.validate(write_dataset(tmp_path / "ds", rec))
    assert errors == ['accounts.jsonl:5: field "followers" must be an int > 0, got -1']


@pytest.mark.parametrize("damage", ["no kind", "unknown kind"])
def test_an_account_with_a_bad_kind_is_not_unknown_to_the_split(tmp_path, damage):
    """Its id still registers: split.json, which names it, adds no "unknown brand" line."""
    rec = base_records()
    row = next(i for i, a in enumerate(rec["accounts"]) if a["id"] == "b_auto1")
    if damage == "no kind":
        del rec["accounts"][row]["kind"]
    else:
        rec["accounts"][row]["kind"] = "celebrity"
    rec["split"] = {"train": ["b_auto1", "b_food1"], "test": ["b_auto2", "b_food2"]}
    errors = fmt.validate(write_dataset(tmp_path / "ds", rec))
    assert len(errors) == 1 and errors[0].startswith(f'accounts.jsonl:{row + 1}: '), errors
    assert '"kind"' in errors[0]


def test_all_problems_are_reported(tmp_path):
    rec = base_records()
    rec["accounts"][0]["followers"] = 0
    rec["posts"][3]["likes"] = -1
    rec["posts"][3]["comments"] = "many"
    rec["cooperations"][5]["brand"] = "m1"
    errors = fmt.validate(write_dataset(tmp_path / "ds", rec))
    assert [e.split(": ")[0] + ": " + e.split('"')[1] for e in errors] == [
        "accounts.jsonl:1: followers", "posts.jsonl:4: likes", "posts.jsonl:4: comments",
        "cooperations.jsonl:6: brand",
    ]


def test_errors_are_capped_per_file(tmp_path):
    rec = base_records()
    for p in rec["posts"]:
        p["likes"] = -1
    extra = [dict(rec["posts"][0], id=f"x{i}", likes=-1) for i in range(60)]
    rec["posts"] += extra
    errors = fmt.validate(write_dataset(tmp_path / "ds", rec))
    assert len(errors) == fmt.MAX_ERRORS_PER_FILE + 1
    assert [e.split(":")[1] for e in errors[:-1]] == [str(i) for i in range(1, 51)]
    assert errors[-1] == f"posts.jsonl:0: ... 26 more problems (only the first 50 are shown)"


def _utf16(path: pathlib.Path) -> None:
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))


def _empty(path: pathlib.Path) -> None:
    path.write_bytes(b"")


def _directory(path: pathlib.Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("file, damage, first", [
    (P, _empty, ["posts.jsonl:0: no post could be read (the file is empty)"]),
    (P, _directory, ["posts.jsonl:0: cannot read file (Is a directory)"]),
    (P, _utf16, ["posts.jsonl:0: no post could be read (line 1: not valid UTF-8 (invalid start "
                 "byte at byte 0))", "posts.jsonl:1: not valid UTF-8 (invalid start byte at byte 0)"]),
    (A, _empty, ["accounts.jsonl:0: no account could be read (the file is empty)"]),
    (A, _utf16, ["accounts.jsonl:0: no account could be read (line 1: not valid UTF-8 (invalid "
                 "start byte at byte 0))"]),
])
def test_an_unreadable_records_file_is_reported_first_without_a_cascade(tmp_path, file, damage, first):
    """A posts or accounts file none of whose lines can be read (empty, a directory, another
    encoding) is one problem of that file: the checks of the other files against it are skipped,
    so that no "has no posts" or "unknown account" line per record comes before it (the
    entry points that print only the first problem would name the wrong file)."""
    root = write_dataset(tmp_path / "ds")
    damage(root / file)
    errors = fmt.validate(root)
    assert errors[:len(first)] == first
    assert all(e.startswith(file + ":") for e in errors), errors


def test_posts_that_name_no_account_do_not_blame_the_accounts(tmp_path):
    rec = base_records()
    for p in rec["posts"]:
        p["acct"] = p.pop("account")
    errors = fmt.validate(write_dataset(tmp_path / "ds", rec))
    assert errors[0] == 'posts.jsonl:1: missing required field "account"', errors
    assert not [e for e in errors if e.startswith("accounts.jsonl")], errors


def test_an_image_path_that_is_a_directory_is_not_a_file(tmp_path):
    rec = base_records()
    rel = rec["posts"][0]["image"]
    rec["skip_images"].add(rel)
    root = write_dataset(tmp_path / "ds", rec)
    (root / rel).mkdir(parents=True)
    assert fmt.validate(root) == [f'posts.jsonl:1: field "image": file {rel!r} is not a file']


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    assert fmt.validate(missing) == [f"{missing}: dataset directory does not exist"]
    with pytest.raises(fmt.DatasetError):
        fmt.load(missing)


# ---------------------------------------------------------------------------------------------
# The validator CLI.


def test_main_lines(dataset_dir, tmp_path):
    status, lines = validate_cli.main_lines(dataset_dir)
    assert status == 0 and len(lines) == 1 and "8 accounts" in lines[0]
    status, lines = validate_cli.main_lines(tmp_path / "nope")
    assert status == 1 and lines == [f"{tmp_path / 'nope'}: dataset directory does not exist"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "experiments/validate.py", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=repo_on_pythonpath(),
    )


def test_the_old_module_commands_say_where_they_moved():
    for module, new in (("camera_jax.data.validate", "experiments/validate.py"),
                        ("camera_jax.data.synthetic", "experiments/synthetic.py")):
        proc = subprocess.run([sys.executable, "-m", module, "--data_dir=/nonexistent"],
                              capture_output=True, text=True, timeout=120, cwd=REPO,
                              env=repo_on_pythonpath())
        assert proc.returncode == 2 and new in proc.stderr and not proc.stdout, module


def test_cli_valid_and_broken(tmp_path):
    good = write_dataset(tmp_path / "good")
    result = _run_cli(f"--data_dir={good}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 accounts" in result.stdout and "Traceback" not in result.stderr

    rec = base_records()
    rec["posts"][16 - 1]["likes"] = -3
    bad = write_dataset(tmp_path / "bad", rec)
    (bad / "split.json").write_text("{not json")
    result = _run_cli(f"--data_dir={bad}", "--check_images=false")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()
    assert out[0] == 'posts.jsonl:16: field "likes" must be an int >= 0, got -3'
    assert out[1].startswith("split.json:1: malformed JSON")

    rec = base_records()  # a lone surrogate (an emoji cut in half) in a quoted field
    rec["accounts"][4]["followers"] = "12k \ud83d"
    bad = write_dataset(tmp_path / "surrogate", rec)
    result = _run_cli(f"--data_dir={bad}", "--check_images=false")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[0] == (  # then the account's posts, which name it
        'accounts.jsonl:5: field "followers" holds an unpaired UTF-16 surrogate \\ud83d '
        '(text cut inside a character?): not valid Unicode')

    result = _run_cli(f"--data_dir={tmp_path / 'missing'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.strip() == f"{tmp_path / 'missing'}: dataset directory does not exist"


def test_a_large_valid_image_decodes_without_pillow_warning(tmp_path, monkeypatch):
    # Images between Pillow's MAX_IMAGE_PIXELS and twice that are valid input; Pillow's
    # DecompressionBombWarning named neither the post nor the file (two anonymous lines).
    # input_pipeline silences it when imported, for every thread that decodes.
    import warnings

    from camera_jax.data import input_pipeline

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), (9, 8, 7)).save(path)   # 1,600 pixels: over 1,000, under 2,000
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")   # Pillow alone warns
        with Image.open(path) as im:
            im.load()
    assert [w.category for w in seen] == [Image.DecompressionBombWarning]
    with warnings.catch_warnings(record=True) as seen:   # the filters as the library left them
        pixels = input_pipeline.decode_uint8(path.read_bytes(), 8)
        assert fmt.decode_problem(path) is None
    assert not seen, [str(w.message) for w in seen]
    assert pixels.shape == (8, 8, 3) and pixels[0, 0].tolist() == [9, 8, 7]
    Image.new("RGB", (50, 50)).save(path)   # 2,500 pixels: over twice the limit, an error
    assert fmt.decode_problem(path).startswith("DecompressionBombError")


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value


def test_an_id_that_differs_only_in_unicode_normalization_is_explained(tmp_path):
    # 'café' composed (U+00E9) and decomposed (e + U+0301) print alike; ids are compared exactly,
    # so the error says why the id is unknown.
    old, new = ACCOUNTS[0][0], "caf\u00e9_brand"
    rec = _renamed(base_records(), old, new)
    rec["skip_images"] = set()
    rec["posts"][1]["account"] = "cafe\u0301_brand"
    rec["split"] = {"train": ["cafe\u0301_brand"], "test": [], "candidates": []}
    root = write_dataset(tmp_path / "ds", rec)
    errors = fmt.validate(root, check_images=False)
    hint = ("(the same text as the account id 'caf\\xe9_brand' in accounts.jsonl, in another Unicode "
            "normalization: 'cafe\\u0301_brand'; ids must match exactly)")
    assert f"posts.jsonl:2: field \"account\": unknown account 'cafe\u0301_brand' {hint}" in errors
    assert any(e.startswith("split.json:") and e.endswith(hint) for e in errors), errors
    assert not [e for e in errors if "unknown" in e and "normalization" not in e], errors
