"""Concept-based radar charts (paper section III-E, Fig. 4).

Two kinds of chart explain a recommendation:

* the *historical-activities* chart of an account: its top-``K`` concepts of
  the historical concept distribution ``w_a`` (eq. 5), drawn with the raw
  ``w_a`` values (probabilities over all ``n`` concepts, so they sum to at most
  1 over the shown concepts);
* the *marketing-direction* charts of a brand/influencer pair: the brand's
  ``w_b`` over the brand's top-10 concepts and the influencer's ``w_m`` over the
  influencer's top-10 concepts (eq. 7, softmax over those 10 concepts, so each
  chart sums to 1).

Scales: a chart's radial axis runs from 0 to ``max_value``.  When
``max_value`` is ``None`` it is the chart's own largest weight rounded up to a
"nice" number (1, 2, 2.5 or 5 times a power of ten).  Charts that are meant to
be compared side by side (the two charts of :func:`pair_charts`, or all
charts of one case study in the HTML report) are drawn with one shared
``max_value`` (:func:`shared_max`) so that equal radii mean equal weights.
Historical (``w_a``) and marketing-direction (``w_b``/``w_m``) charts live on
different scales (probabilities over ``n`` concepts vs. over 10) and are
therefore never forced onto the same scale.

Radial scale: ``scale="linear"`` (default) draws radius proportional to the
weight; ``scale="sqrt"`` draws radius proportional to its square root, which
keeps the other concepts visible next to a dominant one (eq. 5's softmax over
summed ``z'`` and eq. 7's attention are often very peaked).  The HTML report
uses ``"sqrt"``; tick labels always show weights, and each spoke label carries
its weight.

Everything uses :class:`matplotlib.figure.Figure` with the Agg canvas directly:
no pyplot, no global figure registry, nothing to close.
"""

from __future__ import annotations

import math
import pathlib
import textwrap
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from camera_jax.explain import names

__all__ = [
    "radar_chart",
    "save_figure",
    "account_chart",
    "pair_charts",
    "account_concepts",
    "pair_concepts",
    "shared_max",
    "nice_max",
    "concept_label",
]

_FILL = {"history": "#1f77b4", "brand": "#d62728", "influencer": "#2ca02c"}


def concept_label(name: str, width: int = 14) -> str:
    """Readable label of a concept name: ``'ready_to_eat'`` -> ``'ready to eat'``, wrapped."""
    text = str(name).replace("_", " ").strip()
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=True)) or text


