"""Tests of camera_jax.explain.search (keyword search, fallbacks, baselines) and experiments/search.py."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from gensim.models import KeyedVectors

from camera_jax.data import format as fmt
from camera_jax.data.text import TextEmbedder
from camera_jax.explain import search
from conftest import REPO, repo_on_pythonpath

CONCEPTS = ("food", "snack", "ready_to_eat", "watch", "car", "beauty", "hairstyle", "eye_shadow", "portrait", "travel", "sunlight", "wood")
# A hand-made 5-d word space: axes food, watch, beauty, travel, male.
WORDS = {
    "food": [1, 0, 0, 0, 0], "snack": [0.9, 0, 0, 0.1, 0], "ready": [0.7, 0, 0, 0, 0], "to": [0.1, 0.1, 0.1, 0.1, 0.1],
    "eat": [0.9, 0, 0.1, 0, 0], "watch": [0, 1, 0, 0, 0.2], "car": [0, 0.5, 0, 0.2, 0.8], "beauty": [0, 0, 1, 0, 0],
    "hairstyle": [0, 0, 0.9, 0, 0], "eye": [0, 0, 0.8, 0, 0], "shadow": [0, 0, 0.6, 0.2, 0], "portrait": [0, 0, 0.6, 0, 0.3],
    "travel": [0, 0, 0, 1, 0], "sunlight": [0.1, 0, 0, 0.9, 0], "wood": [0, 0, 0, 0.7, 0.1],
    "luxury": [0, 0.8, 0.3, 0, 0.2], "men": [0, 0.2, -0.3, 0, 1], "lady": [0.2, 0, 0.9, 0, -0.5],
    "foodie": [0.95, 0, 0.2, 0, 0], "tasty": [0.9, 0, 0, 0, 0], "delicious": [0.9, 0, 0.1, 0, 0],
    "wristwatch": [0, 0.95, 0, 0, 0.2], "cosmetic": [0, 0, 0.95, 0, 0],
}  # fmt: skip
INFLUENCERS = ("infl_watch", "infl_foodlady", "infl_beauty", "infl_travel")


def make_embedder() -> TextEmbedder:
    kv = KeyedVectors(vector_size=5)
    kv.add_vectors(list(WORDS), np.asarray(list(WORDS.values()), dtype=np.float32))
    return TextEmbedder(kv)


def make_w_a() -> np.ndarray:
    c = {name: i for i, name in enumerate(CONCEPTS)}
    w = np.full((len(INFLUENCERS), len(CONCEPTS)), 0.01)
    for row, weights in enumerate([
        {"watch": 0.5, "car": 0.2, "portrait": 0.1},
        {"food": 0.3, "snack": 0.2, "beauty": 0.2, "portrait": 0.1},
        {"beauty": 0.4, "hairstyle": 0.2, "eye_shadow": 0.2},
        {"travel": 0.4, "sunlight": 0.3, "wood": 0.1},
    ]):  # fmt: skip
        for name, v in weights.items():
            w[row, c[name]] = v
    return w / w.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def kw():
    return dict(embedder=make_embedder(), concept_names=CONCEPTS, w_a=make_w_a(), influencer_ids=INFLUENCERS)


def test_paper_queries_rank_the_matching_influencer_first(kw):
    res = search.keyword_search(["luxury", "watch", "men"], **kw, top_k=3)
    assert [r["rank"] for r in res] == [1, 2, 3]
    assert res[0]["influencer"] == "infl_watch"
    assert res[0]["matched_concepts"][0][0] == "watch"
    assert all(k["method"] == "word2vec" for k in res[0]["keywords"]) and res[0]["fallback"] is None
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    res = search.keyword_search("foodie,lady", **kw, top_k=2)
    assert res[0]["influencer"] == "infl_foodlady"
    assert {"food", "beauty"} <= {m[0] for m in res[0]["matched_concepts"]}


def test_an_influencer_with_no_shown_concept_is_matched_through_none(kw):
  """A w_a row of zeros (no history post shows a concept, e.g. --history=unsponsored with every
  post sponsored) gives v = 0: the account is not matched through concepts it never showed."""
  w_a = kw["w_a"].copy()
  w_a[0] = 0.0                                            # infl_watch shows nothing
  res = search.keyword_search(["watch"], **{**kw, "w_a": w_a}, top_k=4, min_weight=0.0)
  assert "infl_watch" not in [r["influencer"] for r in res if r["score"] > 0]


def test_score_follows_documented_formula(kw):
    w_a = kw["w_a"]
    keywords = ["watch", "travel"]
    res = search.keyword_search(keywords, **kw, top_k=4, top_concepts=3, min_weight=0.0)

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    mu = unit(np.asarray(list(WORDS.values()))).mean(axis=0)  # mean unit vector of the vocabulary
    x_k = unit([WORDS[k] for k in keywords])
    x_c = unit([np.sum([WORDS[t] for t in c.split("_")], axis=0) for c in CONCEPTS])
    sim = np.maximum(unit(x_k - mu) @ unit(x_c - mu).T, 0)  # mean-centred cosine, clipped at 0
    for r in res:
        i = INFLUENCERS.index(r["influencer"])
        top = np.argsort(-w_a[i])[:3]
        v = w_a[i, top] / w_a[i, top].sum()
        expected = np.mean([np.sum(v * sim[k, top]) for k in range(2)])
        assert r["score"] == pytest.approx(expected, rel=1e-5)
        assert r["top_concepts"] == [CONCEPTS[c] for c in top]
        for name, s, w in r["matched_concepts"]:
            c = CONCEPTS.index(name)
            assert s == pytest.approx(sim[:, c].max(), rel=1e-5) and w == pytest.approx(v[list(top).index(c)])
    assert {r["influencer"] for r in res[:2]} == {"infl_watch", "infl_travel"}


def test_centring_spreads_a_narrow_cone():
    """Word vectors in one narrow cone: raw cosines are all ~1, centred ones separate the topics."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=8) * 10
    words = {w: base + rng.normal(size=8) * 0.3 for w in ("food", "snack", "car", "road", "other", "more")}
    words["foodie"] = words["food"] + rng.normal(size=8) * 0.05
    kv = KeyedVectors(vector_size=8)
    kv.add_vectors(list(words), np.asarray(list(words.values()), dtype=np.float32))
    emb = TextEmbedder(kv)
    raw = search.keyword_similarity(emb, ["foodie"], ["food", "car"], centre=False)[0]
    centred = search.keyword_similarity(emb, ["foodie"], ["food", "car"])[0]
    assert raw.min() > 0.95  # useless as a score
    assert centred[0] > 0.9 and centred[1] < 0.3


