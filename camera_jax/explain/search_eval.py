"""How well keyword search finds a category's influencers (paper IV-H-3), next to its baselines.

For every influencer category we build queries from the category's most characteristic concepts
(the concepts whose mean w_a over the category's influencers exceeds their mean over all
influencers by the largest factor), with 1, 2 and 3 keywords, and run three searches:

* ``CAMERA``: :func:`camera_jax.explain.search.keyword_search` (concept similarity x w_a);
* ``caption``: the paper's "keywords matching with posts' text" baseline
  (:func:`~camera_jax.explain.search.caption_keyword_search`);
* ``exact``: the paper's "direct search" baseline, exact match of every keyword in the profile
  (:func:`~camera_jax.explain.search.exact_match_search`).

For each method and query length we report ``category_share`` (the share of the top-k results
that belong to the queried category; an empty result counts 0), ``empty_rate`` (queries that
returned nothing), and ``concept_precision`` (the share of results whose top-10 w_a concepts
contain a queried concept).  Category labels are used only to score the searches.

Read CAMERA's figures with care: the queries are chosen from the same ``w_a`` that CAMERA's
search ranks by, so a concept query favours it by construction (on the tiny run it scores
category share and concept precision 1.0 at every length). The comparison says that concept
search finds what the concept layer learned, where the text baselines need the words written
out; a test of the concept layer itself needs queries from elsewhere (captions, bios).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from camera_jax.explain import search as search_lib


def characteristic_concepts(w_a: np.ndarray, categories: Sequence[str], concept_names: Sequence[str],
                            n: int = 3) -> dict[str, list[str]]:
  """Per category, the ``n`` concepts with the largest lift mean_c(w_a) / mean_all(w_a)."""
  cats = np.asarray(categories)
  overall = w_a.mean(0) + 1e-12
  out = {}
  for c in sorted(set(categories)):
    lift = w_a[cats == c].mean(0) / overall
    out[c] = [concept_names[i] for i in np.argsort(-lift, kind="stable")[:n]]
  return out


def evaluate_search(run: Any, *, top_k: int = 5, lengths: Sequence[int] = (1, 2, 3)) -> dict[str, Any]:
  """Runs the three searches on every category's queries of each length; returns the summary."""
  ds = run.dataset
  # the influencers experiments/search.py ranks, by the concepts their posts show
  ids, shown, category = search_lib.run_influencers(run)
  w_a = np.asarray(run.w_a)[[run.account_index[i] for i in ids]]
  concepts = list(run.concepts)
  # precision judges the concepts the search ranked each influencer by, T(m): its top 10
  top = search_lib.top_concept_names(shown, concepts, ids)
  captions, bios, _ = search_lib.baseline_texts(ds, ids)
  queries = characteristic_concepts(w_a, [category[i] for i in ids], concepts, n=max(lengths))
  stats: dict[str, dict[int, dict[str, list[float]]]] = {}
  examples = []
  for cat, words in queries.items():
    for n in lengths:
      q = words[:n]
      results = {
          "CAMERA": search_lib.keyword_search(q, embedder=run.embedder, concept_names=concepts,
                                              w_a=shown, influencer_ids=ids, top_k=top_k),
          "caption": search_lib.caption_keyword_search(q, captions, top_k=top_k),
          "exact": search_lib.exact_match_search(q, bios, top_k=top_k),
      }
      for method, res in results.items():
        s = stats.setdefault(method, {}).setdefault(n, {"category_share": [], "empty": [],
                                                          "concept_precision": []})
        s["category_share"].append(
            float(np.mean([category[r["influencer"]] == cat for r in res])) if res else 0.0)
        s["empty"].append(float(not res))
        s["concept_precision"].append(search_lib.search_precision(res, q, concepts_of=top))
      examples.append({"category": cat, "keywords": q,
                       "CAMERA": [r["influencer"] for r in results["CAMERA"]]})
  summary = {m: {str(n): {"category_share": float(np.mean(v["category_share"])),
                          "empty_rate": float(np.mean(v["empty"])),
                          "concept_precision": float(np.mean(v["concept_precision"])),
                          "queries": len(v["empty"])}
                 for n, v in by_n.items()} for m, by_n in stats.items()}
  shares = np.array([sum(1 for i in ids if category[i] == c) for c in queries], float) / len(ids)
  return {"top_k": top_k, "methods": summary, "chance_category_share": float(np.mean(shares)),
          "queries": {c: w for c, w in queries.items()}, "examples": examples}


def format_summary(result: dict[str, Any]) -> str:
  """A plain-text table of :func:`evaluate_search`'s summary."""
  lines = [f"{'method':<8} {'keywords':>8} {'category share':>15} {'concept precision':>18} {'empty':>6}"]
  for m, by_n in result["methods"].items():
    for n, v in by_n.items():
      lines.append(f"{m:<8} {n:>8} {v['category_share']:>15.3f} {v['concept_precision']:>18.3f} "
                   f"{v['empty_rate']:>6.2f}")
  lines.append(f"chance category share: {result['chance_category_share']:.3f} (top {result['top_k']})")
  return "\n".join(lines)
