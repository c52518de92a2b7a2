"""Keyword-based micro-influencer search (paper section IV-H-3, Fig. 5) and its two baselines.

CAMERA search
-------------
The paper "calculated the word similarity between the keywords and the social
media concepts for each micro-influencer, and returned a weighted score for the
matching".  Our exact formula, for keywords ``K`` and an influencer ``m`` with
historical concept distribution ``w_a[m]`` (eq. 5):

* ``T(m)`` = the ``top_concepts`` (default 10, as ``U_a`` in eq. 6) concepts
  with the largest ``w_a[m]``;
* ``v[m, c] = w_a[m, c] / sum_{c' in T(m)} w_a[m, c']`` for ``c`` in ``T(m)``
  (the top weights renormalised to sum to 1, so accounts with peaky and flat
  ``w_a`` are comparable), 0 elsewhere;
* ``sim(k, c)`` = the *mean-centred* cosine between keyword ``k`` and concept
  ``c`` in the run's Word2Vec space: with ``x_k`` the unit mean vector of the
  keyword's tokens (:meth:`TextEmbedder.embed_words`), ``x_c`` that of the
  concept name's tokens (:meth:`TextEmbedder.embed_concepts`) and ``mu`` the
  mean of the unit vectors of the whole vocabulary,
  ``sim = cos(x_k - mu, x_c - mu)``; or a fallback similarity below.
  Centring matters: Word2Vec trained on a small or homogeneous corpus puts
  every word in one narrow cone (0.94 to 1.0 between all concepts of the
  ``tiny`` preset), so raw cosines are all near 1 and cannot tell concepts
  apart; subtracting the common mean direction (the first step of Mu &
  Viswanath's "all-but-the-top", ICLR 2018) spreads them around 0 and keeps
  the neighbour order.  ``centre=False`` uses the raw cosine
  (:meth:`TextEmbedder.similarity`);
* ``s(m) = 1/|K| * sum_{k in K} sum_{c in T(m)} v[m, c] * max(0, sim(k, c))``
  (similarities below ``min_similarity``, default 0, count as 0).

``s(m)`` lies in [0, 1]: it is the prominence-weighted mean similarity between
the query and the influencer's main concepts; the mean over keywords rewards
influencers that match *all* keywords.  Results are sorted by ``s`` (ties by
id) and only influencers with ``s > 0`` are returned.

Keywords outside the Word2Vec vocabulary (fallbacks, reported per keyword in
each result's ``keywords`` entry as ``method``):

1. ``"word2vec"`` -- at least one of the keyword's tokens has a word vector.
2. ``"closest_word"`` for a plural of a vocabulary word (``burgers``,
   ``dresses``, ``berries``: ``-s``, ``-es``, ``-ies`` -> ``-y`` taken off):
   that word's similarities (``word`` names it).
3. ``"concept_string"`` -- otherwise, a keyword that equals a concept name
   (similarity 1), or is a substring/prefix of a concept name or token, or
   contains a concept token (``"smartwatch"`` contains ``"watch"``; both at
   least 3 characters), matches that concept with similarity
   ``difflib.SequenceMatcher(None, keyword, s).ratio()`` (best over the name
   and its tokens).
4. ``"closest_word"`` -- otherwise the keyword is mapped to the closest
   Word2Vec vocabulary word by character similarity
   (``difflib.get_close_matches(keyword, vocabulary, n=1, cutoff=0.75)``:
   typos such as ``wristwach`` -> ``wristwatch``; the high cutoff avoids
   mapping ``watch`` to ``with``) and that word's similarities are used
   (``word`` names it).
5. ``"unmatched"`` -- nothing found; the keyword contributes 0.

If the query as a whole scores 0 for every influencer (every keyword
unmatched, or only negative cosines), every keyword falls back to
``"string_similarity"``: ``sim(k, c)`` = the best difflib ratio between the
keyword and the concept's name or tokens, so a multi-keyword query never comes
back empty.  Only a query with no usable keyword (empty, or no letter/digit)
or one sharing no character with any concept raises :class:`ValueError` with
a one-line message naming the closest known words.

Baselines (paper: "direct search results from Instagram" and "keywords matching
with posts' text")
--------------------------------------------------------------------------------
* :func:`caption_keyword_search` -- an influencer's score is the number of its
  posts whose caption (tokenised with :func:`camera_jax.data.text.tokenize`)
  contains *every* keyword token; influencers with no such post are dropped,
  so the result is empty when no single post has all keywords.
* :func:`exact_match_search` -- the Instagram-search stand-in: an account
  matches only if every keyword appears verbatim as a whole token of its
  profile text (bio); ranked by the number of keyword occurrences.  Longer
  queries quickly return nothing.

:func:`search_precision` measures how often the top results' concepts include
the queried ones.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from camera_jax.data.text import concept_tokens, tokenize

__all__ = [
    "KeywordMatch",
    "resolve_keywords",
    "keyword_search",
    "caption_keyword_search",
    "exact_match_search",
    "search_precision",
    "vocabulary_of",
    "vocabulary_mean",
    "keyword_similarity",
    "run_influencers",
    "relevant_problem",
    "search_run",
]

_MIN_SUBSTRING = 3  # shortest keyword/token used for substring matching (fallback a)


@dataclasses.dataclass(frozen=True)
class KeywordMatch:
    """How one keyword was matched to the concepts.

    Attributes:
      keyword: the keyword as normalised (lowercase, tokens joined by ``_``).
      method: ``word2vec`` | ``concept_string`` | ``closest_word`` |
        ``unmatched`` | ``string_similarity`` (see the module docstring).
      word: the vocabulary word used by ``closest_word`` (else ``None``).
      similarity: float [n] similarity of the keyword to every concept.
    """

    keyword: str
    method: str
    word: str | None
    similarity: np.ndarray

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (no similarity vector)."""
        return {"keyword": self.keyword, "method": self.method, "word": self.word}


