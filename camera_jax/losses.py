"""Ranking losses for the CAMERA ranker, selected by name (``--loss=NAME``).

Every loss has one signature::

    loss(pos, neg, where, **hparams) -> scalar

* ``pos``: float ``[B]``, the score ``F(b_i, m_j)`` of each positive pair;
* ``neg``: float ``[B, N]``, the scores ``F(b_i, m_q)`` of ``N`` negatives sampled
  for that positive;
* ``where``: bool ``[B, N]``, True for a real (positive, negative) triplet, False for a
  padded row (the whole row False) or a padded negative.

A row whose mask is all False contributes nothing, masked scores never reach the value
or the gradient (they are replaced by 0 before any arithmetic, so even NaN or inf
padding is harmless), and an all-False batch gives 0 with zero, finite gradients. Each
loss is a pure ``jax.numpy`` function: differentiable, ``jax.jit``-able, and it
reduces in float32 over the whole (global) batch, so it gives the same value whether
the batch is sharded or not.

The registry (names are what ``--loss`` accepts):

=================== ======================================================== ============
name                per-triplet term / reduction                              defaults
=================== ======================================================== ============
``triplet``         ``max(s_neg - s_pos + margin, 0)`` (paper eq. 19),       margin=7.0
                    mean over valid triplets
``triplet_authors`` same term; sum / (#triplets with positive loss + 1e-16)   margin=7.0
                    (the authors' released code)
``hinge``           ``max(s_neg - s_pos + margin, 0)`` (optionally squared),  margin=1.0,
                    summed over a positive's negatives, mean over positives   squared=False
``bpr``             ``-log sigmoid(s_pos - s_neg)``, mean over valid triplets
``infonce``         ``-log softmax([s_pos, s_neg...] / T)[0]``, mean over     temperature
                    positives (T: the temperature)                           =1.0
``approx_ndcg``     ``1 - 1/log2(1 + approx_rank(pos))`` (ApproxNDCG with a   temperature
                    single relevant item), mean over positives               =1.0
=================== ======================================================== ============

Add a loss with one function and one line (see ``docs/adding-a-loss.md``)::

    @register("my_loss")
    def my_loss(pos, neg, where, *, alpha=1.0): ...

>>> import jax.numpy as jnp
>>> loss = get_loss("triplet", margin=1.0)
>>> float(loss(jnp.array([2.0]), jnp.array([[1.5, 0.0]]), jnp.array([[True, True]])))
0.25
"""

from __future__ import annotations

import functools
import inspect
import numbers
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "REGISTRY",
    "LossFn",
    "approx_ndcg",
    "bpr",
    "check",
    "get_loss",
    "hinge",
    "hparams_of",
    "infonce",
    "masked_mean",
    "parse_hparams",
    "register",
    "sanitize",
    "settings_of",
    "triplet",
    "triplet_authors",
]

#: A loss with its hyper-parameters bound: ``(pos [B], neg [B, N], where [B, N]) -> scalar``.
LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

#: Every registered loss by name. ``--loss=NAME`` looks the name up here.
REGISTRY: dict[str, Callable[..., jax.Array]] = {}


