r"""How often keyword search returns the queried category, next to the paper's two baselines.

  python experiments/search_eval.py --workdir=runs/tiny [--top_k=5] [--out=search_eval.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "a finished run", required=True)
_TOP_K = flags.DEFINE_integer("top_k", 5, "results per query", lower_bound=1)
_OUT = flags.DEFINE_string("out", "", "optional JSON output path")


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv),
                       _OUT.value and _cli.out_file_problem("out", _OUT.value)):
    return 1
  from camera_jax.explain import search_eval
  try:
    run = _cli.open_run(_WORKDIR.value)
    result = search_eval.evaluate_search(run, top_k=_TOP_K.value)
    print(search_eval.format_summary(result))
    if _OUT.value:
      from camera_jax import strict_json
      strict_json.write(_OUT.value, result, indent=2)
  except _cli.run_errors() as e:
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  _cli.run(main)