def vocabulary_of(embedder: Any) -> list[str]:
    """The Word2Vec vocabulary of an embedder (``embedder.vocabulary`` or ``embedder.kv.index_to_key``)."""
    vocab = getattr(embedder, "vocabulary", None)
    if vocab is None:
        kv = getattr(embedder, "kv", None)
        vocab = getattr(kv, "index_to_key", None) if kv is not None else None
    return [str(w) for w in vocab] if vocab is not None else []


def vocabulary_mean(embedder: Any) -> np.ndarray | None:
    """Mean of the unit word vectors of the vocabulary (``mu`` of the centred cosine), or None."""
    kv = getattr(embedder, "kv", None)
    vectors = getattr(kv, "vectors", None) if kv is not None else None
    if vectors is not None and len(vectors):
        v = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
        return v.mean(axis=0)
    vocab = vocabulary_of(embedder)
    if not vocab:
        return None
    v, known = embedder.embed_words(vocab)
    v = np.asarray(v, dtype=np.float64)[np.asarray(known, dtype=bool)]
    return v.mean(axis=0) if len(v) else None


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 1e-12)


def keyword_similarity(
    embedder: Any, words: Sequence[str], concept_names: Sequence[str], *, centre: bool = True
) -> np.ndarray:
    """Similarity [len(words), len(concept_names)] of known words to concepts (module docstring).

    ``centre=True``: ``cos(x_w - mu, x_c - mu)`` with ``mu`` = :func:`vocabulary_mean`;
    ``centre=False`` (or an embedder without ``embed_concepts``): ``embedder.similarity``.
    """
    mu = vocabulary_mean(embedder) if centre and hasattr(embedder, "embed_concepts") else None
    if mu is None:
        return np.asarray(embedder.similarity(list(words), list(concept_names)), dtype=np.float64)
    w, known = embedder.embed_words(list(words))
    c = np.asarray(embedder.embed_concepts(list(concept_names)), dtype=np.float64)
    w = _unit(np.asarray(w, dtype=np.float64) - mu)
    w[~np.asarray(known, dtype=bool)] = 0.0
    c_known = np.linalg.norm(c, axis=1) > 0
    c = _unit(c - mu)
    c[~c_known] = 0.0
    return w @ c.T


