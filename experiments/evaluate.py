r"""Rescores the test pairs of a finished run from its saved checkpoint.

  python experiments/evaluate.py --workdir=runs/RUN
  python experiments/evaluate.py --workdir=runs/RUN --data_dir=DIR2 [--out_dir=OUT]

Nothing is trained.  The run's concept layer (concepts/w_a.npy, U_C.npy) and its latest ranker
checkpoint score every (test brand, candidate) pair of DIR2 (default: the run's own dataset) with
CAMERA and the baselines; metrics.json and scores.csv are rewritten in --out_dir (default: the
work directory).  DIR2 must hold the run's accounts (same ids, same order as
concepts/accounts.txt) and posts: its cooperations and split may differ (for example the labels
of the test brands).  A dataset with other accounts is not supported yet; score a new account
with camera_jax.run.Run.represent_posts / add_account (experiments/recommend.py --brand_dir).
Errors print one line to stderr and exit with status 1.
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "work directory of a finished run")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "dataset whose test pairs to score (default: the run's)")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where to write metrics.json and scores.csv (default: --workdir)")


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv),
                       _OUT_DIR.value and _cli.out_dir_problem("out_dir", _OUT_DIR.value)):
    return 1
  try:
    workdir = _cli.run_workdir(_WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  if _DATA_DIR.value and not os.path.isdir(_DATA_DIR.value):
    print(f"{_DATA_DIR.value}: " + ("not a directory" if os.path.exists(_DATA_DIR.value)
                                    else "dataset directory does not exist"), file=sys.stderr)
    return 1
  from camera_jax import pipeline

  try:
    result = pipeline.rescore(workdir, _DATA_DIR.value or None, _OUT_DIR.value or None)
  except _cli.run_errors() as e:
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  out = pathlib.Path(_OUT_DIR.value or workdir)
  print(pipeline.format_table(result))
  print(f"{result['n_test_pairs']} test pairs ({result['n_test_positives']} positive) scored; "
        f"wrote {out / 'metrics.json'} and {out / 'scores.csv'}")
  return 0


if __name__ == "__main__":
  _cli.run(main)
