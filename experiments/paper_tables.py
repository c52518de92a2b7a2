r"""The paper's Tables II and III over seeds: every method trained and evaluated, with significance.

  python experiments/paper_tables.py --flagfile=camera.flags --seeds=0,1,2 --workdir=runs/tables
  python experiments/paper_tables.py --flagfile=experiments/configs/small.flags --seeds=0,1 \
      --workdir=runs/tables_small --methods=CAMERA,RAND,POP,MIV

Every Config flag works as in experiments/train.py (the flagfile's --seed is replaced by each of
--seeds). Writes WORKDIR/table2.{md,csv,json}, WORKDIR/table3.{md,csv,json} and
WORKDIR/significance.{md,json}; a rerun with the same flags resumes (finished runs are reused).
Layout and method definitions: camera_jax/ablations.py and docs/evaluation.md. Errors print one
line to stderr (a flag check: one line per problem) and exit with status 1.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags, logging  # noqa: E402

import _cli  # noqa: E402
import _flags  # noqa: E402

_flags.define_config_flags()
flags.adopt_module_key_flags(_flags)  # --help lists the config flags
_WORKDIR = flags.DEFINE_string("workdir", "runs/paper_tables", "paper_tables work directory")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (each: data, split, init, order)")
_METHODS = flags.DEFINE_list("methods", [], "methods to run (default all): CAMERA, Hp+MR, "
                             "C-w/o-SI, C-w/o-MR, CONTENT, MIV, POP, ENG, RAND")
_N_RESAMPLES = flags.DEFINE_integer("n_resamples", 1000, "bootstrap resamples")
_ALPHA = flags.DEFINE_float("alpha", 0.05, "significance level")
FLAGS = flags.FLAGS


def _fail(message: str) -> int:
  lines = [x for x in str(message).splitlines() if x.strip()] or ["error"]
  print(lines[0], file=sys.stderr)
  return 1


def main(argv) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    return _fail(f"--seeds must be integers, got {','.join(_SEEDS.value)}")
  if not seeds or len(set(seeds)) != len(seeds):
    return _fail("--seeds must list at least one seed, without repeats")
  bad = [s for s in seeds if not 0 <= s < 2 ** 32]   # before any seed's work starts
  if bad:
    return _fail(f"--seeds must lie in [0, 2^32), got {bad[0]}")
  if _N_RESAMPLES.value < 1:
    return _fail("--n_resamples must be >= 1")
  if not 0 < _ALPHA.value < 1:
    return _fail("--alpha must lie in (0, 1)")

  from camera_jax import ablations
  from camera_jax.data import format as format_lib
  from camera_jax.training import trainer

  try:
    methods = ablations.resolve_methods(_METHODS.value)
  except ValueError as e:
    return _fail(str(e))
  cfg = _flags.config_from_flags(FLAGS)
  from camera_jax import pipeline
  errors = pipeline.check_config(cfg)  # before the work directory records the settings
  if errors:
    print("\n".join(errors), file=sys.stderr)
    return 1
  if cfg.data_dir:
    if not os.path.isdir(cfg.data_dir):
      return _fail(f"{cfg.data_dir}: " + ("not a directory" if os.path.exists(cfg.data_dir)
                                          else "dataset directory does not exist"))
    # The form only: every seed's training loads the dataset and decodes its images
    # (--check_images) as train.py's does; decoding them here too would be one more pass.
    errors = format_lib.validate(cfg.data_dir, check_images=False)
    if errors:
      return _fail(f"{errors[0]} ({len(errors)} problem(s) in the dataset)")
  workdir = pathlib.Path(_WORKDIR.value)
  t0 = time.perf_counter()
  try:
    out = ablations.run_paper_tables(cfg, workdir, seeds, methods, n_resamples=_N_RESAMPLES.value,
                                     alpha=_ALPHA.value, progress=lambda s: logging.info("%s", s))
  except format_lib.DatasetError as e:
    return _fail(e.errors[0] if e.errors else str(e))
  except (ValueError, OSError, trainer.NonFiniteError) as e:
    # ValueError: a cached directory made with other flags, or a setting that cannot work;
    # OSError: a --workdir that is not a directory, a file that cannot be read or written.
    return _fail(str(e))
  for name in ("table2", "table3", "significance"):
    print(out["markdown"][name])
  print(f"work directory: {workdir}")
  for name, paths in out["paths"].items():
    print(f"{name}: " + ", ".join(str(p) for p in paths.values()))
  print(f"finished in {time.perf_counter() - t0:.1f} s")
  return 0


if __name__ == "__main__":
  _cli.run(main)