def _closest_words(word: str, vocab: Sequence[str], concept_names: Sequence[str], n: int = 5) -> list[str]:
    pool = list(dict.fromkeys(list(vocab) + [str(c) for c in concept_names]))
    if not word:
        return pool[:n]
    # cutoff 0.5: below it difflib "matches" anything (a Japanese keyword got English words)
    return difflib.get_close_matches(word, pool, n=n, cutoff=0.5)


def _closest_hint(word: str, vocab: Sequence[str], concept_names: Sequence[str]) -> str:
    close = _closest_words(word, vocab, concept_names)
    return f"closest known words: {', '.join(close)}" if close else "no similar known word"


def _normalise(keywords: Sequence[str] | str) -> list[tuple[str, str]]:
    """(raw, normalised) pairs; normalised = tokens joined by '_'. Empty or blank keywords (the
    trailing comma of ``food,``) are left out.

    >>> _normalise("Street food, ,wristwatch,")
    [('Street food', 'street_food'), ('wristwatch', 'wristwatch')]
    """
    if isinstance(keywords, str):
        keywords = keywords.split(",")
    out = []
    for raw in keywords:
        if str(raw).strip():
            out.append((str(raw), "_".join(tokenize(str(raw).replace("_", " ")))))
    return out


def _concept_strings(concept_names: Sequence[str]) -> list[list[str]]:
    """Per concept: its name (lowercase, '_'-joined tokens) followed by its tokens."""
    out = []
    for name in concept_names:
        toks = concept_tokens(str(name))
        out.append(["_".join(toks)] + toks)
    return out


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _concept_string_similarity(q: str, strings: list[list[str]]) -> np.ndarray:
    """Fallback (a): exact name -> 1, substring/prefix either way -> difflib ratio, else 0."""
    sims = np.zeros(len(strings), dtype=np.float64)
    q_sp = q.replace("_", " ")
    for i, (name, *toks) in enumerate(strings):
        if q == name:
            sims[i] = 1.0
            continue
        best = 0.0
        for s in [name] + toks:
            s_sp = s.replace("_", " ")
            if len(q) >= _MIN_SUBSTRING and (q in s or q_sp in s_sp):
                best = max(best, _ratio(q, s))
            elif len(s) >= _MIN_SUBSTRING and s in toks and s in q:
                best = max(best, _ratio(q, s))
        sims[i] = best
    return sims


def _string_similarity(q: str, strings: list[list[str]]) -> np.ndarray:
    """Final fallback: best difflib ratio between the keyword and the concept name or tokens."""
    return np.asarray([max(_ratio(q, s) for s in strs) for strs in strings], dtype=np.float64)


def _known_stem(q: str, vocab: set[str]) -> str | None:
    """The vocabulary word ``q`` is a plural of (``burgers`` -> ``burger``, ``dresses`` ->
    ``dress``, ``berries`` -> ``berry``), or None."""
    cands = []
    if q.endswith("s") and len(q) > 3:   # first: wines -> wine, not win; shoes -> shoe
        cands.append(q[:-1])
    if q.endswith("ies") and len(q) > 4:
        cands.append(q[:-3] + "y")
    if q.endswith(("ses", "xes", "zes", "ches", "shes")) and len(q) > 4:   # -es only after a sibilant
        cands.append(q[:-2])
    return next((c for c in cands if c in vocab), None)