def test_unknown_keyword_fallbacks(kw):
    # a plural of a vocabulary word takes that word's Word2Vec similarities
    res = search.keyword_search(["watches"], **kw)
    assert res[0]["keywords"] == [{"keyword": "watches", "method": "closest_word", "word": "watch"}]
    assert res[0]["influencer"] == "infl_watch" and res[0]["matched_concepts"][0][0] == "watch"
    # -s is tried first (wines -> wine, not win), -es only after a sibilant (cares is not car+es)
    assert search._known_stem("wines", {"win", "wine"}) == "wine"
    assert search._known_stem("cares", {"car"}) is None
    assert search._known_stem("dresses", {"dress"}) == "dress"
    assert search._known_stem("berries", {"berry"}) == "berry"
    # (a) a keyword that contains a concept token
    res = search.keyword_search(["smartwatch"], **kw)
    assert res[0]["keywords"] == [{"keyword": "smartwatch", "method": "concept_string", "word": None}]
    assert res[0]["influencer"] == "infl_watch"
    # (a) a prefix of a concept token.
    res = search.keyword_search(["hairsty"], **kw)
    assert res[0]["keywords"][0]["method"] == "concept_string" and res[0]["influencer"] == "infl_beauty"
    # (b) a typo mapped to the closest vocabulary word.
    res = search.keyword_search(["wristwach", "men"], **kw)
    assert res[0]["keywords"][0] == {"keyword": "wristwach", "method": "closest_word", "word": "wristwatch"}
    assert res[0]["influencer"] == "infl_watch"
    # A known and an unmatched keyword: the unmatched one contributes 0 but the query still answers.
    res = search.keyword_search(["beauty", "xqxqxq"], **kw)
    assert [k["method"] for k in res[0]["keywords"]] == ["word2vec", "unmatched"]
    assert res[0]["influencer"] == "infl_beauty"


