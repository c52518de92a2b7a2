r"""The main job: the whole CAMERA method end to end.

  python experiments/train.py --flagfile=camera.flags
  python experiments/train.py --flagfile=experiments/configs/paper.flags --data_dir=DIR

Without --data_dir it generates the synthetic preset (--preset) into the work directory.
Bad input stops before any work (exit 1), one line per problem (FILE:LINE: field: what). When the run completes but its HTML
report cannot be written, the results are printed, one line says why, and the exit status is 1.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags, logging  # noqa: E402

import _cli  # noqa: E402
import _flags  # noqa: E402

_flags.define_config_flags()
flags.adopt_module_key_flags(_flags)  # --help lists the config flags
_WORKDIR = flags.DEFINE_string("workdir", "", "work directory (default: a fresh one under runs/)")
FLAGS = flags.FLAGS


def main(argv):
  # absl leaves what is not a flag in argv: "--use_interaction false" sets the flag to true and
  # leaves "false" here, which would train the full model under the ablation's name.
  if _cli.first_problem(_cli.stray_arguments(argv, "write a boolean flag as --name=false")):
    return 1
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib
  from camera_jax.training import checkpoint as ckpt_lib, sharding, trainer

  cfg = _flags.config_from_flags(FLAGS)
  # Stop before any work (or any process group, so no JAX backend may start yet).
  errors = pipeline.check_config(cfg, evaluate_loss=False)
  if errors:
    print("\n".join(errors), file=sys.stderr)
    return 1
  sharding.initialize_distributed(cfg.coordinator_address or None, cfg.num_processes, cfg.process_id)
  workdir = pathlib.Path(_WORKDIR.value or os.path.join(
      "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
  if _cli.first_problem(_cli.copied_run_problem(sys.argv[1:], workdir)):
    return 1
  if cfg.data_dir:  # Validate first: stop before doing any work.
    # (A missing directory or a file gives validate's one line: 'does not exist', 'not a directory'.)
    # The form only: train_and_evaluate's load decodes the images (--check_images) as it loads,
    # before any stage, so decoding them here too would double that pass (minutes at paper scale).
    errors = format_lib.validate(cfg.data_dir, check_images=False)
    if errors:
      print("\n".join(errors), file=sys.stderr)
      return 1
  if workdir.exists() and not workdir.is_dir():
    print(f"{workdir}: --workdir is not a directory", file=sys.stderr)
    return 1
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f"{workdir}: cannot create --workdir ({e.strerror or e})", file=sys.stderr)
    return 1
  logging.info("work directory: %s", workdir)
  try:
    result = pipeline.train_and_evaluate(cfg, workdir)
  except format_lib.DatasetError as e:
    print("\n".join(e.errors), file=sys.stderr)
    return 1
  except pipeline.ConfigError as e:
    print("\n".join(e.errors), file=sys.stderr)
    return 1
  except (trainer.NonFiniteError, ckpt_lib.CheckpointMismatchError) as e:
    print(str(e), file=sys.stderr)
    return 1
  status = 0
  if pipeline.is_main():
    print(f"work directory: {workdir}")
    print(pipeline.format_table(result))
    print(f"finished in {result['seconds']:.1f} s", flush=True)  # the results first (docstring)
    if cfg.report:
      try:
        from camera_jax import run as run_lib
        from camera_jax.explain import report
        path = report.write_report(run_lib.load_run(workdir))
        logging.info("report: %s", path)
      except Exception as e:  # pylint: disable=broad-except  # The run is complete: say so.
        print(f"report failed: {type(e).__name__}: {_cli.error_line(e)} (the run itself is complete; retry with "
              f"python experiments/report.py --workdir={workdir})", file=sys.stderr)
        status = 1
  return status


if __name__ == "__main__":
  _cli.run(main)