def resolve_keywords(
    keywords: Sequence[str] | str,
    *,
    embedder: Any,
    concept_names: Sequence[str],
    cutoff: float = 0.75,
    centre: bool = True,
) -> list[KeywordMatch]:
    """Matches each keyword to the concepts (Word2Vec or a documented fallback).

    Args:
      keywords: keywords (a comma-separated string is split).
      embedder: object with ``embed_words(words) -> (vectors, known)`` and
        ``similarity(words, concept_names) -> [W, n]`` (a
        :class:`camera_jax.data.text.TextEmbedder`).
      concept_names: the concept vocabulary (row order of ``w_a``'s columns).
      cutoff: difflib cutoff of the ``closest_word`` fallback.
      centre: use the mean-centred cosine (see the module docstring).

    Returns:
      One :class:`KeywordMatch` per keyword, in order.

    Raises:
      ValueError: no keywords, or a keyword without any letter or digit.
    """
    pairs = _normalise(keywords)
    vocab = vocabulary_of(embedder)
    if not pairs:
        raise ValueError(
            "no keywords given; known words include: " + ", ".join(_closest_words("", vocab, concept_names))
        )
    for raw, q in pairs:
        if not q:
            # tokenize keeps words of at least two letters or digits: 'x', '5' or one CJK
            # character give no token either
            raise ValueError(
                f"keyword {raw!r} has no word of two or more letters or digits; "
                + _closest_hint(raw.strip().lower(), vocab, concept_names)
            )
    strings = _concept_strings(concept_names)
    _, known = embedder.embed_words([q for _, q in pairs])
    known = np.asarray(known, dtype=bool).reshape(-1)
    w2v = [q for (_, q), k in zip(pairs, known) if k]
    w2v_sims = (
        keyword_similarity(embedder, w2v, concept_names, centre=centre) if w2v else None
    )
    vocab_set = set(vocab)
    out: list[KeywordMatch] = []
    j = 0
    for (_, q), is_known in zip(pairs, known):
        if is_known:
            out.append(KeywordMatch(q, "word2vec", None, w2v_sims[j]))
            j += 1
            continue
        stem = _known_stem(q, vocab_set)
        if stem is not None:  # an inflection of a known word (burgers, dresses): its Word2Vec
            sims = keyword_similarity(embedder, [stem], concept_names, centre=centre)[0]
            out.append(KeywordMatch(q, "closest_word", stem, sims))
            continue
        sims = _concept_string_similarity(q, strings)
        if sims.max(initial=0.0) > 0:
            out.append(KeywordMatch(q, "concept_string", None, sims))
            continue
        close = difflib.get_close_matches(q, vocab, n=1, cutoff=cutoff) if vocab else []
        if close:
            sims = keyword_similarity(embedder, close, concept_names, centre=centre)[0]
            out.append(KeywordMatch(q, "closest_word", close[0], sims))
            continue
        out.append(KeywordMatch(q, "unmatched", None, np.zeros(len(concept_names))))
    return out


def _scores(sim: np.ndarray, v: np.ndarray, min_similarity: float) -> np.ndarray:
    """s(m) = mean_k sum_c v[m, c] * clip(sim[k, c]); sim [K, n], v [I, n] -> [I]."""
    s = np.where(sim >= min_similarity, np.maximum(sim, 0.0), 0.0)
    return (v @ s.T).mean(axis=1)


