"""The paper's Tables II and III over seeds, and the significance of CAMERA's lead.

Input: per-seed results as written by :func:`camera_jax.ablations.seed_results`::

  {"methods": {METHOD: {metric: float}}, "per_category": {CATEGORY: {metric: float}},
   "per_brand": {METHOD: {"brand": [ids], "mrr": [...], "recall@10": [...], ...}}}

Output, into the work directory (every cell the mean and the sample standard deviation over the
seeds; one seed: no deviation):

* ``table2.{md,csv,json}``: methods x metrics (paper Table II);
* ``table3.{md,csv,json}``: CAMERA per brand category x metrics (paper Table III);
* ``significance.{md,json}``: a paired bootstrap over test brands of CAMERA minus each other
  method in MRR and recall@10 (``camera_jax.metrics.paired_bootstrap``), per seed and pooled
  over seeds. The verdict is the pooled test: every seed's test brands are pooled (a brand of
  seed s is the unit ``"s:brand"``; the synthetic data are generated from the seed, so they are
  different brands) and resampled together, which has more power than one seed's few brands.
  CAMERA's lead is significant when the one-sided p < alpha; the per-seed tests and how many
  seeds are significant on their own are reported beside it.

The paper's own numbers (:data:`PAPER_TABLE_II`, :data:`PAPER_TABLE_III`) are written below our
tables under the label :data:`PAPER_NOTE`: they are real-data figures, not comparable to runs on
synthetic data.

CSV layout (wide): ``<row key>,n_seeds,<metric>_mean,<metric>_std,...``; an undefined value is
empty. JSON: ``{"title", "row_key", "metrics", "seeds", "rows": {row: {metric: {"mean", "std",
"n", "values"}}}, "paper": {"note", "rows"}}`` with ``null`` for undefined values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from camera_jax import atomic
from camera_jax import metrics as metrics_lib

__all__ = ["METRICS", "HEADERS", "PAPER_NOTE", "PAPER_TABLE_II", "PAPER_TABLE_III", "summarize",
           "format_cell", "table_markdown", "write_table", "read_table_csv", "read_table_json",
           "significance", "significance_markdown", "write_significance", "write_all"]

#: Table columns, in the paper's order.
METRICS = ("auc", "cauc", "recall@10", "recall@50", "mrr", "map", "medr")
HEADERS = {"auc": "AUC", "cauc": "cAUC", "recall@10": "R@10", "recall@50": "R@50", "mrr": "MRR",
           "map": "MAP", "medr": "MedR"}
#: The label of the paper's numbers wherever they are printed.
PAPER_NOTE = "real data, from the paper; not comparable to synthetic runs"

_PAPER_COLS = ("auc", "cauc", "recall@10", "recall@50", "mrr", "map", "medr")


def _rows(text: str) -> dict[str, dict[str, float]]:
  out = {}
  for line in text.strip().splitlines():
    name, *vals = line.split()
    out[name] = dict(zip(_PAPER_COLS, (float(v) for v in vals)))
  return out


#: Paper Table II (IV-G), real data: AUC, cAUC, R@10, R@50, MRR, MAP, MedR.
PAPER_TABLE_II = _rows("""
RAND     0.494 0.489 0.005 0.054 0.038 0.019 54
MIV      0.499 0.498 0.019 0.079 0.057 0.027 49
MIR      0.849 0.675 0.135 0.428 0.368 0.153 6
Bp+MR    0.806 0.671 0.124 0.383 0.377 0.161 5
Hp+MR    0.812 0.675 0.141 0.416 0.363 0.154 5
Vi+MR    0.808 0.665 0.144 0.420 0.372 0.165 6
C-w/o-SI 0.789 0.653 0.130 0.350 0.368 0.153 7
C-w/o-MR 0.779 0.635 0.073 0.313 0.259 0.098 8
CAMERA   0.810 0.678 0.207 0.422 0.602 0.213 2
""")

#: Paper Table III (IV-G), real data, CAMERA per brand category.
PAPER_TABLE_III = _rows("""
Airline       0.821 0.605 0.234 0.395 0.523 0.224 2
Auto          0.873 0.591 0.329 0.545 0.857 0.323 1
Clothes       0.915 0.826 0.180 0.487 0.618 0.301 1
Drink         0.768 0.697 0.201 0.371 0.589 0.162 1
Electronics   0.680 0.641 0.089 0.250 0.282 0.069 9
Entertainment 0.803 0.663 0.245 0.419 0.741 0.252 1
Food          0.834 0.686 0.256 0.407 0.783 0.276 1
Jewelry       0.683 0.607 0.169 0.298 0.467 0.160 2
Makeup        0.878 0.734 0.231 0.565 0.806 0.261 1
Nonprofit     0.730 0.624 0.116 0.243 0.356 0.106 3
Shoes         0.819 0.691 0.254 0.601 0.722 0.262 1
Services      0.827 0.725 0.152 0.469 0.451 0.136 2
""")


# --------------------------------------------------------------------------- cells


def _finite(x: Any) -> float | None:
  try:
    v = float(x)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def summarize(rows_by_seed: Sequence[Mapping[str, Mapping[str, float]]],
              row_order: Sequence[str] | None = None,
              metrics: Sequence[str] = METRICS) -> dict[str, dict[str, dict[str, Any]]]:
  """Mean and sample standard deviation (ddof=1) over seeds of every (row, metric).

  ``rows_by_seed``: one ``{row: {metric: value}}`` per seed. Undefined (NaN, missing) values are
  left out; ``std`` is None with fewer than two defined values, ``mean`` None with none.

  Returns ``{row: {metric: {"mean", "std", "n", "values"}}}`` in ``row_order`` (default: order of
  first appearance).
  """
  order: list[str] = list(row_order or [])
  for rows in rows_by_seed:
    order += [r for r in rows if r not in order]
  out: dict[str, dict[str, dict[str, Any]]] = {}
  for row in order:
    if not any(row in rows for rows in rows_by_seed):
      continue
    out[row] = {}
    for metric in metrics:
      vals = [v for rows in rows_by_seed if row in rows
              for v in [_finite(rows[row].get(metric))] if v is not None]
      mean = float(np.mean(vals)) if vals else None
      std = float(np.std(vals, ddof=1)) if len(vals) >= 2 else None
      out[row][metric] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
  return out


def format_cell(cell: Mapping[str, Any], metric: str) -> str:
  """``"0.123 ± 0.004"`` (MedR: one decimal); just the mean without a deviation; ``n/a``."""
  if cell.get("mean") is None:
    return "n/a"
  fmt = "{:.1f}" if metric == "medr" else "{:.3f}"
  text = fmt.format(cell["mean"])
  if cell.get("std") is not None:
    text += " ± " + fmt.format(cell["std"])
  return text


def _paper_markdown(first: str, paper: Mapping[str, Mapping[str, float]],
                    metrics: Sequence[str]) -> str:
  lines = [f"| {first} | " + " | ".join(HEADERS.get(m, m) for m in metrics) + " |",
           "|" + "---|" * (len(metrics) + 1)]
  for row, vals in paper.items():
    cells = [("{:.0f}" if m == "medr" else "{:.3f}").format(vals[m]) if m in vals else ""
             for m in metrics]
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def table_markdown(title: str, table: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   row_key: str, seeds: Sequence[int], metrics: Sequence[str] = METRICS,
                   paper: Mapping[str, Mapping[str, float]] | None = None,
                   paper_title: str = "") -> str:
  """A markdown table of :func:`summarize` output, then the paper's numbers, labelled."""
  seeds_text = ", ".join(str(s) for s in seeds)
  dev = ("mean ± sample standard deviation over" if len(seeds) > 1 else "one run,")
  lines = [f"# {title}", "",
           f"Each cell: {dev} {len(seeds)} seed(s) ({seeds_text}). Higher is better except MedR.",
           "", f"| {row_key} | " + " | ".join(HEADERS.get(m, m) for m in metrics) + " |",
           "|" + "---|" * (len(metrics) + 1)]
  for row, cells in table.items():
    lines.append(f"| {row} | " + " | ".join(format_cell(cells[m], m) for m in metrics) + " |")
  if paper:
    lines += ["", f"## {paper_title or 'The paper'} ({PAPER_NOTE})", "",
              _paper_markdown(row_key, paper, metrics)]
  return "\n".join(lines) + "\n"