def register(name: str, *, overwrite: bool = False) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """Decorator that adds a loss to :data:`REGISTRY` under ``name`` and returns it unchanged.

    The function must take ``(pos, neg, where)`` positionally and its hyper-parameters as
    keyword arguments with defaults; a function that does not, or an existing name (unless
    ``overwrite=True``), raises ``ValueError`` when it is registered, not at the first step.

    >>> @register("triplet")
    ... def my_triplet(pos, neg, where, *, margin=1.0):
    ...     return jnp.sum(neg)
    Traceback (most recent call last):
    ...
    ValueError: loss 'triplet' is already registered; pass overwrite=True to replace it
    >>> @register("doc_example")
    ... def no_default(pos, neg, where, *, gamma):
    ...     return gamma * jnp.sum(neg)
    Traceback (most recent call last):
    ...
    ValueError: loss 'doc_example': hyper-parameter 'gamma' needs a default
    >>> "doc_example" in REGISTRY
    False
    """

    def decorator(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        if name in REGISTRY and not overwrite:
            raise ValueError(f"loss {name!r} is already registered; pass overwrite=True to replace it")
        _check_signature(name, fn)
        REGISTRY[name] = fn
        return fn

    return decorator


def _check_signature(name: str, fn: Callable[..., jax.Array]) -> None:
    """Raises ValueError unless ``fn`` takes (pos, neg, where) then keywords with defaults."""
    params = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < 3 or any(p.kind not in positional for p in params[:3]):
        raise ValueError(f"loss {name!r}: must take (pos, neg, where) positionally first")
    for p in params[3:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"loss {name!r}: name its hyper-parameters (no *{p.name})")
        if p.default is p.empty:
            raise ValueError(f"loss {name!r}: hyper-parameter {p.name!r} needs a default")


def hparams_of(name: str) -> dict[str, Any]:
    """The keyword hyper-parameters the loss ``name`` accepts, with their defaults.

    >>> hparams_of("triplet")
    {'margin': 7.0}
    >>> hparams_of("bpr")
    {}
    """
    fn = _lookup(name)
    params = list(inspect.signature(fn).parameters.values())[3:]
    return {
        p.name: p.default
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def get_loss(name: str, **hparams: Any) -> LossFn:
    """The loss ``name`` with the hyper-parameters it accepts bound.

    ``hparams`` may carry settings for other losses too (e.g. the main job passes every
    loss flag): a key the chosen loss does not accept is ignored, and so is a value of
    ``None`` (meaning "use the loss's own default", so a flag left unset does not override
    a loss-specific default such as ``hinge``'s margin 1.0). An unknown ``name`` raises
    ``ValueError`` listing the registered names.

    >>> import jax.numpy as jnp
    >>> pos, neg, where = jnp.array([0.0]), jnp.array([[0.0]]), jnp.array([[True]])
    >>> float(get_loss("triplet")(pos, neg, where))                 # default margin 7.0
    7.0
    >>> float(get_loss("triplet", margin=2.0, temperature=0.5)(pos, neg, where))
    2.0
    >>> float(get_loss("hinge", margin=None)(pos, neg, where))      # None: hinge's own 1.0
    1.0
    >>> get_loss("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown loss 'nope'; available: ...
    """
    fn = _lookup(name)
    return functools.partial(fn, **_given(name, hparams))


def _given(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``hparams`` that :func:`get_loss` binds: accepted by ``name``, not None."""
    accepted = hparams_of(name)
    return {k: v for k, v in hparams.items() if k in accepted and v is not None}


def settings_of(name: str, **hparams: Any) -> dict[str, Any]:
    """Every keyword setting of the loss ``name`` as ``get_loss(name, **hparams)`` runs it: its
    defaults, overridden by the given values it binds (the main job records this in
    metrics.json, so a default the flags left unset is on record too).

    >>> settings_of("triplet")
    {'margin': 7.0}
    >>> settings_of("hinge", margin=None, temperature=0.5)   # hinge's own margin; no temperature
    {'margin': 1.0, 'squared': False}
    >>> settings_of("infonce", margin=3.0, temperature=0.5)
    {'temperature': 0.5}
    """
    return {**hparams_of(name), **_given(name, hparams)}


def check(name: str, hparams: Mapping[str, Any] | None = None, *, evaluate: bool = True
          ) -> str | None:
    """Why the loss ``name`` with ``hparams`` cannot train (one line), or None when it can.

    Binds the settings as :func:`get_loss` does and traces the loss and its gradient on a
    small fixed batch (two positives with two negatives each, one negative masked): an
    exception there (a loss raises ``ValueError`` for a setting it refuses) is the problem.
    With ``evaluate`` (the default) it also computes them, and a non-finite value or gradient
    is the problem; ``evaluate=False`` only traces (``jax.eval_shape``), which starts no JAX
    backend (the main job checks its flags that way before ``jax.distributed.initialize``).
    The main job checks its loss before any work, so ``--temperature=0`` stops it in one
    line instead of after the concept layer with every ranker step skipped as NaN. Works for
    any registered loss, yours included.

    >>> check("triplet", {"margin": 2.0}) is None
    True
    >>> check("infonce", {"temperature": -1.0}, evaluate=False)
    'temperature must be > 0 and finite, got -1.0'
    >>> check("hinge", {"margin": float("inf")})
    'the loss or its gradient is not finite on a test batch'
    >>> check("hinge", {"margin": float("inf")}, evaluate=False) is None   # only a value shows it
    True
    """
    mask = np.array([[True, True], [True, False]])
    args = (np.array([1.0, -0.5], np.float32), np.array([[0.5, -1.0], [2.0, 0.0]], np.float32))
    try:
        fn = get_loss(name, **dict(hparams or {}))
        step = jax.value_and_grad(lambda p, n: fn(p, n, mask), argnums=(0, 1))
        if not evaluate:
            jax.eval_shape(step, *args)
            return None
        value, grads = step(*args)
    except (ValueError, TypeError) as e:   # one line: a JAX error's text runs over several
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    finite = bool(np.isfinite(value)) and all(bool(np.isfinite(g).all()) for g in grads)
    return None if finite else "the loss or its gradient is not finite on a test batch"


def _positive(name: str, value: Any) -> None:
    """Raises ValueError unless a number ``value`` (Python or numpy) is finite and > 0 (traced
    values pass): an infinite temperature would leave every score's gradient 0.

    >>> _positive("temperature", np.float32(0.0))
    Traceback (most recent call last):
    ...
    ValueError: temperature must be > 0 and finite, got 0.0
    """
    if isinstance(value, numbers.Real) and not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be > 0 and finite, got {float(value)!r}")


def parse_hparams(name: str, spec: str) -> dict[str, Any]:
    """The keyword settings ``spec`` = ``"key=value,..."`` for the loss ``name``, typed.

    Each key must be a hyper-parameter of the loss (:func:`hparams_of`); its value is read as
    the type its annotation names (bool: true/false, int, float, str, or an Optional of one),
    else as the type of its default (str for a None default). Raises
    ``ValueError`` with one line naming the offending item. The main job's ``--loss_hparams``.

    >>> parse_hparams("hinge", "margin=0.5,squared=true")
    {'margin': 0.5, 'squared': True}
    >>> parse_hparams("triplet", "")
    {}
    >>> parse_hparams("triplet", "gamma=2")
    Traceback (most recent call last):
    ...
    ValueError: 'gamma=2': loss 'triplet' has no hyper-parameter 'gamma' (it has: margin)
    >>> parse_hparams("hinge", "margin=1,margin=2")
    Traceback (most recent call last):
    ...
    ValueError: 'margin=2': margin is given twice in 'margin=1,margin=2'; give it once
    """
    accepted = hparams_of(name)
    out: dict[str, Any] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"{item!r}: expected key=value")
        if key in out:
            raise ValueError(f"{item!r}: {key} is given twice in {spec!r}; give it once")
        if key not in accepted:
            raise ValueError(f"{item!r}: loss {name!r} has no hyper-parameter {key!r} "
                             f"(it has: {', '.join(sorted(accepted)) or 'none'})")
        default = accepted[key]
        kind = _hparam_type(name, key, default)
        if kind not in (bool, int, float, str):   # a tuple, an array: no text form (items split at ",")
            raise ValueError(f"{item!r}: {key} defaults to a {kind.__name__} ({default!r}); "
                             "--loss_hparams sets bool, int, float and str settings only")
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                out[key] = text.lower() == "true"
            elif kind in (int, float):
                out[key] = kind(text)
            else:
                out[key] = text
        except ValueError:
            raise ValueError(f"{item!r}: {key} must be {kind.__name__}, "
                             f"like its default {default!r}") from None
    return out


def _hparam_type(name: str, key: str, default: Any) -> type:
    """The type a ``--loss_hparams`` value of ``key`` is read as: the annotation where it is (an
    Optional of) bool, int, float or str (``scale: float = 1`` reads 0.5; ``clip: float | None =
    None`` reads 2.0 as a float), else the default's type (str for a None default)."""
    try:
        hint = typing.get_type_hints(_lookup(name)).get(key)
    except Exception:  # noqa: BLE001 -- an annotation that does not resolve: use the default's
        hint = None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:
        hint = args[0]
    if hint in (bool, int, float, str):
        return hint
    return type(default) if default is not None else str


def _lookup(name: str) -> Callable[..., jax.Array]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(REGISTRY))}") from None


# --------------------------------------------------------------------------- helpers


def sanitize(pos: jax.Array, neg: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Float32 scores with padding replaced by 0, the bool mask and the valid-row mask.

    Returns ``(pos [B], neg [B, N], where [B, N] bool, row [B] bool)`` where ``row`` is
    True for a positive with at least one valid negative. Replacing masked scores before
    any arithmetic keeps NaN/inf padding out of both value and gradient. ``where`` has ``neg``'s
    shape [B, N], or is a row mask [B] (every negative of a row valid or not); any other shape
    raises ValueError, so that no loss counts a broadcast mask's entries as its own.

    >>> p, n, w, r = sanitize(jnp.array([1.0, jnp.nan]), jnp.array([[2.0, jnp.inf], [jnp.nan, 3.0]]),
    ...                       jnp.array([[True, False], [False, False]]))
    >>> p.tolist(), n.tolist(), r.tolist()
    ([1.0, 0.0], [[2.0, 0.0], [0.0, 0.0]], [True, False])
    """
    where = jnp.asarray(where, dtype=bool)
    shape = jnp.shape(neg)
    if where.shape == shape[:1] and len(shape) == 2:
        where = jnp.broadcast_to(where[:, None], shape)
    elif where.shape != shape:
        raise ValueError(f"where has shape {where.shape}: expected neg's {shape} or a row mask "
                         f"{shape[:1]}")
    row = jnp.any(where, axis=-1)
    pos = jnp.where(row, jnp.asarray(pos, jnp.float32), 0.0)
    neg = jnp.where(where, jnp.asarray(neg, jnp.float32), 0.0)
    return pos, neg, where, row


def masked_mean(values: jax.Array, where: jax.Array) -> jax.Array:
    """Mean of ``values`` over the entries where ``where`` is True; 0 when there are none.

    The gradient is finite (zero) when nothing is valid.

    >>> float(masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([True, True, False])))
    2.0
    >>> float(masked_mean(jnp.array([1.0]), jnp.array([False])))
    0.0
    """
    where = jnp.asarray(where, dtype=bool)
    total = jnp.sum(jnp.where(where, values, 0.0))
    count = jnp.sum(where).astype(total.dtype)
    return total / jnp.maximum(count, 1.0)


def _hinge_terms(pos: jax.Array, neg: jax.Array, margin: float) -> jax.Array:
    # jax.nn.relu has gradient 0 at 0 (jnp.maximum would split it 0.5/0.5).
    return jax.nn.relu(neg - pos[:, None] + margin)


# --------------------------------------------------------------------------- losses


@register("triplet")
def triplet(pos: jax.Array, neg: jax.Array, where: jax.Array, *, margin: float = 7.0) -> jax.Array:
    """The paper's triplet loss, eq. 19, averaged over the valid triplets.

    ``L = mean over valid (i, q) of max(F(b_i, m_q) - F(b_i, m_j) + margin, 0)``, with the
    paper's margin 7.0 (Sec. IV-B). Unlike the authors' code (see :func:`triplet_authors`)
    the mean counts every valid triplet, including those already satisfied, so the
    gradient per triplet does not grow as training succeeds.

    Hand-computed: margin 1, pos 2, negatives 1.5 and 0 give terms 0.5 and 0, mean 0.25.

    >>> import jax.numpy as jnp
    >>> float(triplet(jnp.array([2.0]), jnp.array([[1.5, 0.0]]), jnp.array([[True, True]]), margin=1.0))
    0.25
    """
    pos, neg, where, _ = sanitize(pos, neg, where)
    return masked_mean(_hinge_terms(pos, neg, margin), where)


@register("triplet_authors")
def triplet_authors(pos: jax.Array, neg: jax.Array, where: jax.Array, *, margin: float = 7.0) -> jax.Array:
    """Eq. 19 with the authors' reduction: sum / (number of triplets with positive loss + 1e-16).

    The per-triplet term is the paper's eq. 19; the authors' released code then divides the
    sum over the batch by the count of *active* triplets (loss > 0) plus 1e-16 instead of by
    the batch size. The count is an integer (no gradient flows through it), so the gradient
    of each active triplet is ``1 / #active``: the loss is the mean over active triplets
    only. When nothing is active (or everything is masked) the value is 0 with zero gradient.
    (Their L1 penalty of 0.001 on the weight matrices is a model regulariser, added by the
    trainer, not part of this function.)

    Hand-computed: margin 1, pos 2, negatives 1.5 and 0 give terms 0.5 and 0; one active
    triplet, so 0.5 / 1 = 0.5 (vs 0.25 for :func:`triplet`).

    >>> import jax.numpy as jnp
    >>> float(triplet_authors(jnp.array([2.0]), jnp.array([[1.5, 0.0]]), jnp.array([[True, True]]), margin=1.0))
    0.5
    """
    pos, neg, where, _ = sanitize(pos, neg, where)
    terms = jnp.where(where, _hinge_terms(pos, neg, margin), 0.0)
    active = jnp.sum(where & (terms > 0)).astype(terms.dtype)
    # The authors divide by (active + 1e-16): the same value in float32 (active is a whole
    # number, and the sum is 0 when it is 0), but a 1e16 gradient factor when no triplet is
    # active, which only the zero gradient of the inactive terms keeps finite.
    return jnp.sum(terms) / jnp.maximum(active, 1.0)


@register("hinge")
def hinge(
    pos: jax.Array, neg: jax.Array, where: jax.Array, *, margin: float = 1.0, squared: bool = False
) -> jax.Array:
    """Pairwise hinge with margin 1: summed over each positive's negatives, then mean over positives.

    ``L = mean over valid rows i of sum over valid q of max(s_iq - s_i + margin, 0)^p`` with
    ``p = 2`` when ``squared`` (squared hinge: a gradient proportional to the violation,
    zero at the margin) and ``p = 1`` otherwise. Two differences from :func:`triplet`
    (eq. 19): the default margin is 1.0 (suited to scores of order 1, e.g. logits, where
    the paper's 7.0 would keep every triplet active) and the reduction is *per positive*:
    a positive's violations add up, so a positive with more valid negatives weighs more
    and with ``N`` negatives the value is ``N`` times triplet's at the same margin when
    nothing is padded.

    Hand-computed: pos 2, negatives 1.5 and 2.5, margin 1 give terms 0.5 and 1.5; their
    sum is 2.0 (squared: 0.25 + 2.25 = 2.5).

    >>> import jax.numpy as jnp
    >>> args = jnp.array([2.0]), jnp.array([[1.5, 2.5]]), jnp.array([[True, True]])
    >>> float(hinge(*args)), float(hinge(*args, squared=True))
    (2.0, 2.5)
    """
    pos, neg, where, row = sanitize(pos, neg, where)
    terms = _hinge_terms(pos, neg, margin)
    if squared:
        terms = jnp.square(terms)
    per_row = jnp.sum(jnp.where(where, terms, 0.0), axis=-1)
    return masked_mean(per_row, row)


@register("bpr")
def bpr(pos: jax.Array, neg: jax.Array, where: jax.Array) -> jax.Array:
    """Bayesian personalised ranking (pairwise logistic): ``-log sigmoid(s_pos - s_neg)``.

    Mean over valid triplets; computed as ``optax.losses.sigmoid_binary_cross_entropy``
    with label 1 on the logit ``s_pos - s_neg`` (numerically stable log-sigmoid). A smooth
    relative of eq. 19 without a margin: it never reaches zero, so every pair keeps a
    (shrinking) gradient.

    Hand-computed: pos 1, negative 1 gives log 2 = 0.6931; negative 1 - ln 3 gives
    -log(1/(1 + 1/3)) = log(4/3) = 0.2877; mean 0.4904.

    >>> import jax.numpy as jnp, math
    >>> v = bpr(jnp.array([1.0]), jnp.array([[1.0, 1.0 - math.log(3.0)]]), jnp.array([[True, True]]))
    >>> round(float(v), 4)
    0.4904
    """
    pos, neg, where, _ = sanitize(pos, neg, where)
    terms = optax.losses.sigmoid_binary_cross_entropy(pos[:, None] - neg, jnp.ones_like(neg))
    return masked_mean(terms, where)


@register("infonce")
def infonce(pos: jax.Array, neg: jax.Array, where: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Sampled softmax (InfoNCE) over the positive and its negatives, mean over positives.

    Row ``i``: ``-log softmax([s_i, s_i1, ..., s_iN] / T)[0]`` with masked negatives left
    out of the softmax (``optax.losses.softmax_cross_entropy_with_integer_labels`` with
    label 0 and a ``where`` mask). Rows with no valid negative are padding and are not
    counted. ListNet's top-1 cross-entropy with relevance (1, 0, ..., 0) is this same loss.

    Hand-computed: pos 0 and negatives (0, 0) give log 3 = 1.0986; the second negative
    masked gives log 2 = 0.6931.

    >>> import jax.numpy as jnp
    >>> pos, neg = jnp.zeros(1), jnp.zeros((1, 2))
    >>> round(float(infonce(pos, neg, jnp.array([[True, True]]))), 4)
    1.0986
    >>> round(float(infonce(pos, neg, jnp.array([[True, False]]))), 4)
    0.6931
    """
    _positive("temperature", temperature)
    pos, neg, where, row = sanitize(pos, neg, where)
    logits = jnp.concatenate([pos[:, None], neg], axis=-1) / temperature
    valid = jnp.concatenate([row[:, None], where], axis=-1)
    labels = jnp.zeros(pos.shape, jnp.int32)
    per_row = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, where=valid)
    return masked_mean(per_row, row)


@register("approx_ndcg")
def approx_ndcg(pos: jax.Array, neg: jax.Array, where: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Listwise ApproxNDCG (Qin, Liu, Li 2010) on each positive's list, ``1 - NDCG``.

    The list of row ``i`` is the positive followed by its valid negatives, with relevance
    (1, 0, ..., 0). The positive's rank is replaced by the smooth rank
    ``r_i = 1 + sum over valid q of sigmoid((s_iq - s_i) / T)``; with one relevant item the
    ideal DCG is 1, so ``NDCG_i = 1 / log2(1 + r_i)`` and the loss is the mean over valid
    rows of ``1 - NDCG_i``, in [0, 1). Unlike the pairwise losses it weighs a violation by
    where it moves the positive in the list: gains near the top of the ranking count most,
    which is what MRR and R@k reward. (ListMLE would not be a different loss here: with a
    single relevant item its first term is :func:`infonce` and the rest depend only on an
    arbitrary order of the negatives.)

    Hand-computed: pos 0 and negatives (0, 0) give r = 1 + 0.5 + 0.5 = 2 and
    1 - 1/log2(3) = 0.3691.

    >>> import jax.numpy as jnp
    >>> round(float(approx_ndcg(jnp.zeros(1), jnp.zeros((1, 2)), jnp.array([[True, True]]))), 4)
    0.3691
    """
    _positive("temperature", temperature)
    pos, neg, where, row = sanitize(pos, neg, where)
    above = jax.nn.sigmoid((neg - pos[:, None]) / temperature)
    rank = 1.0 + jnp.sum(jnp.where(where, above, 0.0), axis=-1)
    ndcg = 1.0 / jnp.log2(1.0 + rank)
    return masked_mean(1.0 - ndcg, row)