def nice_max(value: float) -> float:
    """Smallest "nice" number (1, 2, 2.5, 5 x 10^k) that is >= ``value``; 1.0 for non-positive."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        cand = m * 10.0**exp
        if cand >= value * (1 - 1e-9):
            return cand
    return 10.0 ** (exp + 1)  # pragma: no cover


def shared_max(*weight_lists: Sequence[float]) -> float:
    """One nice radial maximum covering all given weight lists (for side-by-side charts)."""
    vals = [float(np.max(np.asarray(w, dtype=np.float64))) for w in weight_lists if len(w)]
    return nice_max(max(vals) if vals else 0.0)


def radar_chart(
    names: Sequence[str],
    weights: Sequence[float],
    *,
    title: str,
    max_value: float | None = None,
    ax: Any = None,
    color: str = _FILL["history"],
    scale: str = "linear",
    show_values: bool = True,
) -> Figure:
    """Draws one radar chart of concept ``weights`` and returns its figure.

    Args:
      names: concept names, one spoke each (``'_'`` is shown as a space, long
        names are wrapped).
      weights: one non-negative weight per name.
      title: chart title.
      max_value: radial maximum; ``None`` -> :func:`nice_max` of the largest
        weight.  Pass the same value to charts that are compared.
      ax: an existing *polar* axes to draw into (its figure is returned);
        ``None`` creates a new 4.5 x 4.5 inch figure.
      color: line/fill colour.
      scale: ``"linear"`` (radius proportional to the weight) or ``"sqrt"``
        (radius proportional to the square root of the weight, so small
        weights next to a dominant one stay visible; the radial tick labels
        always show weights, not radii).
      show_values: append each weight to its spoke label (``"snack\n0.42"``;
        ``"<0.01"`` below 0.01).

    Returns:
      The :class:`~matplotlib.figure.Figure` holding the chart.
    """
    names = [str(n) for n in names]
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(names) != w.shape[0]:
        raise ValueError(f"radar_chart: {len(names)} names but {w.shape[0]} weights")
    if len(names) == 0:
        raise ValueError("radar_chart: no concepts to draw")
    if not np.all(np.isfinite(w)):
        raise ValueError("radar_chart: weights must be finite")
    if scale not in ("linear", "sqrt"):
        raise ValueError(f"radar_chart: scale must be 'linear' or 'sqrt', got {scale!r}")
    vmax = nice_max(float(w.max()) if max_value is None else float(max_value))

    def radius(x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, vmax) / vmax
        return np.sqrt(x) if scale == "sqrt" else x

    if ax is None:
        fig = Figure(figsize=(4.5, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(projection="polar")
    else:
        fig = ax.figure
        if getattr(ax, "name", "") != "polar":
            raise ValueError("radar_chart: ax must be a polar axes (projection='polar')")

    k = len(names)
    angles = np.linspace(0.0, 2.0 * np.pi, k, endpoint=False)
    closed_a = np.concatenate([angles, angles[:1]])
    r = radius(w)
    closed_r = np.concatenate([r, r[:1]])
    ax.set_theta_offset(np.pi / 2)  # first concept at the top
    ax.set_theta_direction(-1)  # clockwise, like a clock face
    ax.plot(closed_a, closed_r, color=color, linewidth=1.8)
    ax.fill(closed_a, closed_r, color=color, alpha=0.25)
    ax.scatter(angles, r, color=color, s=10, zorder=3)
    ax.set_ylim(0.0, 1.0)
    fractions = (0.05, 0.25, 0.5, 1.0) if scale == "sqrt" else (0.25, 0.5, 0.75, 1.0)
    ticks = [vmax * f for f in fractions]
    ax.set_yticks(radius(np.asarray(ticks)))
    ax.set_yticklabels([_fmt_tick(t) for t in ticks], fontsize=7, color="#666666")
    # tick labels between the two last (smallest) spokes: between the first two they sit under
    # the edge from the largest weight and are overdrawn by the polygon
    ax.set_rlabel_position(360.0 * (k - 1.5) / k if k > 2 else 180.0 / k)
    ax.set_xticks(angles)
    labels = [concept_label(n) for n in names]
    if show_values:
        labels = [f"{lab}\n{_fmt_value(v)}" for lab, v in zip(labels, w)]
    ax.set_xticklabels(labels, fontsize=9)
    ax.tick_params(axis="x", pad=6)
    ax.grid(True, color="#cccccc", linewidth=0.6)
    ax.spines["polar"].set_color("#999999")
    ax.set_title(title, fontsize=10, pad=20)
    fig.tight_layout()
    return fig


def _fmt_value(v: float) -> str:
    return f"{v:.2f}" if v >= 0.01 else ("<0.01" if v > 0 else "0")


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.3g}"  # 0.125 and 0.375 are gridlines: "0.12" / "0.38" misread them


def save_figure(fig: Figure, path_stem: str | pathlib.Path, *, dpi: int = 120) -> list[pathlib.Path]:
    """Writes ``fig`` as ``<path_stem>.png`` and ``<path_stem>.svg``; returns both paths.

    Parent folders are created.  The SVG embeds its glyphs as paths (no fonts
    needed) and carries no date, so identical figures give identical files.
    """
    stem = pathlib.Path(path_stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    png = stem.with_name(stem.name + ".png")
    svg = stem.with_name(stem.name + ".svg")
    fig.savefig(png, format="png", dpi=dpi, metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": "camera-jax"}):  # stable element ids
        fig.savefig(svg, format="svg", metadata={"Date": None})
    return [png, svg]


def _row(run: Any, account_id: str, kind: str | None = None) -> int:
    return names.account_row(run, account_id, kind)


def account_concepts(run: Any, account_id: str, top: int = 10) -> tuple[list[str], np.ndarray]:
    """Top-``top`` concepts of an account by ``w_a`` (descending) and their ``w_a`` weights. For an
    account whose posts show fewer than the run's K concepts, only those (at most ``top``), not
    the fillers of its top-K (:mod:`camera_jax.explain.shown`)."""
    from camera_jax.explain.shown import shown_concepts

    row = _row(run, account_id)
    w_a = np.asarray(run.w_a[row], dtype=np.float64)
    top = max(1, min(int(top), w_a.shape[0]))
    shown = shown_concepts(run, row)
    if not shown.all() or top <= len(shown):
        idx = np.asarray(run.top_idx[row]).reshape(-1)[shown][:top].astype(np.int64)
    else:  # more than K: the largest w_a among the concepts its posts show, never a filler
        idx = np.argsort(-w_a, kind="stable")
        if getattr(run, "shown", None) is not None:
            keep = idx[np.asarray(run.shown[row], bool)[idx]]
            # nothing shown: every top-K slot, as shown_concepts gives (a chart needs a spoke)
            idx = keep if keep.size else np.asarray(run.top_idx[row]).reshape(-1).astype(np.int64)
        idx = idx[:top]
    return [run.concepts[i] for i in idx], w_a[idx]


def account_chart(
    run: Any,
    account_id: str,
    top: int = 10,
    *,
    max_value: float | None = None,
    title: str | None = None,
    scale: str = "linear",
) -> Figure:
    """Historical-activities radar chart of ``account_id``: its top concepts of ``w_a``."""
    names, weights = account_concepts(run, account_id, top)
    return radar_chart(
        names,
        weights,
        title=title or f"{account_id}\nhistorical activities (w_a)",
        max_value=max_value,
        color=_FILL["history"],
        scale=scale,
    )


def pair_concepts(run: Any, brand_id: str, influencer_id: str) -> dict[str, Any]:
    """Marketing-direction weights of one pair via ``run.score``.

    Returns a dict with ``brand_names``, ``w_b`` (over the brand's top-K
    concepts, in ``run.top_idx`` order), ``influencer_names``, ``w_m`` and the
    pair's scores ``S``, ``S_con``, ``S_ed``, ``S_in`` as floats.

    Raises:
      names.UnknownNameError (a KeyError): an unknown id, or the roles swapped.
    """
    b = _row(run, brand_id, names.BRAND)   # the roles swapped are refused (UnknownNameError)
    m = _row(run, influencer_id, names.INFLUENCER)
    out = run.score(np.asarray([b], dtype=np.int64), np.asarray([m], dtype=np.int64))
    return {**supported_weights(run, b, np.asarray(out["w_b"], dtype=np.float64)[0], "brand", "w_b"),
            **supported_weights(run, m, np.asarray(out["w_m"], dtype=np.float64)[0],
                                "influencer", "w_m"),
            **{k: float(np.asarray(out[k]).reshape(-1)[0]) for k in ("S", "S_con", "S_ed", "S_in")}}


def supported_weights(run: Any, row: int, weights: np.ndarray, side: str, key: str) -> dict[str, Any]:
    """``{side}_names`` and ``key``: the account's top-K concepts its posts show and their
    ``weights`` (given over all K slots, in ``run.top_idx`` order); the zero-weight fillers of an
    account with fewer than K such concepts are left out (:mod:`camera_jax.explain.shown`)."""
    from camera_jax.explain.shown import shown_concepts
    shown = shown_concepts(run, row)
    idx = np.asarray(run.top_idx[row]).reshape(-1)
    return {f"{side}_names": [run.concepts[int(i)] for i in idx[shown]],
            key: np.asarray(weights, dtype=np.float64).reshape(-1)[shown]}


def pair_charts(
    run: Any,
    brand_id: str,
    influencer_id: str,
    *,
    max_value: float | None = None,
    pair: dict[str, Any] | None = None,
    scale: str = "linear",
) -> tuple[Figure, Figure]:
    """Marketing-direction charts of a pair (paper Fig. 4): ``(brand w_b chart, influencer w_m chart)``.

    The brand chart spans the brand's top-10 concepts weighted by ``w_b``; the
    influencer chart spans the influencer's top-10 weighted by ``w_m``.  Both
    share one radial maximum (``max_value`` or :func:`shared_max` of both).
    ``pair`` may pass a precomputed :func:`pair_concepts` result; ``scale`` is
    passed to :func:`radar_chart`.
    """
    p = pair if pair is not None else pair_concepts(run, brand_id, influencer_id)
    vmax = max_value if max_value is not None else shared_max(p["w_b"], p["w_m"])
    order_b = np.argsort(-p["w_b"], kind="stable")
    order_m = np.argsort(-p["w_m"], kind="stable")
    fb = radar_chart(
        [p["brand_names"][i] for i in order_b],
        p["w_b"][order_b],
        title=f"{brand_id} \u2192 {influencer_id}\nbrand marketing direction (w_b)",
        max_value=vmax,
        color=_FILL["brand"],
        scale=scale,
    )
    fm = radar_chart(
        [p["influencer_names"][i] for i in order_m],
        p["w_m"][order_m],
        title=f"{influencer_id} \u2190 {brand_id}\ninfluencer marketing direction (w_m)",
        max_value=vmax,
        color=_FILL["influencer"],
        scale=scale,
    )
    return fb, fm
