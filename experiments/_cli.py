"""Small helpers shared by the experiments' absl mains."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


def run(main: Callable[[Sequence[str]], int]) -> None:
  """``app.run`` of an experiment's ``main`` (its return value is the exit status), with XLA's
  deterministic GPU kernels asked for first (``compiler_options.use_deterministic_gpu_ops``)."""
  from absl import app

  from camera_jax.training import compiler_options

  compiler_options.use_deterministic_gpu_ops()

  def quiet_then_main(argv):
    _quiet_third_party_info()
    return sys.exit(main(argv))

  app.run(quiet_then_main)


def _quiet_third_party_info() -> None:
  """Keeps the console to the project's own INFO lines: orbax (through absl logging) and gensim
  log several lines per checkpoint and per Word2Vec epoch; their warnings still show."""
  import logging as py_logging

  from absl import logging as absl_logging

  noisy = ("/orbax/", "/gensim/", "/tensorflow_datasets/")

  class _Filter(py_logging.Filter):
    def filter(self, record):
      return record.levelno >= py_logging.WARNING or not any(p in record.pathname for p in noisy)

  absl_logging.get_absl_handler().addFilter(_Filter())


def copied_run_problem(args: Sequence[str], workdir) -> str | None:
  """The line refusing ``--flagfile=DIR/flags.txt`` of a run directory DIR (one with
  ``checkpoints/``) that is not the ``--workdir`` its flags name, or None. A flags.txt records
  its run's absolute ``--workdir``: read from a copy of the run (``cp -a``) it would resume and
  rewrite the original. ``--workdir`` given on the command line (``args``: ``sys.argv[1:]``)
  decides where the run goes, so it is not refused then."""
  import os

  if any(a == "--workdir" or a.startswith("--workdir=") for a in args):
    return None
  for i, a in enumerate(args):
    path = a.split("=", 1)[1] if a.startswith("--flagfile=") else (
        args[i + 1] if a == "--flagfile" and i + 1 < len(args) else None)
    if path is None or os.path.basename(path) != "flags.txt":
      continue
    home = os.path.dirname(os.path.abspath(path))
    if (os.path.isdir(os.path.join(home, "checkpoints"))
        and os.path.abspath(workdir) != home):
      return (f"{path}: records --workdir={os.path.abspath(workdir)}, but lies in {home} "
              f"(a copied run?); pass --workdir={home} to resume the copy")
  return None


def one_line(text: str) -> str:
  """The first non-empty line of an error message, with a count of the lines left out."""
  lines = [x for x in str(text).splitlines() if x.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  return f"{lines[0]} (and {len(lines) - 1} more problem(s))"


def run_workdir(value: str | None):
  """The ``--workdir`` of a finished run as a path; ValueError / FileNotFoundError when unusable."""
  import pathlib

  if not value:
    raise ValueError("--workdir is required")
  workdir = pathlib.Path(value)
  if not workdir.is_dir():
    raise FileNotFoundError(f"{workdir}: work directory does not exist")
  return workdir


def open_run(value: str | None):
  """``camera_jax.run.load_run`` on a checked ``--workdir`` (errors as :func:`run_workdir`)."""
  from camera_jax import run as run_lib

  return run_lib.load_run(run_workdir(value))


def error_line(e: BaseException) -> str:
  """The one line printed for an error of a main: a dataset's first problems, or the message."""
  errors = getattr(e, "errors", None)
  if errors:
    return one_line("\n".join(errors))
  return one_line(str(e)) or type(e).__name__


def out_file_problem(flag: str, path: str) -> str | None:
  """Why ``--flag=path`` cannot take an output file, checked before any work (one line,
  ``camera_jax.atomic.output_problem``), or None."""
  from camera_jax import atomic
  problem = atomic.output_problem(path)
  return f"--{flag}={path}: {problem}" if problem else None


def first_problem(*problems: str | None) -> int:
  """Prints the first problem found before any work (one line) and returns the exit status: 1,
  or 0 when every check passed (None)."""
  for problem in problems:
    if problem:
      print(problem, file=sys.stderr)
      return 1
  return 0


def stray_arguments(argv: list[str], hint: str = "") -> str | None:
  """The line for positional arguments a command does not take (absl leaves them in argv[1:]),
  or None."""
  if len(argv) <= 1:
    return None
  return f"unexpected arguments: {' '.join(argv[1:])}" + (f" ({hint})" if hint else "")


def out_dir_problem(flag: str, path: str) -> str | None:
  """Why ``--flag=path`` cannot take an output directory, checked before any work (one line,
  ``camera_jax.atomic.output_dir_problem``), or None."""
  from camera_jax import atomic
  problem = atomic.output_dir_problem(path)
  return f"--{flag}={path}: {problem}" if problem else None


def run_errors() -> tuple[type[BaseException], ...]:
  """What a command on a finished run reports as one line and exit 1: a dataset's problems
  (DatasetError), a file it cannot read or write (OSError), and a run, a flags.txt or a setting
  it cannot use (ValueError: RunError, CheckpointMismatchError among them)."""
  from camera_jax.data.format import DatasetError

  return (DatasetError, OSError, ValueError)
