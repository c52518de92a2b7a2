"""Tests of camera_jax.explain.radar: radar charts, saving, account and pair charts."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from camera_jax.explain import radar

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_recommend import make_run  # noqa: E402  (the shared fake run)


def _labels(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_xticklabels()]


def _names(fig: Figure) -> list[str]:
    """Spoke labels without their value line."""
    return [t.rsplit("\n", 1)[0] for t in _labels(fig)]


def _radii(fig: Figure) -> np.ndarray:
    return np.asarray(fig.axes[0].lines[0].get_ydata())[:-1]  # the closed polygon repeats the first point


def test_radar_chart_labels_scale_and_canvas():
    names = ["food", "ready_to_eat", "home_interior_with_long_name"]
    fig = radar.radar_chart(names, [0.3, 0.12, 0.005], title="t")
    assert isinstance(fig, Figure) and isinstance(fig.canvas, FigureCanvasAgg)
    ax = fig.axes[0]
    assert ax.name == "polar" and ax.get_title() == "t"
    labels = _labels(fig)
    assert labels[:2] == ["food\n0.30", "ready to eat\n0.12"]
    assert labels[2].endswith("\n<0.01") and "_" not in labels[2] and labels[2].count("\n") >= 2  # wrapped
    # Linear scale: radius = weight / max, max = 0.5 (the nice number above 0.3); ticks show weights.
    assert _radii(fig) == pytest.approx([0.6, 0.24, 0.01])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.125", "0.25", "0.375", "0.5"]
    fig = radar.radar_chart(names, [0.3, 0.12, 0.05], title="t", max_value=1.0, show_values=False)
    assert _radii(fig) == pytest.approx([0.3, 0.12, 0.05]) and _labels(fig)[0] == "food"
    with pytest.raises(ValueError, match="3 names but 2 weights"):
        radar.radar_chart(names, [0.1, 0.2], title="t")
    with pytest.raises(ValueError):
        radar.radar_chart([], [], title="t")
    with pytest.raises(ValueError, match="scale"):
        radar.radar_chart(names, [0.3, 0.12, 0.05], title="t", scale="log")


def test_sqrt_scale_keeps_small_weights_visible():
    fig = radar.radar_chart(["a", "b", "c"], [0.9, 0.04, 0.0], title="t", max_value=1.0, scale="sqrt")
    assert _radii(fig) == pytest.approx([np.sqrt(0.9), 0.2, 0.0])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.05", "0.25", "0.5", "1"]
    assert list(ax.get_yticks()) == pytest.approx(np.sqrt([0.05, 0.25, 0.5, 1.0]))


def test_radar_chart_into_existing_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2, projection="polar")
    assert radar.radar_chart(["a", "b", "c"], [1, 2, 3], title="x", ax=ax) is fig
    with pytest.raises(ValueError, match="polar"):
        radar.radar_chart(["a", "b", "c"], [1, 2, 3], title="x", ax=fig.add_subplot(1, 2, 1))


def test_nice_and_shared_max():
    assert [radar.nice_max(v) for v in (0.3, 0.5, 0.051, 0.0, 7.0, 10.0)] == pytest.approx([0.5, 0.5, 0.1, 1.0, 10.0, 10.0])
    assert radar.shared_max([0.1, 0.2], [0.33], []) == pytest.approx(0.5)


def test_save_figure_png_and_svg(tmp_path):
    fig = radar.radar_chart(["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1], title="demo")
    paths = radar.save_figure(fig, tmp_path / "sub" / "chart")
    assert [p.name for p in paths] == ["chart.png", "chart.svg"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size[0] >= 400
    svg = paths[1].read_text()
    assert "<svg" in svg and "<dc:date>" not in svg
    again = radar.save_figure(radar.radar_chart(["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1], title="demo"), tmp_path / "again")
    assert again[1].read_text() == svg  # deterministic SVG


def test_account_and_pair_charts(tmp_path):
    run = make_run(tmp_path)
    fig = radar.account_chart(run, "brand_food", top=4)
    names, weights = radar.account_concepts(run, "brand_food", top=4)
    assert list(weights) == sorted(weights, reverse=True)
    assert _names(fig) == [radar.concept_label(n) for n in names]
    assert _labels(fig)[0].endswith(f"\n{weights[0]:.2f}")
    assert "food" in names and "historical activities" in fig.axes[0].get_title()

    fb, fm = radar.pair_charts(run, "brand_food", "infl_foodie")
    pair = radar.pair_concepts(run, "brand_food", "infl_foodie")
    assert set(_names(fb)) == {radar.concept_label(n) for n in pair["brand_names"]}
    assert set(_names(fm)) == {radar.concept_label(n) for n in pair["influencer_names"]}
    order = np.argsort(-pair["w_b"], kind="stable")
    assert _names(fb)[0] == radar.concept_label(pair["brand_names"][order[0]])  # strongest w_b first
    vmax = radar.shared_max(pair["w_b"], pair["w_m"])  # one shared scale for both charts
    assert _radii(fb) == pytest.approx(np.sort(pair["w_b"])[::-1] / vmax)
    assert _radii(fm) == pytest.approx(np.sort(pair["w_m"])[::-1] / vmax)
    assert "w_b" in fb.axes[0].get_title() and "w_m" in fm.axes[0].get_title()
    # the brand chart shows the model's w_b over the brand's concepts, the influencer chart w_m
    b, m = run.account_index["brand_food"], run.account_index["infl_foodie"]
    out = run.score(np.array([b]), np.array([m]))
    for side, row, key in (("brand", b, "w_b"), ("influencer", m, "w_m")):
        slots = [list(run.top_idx[row]).index(run.concepts.index(n)) for n in pair[f"{side}_names"]]
        assert len(slots) >= 2
        np.testing.assert_allclose(pair[key], np.asarray(out[key])[0][slots])
    with pytest.raises(KeyError, match="brand_food"):
        radar.account_chart(run, "brand_fod")
    # the roles swapped: refused, not scored as an (influencer, brand) pair
    with pytest.raises(KeyError, match=r"^unknown brand 'infl_foodie' \(it is an influencer\); "
                       "closest known ids: brand_"):
        radar.pair_charts(run, "infl_foodie", "brand_food")
    with pytest.raises(KeyError, match=r"^unknown influencer 'brand_food' \(it is a brand\)"):
        radar.pair_concepts(run, "brand_food", "brand_food")


def test_filler_concepts_are_left_out_of_charts_and_concept_lists(tmp_path):
    """An account with fewer than K concepts its posts show has its K slots filled with others
    (tables.top_mask False, zero attention): the explanations leave those out."""
    import types

    from camera_jax.explain import recommend as rec
    from camera_jax.explain import shown

    run = make_run(tmp_path)
    m = run.account_index["infl_foodie"]
    mask = np.ones(np.shape(run.top_idx), bool)
    mask[m, 3:] = False                                  # only its first 3 concepts are shown
    run.tables = types.SimpleNamespace(top_mask=mask)
    kept = [run.concepts[int(c)] for c in run.top_idx[m][:3]]
    assert shown.supported_top(run, m) == [int(c) for c in run.top_idx[m][:3]]
    pair = radar.pair_concepts(run, "brand_food", "infl_foodie")
    assert pair["influencer_names"] == kept and len(pair["w_m"]) == 3
    assert len(pair["brand_names"]) == len(pair["w_b"]) == np.shape(run.top_idx)[1]
    names, weights = radar.account_concepts(run, "infl_foodie", top=10)
    assert names == kept and len(weights) == 3
    _, fm = radar.pair_charts(run, "brand_food", "infl_foodie")
    assert sorted(_names(fm)) == sorted(radar.concept_label(n) for n in kept)
    (row,) = [r for r in rec.recommend(run, "brand_food", top_k=0) if r["influencer"] == "infl_foodie"]
    assert sorted(c["concept"] for c in row["influencer_concepts"]) == sorted(kept)
    # more spokes than the top-K: the largest w_a among the concepts its posts show, no filler
    k = np.shape(run.top_idx)[1]
    run.tables = types.SimpleNamespace(top_mask=np.ones(np.shape(run.top_idx), bool))
    run.shown = np.zeros(np.shape(run.w_a), bool)
    shows = [int(c) for c in run.top_idx[m]][:2] + [int(np.argsort(run.w_a[m])[0])]  # + a weak one
    run.shown[m, shows] = True
    names, _ = radar.account_concepts(run, "infl_foodie", top=k + 2)
    assert sorted(names) == sorted(run.concepts[c] for c in shows)
    run.shown[m] = False                                 # nothing shown: the top-K slots
    names, _ = radar.account_concepts(run, "infl_foodie", top=k + 2)
    assert names == [run.concepts[int(c)] for c in run.top_idx[m]]
    run.shown = None
    run.tables = types.SimpleNamespace(top_mask=mask)
    mask[m, :] = False                                   # nothing shown: every slot, not no spoke
    assert shown.supported_top(run, m) == [int(c) for c in run.top_idx[m]]
    radar.pair_charts(run, "brand_food", "infl_foodie")