def test_multi_keyword_query_never_empty(kw):
    res = search.keyword_search(["zyxwvq", "xqxqxqy"], **kw, top_k=3)
    assert res and res[0]["fallback"] == "string_similarity"
    assert all(k["method"] == "string_similarity" for k in res[0]["keywords"])
    assert all(r["score"] > 0 and r["matched_concepts"] for r in res)


def test_invalid_queries_raise_one_line_errors(kw):
    with pytest.raises(ValueError, match="no keywords given; known words include") as e:
        search.keyword_search([], **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no keywords given"):
        search.keyword_search(", ,", **kw)
    # a blank keyword (a trailing comma) is left out, not refused
    assert search.keyword_search("beauty,", **kw) == search.keyword_search(["beauty"], **kw)
    with pytest.raises(ValueError, match=r"'!!!' has no word of two or more letters or digits; "
                       r"no similar known word") as e:
        search.keyword_search(["food", "!!!"], **kw)
    # tokenize drops one-character words: 'x' gives no token either
    with pytest.raises(ValueError, match=r"'x' has no word of two or more letters or digits"):
        search.keyword_search(["x"], **kw)
    with pytest.raises(ValueError, match="no similar known word") as e:
        search.keyword_search(["qqqq"], **kw)  # shares no character with any concept
    assert "\n" not in str(e.value)
    assert search._closest_hint("fooq", ["food", "car"], []) == "closest known words: food"



def test_caption_baseline_needs_every_keyword_in_one_post():
    captions = {
        "a": ["Tasty food, delicious!", "food again", "so tasty and delicious food"],
        "b": ["delicious food that is tasty"],
        "c": ["food", "tasty"],
    }
    res = search.caption_keyword_search(["food", "tasty", "delicious"], captions, top_k=3)
    assert [(r["influencer"], r["score"]) for r in res] == [("a", 2.0), ("b", 1.0)]
    assert res[0]["n_posts"] == 3 and res[0]["example"] == "Tasty food, delicious!"
    assert search.caption_keyword_search(["cosmetic", "eye", "shadow", "eyelash"], captions) == []


def test_exact_match_baseline():
    bios = {"a": "Luxury watch collector. Men's style.", "b": "I love watches and luxury", "c": "watch watch luxury men"}
    res = search.exact_match_search(["luxury", "watch"], bios, top_k=None)
    assert [r["influencer"] for r in res] == ["c", "a"]  # "watches" is not "watch"; c has more hits
    assert search.exact_match_search(["luxury", "watch", "men", "gold"], bios) == []


def test_search_precision(kw):
    res = search.keyword_search(["watch", "travel"], **kw, top_k=2, top_concepts=3)
    assert [r["influencer"] for r in res] == ["infl_watch", "infl_travel"] or [r["influencer"] for r in res] == ["infl_travel", "infl_watch"]
    assert search.search_precision(res, ["watch", "travel"]) == 1.0
    assert search.search_precision(res, ["watch"]) == 0.5
    assert search.search_precision(res, ["hairstyle", "eye_shadow"]) == 0.0
    assert search.search_precision([], ["watch"]) == 0.0
    base = [{"influencer": "infl_travel"}, {"influencer": "infl_watch"}]
    tops = {"infl_travel": ["travel", "sunlight"], "infl_watch": ["watch", "car"]}
    assert search.search_precision(base, ["watch"], concepts_of=tops) == 0.5


def make_run_for_cli(workdir) -> types.SimpleNamespace:
    """A duck-typed Run for the CLI test (no images are needed by search)."""
    accounts = tuple(fmt.Account(id=i, kind="influencer", category=i.split("_")[1], followers=100, bio="") for i in INFLUENCERS)
    posts = (fmt.Post("p0", "infl_watch", "x.png", "my luxury watch for men", 1, 0),
             fmt.Post("p1", "infl_foodlady", "y.png", "tasty food", 1, 0))  # fmt: skip
    ds = fmt.Dataset(root=pathlib.Path(workdir), concepts=CONCEPTS, accounts=accounts, posts=posts, cooperations=(),
                     labeled_posts=(), split=fmt.Split((), (), INFLUENCERS))  # fmt: skip
    w_a = make_w_a()
    top_idx = np.argsort(-w_a, axis=1)[:, :10]
    return types.SimpleNamespace(workdir=pathlib.Path(workdir), dataset=ds, concepts=CONCEPTS, embedder=make_embedder(),
                                 w_a=w_a, top_idx=top_idx, account_index={a: i for i, a in enumerate(INFLUENCERS)})  # fmt: skip


def test_search_run_reads_a_comma_separated_string_as_the_list(tmp_path):
    run = make_run_for_cli(tmp_path)
    as_list = search.search_run(run, ["watch", "travel"], relevant=["watch"])
    assert search.search_run(run, "watch, travel", relevant=["watch"]) == as_list
    with pytest.raises(ValueError, match="'wacth' is not a concept of the run; closest: watch"):
        search.search_run(run, "watch", relevant=["wacth"])


def _cli(tmp_path, *args):
    code = (
        "import sys, runpy, types\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "import test_search as t\n"
        "fake = types.ModuleType('camera_jax.run'); fake.load_run = t.make_run_for_cli\n"
        "sys.modules['camera_jax.run'] = fake\n"
        "import camera_jax; camera_jax.run = fake\n"
        f"sys.argv = ['search.py', {', '.join(repr(a) for a in args)}]\n"
        f"runpy.run_path({str(REPO / 'experiments' / 'search.py')!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=repo_on_pythonpath())  # fmt: skip


def test_cli_table_json_and_errors(tmp_path):
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=luxury,watch,men", "--relevant=watch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "query: luxury, watch, men"
    assert lines[2].strip().startswith("1. infl_watch (watch)") and "matched: watch" in lines[3]
    assert "baseline: posts whose caption contains every keyword:" in proc.stdout
    assert "camera=1.00" in lines[-1]
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=foodie,lady", "--format=json", "--top_k=1")
    doc = json.loads(proc.stdout)
    assert doc["camera"][0]["influencer"] == "infl_foodlady" and doc["caption_match"] == []
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=!!")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _cli(tmp_path, f"--workdir={tmp_path / 'nope'}", "--keywords=food")
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=sports", "car")  # unquoted space
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("unexpected arguments: car (quote a keyword "
                                                    "that holds a space)")
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=watch", "--relevant=wacth")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("--relevant: 'wacth' is not a concept of the "
                                                    "run; closest: watch")
    proc = _cli(tmp_path, f"--workdir={tmp_path}", "--keywords=food", "--top_k=0")
    assert proc.returncode == 1 and "--top_k=0: 0 is not a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shown_w_a_keeps_only_the_concepts_the_posts_show():
    from camera_jax.explain.shown import shown_w_a

    w_a = np.array([[0.5, 0.3, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]], np.float32)
    run = types.SimpleNamespace(
        w_a=w_a, top_idx=np.array([[0, 1, 2], [0, 1, 2]]),
        tables=types.SimpleNamespace(top_mask=np.array([[True, True, False], [False, False, False]])))
    out = shown_w_a(run, [0, 1])
    # row 0: concept 2 is a filler slot, concept 3 is outside the top 3; row 1 shows no slot, so
    # every slot is shown (shown_concepts: a chart needs a spoke)
    np.testing.assert_array_equal(out, np.array([[0.5, 0.3, 0.0, 0.0], [0.4, 0.3, 0.2, 0.0]], np.float32))
    np.testing.assert_array_equal(shown_w_a(run, [1]), out[1:])
    # a run that knows every concept its accounts' posts show (Run.shown) keeps those beyond its
    # top-K too (a run trained with --top_k below search's 10)
    run.shown = np.array([[True, False, False, True], [False, True, True, True]])
    np.testing.assert_array_equal(shown_w_a(run, [0, 1]), np.array(
        [[0.5, 0.0, 0.0, 0.1], [0.0, 0.3, 0.2, 0.1]], np.float32))


def test_keyword_search_ties_are_broken_by_id():
  """Module doc: results sorted by s, ties by id. Two influencers with identical w_a: the lower id
  ranks first (a tie-break by row index reversed would put zz_watch first)."""
  w = make_w_a()
  w_a = np.stack([w[0], w[0], w[3]])
  res = search.keyword_search("watch", embedder=make_embedder(), concept_names=CONCEPTS, w_a=w_a,
                              influencer_ids=["aa_watch", "zz_watch", "travel"], top_k=2)
  assert res[0]["score"] == res[1]["score"]
  assert [r["influencer"] for r in res] == ["aa_watch", "zz_watch"]