def keyword_search(
    keywords: Sequence[str] | str,
    *,
    embedder: Any,
    concept_names: Sequence[str],
    w_a: np.ndarray,
    influencer_ids: Sequence[str],
    top_k: int = 3,
    top_concepts: int = 10,
    min_similarity: float = 0.0,
    categories: Mapping[str, str] | None = None,
    cutoff: float = 0.75,
    centre: bool = True,
    min_weight: float = 0.01,
) -> list[dict[str, Any]]:
    """Ranks influencers by the similarity of the keywords to their concepts (paper IV-H-3).

    Args:
      keywords: the query (a comma-separated string is split).
      embedder: a :class:`camera_jax.data.text.TextEmbedder` (or duck type).
      concept_names: concept vocabulary, length ``n``.
      w_a: float [I, n] historical concept distributions of the influencers.
      influencer_ids: ``I`` ids, row order of ``w_a``.
      top_k: number of results.
      top_concepts: size of each influencer's concept set ``T(m)``.
      min_similarity: similarities below it count as 0 (default: clip at 0).
      categories: optional id -> category, copied into the results.
      cutoff: difflib cutoff of the ``closest_word`` fallback.
      centre: use the mean-centred cosine (see the module docstring).
      min_weight: concepts with ``v[m, c]`` below it are not listed in
        ``matched_concepts`` (they still count in the score).

    Returns:
      Up to ``top_k`` dicts, best first: ``rank`` (1-based), ``influencer``,
      ``score`` (``s(m)``), ``matched_concepts`` (list of ``(concept,
      similarity, weight)``: the concepts of ``T(m)`` with a positive
      similarity and ``v[m, c] >= min_weight``, similarity = max over
      keywords, weight = ``v[m, c]``, sorted by contribution), ``top_concepts`` (names of ``T(m)``), ``keywords``
      (per keyword: ``keyword``, ``method``, ``word``), ``fallback``
      (``None`` or ``"string_similarity"``) and ``category`` when given.
      Never empty for a valid query.

    Raises:
      ValueError: empty query, a keyword without letters/digits, or a query
        sharing no character with any concept; the message is one line and
        names the closest known words.
    """
    w_a = np.asarray(w_a, dtype=np.float64)
    ids = [str(i) for i in influencer_ids]
    if w_a.ndim != 2 or w_a.shape != (len(ids), len(concept_names)):
        raise ValueError(
            f"w_a must be [len(influencer_ids), len(concept_names)] = [{len(ids)}, {len(concept_names)}],"
            f" got {list(w_a.shape)}"
        )
    if not ids:
        raise ValueError("no influencers to search")
    matches = resolve_keywords(
        keywords, embedder=embedder, concept_names=concept_names, cutoff=cutoff, centre=centre
    )

    t = max(1, min(int(top_concepts), w_a.shape[1]))
    top_idx = np.argsort(-w_a, axis=1, kind="stable")[:, :t]
    v = np.zeros_like(w_a)
    rows = np.arange(w_a.shape[0])[:, None]
    top_w = np.maximum(w_a[rows, top_idx], 0.0)
    denom = top_w.sum(axis=1, keepdims=True)
    # an account none of whose concepts is shown (no history post) has v = 0: it is matched
    # through no concept, rather than through concepts 0..t-1 it never showed
    v[rows, top_idx] = np.divide(top_w, denom, out=np.zeros_like(top_w), where=denom > 0)

    sim = np.stack([m.similarity for m in matches])
    scores = _scores(sim, v, min_similarity)
    fallback = None
    if scores.max(initial=0.0) <= 0:
        strings = _concept_strings(concept_names)
        matches = [
            KeywordMatch(m.keyword, "string_similarity", None, _string_similarity(m.keyword, strings))
            for m in matches
        ]
        sim = np.stack([m.similarity for m in matches])
        scores = _scores(sim, v, 0.0)
        fallback = "string_similarity"
        if scores.max(initial=0.0) <= 0:
            vocab = vocabulary_of(embedder)
            q = matches[0].keyword
            raise ValueError(
                f"no keyword of {[m.keyword for m in matches]} matches a concept or a known word;"
                f" {_closest_hint(q, vocab, concept_names)}"
            )

    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    clipped = np.where(sim >= min_similarity, np.maximum(sim, 0.0), 0.0)
    best_sim = clipped.max(axis=0)  # [n]
    mean_sim = clipped.mean(axis=0)
    described = [m.describe() for m in matches]
    results = []
    for i in order[: max(0, int(top_k))]:
        if scores[i] <= 0:
            break
        concepts = [int(c) for c in top_idx[i]]
        matched = [c for c in concepts if best_sim[c] > 0 and v[i, c] >= min_weight]
        matched.sort(key=lambda c: (-(v[i, c] * mean_sim[c]), concept_names[c]))
        row: dict[str, Any] = {
            "rank": len(results) + 1,
            "influencer": ids[i],
            "score": float(scores[i]),
            "matched_concepts": [
                (str(concept_names[c]), float(best_sim[c]), float(v[i, c])) for c in matched
            ],
            "top_concepts": [str(concept_names[c]) for c in concepts if v[i, c] > 0],
            "keywords": described,
            "fallback": fallback,
        }
        if categories is not None:
            row["category"] = categories.get(ids[i], "")
        results.append(row)
    return results


def _keyword_tokens(keywords: Sequence[str] | str) -> list[str]:
    if isinstance(keywords, str):
        keywords = keywords.split(",")
    toks: list[str] = []
    for k in keywords:
        toks.extend(tokenize(str(k).replace("_", " ")))
    if not toks:
        raise ValueError("no keywords given (need at least one word with a letter or digit)")
    return list(dict.fromkeys(toks))


