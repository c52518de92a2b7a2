"""Tests of camera_jax.explain.recommend and experiments/recommend.py on a small fake run."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from camera_jax.data import format as fmt
from camera_jax.explain import recommend as rec
from conftest import REPO, repo_on_pythonpath

CONCEPTS = ("food", "ready_to_eat", "watch", "beauty", "hairstyle", "sunlight", "wood", "car", "eye_shadow", "travel", "snack", "portrait")
K = 4


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class FakeRun:
    """Duck-typed camera_jax.run.Run: w_a from the concepts named in captions, a transparent scorer."""

    def __init__(self, workdir: pathlib.Path, dataset: fmt.Dataset):
        self.workdir = workdir
        self.dataset = dataset
        self.concepts = dataset.concepts
        self.account_index = {a.id: i for i, a in enumerate(dataset.accounts)}
        posts_of: dict[str, list[fmt.Post]] = {}
        for p in dataset.posts:
            posts_of.setdefault(p.account, []).append(p)
        reps = [self.represent_posts(posts_of.get(a.id, []), dataset.root) for a in dataset.accounts]
        self.followers = [float(a.followers) for a in dataset.accounts]
        self.w_a = np.stack([r["w_a"] for r in reps])
        self.top_idx = np.stack([r["top_idx"] for r in reps])
        self.top_w = np.stack([r["top_w"] for r in reps])
        self.score_calls = 0

    def represent_posts(self, posts, root, followers=None):
        counts = np.zeros(len(self.concepts))
        for p in posts:
            for i, c in enumerate(self.concepts):
                counts[i] += c.replace("_", " ") in p.caption.lower()
        w_a = _softmax(counts)
        top_idx = np.argsort(-w_a, kind="stable")[:K]
        return {"w_a": w_a, "top_idx": top_idx, "top_w": w_a[top_idx], "mean_engagement": 0.1, "followers": followers or 1000}

    def add_account(self, account_id, repr, category=""):
        self.added_categories = getattr(self, "added_categories", []) + [category]
        self.account_index[account_id] = len(self.w_a)
        self.w_a = np.concatenate([self.w_a, repr["w_a"][None]])
        self.top_idx = np.concatenate([self.top_idx, repr["top_idx"][None]])
        self.top_w = np.concatenate([self.top_w, repr["top_w"][None]])
        self.followers.append(float(repr["followers"]))
        return len(self.w_a) - 1

    def score(self, brand_rows, influencer_rows):
        self.score_calls += 1
        b = np.asarray(brand_rows)
        m = np.asarray(influencer_rows)
        s_con = np.einsum("nc,nc->n", self.w_a[b], self.w_a[m]) * 10
        s_ed = np.full(len(b), 0.5)
        s_in = 1 / (1 + np.exp(-np.log10(np.asarray(self.followers)[m] + 1)))
        w_b = np.stack([_softmax(5 * self.w_a[mi][self.top_idx[bi]]) for bi, mi in zip(b, m)])
        w_m = np.stack([_softmax(5 * self.w_a[bi][self.top_idx[mi]]) for bi, mi in zip(b, m)])
        return {"S": s_con * s_ed * s_in, "S_con": s_con, "S_ed": s_ed, "S_in": s_in, "w_b": w_b, "w_m": w_m}


def _image(path: pathlib.Path, color=(200, 80, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path)


def make_run(tmp: pathlib.Path) -> FakeRun:
    root = tmp / "data"
    topics = {
        "brand_food": ("brand", "restaurant", "food snack ready to eat wood"),
        "brand_watch": ("brand", "accessory", "watch portrait car"),
        "infl_foodie": ("influencer", "food", "food snack sunlight travel"),
        "infl_watch": ("influencer", "accessory", "watch car portrait"),
        "infl_beauty": ("influencer", "beauty", "beauty hairstyle eye shadow portrait"),
        "infl_travel": ("influencer", "travel", "travel sunlight wood"),
    }
    accounts, posts = [], []
    for n, (aid, (kind, cat, words)) in enumerate(topics.items()):
        accounts.append(fmt.Account(id=aid, kind=kind, category=cat, followers=1000 * (n + 1), bio=f"I love {words}"))
        for j, w in enumerate(words.split(" ")[:3]):
            img = f"images/{aid}_{j}.png"
            _image(root / img, (40 * n % 255, 30 * j, 90))
            posts.append(fmt.Post(id=f"{aid}_p{j}", account=aid, image=img, caption=f"Today: {words} <b>#{w}</b>", likes=10 + j, comments=j))
    coops = (fmt.Cooperation("brand_food", "infl_foodie", "infl_foodie_p0"), fmt.Cooperation("brand_watch", "infl_travel", "infl_travel_p0"))
    split = fmt.Split(train=("brand_watch",), test=("brand_food", "brand_watch"), candidates=("infl_foodie", "infl_watch", "infl_beauty", "infl_travel"))
    ds = fmt.Dataset(root=root, concepts=CONCEPTS, accounts=tuple(accounts), posts=tuple(posts), cooperations=coops, labeled_posts=(), split=split)
    return FakeRun(tmp / "work", ds)


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path)


def test_recommend_ranks_by_score_and_explains(run):
    rows = rec.recommend(run, "brand_food", top_k=3)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["influencer"] == "infl_foodie"  # shares food/snack with the restaurant
    assert rows[0]["category"] == "food" and rows[0]["known_partner"] is True
    assert all(r["brand"] == "brand_food" for r in rows)
    s = [r["S"] for r in rows]
    assert s == sorted(s, reverse=True)
    for r in rows:
        assert r["S"] == pytest.approx(r["S_con"] * r["S_ed"] * r["S_in"])
        for key, acc in (("brand_concepts", "brand_food"), ("influencer_concepts", r["influencer"])):
            weights = [c["weight"] for c in r[key]]
            assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0)
            names = {c["concept"] for c in r[key]}
            assert names == {CONCEPTS[i] for i in run.top_idx[run.account_index[acc]]}
            assert all(c["history"] > 0 for c in r[key])
    assert "food" in [c["concept"] for c in rows[0]["brand_concepts"]]


def test_recommend_candidates_and_top_k(run):
    rows = rec.recommend(run, "brand_watch", top_k=0)
    assert len(rows) == 4 and rows[0]["influencer"] == "infl_watch"
    rows = rec.recommend(run, "brand_watch", top_k=10, candidates=["infl_beauty", "infl_travel", "infl_beauty"])
    assert sorted(r["influencer"] for r in rows) == ["infl_beauty", "infl_travel"]


def test_equal_scores_rank_by_influencer_id(run):
    """Ties in S are broken by the influencer's id (the output schema), not by the order the
    candidates were given in."""
    score = run.score

    def tied(brand_rows, influencer_rows):
        out = score(brand_rows, influencer_rows)
        out["S"] = np.full(len(out["S"]), 0.25)
        return out

    run.score = tied
    rows = rec.recommend(run, "brand_watch", top_k=0, candidates=["infl_watch", "infl_travel", "infl_beauty"])
    assert [r["influencer"] for r in rows] == ["infl_beauty", "infl_travel", "infl_watch"]
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_unknown_brand_names_closest_ids(run):
    with pytest.raises(rec.UnknownNameError) as e:
        rec.recommend(run, "brand_fod")
    msg = str(e.value)
    assert "\n" not in msg and "brand_fod" in msg and "brand_food" in msg
    assert e.value.closest[0] == "brand_food"
    with pytest.raises(rec.UnknownNameError, match=r"\(it is an influencer\)"):
        rec.recommend(run, "infl_watch")
    with pytest.raises(rec.UnknownNameError, match="infl_nobody"):
        rec.recommend(run, "brand_food", candidates=["infl_nobody"])
    with pytest.raises(rec.UnknownNameError, match=r"brand_watch.*\(it is a brand\)"):
        rec.recommend(run, "brand_food", candidates=["infl_watch", "brand_watch"])


def test_outputs_table_json_csv(run):
    rows = rec.recommend(run, "brand_food", top_k=2)
    doc = json.loads(rec.to_json(rows, brand_category="restaurant"))
    assert doc["schema_version"] == rec.SCHEMA_VERSION == 1
    assert doc["brand"] == "brand_food" and doc["brand_category"] == "restaurant"
    assert doc["results"][0]["influencer"] == rows[0]["influencer"]
    assert set(doc["results"][0]) == {"rank", "brand", "influencer", "category", "S", "S_con", "S_ed", "S_in",
                                      "known_partner", "brand_concepts", "influencer_concepts"}
    parsed = list(csv.DictReader(io.StringIO(rec.to_csv(rows))))
    assert [p["influencer"] for p in parsed] == [r["influencer"] for r in rows]
    assert float(parsed[0]["S"]) == rows[0]["S"]
    first = parsed[0]["brand_concepts"].split(";")[0].split(":")
    assert first[0] == rows[0]["brand_concepts"][0]["concept"]
    table = rec.format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["rank", "influencer", "category"] and len(lines) == 4
    assert rows[0]["influencer"] in lines[2]
    assert rec.format_table([]) == "(no candidates)"
    assert json.loads(rec.to_json([]))["results"] == []


def _brand_dir(tmp: pathlib.Path, with_account=True) -> pathlib.Path:
    d = tmp / "new_brand"
    lines = []
    for j, cap in enumerate(["luxury watch for men", "a new watch and a car", "portrait with my watch"]):
        _image(d / "img" / f"{j}.jpg")
        lines.append(json.dumps({"id": f"nb{j}", "account": "acme_watches", "image": f"img/{j}.jpg", "caption": cap, "likes": 5, "comments": 1}))
    (d / "posts.jsonl").write_text("\n".join(lines) + "\n")
    if with_account:
        (d / "account.json").write_text(json.dumps({"id": "acme", "followers": 5000, "category": "accessory"}))
    return d


def test_recommend_new_brand(run, tmp_path):
    d = _brand_dir(tmp_path)
    rows = rec.recommend_new_brand(run, d, top_k=2)
    assert rows[0]["brand"] == "acme" and rows[0]["influencer"] == "infl_watch"
    assert run.account_index["acme"] == len(run.dataset.accounts)
    assert run.followers[-1] == 5000 and run.added_categories == ["accessory"]  # from account.json
    assert rows[0]["brand_concepts"][0]["concept"] in {"watch", "portrait", "car"}
    with pytest.raises(ValueError, match="already exists"):
        rec.recommend_new_brand(run, d)


def test_new_brand_posts_may_name_their_concepts(tmp_path):
    """A --use_gt_concepts run reads the brand's concepts from its posts, as from posts.jsonl."""
    d = _brand_dir(tmp_path)
    lines = [json.loads(l) for l in (d / "posts.jsonl").read_text().splitlines()]
    lines[0]["concepts"] = ["watch", "car", "watch"]
    (d / "posts.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    _, posts = rec.read_brand_dir(d, ["watch", "car", "portrait"])
    assert [p.concepts for p in posts] == [("watch", "car"), None, None]
    lines[1]["concepts"] = ["spaceship"]
    (d / "posts.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    with pytest.raises(fmt.DatasetError) as info:
        rec.read_brand_dir(d, ["watch", "car", "portrait"])
    assert _in(d, info.value.errors) == ["posts.jsonl:2: field \"concepts\": 'spaceship' is not a concept of the run"]


def test_new_brand_id_from_posts_and_errors(run, tmp_path):
    d = _brand_dir(tmp_path, with_account=False)
    account, posts = rec.read_brand_dir(d)
    assert account == {"id": "acme_watches", "followers": None, "category": ""}
    assert [p.id for p in posts] == ["nb0", "nb1", "nb2"] and isinstance(posts[0], fmt.Post)
    with (d / "posts.jsonl").open("a") as f:
        f.write('{"id": "nb9", "image": "img/missing.jpg", "caption": "x", "likes": -1, "comments": 0}\nnot json\n')
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert any(x.startswith("posts.jsonl:4:") and "does not exist" in x for x in _in(d, e.value.errors))
    assert any(x.startswith("posts.jsonl:5:") and "malformed JSON" in x for x in _in(d, e.value.errors))
    with pytest.raises(FileNotFoundError):
        rec.read_brand_dir(tmp_path / "nope")


def test_new_brand_images_are_decoded_before_any_prediction(tmp_path):
    d = _brand_dir(tmp_path)
    (d / "img" / "1.jpg").write_bytes(b"not an image")
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert _in(d, e.value.errors) == ['posts.jsonl:2: field "image": cannot decode \'img/1.jpg\' '
                              '(UnidentifiedImageError: cannot identify image file)']


@pytest.mark.parametrize("followers, why", [(0, " (engagement rate is undefined)"), (-3, ""),
                                            (2.5, " (a float, not an int)"), (0.0, " (a float, not an int)"),
                                            (True, " (a boolean, not an int)"), (None, "")])
def test_new_brand_followers_are_checked_as_in_accounts_jsonl(tmp_path, followers, why):
    d = _brand_dir(tmp_path)
    (d / "account.json").write_text(json.dumps({"id": "acme", "followers": followers}))
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert _in(d, e.value.errors) == [f'account.json:1: field "followers" must be an int > 0, '
                              f"got {json.dumps(followers)}{why}"]


def _in(d: pathlib.Path, errors: list[str]) -> list[str]:
    """A new brand's error lines name its folder's files (not a dataset's): the lines without it."""
    prefix = f"{d}{os.sep}"
    assert all(e.startswith(prefix) for e in errors), errors
    return [e[len(prefix):] for e in errors]


def _replace_post_line(d: pathlib.Path, index: int, raw: bytes) -> None:
    lines = (d / "posts.jsonl").read_bytes().splitlines()
    lines[index] = raw
    (d / "posts.jsonl").write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("raw, error", [
    # read as a dataset's posts.jsonl is (format.py): every problem on its line, no traceback
    (b'{"id": "nb1", "image": "img/1.jpg", "caption": "caf\xe9", "likes": 5, "comments": 1}',
     'posts.jsonl:2: field "caption": not valid UTF-8 (invalid continuation byte at byte 51)'),
    (b"[" * 100_000, "posts.jsonl:2: malformed JSON: RecursionError: maximum recursion depth exceeded"),
    (b'{"id": "nb1", "image": "img/1.jpg", "caption": "x", "likes": 1e300, "comments": 1}',
     'posts.jsonl:2: field "likes" must be an int >= 0, got 1e+300 (a float, not an int)'),
    (b'{"id": "nb1", "image": "img/1.jpg", "caption": "x", "likes": 3.0, "comments": 1}',
     'posts.jsonl:2: field "likes" must be an int >= 0, got 3.0 (a float, not an int)'),
    (b'{"id": "nb1", "image": "img/1.jpg", "caption": "\\ud83d", "likes": 5, "comments": 1}',
     'posts.jsonl:2: field "caption" holds an unpaired UTF-16 surrogate'),
    (b'{"id": "nb1", "image": "img", "caption": "x", "likes": 5, "comments": 1}',
     "posts.jsonl:2: field \"image\": file 'img' is not a file"),
])
def test_new_brand_posts_are_checked_as_a_datasets_posts(tmp_path, raw, error):
    d = _brand_dir(tmp_path)
    _replace_post_line(d, 1, raw)
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert len(e.value.errors) == 1 and _in(d, e.value.errors)[0].startswith(error), e.value.errors


@pytest.mark.parametrize("raw, error", [
    (json.dumps({"id": "acme", "category": "a", "followers": "12k"}, indent=2).encode(),
     'account.json:4: field "followers" must be an int > 0, got "12k"'),
    (b'{\n  "id": "acme",\n  "category": "caf\xe9"\n}',
     "account.json:3: not valid UTF-8 (invalid continuation byte at byte 18)"),
    (b'{"id": "acme", "id": "acme2"}', 'account.json:1: field "id" appears more than once'),
    # a byte-order mark does not shift the line or the byte of a problem
    (b'\xef\xbb\xbf{"followers": 5,\n "id": "\xff"}',
     "account.json:2: not valid UTF-8 (invalid start byte at byte 8)"),
    (b'{\n  "id": "acme",\n  "category": "\\ud83d"\n}',
     'account.json:3: field "category" holds an unpaired UTF-16 surrogate \\ud83d (text cut '
     'inside a character?): not valid Unicode'),
])
def test_new_brand_account_json_problems_name_their_line(tmp_path, raw, error):
    d = _brand_dir(tmp_path)
    (d / "account.json").write_bytes(raw)
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert _in(d, e.value.errors) == [error]


def test_new_brand_id_from_the_posts_is_checked_as_an_id(tmp_path):
    d = _brand_dir(tmp_path, with_account=False)
    _replace_post_line(d, 1, json.dumps({"id": "nb1", "account": "acme\nwatches", "image": "img/1.jpg",
                                         "caption": "x", "likes": 5, "comments": 1}).encode())
    with pytest.raises(fmt.DatasetError) as e:
        rec.read_brand_dir(d)
    assert _in(d, e.value.errors) == ['posts.jsonl:2: field "account": \'acme\\nwatches\' holds a line break']


def test_cli_errors_are_one_line(tmp_path):
    script = REPO / "experiments" / "recommend.py"
    proc = subprocess.run(
        [sys.executable, str(script), f"--workdir={tmp_path / 'missing'}", "--brand=x"],
        env=repo_on_pythonpath(),
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing" in proc.stderr
