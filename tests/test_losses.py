"""Tests for camera_jax.losses: hand-computed values, masking, gradients, training, registry."""

from __future__ import annotations

import doctest
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camera_jax import losses

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "adding-a-loss.md"
BUILTIN = ("triplet", "triplet_authors", "hinge", "bpr", "infonce", "approx_ndcg")


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# The 2x3 example: row 0 has two valid negatives (0 and 2), row 1 one (1); the masked
# slots hold values that would change every loss if they leaked in.
POS = np.array([1.0, 0.5], np.float32)
NEG = np.array([[0.0, 2.0, 5.0], [1.0, -3.0, 4.0]], np.float32)
WHERE = np.array([[True, True, False], [True, False, False]])

# Hand-computed values on the example (comments give the per-triplet terms).
EXPECTED: dict[tuple[str, tuple[tuple[str, object], ...]], float] = {
    # margin 1: relu(0-1+1)=0, relu(2-1+1)=2, relu(1-.5+1)=1.5 -> 3.5 / 3 valid triplets
    ("triplet", (("margin", 1.0),)): 3.5 / 3,
    # margin 7 (paper): 6, 8, 7.5 -> 21.5 / 3
    ("triplet", ()): 21.5 / 3,
    # authors: 3.5 / 2 active triplets (the 0 term is not counted)
    ("triplet_authors", (("margin", 1.0),)): 3.5 / 2,
    # margin 7: all 3 active
    ("triplet_authors", ()): 21.5 / 3,
    # hinge (margin 1): per-row sums 2 and 1.5 -> mean over 2 positives
    ("hinge", ()): 1.75,
    # squared: 0 + 4 = 4 and 2.25 -> 3.125
    ("hinge", (("squared", True),)): 3.125,
    # bpr: softplus(s_neg - s_pos) = softplus(-1), softplus(1), softplus(0.5)
    ("bpr", ()): (softplus(-1.0) + softplus(1.0) + softplus(0.5)) / 3,
    # infonce: row 0 log(e^1 + e^0 + e^2) - 1, row 1 log(e^.5 + e^1) - .5
    ("infonce", ()): (
        (math.log(math.e + 1 + math.e**2) - 1) + (math.log(math.exp(0.5) + math.e) - 0.5)
    ) / 2,
    # T=2 halves every logit
    ("infonce", (("temperature", 2.0),)): (
        (math.log(math.exp(0.5) + 1 + math.e) - 0.5) + (math.log(math.exp(0.25) + math.exp(0.5)) - 0.25)
    ) / 2,
    # approx_ndcg: r0 = 1 + sig(-1) + sig(1) = 2, r1 = 1 + sig(0.5)
    ("approx_ndcg", ()): ((1 - 1 / math.log2(3.0)) + (1 - 1 / math.log2(2 + sig(0.5)))) / 2,
}


def test_registry_has_the_builtin_losses() -> None:
    assert set(BUILTIN) <= set(losses.REGISTRY)


def test_every_registered_loss_has_a_hand_computed_value() -> None:
    """A new loss needs an EXPECTED entry (docs/adding-a-loss.md, "Testing it")."""
    missing = sorted(set(losses.REGISTRY) - {name for name, _ in EXPECTED})
    assert not missing, f"add a hand-computed value to EXPECTED for: {', '.join(missing)}"