def caption_keyword_search(
    keywords: Sequence[str] | str,
    captions_by_influencer: Mapping[str, Sequence[str]],
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """Baseline "keywords matching with posts' text" (paper IV-H-3).

    An influencer's score is the number of its posts whose tokenised caption
    contains every keyword token; ranked by that count, then by the fraction
    of its posts that match, then id.  Influencers with no matching post are
    left out, so the result is empty when no single post has all keywords.

    Returns:
      Up to ``top_k`` dicts: ``rank``, ``influencer``, ``score`` (matching
      posts), ``n_posts``, ``example`` (first matching caption).
    """
    toks = set(_keyword_tokens(keywords))
    hits = []
    for acc, captions in captions_by_influencer.items():
        captions = list(captions)
        matching = [c for c in captions if toks <= set(tokenize(c))]
        if matching:
            hits.append((len(matching), len(matching) / len(captions), str(acc), matching[0], len(captions)))
    hits.sort(key=lambda h: (-h[0], -h[1], h[2]))
    return [
        {"rank": r + 1, "influencer": acc, "score": float(n), "n_posts": total, "example": ex}
        for r, (n, _, acc, ex, total) in enumerate(hits[: max(0, int(top_k))])
    ]


def baseline_texts(dataset: Any, influencer_ids: Sequence[str]
                   ) -> tuple[dict[str, list[str]], dict[str, str], str]:
    """The two baselines' texts of each influencer: its captions (post file order,
    :func:`caption_keyword_search`), its profile text (:func:`exact_match_search`) and that
    text's source: ``"bio"``, or ``"captions"`` (all captions joined) when no influencer of the
    dataset has a bio, so that the profile baseline is not empty by construction."""
    captions: dict[str, list[str]] = {str(i): [] for i in influencer_ids}
    for p in dataset.posts:
        if p.account in captions:
            captions[p.account].append(p.caption)
    bio = {a.id: a.bio or "" for a in dataset.accounts}
    texts = {i: bio.get(i, "") for i in captions}
    if any(t.strip() for t in texts.values()):
        return captions, texts, "bio"
    return captions, {i: " ".join(c) for i, c in captions.items()}, "captions"


def exact_match_search(
    keywords: Sequence[str] | str,
    texts_by_account: Mapping[str, str],
    top_k: int | None = 3,
) -> list[dict[str, Any]]:
    """Baseline "direct search results from Instagram" (paper IV-H-3): exact profile matching.

    An account matches only if every keyword appears verbatim as a whole token
    of its profile text (bio; no stemming, no synonyms); matches are ranked by
    the total number of keyword occurrences, then id.  Long queries usually
    match nothing and return ``[]``.

    Returns:
      Up to ``top_k`` (all when ``None``) dicts: ``rank``, ``influencer``,
      ``score`` (occurrences).
    """
    toks = _keyword_tokens(keywords)
    hits = []
    for acc, text in texts_by_account.items():
        words = tokenize(text or "")
        counts = [words.count(t) for t in toks]
        if all(counts):
            hits.append((sum(counts), str(acc)))
    hits.sort(key=lambda h: (-h[0], h[1]))
    if top_k is not None:
        hits = hits[: max(0, int(top_k))]
    return [{"rank": r + 1, "influencer": acc, "score": float(n)} for r, (n, acc) in enumerate(hits)]


def top_concept_names(
    w_a: np.ndarray, concept_names: Sequence[str], influencer_ids: Sequence[str], top_concepts: int = 10
) -> dict[str, list[str]]:
    """Each influencer's T(m) as :func:`keyword_search` ranks it: the names of its
    ``top_concepts`` largest ``w_a`` concepts (stable order) with a weight above 0; for
    :func:`search_precision`'s ``concepts_of``."""
    w_a = np.asarray(w_a)
    order = np.argsort(-w_a, axis=1, kind="stable")[:, :top_concepts]
    return {
        str(i): [str(concept_names[c]) for c in order[j] if w_a[j, c] > 0]
        for j, i in enumerate(influencer_ids)
    }


def search_precision(
    results: Sequence[Mapping[str, Any]],
    relevant_concepts: Iterable[str],
    *,
    concepts_of: Mapping[str, Iterable[str]] | None = None,
) -> float:
    """Fraction of results whose concepts include at least one relevant concept.

    A result's concepts are ``concepts_of[result["influencer"]]`` when given
    (use it for the baselines, e.g. each influencer's top-10 ``w_a`` concepts),
    else its ``top_concepts``, else the names in ``matched_concepts``.  An
    empty result list has precision 0.0 (the query found nothing useful).
    """
    relevant = {str(c) for c in relevant_concepts}
    if not results:
        return 0.0
    good = 0
    for r in results:
        if concepts_of is not None:
            cs = set(map(str, concepts_of.get(r["influencer"], ())))
        elif "top_concepts" in r:
            cs = set(map(str, r["top_concepts"]))
        else:
            cs = {str(m[0]) for m in r.get("matched_concepts", ())}
        good += bool(cs & relevant)
    return good / len(results)


# -- on a finished run (camera_jax.run.Run) ---------------------------------------------------------


def run_influencers(run: Any) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """A finished run's searchable influencers: their ids (the dataset's order, those the run
    represents), the ``w_a`` rows the search ranks them by (the concepts their posts show,
    :func:`camera_jax.explain.shown.shown_w_a`) and their categories."""
    from camera_jax.explain.shown import shown_w_a

    infl = [a for a in run.dataset.accounts if a.kind == "influencer" and a.id in run.account_index]
    ids = [a.id for a in infl]
    return ids, shown_w_a(run, [run.account_index[i] for i in ids]), {a.id: a.category for a in infl}


def relevant_problem(relevant: Sequence[str], concept_names: Sequence[str]) -> str | None:
    """The line for the first of ``relevant`` that is not a concept (with the closest names), or
    None when every one is."""
    names = set(concept_names)
    unknown = [c for c in relevant if c not in names]
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], list(concept_names), n=3, cutoff=0.5)
    return f"{unknown[0]!r} is not a concept of the run" + (f"; closest: {', '.join(close)}" if close else "")


