r"""Writes the static HTML report of a finished run.

  python experiments/report.py --workdir=runs/RUN [--n_cases=3] [--seed=0] [--out_dir=DIR]

Writes WORKDIR/report/index.html (metrics, loss curves, case studies with radar charts and posts;
see camera_jax/explain/report.py) and prints its path. Errors print one line and exit 1.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "work directory of a finished run")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "output folder (default: WORKDIR/report)")
_N_CASES = flags.DEFINE_integer("n_cases", 3, "number of test brands in the case studies",
                                lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "seed of the case-study brand draw")


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv),
                       _OUT_DIR.value and _cli.out_dir_problem("out_dir", _OUT_DIR.value)):
    return 1
  from camera_jax.explain import report

  try:
    path = report.write_report(_cli.open_run(_WORKDIR.value), _OUT_DIR.value,
                               n_cases=_N_CASES.value, seed=_SEED.value)
  except _cli.run_errors() as e:  # OSError: e.g. a full disk
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  _cli.run(main)
