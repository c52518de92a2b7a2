r"""Writes the static HTML report of a finished run.

  python experiments/report.py --workdir=runs/RUN [--n_cases=3] [--seed=0] [--out_dir=DIR]

Writes WORKDIR/report/index.html (metrics, loss curves, case studies with radar charts and posts;
see camera_jax/explain/report.py) and prints its path. Errors print one line and exit 1.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "work directory of a finished run")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "output folder (default: WORKDIR/report)")
_N_CASES = flags.DEFINE_integer("n_cases", 3, "number of test brands in the case studies")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the case-study brand draw")


def main(argv) -> int:
  del argv
  from camera_jax.data.format import DatasetError
  from camera_jax.explain import report

  try:
    if not _WORKDIR.value:
      raise ValueError("--workdir is required")
    workdir = pathlib.Path(_WORKDIR.value)
    if not workdir.is_dir():
      raise FileNotFoundError(f"{workdir}: work directory does not exist")
    from camera_jax import run as run_lib

    path = report.write_report(run_lib.load_run(workdir), _OUT_DIR.value, n_cases=_N_CASES.value, seed=_SEED.value)
  except DatasetError as e:
    print(e.errors[0] if e.errors else "invalid dataset", file=sys.stderr)
    return 1
  except (FileNotFoundError, ValueError) as e:
    print(str(e).splitlines()[0] if str(e) else type(e).__name__, file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
