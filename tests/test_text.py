"""Tests for camera_jax.data.text: tokenizer, Word2Vec determinism, unit-norm embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from camera_jax.data import text

CAPTIONS = [
    "Sunday brunch with pancakes and coffee #FoodieLife @cafe_central",
    "Morning coffee and a croissant at the beach",
    "Hiking the mountain trail at sunrise, nature is amazing",
    "New running shoes for the marathon training https://shop.example.com/x",
    "Beach sunset with friends, ocean view",
    "Pancakes again! coffee coffee coffee",
    "",
    "🔥🔥🔥",
    "Camping by the lake under the stars",
    "Marathon done, running shoes are great",
] * 3
CONCEPTS = ["coffee", "nature_landscape", "ready_to_eat", "beach", "running_shoes", "camping"]


@pytest.fixture(scope="module")
def embedder() -> text.TextEmbedder:
    model = text.train_word2vec(CAPTIONS, CONCEPTS, dim=16, seed=0, epochs=5)
    return text.TextEmbedder.from_model(model)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello World", ["hello", "world"]),
        ("#FoodieLife rocks", ["foodielife", "rocks"]),
        ("thanks @some.one and @other_user!", ["thanks", "and"]),
        ("see http://a.b/c?d=1 and www.x.org/page now", ["see", "and", "now"]),
        ("ready_to_eat", ["ready", "to", "eat"]),
        ("a b c de", ["de"]),
        ("wow!!!...???", ["wow"]),
        ("🍕pizza🍕night", ["pizza", "night"]),
        ("it's 2024 & we're HERE", ["its", "2024", "were", "here"]),
        ("São Paulo crème-brûlée", ["são", "paulo", "crème", "brûlée"]),
        ("   ", []),
        ("", []),
    ],
)
def test_tokenize(raw, expected):
    assert text.tokenize(raw) == expected


def test_tokenize_yields_only_letters_and_digits():
    for caption in CAPTIONS:
        for tok in text.tokenize(caption):
            assert len(tok) > 1
            assert tok == tok.lower()
            assert all(ch.isalnum() for ch in tok), tok


def test_concept_tokens():
    assert text.concept_tokens("ready_to_eat") == ["ready", "to", "eat"]
    assert text.concept_tokens("Nature_Landscape") == ["nature", "landscape"]
    assert text.concept_tokens("high angle__view") == ["high", "angle", "view"]
    assert text.concept_tokens("car") == ["car"]


def test_every_concept_word_has_a_vector(embedder):
    for name in CONCEPTS:
        for tok in text.concept_tokens(name):
            assert tok in embedder.kv.key_to_index
    # Even with min_count above every caption word's frequency, concept words survive.
    model = text.train_word2vec(CAPTIONS[:10], CONCEPTS, dim=8, epochs=1, min_count=4)
    assert "landscape" in model.wv.key_to_index
    assert "brunch" not in model.wv.key_to_index


def test_one_shot_iterator_gives_the_same_model_as_a_list():
    a = text.train_word2vec(CAPTIONS, CONCEPTS, dim=8, seed=3, epochs=2)
    b = text.train_word2vec((c for c in CAPTIONS), CONCEPTS, dim=8, seed=3, epochs=2)
    assert a.wv.index_to_key == b.wv.index_to_key
    np.testing.assert_array_equal(a.wv.vectors, b.wv.vectors)


def test_seed_changes_vectors():
    a = text.train_word2vec(CAPTIONS, CONCEPTS, dim=8, seed=0, epochs=1)
    b = text.train_word2vec(CAPTIONS, CONCEPTS, dim=8, seed=1, epochs=1)
    assert not np.array_equal(a.wv.vectors, b.wv.vectors)


_SUBPROCESS = textwrap.dedent(
    """
    import hashlib, sys
    sys.path.insert(0, {root!r})
    from camera_jax.data import text
    captions = {captions!r}
    model = text.train_word2vec(captions, {concepts!r}, dim=16, seed=7, epochs=3)
    h = hashlib.sha256("|".join(model.wv.index_to_key).encode())
    h.update(model.wv.vectors.tobytes())
    print(h.hexdigest())
    """
)


def test_word2vec_deterministic_across_pythonhashseed():
    # The repository root (…/camera_jax/data/text.py -> …), so the child imports this checkout.
    root = os.path.abspath(os.path.join(os.path.dirname(text.__file__), os.pardir, os.pardir))
    code = _SUBPROCESS.format(root=root, captions=CAPTIONS, concepts=CONCEPTS)
    digests = []
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300
        )
        digests.append(out.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64
    assert digests[0] == digests[1]
    # Python's own hash does differ between those processes: the check above is not vacuous.
    probe = "print(hash('coffee7'))"
    h1, h2 = (
        subprocess.run(
            [sys.executable, "-c", probe], env=dict(os.environ, PYTHONHASHSEED=s), capture_output=True, text=True
        ).stdout
        for s in ("1", "12345")
    )
    assert h1 != h2


def test_caption_embeddings_unit_norm_and_has_text(embedder):
    captions = ["coffee at the beach", "", "🔥🔥 !!!", "zzzunknownword qqqother", "#Coffee"]
    t, has_text = embedder.embed_captions(captions)
    assert t.dtype == np.float32 and t.shape == (5, embedder.dim) and embedder.dim == 16
    assert has_text.dtype == bool
    assert has_text.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(np.linalg.norm(t[has_text], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(t[~has_text], 0.0)
    # t is the normalised mean of the known token vectors.
    kv = embedder.kv
    mean = np.mean([kv[w] for w in ["coffee", "at", "the", "beach"]], axis=0)
    np.testing.assert_allclose(t[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # A hashtag embeds like its word.
    np.testing.assert_allclose(t[4], kv["coffee"] / np.linalg.norm(kv["coffee"]), rtol=1e-5, atol=1e-6)


def test_embed_captions_chunks_and_empty_input(embedder):
    full, has_full = embedder.embed_captions(CAPTIONS)
    chunked, has_chunked = embedder.embed_captions(iter(CAPTIONS), chunk_size=4)
    np.testing.assert_allclose(full, chunked, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(has_full, has_chunked)
    empty, has_empty = embedder.embed_captions([])
    assert empty.shape == (0, embedder.dim) and has_empty.shape == (0,)


def test_concept_embeddings(embedder):
    l = embedder.embed_concepts(CONCEPTS)
    assert l.dtype == np.float32 and l.shape == (len(CONCEPTS), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(l, axis=1), 1.0, rtol=1e-5)
    kv = embedder.kv
    mean = (kv["nature"] + kv["landscape"]) / 2
    np.testing.assert_allclose(l[1], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    missing = embedder.embed_concepts(["qqq_zzz"])
    np.testing.assert_array_equal(missing, 0.0)


def test_words_and_similarity(embedder):
    vectors, known = embedder.embed_words(["Coffee", "nature landscape", "xyzzyq", "Running_Shoes"])
    assert known.tolist() == [True, True, False, True]
    np.testing.assert_allclose(np.linalg.norm(vectors[known], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[2], 0.0)
    sim = embedder.similarity(["coffee", "xyzzyq", "running shoes"], CONCEPTS)
    assert sim.shape == (3, len(CONCEPTS)) and sim.dtype == np.float32
    assert np.all(sim <= 1.0 + 1e-5) and np.all(sim >= -1.0 - 1e-5)
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-5)  # "coffee" vs concept "coffee"
    assert sim[2, 4] == pytest.approx(1.0, abs=1e-5)  # "running shoes" vs "running_shoes"
    np.testing.assert_array_equal(sim[1], 0.0)


def test_save_load_roundtrip(embedder, tmp_path):
    path = tmp_path / "w2v"
    embedder.save(path)
    embedder.save(path)  # overwriting works
    loaded = text.TextEmbedder.load(path)
    assert loaded.dim == embedder.dim
    assert loaded.kv.index_to_key == embedder.kv.index_to_key
    np.testing.assert_array_equal(loaded.kv.vectors, embedder.kv.vectors)
    a, ha = embedder.embed_captions(CAPTIONS[:5])
    b, hb = loaded.embed_captions(CAPTIONS[:5])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ha, hb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w2v"]  # no temporary left behind


def test_empty_corpus_raises():
    with pytest.raises(ValueError):
        text.train_word2vec(["", "!!"], [], dim=4, epochs=1)


def test_tokenize_keeps_combining_marks_and_normalizes():
    # Devanagari and Thai vowel signs and viramas are combining marks (category M), not letters:
    # a words-only rule cut every word at them and dropped the one-character pieces.
    assert text.tokenize("नमस्ते दुनिया खाना") == ["नमस्ते", "दुनिया", "खाना"]
    assert text.tokenize("ครัวซองต์ อร่อย") == ["ครัวซองต์", "อร่อย"]
    # NFD "café" (e + U+0301) is the same token as NFC "café", in captions and concept names.
    assert text.tokenize("cafe\u0301 latte") == text.tokenize("caf\u00e9 latte") == ["café", "latte"]
    assert text.concept_tokens("cafe\u0301") == ["café"]
    # A mark with no letter before it is not part of a word: an emoji's variation selector
    # (U+FE0F, a nonspacing mark) stays out of the word written right after the emoji.
    assert text.tokenize("\u2764\ufe0flove food\u2764\ufe0f yum") == ["love", "food", "yum"]
    # nor are an emoji's presentation selector and keycap after a digit or a letter
    assert text.tokenize("1\ufe0f\u20e3Pizza 2\ufe0f\u20e3Burger") == ["pizza", "burger"]
    assert text.tokenize("Top 5\ufe0f\u20e3 tips \u2139\ufe0fInfo") == ["top", "tips", "info"]