def test_register_checks_the_signature_when_registering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "REGISTRY", dict(losses.REGISTRY))
    for fn, message in [
        (lambda pos, neg: jnp.sum(neg), "must take (pos, neg, where) positionally first"),
        (lambda pos, neg, *, where: jnp.sum(neg), "must take (pos, neg, where) positionally first"),
        (lambda pos, neg, where, *, gamma: jnp.sum(neg), "hyper-parameter 'gamma' needs a default"),
        (lambda pos, neg, where, **kw: jnp.sum(neg), "name its hyper-parameters (no *kw)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"loss 'bad': {message}")):
            losses.register("bad")(fn)
    assert "bad" not in losses.REGISTRY
    losses.register("good")(lambda pos, neg, where, gamma=1.0: gamma * jnp.sum(neg))
    assert losses.hparams_of("good") == {"gamma": 1.0}


def _annotated(pos, neg, where, *, scale: float = 1, clip: float | None = None, tag=None):
    return scale * jnp.sum(neg)


def test_loss_hparams_are_read_by_their_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scale: float = 1` takes 0.5 and `clip: float | None = None` a float, not a string; an
    unannotated None default reads text; a value of the wrong type is refused in one line."""
    monkeypatch.setattr(losses, "REGISTRY", dict(losses.REGISTRY))
    losses.register("annotated")(_annotated)
    assert losses.parse_hparams("annotated", "scale=0.5,clip=2,tag=x") == {
        "scale": 0.5, "clip": 2.0, "tag": "x"}
    assert isinstance(losses.parse_hparams("annotated", "clip=2")["clip"], float)
    with pytest.raises(ValueError, match=re.escape(
            "'clip=big': clip must be float, like its default None")):
        losses.parse_hparams("annotated", "clip=big")
    assert losses.parse_hparams("hinge", "margin=2")["margin"] == 2.0   # unchanged for the built-ins


def test_a_setting_without_a_text_form_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """--loss_hparams splits items at commas, so a tuple default has no text form: refused in one
    line naming the setting, not handed to the loss as a string."""
    monkeypatch.setattr(losses, "REGISTRY", dict(losses.REGISTRY))

    @losses.register("weighted")
    def weighted(pos, neg, where, *, weights=(1.0, 2.0)):
        return jnp.zeros(())

    with pytest.raises(ValueError, match=re.escape(
            "'weights=3': weights defaults to a tuple ((1.0, 2.0)); --loss_hparams sets bool, "
            "int, float and str settings only")):
        losses.parse_hparams("weighted", "weights=3")


def test_a_numpy_temperature_is_range_checked_like_a_python_float() -> None:
    for bad in (np.float32(0.0), np.float64(-1.0), np.inf):
        with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
            losses.get_loss("infonce", temperature=bad)(POS, NEG, WHERE)
    assert np.isfinite(float(losses.get_loss("infonce", temperature=np.float32(2.0))(POS, NEG, WHERE)))


def test_check_reports_a_failing_loss_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "REGISTRY", dict(losses.REGISTRY))

    @losses.register("two_lines")
    def two_lines(pos, neg, where, *, gamma: float = 1.0):
        raise ValueError("first line\nsecond line")

    assert losses.check("two_lines") == "first line"


def test_triplet_authors_with_no_active_triplet_is_zero_with_a_zero_gradient() -> None:
    """The authors' 1e-16 denominator, replaced by max(count, 1): equal values, no 1e16 factor."""
    pos, neg, where = jnp.array([10.0]), jnp.array([[0.0]]), jnp.array([[True]])
    value, grad = jax.value_and_grad(
        lambda p: losses.triplet_authors(p, neg, where, margin=1.0))(pos)
    assert float(value) == 0.0 and float(grad[0]) == 0.0


@pytest.mark.parametrize("name, hparams", list(EXPECTED), ids=lambda v: str(v))
def test_hand_computed_values(name: str, hparams: tuple) -> None:
    fn = losses.get_loss(name, **dict(hparams))
    value = fn(jnp.asarray(POS), jnp.asarray(NEG), jnp.asarray(WHERE))
    assert value.shape == ()
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), EXPECTED[(name, hparams)], rtol=1e-5)
    np.testing.assert_allclose(float(jax.jit(fn)(POS, NEG, WHERE)), EXPECTED[(name, hparams)], rtol=1e-5)


def test_the_values_are_the_simple_cases_too() -> None:
    # Numbers written out, as a guard on the formulas above.
    assert abs(EXPECTED[("bpr", ())] - 0.866867) < 1e-6
    assert abs(EXPECTED[("approx_ndcg", ())] - 0.325061) < 1e-6


def test_hinge_is_n_times_triplet_without_padding() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=4).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    where = np.ones((4, 3), bool)
    t = losses.triplet(pos, neg, where, margin=1.0)
    h = losses.hinge(pos, neg, where, margin=1.0)
    np.testing.assert_allclose(float(h), 3 * float(t), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.REGISTRY))
def test_a_row_mask_is_its_broadcast_and_a_column_mask_is_refused(name: str) -> None:
    """where [B] masks whole rows (its broadcast over the negatives); [B, 1] would broadcast to
    [B, N] inside the arithmetic while the losses count its B entries: refused."""
    fn = losses.get_loss(name)
    rows = np.array([True, False])
    np.testing.assert_allclose(float(fn(POS, NEG, rows)),
                               float(fn(POS, NEG, np.broadcast_to(rows[:, None], NEG.shape))),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"where has shape \(2, 1\): expected neg's \(2, 3\)"):
        fn(POS, NEG, np.ones((2, 1), bool))


@pytest.mark.parametrize("name", sorted(losses.REGISTRY))
@pytest.mark.parametrize("fill", [np.nan, np.inf, 1e9, -1e9])
def test_masked_entries_change_neither_value_nor_gradient(name: str, fill: float) -> None:
    fn = losses.get_loss(name)
    # Append a fully padded row too; it must not count.
    pos = np.append(POS, 0.0).astype(np.float32)
    neg = np.concatenate([NEG, np.zeros((1, 3), np.float32)])
    where = np.concatenate([WHERE, np.zeros((1, 3), bool)])
    garbage_neg = np.where(where, neg, fill).astype(np.float32)
    garbage_pos = pos.copy()
    garbage_pos[-1] = fill

    clean = fn(POS, NEG, WHERE)
    dirty = fn(garbage_pos, garbage_neg, where)
    np.testing.assert_allclose(float(dirty), float(clean), rtol=1e-6)

    g_pos, g_neg = jax.grad(fn, argnums=(0, 1))(jnp.asarray(garbage_pos), jnp.asarray(garbage_neg), where)
    assert np.all(np.isfinite(g_pos)) and np.all(np.isfinite(g_neg))
    assert np.all(np.asarray(g_neg)[~where] == 0.0)
    assert float(g_pos[-1]) == 0.0
    c_pos, c_neg = jax.grad(fn, argnums=(0, 1))(jnp.asarray(POS), jnp.asarray(NEG), WHERE)
    np.testing.assert_allclose(np.asarray(g_pos)[:2], np.asarray(c_pos), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_neg)[:2], np.asarray(c_neg), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.REGISTRY))
def test_all_masked_gives_zero_with_finite_gradients(name: str) -> None:
    fn = jax.jit(losses.get_loss(name))
    pos = jnp.array([1.0, jnp.nan])
    neg = jnp.full((2, 3), jnp.nan)
    where = jnp.zeros((2, 3), bool)
    assert float(fn(pos, neg, where)) == 0.0
    g_pos, g_neg = jax.grad(fn, argnums=(0, 1))(pos, neg, where)
    assert np.all(np.asarray(g_pos) == 0.0) and np.all(np.asarray(g_neg) == 0.0)


def _toy_problem(seed: int = 0, b: int = 8, n: int = 4, d: int = 5):
    """A linear scorer s = x . w on random features; the true scorer ranks positives first."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x_pos = rng.normal(size=(b, d)) + 0.5 * w_true
    x_neg = rng.normal(size=(b, n, d)) - 0.5 * w_true
    where = rng.random((b, n)) < 0.75
    where[0] = True
    where[-1] = False  # one padded row
    return (
        jnp.asarray(x_pos, jnp.float32),
        jnp.asarray(x_neg, jnp.float32),
        jnp.asarray(where),
        jnp.asarray(rng.normal(size=d) * 0.1, jnp.float32),
    )


def _train(fn, steps: int = 5, lr: float = 0.05) -> list[float]:
    x_pos, x_neg, where, w = _toy_problem()

    def objective(w):
        return fn(x_pos @ w, x_neg @ w, where)

    opt = optax.sgd(lr)
    state = opt.init(w)

    @jax.jit
    def step(w, state):
        value, grad = jax.value_and_grad(objective)(w)
        updates, state = opt.update(grad, state, w)
        return optax.apply_updates(w, updates), state, value

    history = []
    for _ in range(steps):
        w, state, value = step(w, state)
        history.append(float(value))
    history.append(float(objective(w)))
    return history


@pytest.mark.parametrize("name", sorted(losses.REGISTRY))
def test_training_a_linear_scorer_lowers_the_loss(name: str) -> None:
    history = _train(losses.get_loss(name))
    assert all(np.isfinite(history))
    assert history[-1] < history[0]
    assert history[0] > 0


# ----------------------------------------------------------------------------- registry


def test_unknown_name_lists_the_available_losses() -> None:
    with pytest.raises(ValueError, match="unknown loss 'nope'") as err:
        losses.get_loss("nope")
    for name in BUILTIN:
        assert name in str(err.value)


def test_get_loss_binds_only_accepted_hparams_and_ignores_none() -> None:
    pos, neg, where = jnp.array([0.0]), jnp.array([[0.0]]), jnp.array([[True]])
    assert float(losses.get_loss("triplet", margin=3.0, temperature=9.0, gamma=1.0)(pos, neg, where)) == 3.0
    assert float(losses.get_loss("hinge", margin=None)(pos, neg, where)) == 1.0
    assert float(losses.get_loss("bpr", margin=3.0)(pos, neg, where)) == pytest.approx(math.log(2.0))
    assert losses.hparams_of("hinge") == {"margin": 1.0, "squared": False}
    assert losses.hparams_of("infonce") == {"temperature": 1.0}


def test_register_rejects_duplicates_unless_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "REGISTRY", dict(losses.REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        losses.register("triplet")(lambda pos, neg, where: jnp.zeros(()))

    def double(pos, neg, where, *, margin=7.0):
        return 2 * losses.triplet(pos, neg, where, margin=margin)

    losses.register("triplet", overwrite=True)(double)
    assert losses.get_loss("triplet").func is double


# ----------------------------------------------------------------------------- the docs' example


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    matches = [b for b in blocks if '@register("focal_bpr")' in b]
    assert len(matches) == 1, "docs/adding-a-loss.md must hold exactly one focal_bpr code block"
    return matches[0]


@pytest.fixture
def doc_loss(monkeypatch: pytest.MonkeyPatch):
    # A private copy of the registry so the example never leaks into other tests (without a
    # focal_bpr a reader has already pasted into losses.py). The block runs as it would at the
    # end of camera_jax/losses.py: in that module's namespace.
    monkeypatch.setattr(losses, "REGISTRY",
                        {k: v for k, v in losses.REGISTRY.items() if k != "focal_bpr"})
    namespace: dict = dict(vars(losses))
    exec(compile(_doc_example(), str(DOC), "exec"), namespace)
    assert "focal_bpr" in losses.REGISTRY
    return namespace


def test_doc_example_registers_and_matches_hand_values(doc_loss: dict) -> None:
    fn = losses.get_loss("focal_bpr", margin=7.0)  # margin is not a focal_bpr hparam: ignored
    assert losses.hparams_of("focal_bpr") == {"gamma": 2.0}
    # Equal scores: p = 0.5 -> 0.25 * log 2.
    assert float(fn(jnp.zeros(1), jnp.zeros((1, 1)), jnp.ones((1, 1), bool))) == pytest.approx(
        0.25 * math.log(2.0), rel=1e-6
    )
    # On the 2x3 example: sig(s_neg - s_pos)^2 * softplus(s_neg - s_pos) per valid triplet.
    d = [-1.0, 1.0, 0.5]
    expected = sum(sig(x) ** 2 * softplus(x) for x in d) / 3
    np.testing.assert_allclose(float(fn(POS, NEG, WHERE)), expected, rtol=1e-5)
    # gamma = 0 is BPR.
    np.testing.assert_allclose(
        float(losses.get_loss("focal_bpr", gamma=0.0)(POS, NEG, WHERE)), float(losses.bpr(POS, NEG, WHERE)), rtol=1e-6
    )
    # Its docstring doctest passes.
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(doc_loss["focal_bpr"], "focal_bpr", globs=dict(doc_loss)):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted == 1


def test_doc_example_trains_and_respects_the_mask(doc_loss: dict) -> None:
    fn = losses.get_loss("focal_bpr")
    history = _train(fn, steps=5, lr=0.2)
    assert history[-1] < history[0]
    assert float(fn(jnp.array([1.0]), jnp.full((1, 2), jnp.nan), jnp.zeros((1, 2), bool))) == 0.0