def _csv_text(table: Mapping[str, Mapping[str, Mapping[str, Any]]], row_key: str,
              metrics: Sequence[str]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow([row_key, "n_seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
  for row, cells in table.items():
    n = max((cells[m]["n"] for m in metrics), default=0)
    vals = []
    for m in metrics:
      for s in ("mean", "std"):
        v = cells[m][s]
        vals.append("" if v is None else repr(float(v)))
    w.writerow([row, n] + vals)
  return buf.getvalue()


def write_table(stem: str | os.PathLike, title: str,
                table: Mapping[str, Mapping[str, Mapping[str, Any]]], row_key: str,
                seeds: Sequence[int], metrics: Sequence[str] = METRICS,
                paper: Mapping[str, Mapping[str, float]] | None = None,
                paper_title: str = "") -> dict[str, pathlib.Path]:
  """Writes ``stem.md``, ``stem.csv`` and ``stem.json`` (atomically); returns their paths."""
  stem = pathlib.Path(stem)
  paths = {ext: stem.with_name(stem.name + "." + ext) for ext in ("md", "csv", "json")}
  atomic.write_text(paths["md"], table_markdown(title, table, row_key, seeds, metrics, paper,
                                            paper_title))
  atomic.write_text(paths["csv"], _csv_text(table, row_key, metrics))
  doc = {"title": title, "row_key": row_key, "metrics": list(metrics),
         "seeds": [int(s) for s in seeds], "rows": table,
         "paper": {"note": PAPER_NOTE, "rows": paper or {}}}
  atomic.write_text(paths["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
  return paths


def read_table_csv(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a table CSV back: ``{"row_key", "rows": {row: {metric: {"mean", "std"}}}, "n_seeds"}``."""
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = next(reader)
    metrics = [h[:-5] for h in header[2:] if h.endswith("_mean")]
    rows: dict[str, Any] = {}
    n_seeds: dict[str, int] = {}
    for rec in reader:
      vals = dict(zip(header, rec))
      row = rec[0]
      n_seeds[row] = int(vals["n_seeds"])
      rows[row] = {m: {s: (float(vals[f"{m}_{s}"]) if vals[f"{m}_{s}"] != "" else None)
                       for s in ("mean", "std")} for m in metrics}
  return {"row_key": header[0], "metrics": metrics, "rows": rows, "n_seeds": n_seeds}


def read_table_json(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a table JSON back (the document :func:`write_table` wrote)."""
  return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- significance


def _per_brand(pb: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {k: np.asarray(v, np.float64) for k, v in pb.items() if k != "brand"}
  out["brand"] = np.array([prefix + str(b) for b in pb["brand"]])
  return out


def _concat(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  keys = set.intersection(*(set(p) for p in parts))
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _mean_by_brand(pb: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """One row per brand id: the mean over its rows (the seeds) of every per-brand value.

  NaN values are left out of a brand's mean (NaN when all of its values are NaN). The rows
  come out in sorted brand order, so two methods' outputs stay aligned.
  """
  ids, inverse = np.unique(pb["brand"], return_inverse=True)
  out: dict[str, np.ndarray] = {"brand": ids}
  for k, v in pb.items():
    if k == "brand":
      continue
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v)
    total = np.bincount(inverse, weights=np.where(ok, v, 0.0), minlength=len(ids))
    count = np.bincount(inverse, weights=ok.astype(np.float64), minlength=len(ids))
    out[k] = np.divide(total, count, out=np.full(len(ids), np.nan), where=count > 0)
  return out


def format_p(p: float, n_resamples: int) -> str:
  """A bootstrap p-value for a table: ``< 1/n`` when no resample went against the lead.

  >>> format_p(0.0, 1000), format_p(0.0123, 1000)
  ('< 0.001', '0.012')
  """
  return f"< {1.0 / n_resamples:.3g}" if p <= 0.0 else f"{p:.3f}"


#: How the pooled test treats the seeds' brands: ``significance``'s ``pooling`` entry (the key)
#: and its wording in the markdown.
POOLING = {"brands of all seeds": "brands of all seeds pooled",
           "brand means over seeds": ("each test brand's values averaged over the seeds in which "
                                      "it is a test brand, each brand resampled once")}


def significance(per_seed: Mapping[int, Mapping[str, Any]], reference: str = "CAMERA",
                 metrics: Sequence[str] = ("mrr", "recall@10"), n_resamples: int = 1000,
                 alpha: float = 0.05, bootstrap_seed: int = 0,
                 same_brands_across_seeds: bool = False) -> dict[str, Any]:
  """Paired bootstrap of ``reference`` minus every other method, per seed and pooled over seeds.

  Pooling: with ``same_brands_across_seeds=False`` (a synthetic preset: each seed generates
  its own dataset, so its test brands are different brands even where ids repeat) the brands
  of all seeds are resampled as independent units. With ``True`` (a fixed ``--data_dir``: the
  seeds retrain on the same test brands) each brand's values are first averaged over the seeds
  and the brands are resampled once each (a cluster bootstrap), so a brand seen in three seeds
  does not count as three pieces of evidence.

  Args:
    per_seed: ``{seed: results}`` with ``results["per_brand"][method]`` = ``{"brand": [ids],
      metric: [values]}`` (``camera_jax.metrics.evaluate_per_brand`` arrays, same brands for
      every method of a seed).
    reference: the method whose lead is tested.
    metrics: per-brand metrics to test (higher is better, or ``medr``/``rank_first``).
    n_resamples, bootstrap_seed: of ``camera_jax.metrics.paired_bootstrap``.
    alpha: significance level of the one-sided test.
    same_brands_across_seeds: see above (recorded in the output as ``pooling``).

  Returns:
    ``{"reference", "alpha", "n_resamples", "metrics", "seeds", "comparisons": {method: {metric:
    {"pooled": {diff, ci_low, ci_high, p_value, n_brands, significant}, "per_seed": {seed: {...}},
    "seeds_significant": int, "all_seeds_significant": bool}}}}``; ``significant`` is
    ``p_value < alpha``.
  """
  seeds = sorted(per_seed)
  others: list[str] = []
  for s in seeds:
    pbs = per_seed[s]["per_brand"]
    if reference not in pbs:
      raise ValueError(f"seed {s}: no per-brand values of {reference!r}")
    others += [m for m in pbs if m != reference and m not in others]
  comparisons: dict[str, Any] = {}
  for method in others:
    comparisons[method] = {}
    for metric in metrics:
      per: dict[str, Any] = {}
      ref_parts, oth_parts = [], []
      for s in seeds:
        pbs = per_seed[s]["per_brand"]
        if method not in pbs:
          continue
        prefix = "" if same_brands_across_seeds else f"{s}:"  # distinct brands stay apart
        a, b = _per_brand(pbs[reference], prefix), _per_brand(pbs[method], prefix)
        r = metrics_lib.paired_bootstrap(a, b, metric, n_resamples=n_resamples,
                                         seed=bootstrap_seed)
        per[str(s)] = {**r, "n_brands": int(len(a["brand"])), "significant": r["p_value"] < alpha}
        ref_parts.append(a)
        oth_parts.append(b)
      if not per:
        continue
      a, b = _concat(ref_parts), _concat(oth_parts)
      if same_brands_across_seeds:
        a, b = _mean_by_brand(a), _mean_by_brand(b)
      r = metrics_lib.paired_bootstrap(a, b, metric, n_resamples=n_resamples, seed=bootstrap_seed)
      n_sig = sum(v["significant"] for v in per.values())
      comparisons[method][metric] = {
          "pooled": {**r, "n_brands": int(len(a["brand"])), "significant": r["p_value"] < alpha},
          "per_seed": per, "seeds_significant": int(n_sig),
          "all_seeds_significant": n_sig == len(per)}
  return {"reference": reference, "alpha": alpha, "n_resamples": n_resamples,
          "metrics": list(metrics), "seeds": seeds,
          "pooling": "brand means over seeds" if same_brands_across_seeds else "brands of all seeds",
          "comparisons": comparisons}


def significance_markdown(sig: Mapping[str, Any]) -> str:
  """The significance summary as markdown: one row per compared method."""
  ref, alpha = sig["reference"], sig["alpha"]
  pooling = POOLING[sig.get("pooling", "brands of all seeds")]
  lines = [f"# Significance of {ref}'s lead (paired bootstrap over test brands)", "",
           f"Lead = {ref} minus the method (per-brand mean; {pooling}, "
           f"{sig['n_resamples']} resamples); 95% percentile interval; one-sided p = share of "
           f"resamples where {ref} does not lead. Significant: p < {alpha}. "
           "'seeds' = seeds in which the per-seed test alone is significant.", ""]
  head = ["Method"]
  for m in sig["metrics"]:
    h = HEADERS.get(m, m)
    head += [f"{h} lead [95% CI]", f"{h} p", f"{h} significant", f"{h} seeds"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, by_metric in sig["comparisons"].items():
    cells = [method]
    for m in sig["metrics"]:
      c = by_metric.get(m)
      if c is None:
        cells += ["n/a"] * 4
        continue
      p = c["pooled"]
      cells += [f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]",
                format_p(p["p_value"], sig["n_resamples"]), "yes" if p["significant"] else "no",
                f"{c['seeds_significant']}/{len(c['per_seed'])}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_significance(stem: str | os.PathLike, sig: Mapping[str, Any]) -> dict[str, pathlib.Path]:
  """Writes ``stem.md`` and ``stem.json``; returns their paths."""
  stem = pathlib.Path(stem)
  paths = {ext: stem.with_name(stem.name + "." + ext) for ext in ("md", "json")}
  atomic.write_text(paths["md"], significance_markdown(sig))
  atomic.write_text(paths["json"], json.dumps(sig, indent=2, allow_nan=False) + "\n")
  return paths


# --------------------------------------------------------------------------- all files


def write_all(workdir: str | os.PathLike, per_seed: Mapping[int, Mapping[str, Any]],
              methods: Sequence[str] | None = None, *, n_resamples: int = 1000,
              alpha: float = 0.05, same_brands_across_seeds: bool = False) -> dict[str, Any]:
  """Writes table2.*, table3.* and significance.* into ``workdir`` from per-seed results.

  ``same_brands_across_seeds``: the seeds share one dataset (see :func:`significance`).

  Returns dict(table2, table3, significance (the documents), markdown (name -> text),
  paths (name -> {ext: path})).
  """
  workdir = pathlib.Path(workdir)
  seeds = sorted(per_seed)
  results = [per_seed[s] for s in seeds]
  table2 = summarize([r["methods"] for r in results], row_order=methods)
  cats = sorted({c for r in results for c in r.get("per_category", {})})
  table3 = summarize([r.get("per_category", {}) for r in results], row_order=cats)
  paths = {
      "table2": write_table(workdir / "table2", "Table II: recommendation performance of every "
                            "method (this run)", table2, "Method", seeds, paper=PAPER_TABLE_II,
                            paper_title="The paper's Table II"),
      "table3": write_table(workdir / "table3", "Table III: CAMERA per brand category "
                            "(this run)", table3, "Category", seeds,
                            paper=PAPER_TABLE_III,
                            paper_title="The paper's Table III"),
  }
  sig = significance(per_seed, n_resamples=n_resamples, alpha=alpha,
                     same_brands_across_seeds=same_brands_across_seeds)
  paths["significance"] = write_significance(workdir / "significance", sig)
  markdown = {name: p["md"].read_text(encoding="utf-8") for name, p in paths.items()}
  return {"table2": table2, "table3": table3, "significance": sig, "markdown": markdown,
          "paths": paths}
