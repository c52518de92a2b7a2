"""Static HTML report of a finished run (metrics, training curves, Fig. 4-style case studies).

:func:`write_report` writes ``<workdir>/report/index.html`` and its assets:

* ``charts/``  radar charts as PNG (shown) and SVG (linked), see :mod:`.radar`;
* ``images/``  post thumbnails (at most 200 x 200 px, JPEG, or PNG for images with transparency);
* ``figures/loss.png``  loss per epoch, one panel per training stage, from ``train_log.jsonl``.

The page is self-contained: inline CSS, no script, no external font or style
sheet, and every link is relative and points into the report folder (the
post images are copied), so the folder can be zipped, mailed or opened from
any browser.  Every piece of text taken from the data (ids, captions,
concept names, metric names) is HTML-escaped.

Sections:

1. *Run* -- dataset counts, and ``flags.txt`` when present.
2. *Metrics* -- the methods table and the per-category table of
   ``metrics.json`` (best value of each column in bold; MedR: lowest).
3. *Training* -- the loss curves.
4. *Case studies* -- for ``n_cases`` test brands (``run.dataset.split.test``,
   drawn with ``seed``, brands with a partner among the candidates first):
   the brand's historical-activities chart and posts, then its top-ranked and
   its bottom-ranked candidate (by ``run.score`` over the brand's candidates,
   the split's ``candidates`` or all influencers), each with its
   historical-activities chart, the pair's two marketing-direction charts
   (brand ``w_b``, influencer ``w_m``), the scores ``S``, ``S_con``,
   ``S_ed``, ``S_in``, the rank ``r / N`` and a few posts.  Scales: the three
   historical charts of a case share one radial maximum, and the four
   marketing-direction charts of a case share another; radii grow with the
   square root of the weight (``scale="sqrt"`` in :mod:`.radar`) and every
   spoke is labelled with its weight.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import pathlib
import re
import shutil
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from camera_jax import atomic
from camera_jax.explain import radar

__all__ = ["write_report", "read_metrics", "read_train_log", "loss_figure", "metrics_table_html"]

_METRIC_ORDER = ("auc", "cauc", "recall@10", "recall@50", "mrr", "map", "medr")
_LOWER_IS_BETTER = {"medr", "meanr", "mean_rank", "median_rank"}
_THUMB = 200
_SCALE = "sqrt"  # radar radius ~ sqrt(weight): w_a and w_b/w_m are often dominated by one concept
_POSTS_PER_ACCOUNT = 3

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#f6f7fa; --card:#ffffff;
        --hist:#1f77b4; --brand:#d62728; --infl:#2ca02c; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--fg); background:var(--bg); }
header, main, footer { max-width:1180px; margin:0 auto; padding:0 20px; }
header { padding-top:24px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:20px; margin:32px 0 12px; padding-bottom:4px; border-bottom:2px solid var(--line); }
h3 { font-size:18px; margin:0 0 8px; }
h4 { font-size:15px; margin:0 0 6px; }
nav a { margin-right:14px; }
a { color:#1a5fb4; }
.muted { color:var(--muted); }
.warning { color:#a33; font-weight:600; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin:14px 0; }
table { border-collapse:collapse; font-size:13px; background:var(--card); }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:right; white-space:nowrap; }
th:first-child, td:first-child { text-align:left; }
thead th { background:#eef1f6; }
table.long td { text-align:left; vertical-align:top; }
table.long td:last-child { text-align:right; }
.scroll { overflow-x:auto; }
.charts { display:flex; flex-wrap:wrap; gap:10px; }
.charts figure { margin:0; text-align:center; width:342px; }
.brandrow { display:flex; flex-wrap:wrap; gap:20px; align-items:flex-start; }
.charts img { width:340px; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { font-size:12px; color:var(--muted); }
.posts { display:flex; flex-wrap:wrap; gap:12px; margin-top:8px; }
.post { width:210px; font-size:12px; }
.post img { width:200px; height:auto; border-radius:4px; display:block; background:#eee; }
.post p { margin:4px 0 0; overflow-wrap:anywhere; }
.noimg { width:200px; height:120px; display:flex; align-items:center; justify-content:center;
         background:#eee; color:var(--muted); border-radius:4px; }
.pair { border-left:4px solid var(--infl); padding-left:12px; margin-top:16px; }
.pair.low { border-left-color:#999; }
.scores { margin-bottom:10px; }
.scores td, .scores th { font-size:13px; }
.tag { display:inline-block; font-size:12px; padding:0 6px; border-radius:10px; background:#e7f3e8; color:#1e6b27; }
.tag.no { background:#f1f1f1; color:var(--muted); }
details.layer { margin-top:12px; }
summary { cursor:pointer; font-weight:600; }
pre { background:#fff; border:1px solid var(--line); padding:8px; font-size:12px; overflow-x:auto; }
footer { padding:24px 20px 40px; font-size:13px; color:var(--muted); }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _safe_name(*parts: str) -> str:
    """A file name from ids: safe characters plus a short hash (distinct ids never collide)."""
    raw = "__".join(parts)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:60].strip("._") or "x"
    return f"{base}-{hashlib.sha1(raw.encode('utf-8')).hexdigest()[:8]}"


def _fmt(v: Any, key: str = "") -> str:
    if isinstance(v, bool) or v is None:
        return _e(v)
    if isinstance(v, (int, float, np.floating, np.integer)):
        f = float(v)
        if not math.isfinite(f):
            return _e(f)
        if key.startswith("n_") or key in _LOWER_IS_BETTER or (f.is_integer() and abs(f) >= 10):
            return f"{f:.1f}" if not f.is_integer() else f"{int(f)}"
        return f"{f:.4f}"
    return _e(v)


# --------------------------------------------------------------------------------------------
# Metrics.


def read_metrics(workdir: pathlib.Path) -> dict[str, Any] | None:
    """``metrics.json`` of the run, or None when missing or unreadable."""
    path = pathlib.Path(workdir) / "metrics.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """{row: {col: number}} possibly nested one level deeper -> {"row / sub": {col: number}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, val in table.items():
        label = f"{prefix}{name}"
        if isinstance(val, Mapping) and val and all(isinstance(x, Mapping) for x in val.values()):
            out.update(_flatten(val, prefix=f"{label} / "))
        elif isinstance(val, Mapping):
            out[label] = dict(val)
    return out


def _scalar_rows(tree: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Nested dicts -> {"a / b": {key: scalar}}: one row per dict that holds scalars (lists dropped)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, val in tree.items():
        if not isinstance(val, Mapping):
            continue
        label = f"{prefix}{name}"
        leaf = {str(a): b for a, b in val.items() if isinstance(b, (int, float, str, bool))}
        if leaf:
            rows[label] = leaf
        rows.update(_scalar_rows(val, prefix=f"{label} / "))
    return rows


def _split_constant_counts(rows: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Removes the ``n_*`` columns that hold one value for every row; returns (rows, {column: value})."""
    rows = {k: dict(v) for k, v in rows.items() if isinstance(v, Mapping)}
    keys = {c for r in rows.values() for c in r if c.startswith("n_")}
    constant = {}
    for c in sorted(keys):
        vals = {repr(r.get(c)) for r in rows.values()}
        if len(rows) > 1 and len(vals) == 1:
            constant[c] = next(iter(rows.values()))[c]
    for r in rows.values():
        for c in constant:
            r.pop(c, None)
    return rows, constant


def _long_table_html(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Three columns (stage, metric, value): compact for sparse nested metrics."""
    body = []
    for name, vals in rows.items():
        for i, (k, v) in enumerate(vals.items()):
            first = f'<td rowspan="{len(vals)}">{_e(name)}</td>' if i == 0 else ""
            body.append(f"<tr>{first}<td>{_e(k)}</td><td>{_fmt(v, k)}</td></tr>")
    return (
        '<div class="scroll"><table class="long"><thead><tr><th>stage</th><th>metric</th><th>value</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def metrics_table_html(table: Mapping[str, Any], row_header: str, *, bold_best: bool = True) -> str:
    """An HTML table of {row: {metric: value}}; the best value of each numeric column is bold."""
    rows = _flatten(table)
    if not rows:
        return '<p class="muted">(empty)</p>'
    cols: list[str] = [m for m in _METRIC_ORDER if any(m in r for r in rows.values())]
    for r in rows.values():
        cols += [k for k in r if k not in cols]
    best: dict[str, float] = {}
    for c in cols:
        vals = [float(r[c]) for r in rows.values() if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) and math.isfinite(float(r[c]))]
        if bold_best and len(vals) > 1 and not c.startswith("n_"):
            best[c] = min(vals) if c.lower() in _LOWER_IS_BETTER else max(vals)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c, "")
            txt = _fmt(v, c.lower()) if v != "" else ""
            if c in best and isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) == best[c]:
                txt = f"<b>{txt}</b>"
            cells.append(f"<td>{txt}</td>")
        body.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr><th>{_e(row_header)}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------------------------
# Training curves.


def read_train_log(workdir: pathlib.Path) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """``train_log.jsonl`` as {stage: [(epoch, loss), ...]} (file order) and the count of skipped lines."""
    path = pathlib.Path(workdir) / "train_log.jsonl"
    stages: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    if not path.is_file():
        return stages, 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                stage = str(obj.get("stage", "train"))
                epoch, loss = float(obj["epoch"]), float(obj["loss"])
            except (ValueError, KeyError, TypeError, AttributeError):
                skipped += 1
                continue
            if not (math.isfinite(epoch) and math.isfinite(loss)):
                skipped += 1
                continue
            stages.setdefault(stage, []).append((epoch, loss))
    return stages, skipped


def loss_figure(stages: Mapping[str, Sequence[tuple[float, float]]]) -> Figure:
    """One panel per stage: loss against epoch."""
    n = max(1, len(stages))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.0 * cols, 2.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(stages) :]:
        ax.set_visible(False)
    for ax, (stage, pts) in zip(axes.flat, stages.items()):
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, color="#1f77b4")
        ax.set_title(stage, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("loss", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Posts.


def _thumbnail(src: pathlib.Path, dst_stem: pathlib.Path) -> pathlib.Path | None:
    """Downscaled copy of an image (JPEG, or PNG when it has transparency); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(src) as im:
            im.thumbnail((_THUMB, _THUMB))
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                dst = dst_stem.with_suffix(".png")
                im.convert("RGBA").save(dst, format="PNG", optimize=True)
            else:
                dst = dst_stem.with_suffix(".jpg")
                im.convert("RGB").save(dst, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return dst


class _Writer:
    """Holds the output folder and the run while the page is assembled."""

    def __init__(self, run: Any, out: pathlib.Path):
        self.run = run
        self.out = out
        self.accounts = {a.id: a for a in run.dataset.accounts}
        self.posts_of: dict[str, list[Any]] = {}
        for p in run.dataset.posts:
            self.posts_of.setdefault(p.account, []).append(p)
        self.root = pathlib.Path(run.dataset.root)

    def rel(self, path: pathlib.Path) -> str:
        return path.relative_to(self.out).as_posix()

    def chart(self, fig: Figure, name: str, caption: str) -> str:
        png, svg = radar.save_figure(fig, self.out / "charts" / name)
        return (
            f'<figure><a href="{_e(self.rel(svg))}"><img src="{_e(self.rel(png))}" alt="{_e(caption)}"></a>'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )

    def posts_html(self, account_id: str, n: int = _POSTS_PER_ACCOUNT) -> str:
        posts = self.posts_of.get(account_id, [])
        # Posts with a caption first, then file order.
        posts = sorted(posts, key=lambda p: not (p.caption or "").strip())[:n]
        if not posts:
            return '<p class="muted">(no posts)</p>'
        items = []
        for p in posts:
            src = self.root / p.image
            thumb = _thumbnail(src, self.out / "images" / _safe_name(account_id, p.id)) if src.is_file() else None
            img = (
                f'<img src="{_e(self.rel(thumb))}" alt="{_e("post " + p.id)}">'
                if thumb is not None
                else '<div class="noimg">image unavailable</div>'
            )
            cap = (p.caption or "").strip()
            short = cap if len(cap) <= 220 else cap[:217] + "..."
            items.append(
                f'<div class="post">{img}<p>{_e(short) if short else "<i>(no caption)</i>"}</p>'
                f'<p class="muted">{_e(p.likes)} likes · {_e(p.comments)} comments</p></div>'
            )
        return f'<div class="posts">{"".join(items)}</div>'


# --------------------------------------------------------------------------------------------
# Case studies.


def _candidates(run: Any) -> list[str]:
    cands = list(getattr(run.dataset.split, "candidates", ()) or ())
    if not cands:
        cands = [a.id for a in run.dataset.accounts if a.kind == "influencer"]
    return [c for c in dict.fromkeys(cands) if c in run.account_index]


def _pick_brands(run: Any, cands: Sequence[str], n: int, seed: int) -> list[str]:
    test = [b for b in dict.fromkeys(run.dataset.split.test) if b in run.account_index]
    if not test or n <= 0:
        return []
    cand_set = set(cands)
    partners: dict[str, set[str]] = {}
    for c in run.dataset.cooperations:
        partners.setdefault(c.brand, set()).add(c.influencer)
    rng = np.random.default_rng(seed)
    perm = [test[i] for i in rng.permutation(len(test))]
    with_partner = [b for b in perm if partners.get(b, set()) & cand_set]
    rest = [b for b in perm if b not in set(with_partner)]
    chosen = set((with_partner + rest)[:n])
    return [b for b in test if b in chosen]


def _scores_table(pair: Mapping[str, Any], rank: int, n: int, partner: bool) -> str:
    tag = '<span class="tag">known partner</span>' if partner else '<span class="tag no">not a known partner</span>'
    # 6 significant digits: S = S_con x S_ed x S_in (eq. 18) holds to the digits shown
    cells = "".join(f"<td>{pair[k]:.6g}</td>" for k in ("S", "S_con", "S_ed", "S_in"))
    return (
        f'<p>rank <b>{rank}</b> / {n} &nbsp; {tag}</p>'
        '<table class="scores"><thead><tr><th>S</th><th>S_con</th><th>S_ed</th><th>S_in</th></tr></thead>'
        f"<tbody><tr>{cells}</tr></tbody></table>"
    )


def _case_html(w: _Writer, case_no: int, brand: str, cands: Sequence[str]) -> str:
    run = w.run
    b = int(run.account_index[brand])
    rows = np.asarray([run.account_index[c] for c in cands], dtype=np.int64)
    out = run.score(np.full(len(cands), b, dtype=np.int64), rows)
    s = np.asarray(out["S"], dtype=np.float64).reshape(-1)
    order = sorted(range(len(cands)), key=lambda j: (-s[j], cands[j]))
    rank_of = {cands[j]: r for r, j in enumerate(order, start=1)}
    partners = {c.influencer for c in run.dataset.cooperations if c.brand == brand}
    picks = [("high", "High-ranked influencer", cands[order[0]])]
    if len(order) > 1:
        picks.append(("low", "Low-ranked influencer", cands[order[-1]]))

    def pair_of(j: int) -> dict[str, Any]:
        m = int(rows[j])
        return {
            **radar.supported_weights(run, b, out["w_b"][j], "brand", "w_b"),
            **radar.supported_weights(run, m, out["w_m"][j], "influencer", "w_m"),
            **{k: float(np.asarray(out[k]).reshape(-1)[j]) for k in ("S", "S_con", "S_ed", "S_in")},
        }

    index_of = {c: j for j, c in enumerate(cands)}
    pairs = {m: pair_of(index_of[m]) for _, _, m in picks}
    hist = {a: radar.account_concepts(run, a)[1] for a in [brand] + [m for _, _, m in picks]}
    hist_max = radar.shared_max(*hist.values())
    dir_max = radar.shared_max(*[p["w_b"] for p in pairs.values()], *[p["w_m"] for p in pairs.values()])

    acc = w.accounts.get(brand)
    cat = f" · {acc.category}" if acc is not None and acc.category else ""
    best_partner = min((rank_of[p] for p in partners if p in rank_of), default=None)
    partner_note = (
        f"best-ranked known partner at rank {best_partner} / {len(cands)}"
        if best_partner is not None
        else "no known partner among the candidates"
    )
    key = f"case{case_no}"
    parts = [
        f'<article class="card" id="{_e(key)}"><h3>Case {case_no}: brand {_e(brand)}{_e(cat)}</h3>',
        f'<p class="muted">{len(cands)} candidates ranked by S; {_e(partner_note)}.</p>',
        '<div class="brandrow"><div class="charts">',
        w.chart(radar.account_chart(run, brand, max_value=hist_max, scale=_SCALE), _safe_name(key, brand, "history"),
                f"{brand}: historical activities (w_a)"),  # fmt: skip
        "</div><div><h4>Brand posts</h4>",
        w.posts_html(brand),
        "</div></div>",
    ]
    for cls, label, m in picks:
        p = pairs[m]
        fb, fm = radar.pair_charts(run, brand, m, max_value=dir_max, pair=p, scale=_SCALE)
        macc = w.accounts.get(m)
        mcat = f" · {macc.category}" if macc is not None and macc.category else ""
        parts += [
            f'<div class="pair {cls}"><h4>{_e(label)}: {_e(m)}{_e(mcat)}</h4>',
            _scores_table(p, rank_of[m], len(cands), m in partners),
            '<div class="charts">',
            w.chart(radar.account_chart(run, m, max_value=hist_max, scale=_SCALE), _safe_name(key, m, "history"),
                    f"{m}: historical activities (w_a)"),  # fmt: skip
            w.chart(fb, _safe_name(key, brand, m, "w_b"), f"{brand} → {m}: brand marketing direction (w_b)"),
            w.chart(fm, _safe_name(key, m, brand, "w_m"), f"{m} ← {brand}: influencer marketing direction (w_m)"),
            "</div>",
            w.posts_html(m),
            "</div>",
        ]
    parts.append("</article>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The page.


def _run_section(run: Any) -> str:
    ds = run.dataset
    n_brands = sum(a.kind == "brand" for a in ds.accounts)
    n_infl = sum(a.kind == "influencer" for a in ds.accounts)
    items = [
        ("concepts", len(run.concepts)),
        ("brands", n_brands),
        ("influencers", n_infl),
        ("posts", len(ds.posts)),
        ("cooperations", len(ds.cooperations)),
        ("train / test brands", f"{len(ds.split.train)} / {len(ds.split.test)}"),
        ("candidate influencers", len(ds.split.candidates) or n_infl),
    ]
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in items)
    html_ = f'<table><tbody>{rows}</tbody></table>'
    flags = pathlib.Path(run.workdir) / "flags.txt"
    if flags.is_file():
        text = flags.read_text(encoding="utf-8", errors="replace")
        html_ += f"<details><summary>flags.txt</summary><pre>{_e(text)}</pre></details>"
    return html_


#: The file that marks a folder as written by :func:`write_report` (which may rewrite it).
MARKER = ".camera_report"
_REPORT_ENTRIES = {"index.html", "charts", "images", "figures", MARKER}


def check_out_dir(out: pathlib.Path) -> None:
    """Refuses (ValueError) a report folder that :func:`write_report` would damage: one that
    exists, is not empty, and is neither marked as a report (:data:`MARKER`) nor holds only a
    report's entries with its ``index.html`` (a report written before the marker existed).
    The report deletes its ``charts/``, ``images/`` and ``figures/`` subfolders first, so a
    website folder with an ``images/`` of its own must never be taken for one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: not a directory")
    names = {p.name for p in out.iterdir()}
    if not names or MARKER in names or ("index.html" in names and names <= _REPORT_ENTRIES):
        return
    raise ValueError(f"{out}: not empty and not a report folder (no {MARKER}); the report "
                     "rewrites its charts/, images/ and figures/ subfolders: use a new or "
                     "empty --out_dir")


def write_report(run: Any, out_dir: str | pathlib.Path | None = None, *, n_cases: int = 3, seed: int = 0) -> pathlib.Path:
    """Writes the HTML report of ``run`` and returns the path of ``index.html``.

    Args:
      run: a :class:`camera_jax.run.Run` (``workdir``, ``dataset``, ``concepts``,
        ``w_a``, ``top_idx``, ``account_index``, ``score``).
      out_dir: output folder; default ``<run.workdir>/report``.  Its
        ``charts/``, ``images/`` and ``figures/`` subfolders are rewritten, so it must be new,
        empty or a report folder (:func:`check_out_dir`).
      n_cases: number of test brands in the case studies.
      seed: seed of the brand draw.

    Raises:
      ValueError: ``out_dir`` holds other files than a report's.
    """
    workdir = pathlib.Path(run.workdir)
    out = pathlib.Path(out_dir) if out_dir is not None else workdir / "report"
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    # A report that fails half-way leaves no index.html that points at half-written charts.
    (out / "index.html").unlink(missing_ok=True)
    for sub in ("charts", "images", "figures"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    w = _Writer(run, out)

    sections = []
    sections.append(f'<section id="run"><h2>Run</h2>{_run_section(run)}</section>')

    metrics = read_metrics(workdir)
    if metrics is None:
        body = '<p class="muted">No readable metrics.json in the work directory.</p>'
    else:
        methods = dict(metrics.get("methods") or {})
        if "CAMERA" in methods:  # CAMERA first, the baselines after it
            methods = {"CAMERA": methods.pop("CAMERA"), **methods}
        methods, constant = _split_constant_counts(methods)
        body = "<h3>Methods (test brands)</h3>" + metrics_table_html(methods, "method")
        counts = [f"{_e(metrics[k])} {label}" for k, label in (("n_test_pairs", "scored test pairs"),
                  ("n_test_positives", "positives")) if isinstance(metrics.get(k), (int, float))]  # fmt: skip
        counts += [f"{_e(k)} = {_fmt(v, k)}" for k, v in constant.items()]
        if counts:
            body += f'<p class="muted">{", ".join(counts)}.</p>'
        recorded = metrics.get("labels")
        if isinstance(recorded, Mapping):
            from camera_jax import pipeline
            if recorded != pipeline.labels_record(run.dataset):
                body += ('<p class="warning">metrics.json was computed on other cooperations or '
                         'another split than this run\'s dataset (experiments/evaluate.py '
                         '--data_dir): its tables do not describe the case studies below.</p>')
        for line in metrics.get("warnings") or []:  # what the test pairs leave out
            body += f'<p class="warning">Test set: {_e(line)}</p>'
        per_cat = metrics.get("per_category") or {}
        if per_cat:
            body += "<h3>Per brand category (CAMERA)</h3>" + metrics_table_html(per_cat, "category")
        body += '<p class="muted">Best value of each column in bold (MedR: lowest).</p>'
        layer = metrics.get("concept_layer")
        if isinstance(layer, Mapping) and layer:
            scalars = _scalar_rows(layer)
            if scalars:
                body += (
                    '<details class="layer"><summary>Concept layer (concept generator and COSMIC checks)</summary>'
                    + _long_table_html(scalars) + "</details>"
                )
    sections.append(f'<section id="metrics"><h2>Metrics</h2>{body}</section>')

    stages, skipped = read_train_log(workdir)
    if stages:
        fig = loss_figure(stages)
        loss_png = out / "figures" / "loss.png"
        fig.savefig(loss_png, dpi=100, metadata={"Software": None})
        body = f'<img src="{_e(w.rel(loss_png))}" alt="training loss per epoch and stage" style="max-width:100%">'
        if skipped:
            body += f'<p class="muted">{skipped} unreadable line(s) of train_log.jsonl skipped.</p>'
    else:
        body = '<p class="muted">No train_log.jsonl in the work directory.</p>'
    sections.append(f'<section id="training"><h2>Training</h2>{body}</section>')

    cands = _candidates(run)
    brands = _pick_brands(run, cands, n_cases, seed) if cands else []
    if brands:
        body = (
            '<p class="muted">As in the paper\'s Fig. 4: for each test brand, its historical-activities chart'
            " (top-10 concepts of w_a), then its highest- and lowest-ranked candidate with their own"
            " historical chart and the pair's marketing-direction charts (the brand's w_b over its top-10"
            " concepts, the influencer's w_m over its top-10). Within a case, historical charts share one"
            " radial scale and marketing-direction charts share another; the radius grows with the square"
            " root of the weight so that concepts next to a dominant one stay visible, and every spoke is"
            " labelled with its weight. Click a chart for its SVG.</p>"
        )
        body += "\n".join(_case_html(w, i, b, cands) for i, b in enumerate(brands, start=1))
    elif n_cases <= 0:
        body = '<p class="muted">No case study asked for (<code>--n_cases=0</code>).</p>'
    else:
        body = '<p class="muted">No test brand with candidates to show.</p>'
    sections.append(f'<section id="cases"><h2>Case studies</h2>{body}</section>')

    title = f"CAMERA report · {workdir.name}"
    nav = "".join(
        f'<a href="#{k}">{v}</a>' for k, v in (("run", "Run"), ("metrics", "Metrics"), ("training", "Training"), ("cases", "Case studies"))
    )
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<header><h1>{_e(title)}</h1>"
        '<p class="muted">CAMERA (concept-based micro-influencer ranking): metrics, training curves and'
        " concept-based explanations of the ranking.</p>"
        f"<nav>{nav}</nav></header>\n<main>\n" + "\n".join(sections) + "\n</main>\n"
        "<footer>w_a: historical concept distribution of an account (eq. 5). w_b / w_m: marketing-direction"
        " concept weights of the brand / influencer in one pair (eq. 7). S = S_con × S_ed × S_in (eq. 18)."
        " Generated by camera_jax.explain.report.</footer>\n</body></html>\n"
    )
    index = out / "index.html"
    atomic.write_bytes(index, page.encode("utf-8"))
    return index