def search_run(run: Any, keywords: Sequence[str] | str, *, top_k: int = 3, top_concepts: int = 10,
               baselines: bool = True, relevant: Sequence[str] | None = None) -> dict[str, Any]:
    """``experiments/search.py``'s document: CAMERA's keyword search over the run's influencers
    (``camera``, with ``keywords`` and ``fallback``: :func:`keyword_search`), with ``baselines``
    the paper's two (``caption_match``, ``exact_match`` and ``exact_match_source``:
    :func:`baseline_texts`), and with ``relevant`` concepts (checked by :func:`relevant_problem`)
    each method's ``precision``: the share of its results whose T(m), the top ``top_concepts``
    concepts the search ranked them by, holds one."""
    ids, w_a, categories = run_influencers(run)
    keywords = keywords or []   # a list, or "a,b" as every search here reads it
    results = keyword_search(keywords, embedder=run.embedder,
                             concept_names=run.concepts, w_a=w_a, influencer_ids=ids, top_k=top_k,
                             top_concepts=top_concepts, categories=categories)
    doc: dict[str, Any] = {"keywords": results[0]["keywords"], "fallback": results[0]["fallback"],
                           "camera": results}
    if baselines:
        captions, bios, source = baseline_texts(run.dataset, ids)
        doc["caption_match"] = caption_keyword_search(keywords, captions, top_k=top_k)
        doc["exact_match"] = exact_match_search(keywords, bios, top_k=top_k)
        doc["exact_match_source"] = source
        for r in doc["caption_match"] + doc["exact_match"]:
            r["category"] = categories.get(r["influencer"], "")
    if relevant:
        problem = relevant_problem(relevant, run.concepts)
        if problem:
            raise ValueError(problem)
        top = top_concept_names(w_a, run.concepts, ids, top_concepts)
        doc["precision"] = {k: search_precision(doc[k], relevant, concepts_of=top)
                            for k in ("camera", "caption_match", "exact_match") if k in doc}
    return doc
