"""Captions and concept names as text: tokenizer, Word2Vec, embeddings (paper section III-B).

COSMIC needs two semantic vectors (paper section III-B, the definition of ``weight_t``): the post
semantic embedding ``t`` of a caption and the concept embedding ``l`` of every social media concept,
both from Word2Vec [37]. This module trains that Word2Vec (gensim) on the captions plus the concept
names and turns text into unit-norm vectors.

Tokenizer (:func:`tokenize`), applied to captions and search keywords; concept names follow the
same word rules (:func:`concept_tokens`, which keeps single characters):

* Unicode NFC normalisation (a decomposed ``cafe`` + U+0301 is the same token as ``café``), then
  lowercase;
* URLs (``http://...``, ``https://...``, ``www....``) and e-mail addresses are dropped;
* mentions ``@someone`` are dropped: they name accounts, not content, and would make account names
  look like topics;
* hashtags keep their word and lose the ``#``: ``#FoodieLife`` -> ``foodielife`` (camel case is not
  split: the hashtag is one token, as the community uses it);
* apostrophes inside a word are removed (``don't`` -> ``dont``, ``it's`` -> ``its``);
* underscores split words (``ready_to_eat`` -> ``ready``, ``to``, ``eat``) so caption words and
  concept names (``nature_landscape``) share tokens;
* everything that is not a letter or a digit (punctuation, emoji, symbols) separates tokens;
  letters are Unicode letters with their combining marks (``café`` stays one token, and so do
  words of Devanagari or Thai script, whose vowel signs and viramas are marks, not letters);
* tokens of a single character are dropped.

Why unit norm: the paper's semantic attention is ``weight_t = [t . l_1, ..., t . l_n] o h`` followed
by a softmax. Raw Word2Vec vectors have norms that vary with word frequency (roughly 1 to 10), so the
raw inner products would put that softmax anywhere between uniform and one-hot depending on the
vocabulary. With unit-norm ``t`` and ``l`` the inner product is a cosine in [-1, 1], which keeps the
softmax on a sane, data-independent scale.

Determinism: ``workers=1`` and a fixed ``seed`` make training sequential and seeded. gensim's
``hashfxn`` defaults to Python's ``hash``, which is salted per process (``PYTHONHASHSEED``); older
gensim versions seeded every initial word vector with it. gensim 4.4 initialises the vectors from
``numpy.random.default_rng(seed)`` instead (checked: the default hash gives identical vectors under
different ``PYTHONHASHSEED`` there), but we still pass :func:`stable_hash` (CRC-32) so that no use
of ``hashfxn`` can make the vectors depend on the process. ``tests/test_text.py`` trains in two
processes with different ``PYTHONHASHSEED`` and compares the vectors bit for bit.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import re
import shutil
import sys
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from camera_jax import atomic

__all__ = [
    "tokenize",
    "concept_tokens",
    "stable_hash",
    "train_word2vec",
    "TextEmbedder",
]

_log = logging.getLogger(__name__)

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_MENTION = re.compile(r"@[\w.]+")
# U+FE0E/U+FE0F choose an emoji's text or emoji form: they end a word ("\u2139\ufe0finfo",
# "1\ufe0f\u20e3pizza" are an emoji and a word)
_EMOJI_SELECTOR = re.compile("[\ufe0e\ufe0f]")
_APOSTROPHE = re.compile(r"(?<=[^\W_])['\u2019](?=[^\W_])")


def _marks_class() -> str:
    """The combining marks (Unicode categories Mn and Mc) as a regex character-class body: the
    vowel signs and viramas of Indic and Thai script, and the accents of decomposed (NFD) text,
    which ``str.isalnum`` (and so ``\\w``) does not count as letters."""
    # Mn and Mc only: an enclosing mark (Me: the keycap U+20E3 of "1\ufe0f\u20e3") makes a
    # symbol, not a letter; the emoji presentation selectors are replaced by a space first.
    cps = [cp for cp in range(sys.maxunicode + 1)
           if unicodedata.category(chr(cp)) in ("Mn", "Mc") and cp not in (0xFE0E, 0xFE0F)]
    ranges, start, prev = [], cps[0], cps[0]
    for cp in cps[1:] + [-1]:
        if cp != prev + 1:
            ranges.append(re.escape(chr(start)) + ("" if start == prev else "-" + re.escape(chr(prev))))
            start = cp
        prev = cp
    return "".join(ranges)


# Runs of Unicode letters and digits (\w minus the underscore), each with the combining marks
# that follow it; a mark with no letter before it (an emoji's variation selector U+FE0F in
# "\u2764\ufe0flove") is not part of a word.
@functools.cache
def _word() -> re.Pattern[str]:
    """The word pattern, compiled on first use (listing the marks scans every code point, about
    0.1 s, which a command that never tokenizes should not pay at import)."""
    return re.compile(r"(?:[^\W_][%s]*)+" % _marks_class())

_CONCEPT_REPEATS = 5  # each concept name is added to the corpus this many times (see train_word2vec)


def tokenize(text: str) -> list[str]:
    """Splits a caption (or a keyword, or a concept name) into lowercase word tokens.

    The rules are in the module docstring.

    >>> tokenize("Loving this #FoodieLife brunch with @best_friend!! https://t.co/xyz")
    ['loving', 'this', 'foodielife', 'brunch', 'with']
    >>> tokenize("ready_to_eat meals, 10/10 :)  I don't cook")
    ['ready', 'to', 'eat', 'meals', '10', '10', 'dont', 'cook']
    >>> tokenize("Café ☕️🍰 sunset_view www.example.com mail me: a.b@x.org")
    ['café', 'sunset', 'view', 'mail', 'me']
    >>> tokenize("")
    []
    """
    if not text:
        return []
    text = _EMOJI_SELECTOR.sub(" ", unicodedata.normalize("NFC", text)).lower()
    text = _URL.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    text = _MENTION.sub(" ", text)
    text = _APOSTROPHE.sub("", text)
    return [tok for tok in _word().findall(text) if len(tok) > 1]


def concept_tokens(name: str) -> list[str]:
    """Tokens of a concept name: :func:`tokenize`'s word rules (lowercase, apostrophes inside a
    word removed, every other non-letter, non-digit separates), so that a name and the captions
    share tokens (``t-shirt`` -> ``t``, ``shirt``; ``women's_wear`` -> ``womens``, ``wear``).

    Unlike :func:`tokenize`, single-character parts are kept (a concept name is curated text),
    and nothing is dropped as a URL, e-mail address or mention.

    >>> concept_tokens("ready_to_eat")
    ['ready', 'to', 'eat']
    >>> concept_tokens("High_Angle view")
    ['high', 'angle', 'view']
    >>> concept_tokens("t-shirt"), concept_tokens("women's_wear")
    (['t', 'shirt'], ['womens', 'wear'])
    """
    return _word().findall(_APOSTROPHE.sub("", unicodedata.normalize("NFC", name).lower()))


#: Above this mean cosine between concept embeddings Word2Vec has barely trained
#: (:func:`mean_concept_cosine`).
UNTRAINED_COSINE = 0.9


def mean_concept_cosine(l: np.ndarray) -> float:
    """The mean cosine between two different concepts' embeddings ``l`` [n, dim] (unit rows, as
    :meth:`TextEmbedder.embed_concepts` gives them; zero rows, concepts without a word vector, are
    left out); NaN with fewer than two.

    Word2Vec that has barely trained leaves every vector near its common drift direction: the
    cosines are then all close to 1, and the semantic attention (t . l) o h (after eq. 2) hardly differs
    between a post's concepts, so z' is about h / |h|. On the tiny preset 10 epochs gave a mean of
    0.99 and 100 epochs a spread of cosines (docs/deviations.md).

    >>> round(mean_concept_cosine(np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 0.0]])), 4)
    0.4667
    """
    l = np.asarray(l, np.float64)
    l = l[np.linalg.norm(l, axis=1) > 0]
    n = len(l)
    if n < 2:
        return float("nan")
    s = l.sum(0)
    return float((s @ s - np.einsum("ij,ij->", l, l)) / (n * (n - 1)))


def stable_hash(text: str) -> int:
    """A process-independent string hash (CRC-32), used as gensim's ``hashfxn``.

    >>> stable_hash("food1")
    2698096673
    """
    return zlib.crc32(text.encode("utf-8"))


class _Corpus:
    """A restartable iterable of token lists: the tokenised captions, then the concept names.

    gensim iterates the corpus once to build the vocabulary and once per epoch; each pass
    tokenises the captions again instead of keeping every token list in memory.
    """

    def __init__(self, captions: Iterable[str], concept_names: Sequence[str], repeats: int):
        self._captions = captions
        self._concepts = [concept_tokens(name) for name in concept_names]
        self._repeats = repeats

    def __iter__(self) -> Iterator[list[str]]:
        for caption in self._captions:
            tokens = tokenize(caption)
            if tokens:
                yield tokens
        for _ in range(self._repeats):
            for tokens in self._concepts:
                if tokens:
                    yield tokens


def train_word2vec(
    captions: Iterable[str],
    concept_names: Sequence[str],
    *,
    dim: int = 100,
    seed: int = 0,
    epochs: int = 10,
    window: int = 5,
    min_count: int = 1,
):
    """Trains the Word2Vec model behind ``t`` and ``l`` (paper section III-B).

    The corpus is every tokenised caption plus every concept name (its :func:`concept_tokens`) as a
    sentence of its own, repeated ``max(5, min_count)`` times so that every concept word reaches
    ``min_count`` and has a vector, and multi-word concepts (``nature_landscape``) tie their words
    together. CBOW, negative sampling (gensim defaults), ``workers=1`` and :func:`stable_hash`
    make the result a function of (captions, concept names, hyper-parameters, seed) only.

    Args:
      captions: caption strings. A re-iterable collection (list, tuple, or an object whose
        ``__iter__`` starts afresh) is streamed on every pass; a one-shot iterator or generator is
        first copied into a list of strings (never into token lists).
      concept_names: the concept vocabulary, e.g. ``Dataset.concepts``.
      dim: vector size (the paper does not give it; 100 matches ``d_u``).
      seed: gensim seed.
      epochs: training passes.
      window: context window.
      min_count: minimum corpus frequency of a caption word.

    Returns:
      The trained ``gensim.models.Word2Vec``; ``model.wv`` feeds :class:`TextEmbedder`.
    """
    from gensim.models import Word2Vec

    if iter(captions) is captions:  # a one-shot iterator: gensim needs several passes
        captions = list(captions)
    corpus = _Corpus(captions, concept_names, repeats=max(_CONCEPT_REPEATS, min_count))
    model = Word2Vec(
        vector_size=dim,
        window=window,
        min_count=min_count,
        workers=1,
        seed=seed,
        hashfxn=stable_hash,
        epochs=epochs,
    )
    model.build_vocab(corpus)
    if not model.wv.key_to_index:
        raise ValueError("Word2Vec corpus has no token: no caption word and no concept name")
    model.train(corpus, total_examples=model.corpus_count, epochs=model.epochs)
    return model


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalises rows; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class TextEmbedder:
    """Unit-norm text embeddings from trained word vectors (``t`` per caption, ``l`` per concept).

    Wraps a ``gensim.models.KeyedVectors`` (``Word2Vec(...).wv``).
    """

    _FILENAME = "keyed_vectors.kv"

    def __init__(self, keyed_vectors):
        self.kv = keyed_vectors
        self._vectors = np.asarray(keyed_vectors.vectors, dtype=np.float32)

    @classmethod
    def from_model(cls, model) -> "TextEmbedder":
        """Wraps a trained ``gensim.models.Word2Vec``."""
        return cls(model.wv)

    @property
    def dim(self) -> int:
        """The word vector size."""
        return int(self._vectors.shape[1])

    def _mean_unit(self, token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the known token vectors per list, L2-normalised; (float32 [N, dim], bool [N])."""
        index = self.kv.key_to_index
        lengths = np.zeros(len(token_lists), dtype=np.int64)
        flat: list[int] = []
        for i, tokens in enumerate(token_lists):
            ids = [index[t] for t in tokens if t in index]
            lengths[i] = len(ids)
            flat.extend(ids)
        owner = np.repeat(np.arange(len(token_lists)), lengths)
        sums = np.zeros((len(token_lists), self.dim), dtype=np.float64)
        if flat:
            np.add.at(sums, owner, self._vectors[np.asarray(flat, dtype=np.int64)])
        # The mean's direction equals the sum's: normalising the sum is normalising the mean.
        return _unit_rows(sums).astype(np.float32), lengths > 0

    def embed_captions(
        self, captions: Iterable[str], *, chunk_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Post semantic embeddings ``t`` (paper section III-B).

        ``t`` is the mean of the caption's known token vectors, L2-normalised.

        Args:
          captions: caption strings (any iterable; processed ``chunk_size`` at a time).
          chunk_size: captions per vectorised chunk (bounds the temporary memory).

        Returns:
          ``(T, has_text)``: ``T`` float32 [N, dim] with unit-norm rows, zero rows where
          ``has_text`` (bool [N]) is False, i.e. an empty caption or one without a known token.
        """
        out_t, out_has = [], []
        chunk: list[list[str]] = []
        for caption in captions:
            chunk.append(tokenize(caption))
            if len(chunk) == chunk_size:
                t, has = self._mean_unit(chunk)
                out_t.append(t)
                out_has.append(has)
                chunk = []
        if chunk or not out_t:
            t, has = self._mean_unit(chunk)
            out_t.append(t)
            out_has.append(has)
        return np.concatenate(out_t), np.concatenate(out_has)

    def embed_concepts(self, names: Sequence[str]) -> np.ndarray:
        """Concept embeddings ``l`` (paper section III-B): mean of the name's token vectors, unit norm.

        A name without any known token gets a zero row (and a logged warning); after
        :func:`train_word2vec` with the same concept names every concept is known.

        Returns:
          float32 [len(names), dim].
        """
        vectors, known = self._mean_unit([concept_tokens(name) for name in names])
        if not known.all():
            missing = [name for name, k in zip(names, known) if not k]
            _log.warning("%d concept(s) have no word vector: %s", len(missing), missing[:10])
        return vectors

    def embed_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm vectors of keywords.

        Each keyword goes through :func:`tokenize`, so ``"Ready_to_eat"`` or ``"ocean view"`` is the
        mean of its tokens' vectors.

        Returns:
          ``(vectors float32 [len(words), dim], known bool [len(words)])``; unknown keywords get a
          zero row.
        """
        return self._mean_unit([tokenize(word) for word in words])

    def similarity(self, words: Sequence[str], concept_names: Sequence[str]) -> np.ndarray:
        """Cosine similarities between keywords and concepts, float32 [len(words), len(names)].

        Rows of unknown keywords are zero.
        """
        w, _ = self.embed_words(words)
        c = self.embed_concepts(concept_names)
        return w @ c.T

    def save(self, path: str | os.PathLike) -> None:
        """Saves the word vectors into directory ``path`` (gensim's KeyedVectors format).

        The directory is written next to its final place and renamed, so an interrupted save never
        leaves a directory that :meth:`load` would trust. An existing ``path`` is replaced.
        """
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temp_path(path)
        tmp.mkdir()  # 0777 less the umask (mkdtemp's would be 0700)
        try:
            self.kv.save(str(tmp / self._FILENAME))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextEmbedder":
        """Loads an embedder written by :meth:`save`."""
        from gensim.models import KeyedVectors

        return cls(KeyedVectors.load(str(pathlib.Path(path) / cls._FILENAME)))
