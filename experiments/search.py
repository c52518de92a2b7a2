r"""Keyword-based micro-influencer search on a finished run (paper IV-H-3, Fig. 5).

  python experiments/search.py --workdir=runs/RUN --keywords=luxury,watch,men --top_k=3
  python experiments/search.py --workdir=runs/RUN --keywords=foodie,lady --format=json

Prints CAMERA's top influencers with the concepts that matched each keyword, then the paper's two
baselines (posts whose caption holds every keyword; exact match of every keyword in the profile).
--relevant=food,snack also prints, per method, the fraction of results whose top-10 concepts
include one of those concepts. The formula and the unknown-word fallbacks are in
camera_jax/explain/search.py and docs/interpretability.md. Errors print one line and exit 1.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "work directory of a finished run")
_KEYWORDS = flags.DEFINE_list("keywords", None, "comma-separated keywords")
_TOP_K = flags.DEFINE_integer("top_k", 3, "results per method", lower_bound=1)
_TOP_CONCEPTS = flags.DEFINE_integer("top_concepts", 10, "concepts per influencer in the score",
                                     lower_bound=1)
_FORMAT = flags.DEFINE_enum("format", "table", ["table", "json"], "output format")
_RELEVANT = flags.DEFINE_list("relevant", None, "concepts that count as relevant for the precision line")
_BASELINES = flags.DEFINE_bool("baselines", True, "also run the two baselines")


def _table(results, with_matches: bool) -> str:
  if not results:
    return "  (no results)"
  lines = []
  for r in results:
    head = f"  {r['rank']:>2}. {r['influencer']}"
    if r.get("category"):
      head += f" ({r['category']})"
    head += f"  score={r['score']:.4f}"
    lines.append(head)
    if with_matches and r.get("matched_concepts"):
      shown = ", ".join(f"{c} (sim {s:.2f}, w {w:.2f})" for c, s, w in r["matched_concepts"][:5])
      lines.append(f"      matched: {shown}")
    if r.get("example"):
      lines.append(f"      e.g. {r['example'][:100]!r}")
  return "\n".join(lines)


def main(argv) -> int:
  # --keywords=sports car: a keyword with a space must be quoted
  if _cli.first_problem(_cli.stray_arguments(argv, "quote a keyword that holds a space")):
    return 1
  from camera_jax.explain import search

  try:
    run = _cli.open_run(_WORKDIR.value)
    problem = _RELEVANT.value and search.relevant_problem(_RELEVANT.value, run.concepts)
    if problem:
      print(f"--relevant: {problem}", file=sys.stderr)
      return 1
    doc = search.search_run(run, _KEYWORDS.value or [], top_k=_TOP_K.value,
                            top_concepts=_TOP_CONCEPTS.value, baselines=_BASELINES.value,
                            relevant=_RELEVANT.value)
  except _cli.run_errors() as e:
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  results = doc["camera"]

  if _FORMAT.value == "json":
    from camera_jax import strict_json
    print(strict_json.dumps(doc, indent=2, ensure_ascii=False))
    return 0
  kw = ", ".join(
      k["keyword"] + ("" if k["method"] == "word2vec" else f" [{k['method']}" + (f" -> {k['word']}" if k["word"] else "") + "]")
      for k in doc["keywords"])
  print(f"query: {kw}")
  if doc["fallback"]:
    print(f"note: no keyword matched through Word2Vec or the concept names; fell back to {doc['fallback']}")
  print(f"CAMERA keyword search (top {_TOP_K.value}):")
  print(_table(results, with_matches=True))
  if _BASELINES.value:
    print("baseline: posts whose caption contains every keyword:")
    print(_table(doc["caption_match"], with_matches=False))
    print(f"baseline: exact match of every keyword in the profile ({doc['exact_match_source']}):")
    print(_table(doc["exact_match"], with_matches=False))
  if "precision" in doc:
    print("precision (results whose top-10 concepts include a relevant concept): "
          + ", ".join(f"{k}={v:.2f}" for k, v in doc["precision"].items()))
  return 0


if __name__ == "__main__":
  _cli.run(main)
