#!/usr/bin/env python
"""Our judged rows and the authors' graphs rebuilt, alternated on the same machine.

``python benchmarks/paired.py --authors_python=/tmp/tf/bin/python [--rounds=4] [--out=FILE.json]``

The issue judges the ranker at batches 8 and 512 and COSMIC at 64 px as multiples of the authors'
throughput "rerun beside yours, same machine, same session". A 2-core VM's speed moves by 10 %
and more from one minute to the next (benchmarks/README.md), so a ratio of two runs made minutes
apart can miss or meet a target by the VM's drift alone. This script alternates the two sides
``--rounds`` times, each side a fresh process (``benchmarks/authors_graph.py --judged`` under
``--authors_python``, a Python with TensorFlow, which camera-jax does not depend on, and
``benchmarks/run.py --judged``), in the order authors, ours, then ours, authors, and so on, so a
steady drift favours neither side. A round's ratio is ours over the rebuild's throughput of that
round; a target is met when the median of its rounds' ratios reaches its multiple
(``run.TARGETS``), on a 2-core CPU as in ``run.py`` (elsewhere reported, not judged). The JSON
report (``--out``) holds every round's rows as the two scripts wrote them; its keys are in
benchmarks/README.md. A side that fails stops the run with one line and exit status 1, and
nothing is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import run as bench  # noqa: E402

SCHEMA = 1
PROG = "benchmarks/paired.py"
#: target name -> (path, size) of the row that both scripts write for it.
PAIRS = {
    **{f"ranker_train_step@{b}": ("ranker_train_step", f"batch {b}") for b in bench.JUDGED_BATCHES},
    **{f"cosmic_train_step@{s}": ("cosmic_train_step", f"{s} px, batch {bench.IMAGE_BATCH}")
       for s in bench.JUDGED_IMAGE_SIZES},
}
SIDES = ("authors", "ours")


class SideError(RuntimeError):
  """One side of a round failed (the message is one line)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = bench._Parser(prog=PROG, description=__doc__.splitlines()[0])
  p.add_argument("--authors_python", required=True, metavar="PYTHON",
                 help="a Python with TensorFlow that runs benchmarks/authors_graph.py")
  p.add_argument("--rounds", type=int, default=4,
                 help="alternations of the two sides (>= 1; an even number runs each order "
                      "equally often)")
  p.add_argument("--quick", action="store_true",
                 help="both sides with --quick (batch 8 and 64 px only, few repetitions)")
  p.add_argument("--out", default=None, help="write the JSON report here (a file name)")
  args = p.parse_args(argv)
  if args.rounds < 1:
    p.error(f"--rounds: {args.rounds}; give at least 1")
  python = pathlib.Path(args.authors_python)
  if not python.is_file() or not os.access(python, os.X_OK):
    p.error(f"--authors_python: {python} is not an executable file")
  problem = bench.out_problem(args.out)
  if problem:
    p.error(f"--out: {problem}")
  return args


def side_command(side: str, args: argparse.Namespace, out: str) -> list[str]:
  """The command line of one side of a round, writing its report to ``out``."""
  python, script = ((args.authors_python, "benchmarks/authors_graph.py") if side == "authors"
                    else (sys.executable, "benchmarks/run.py"))
  return [python, script, "--judged", f"--out={out}"] + (["--quick"] if args.quick else [])


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
  """Runs one side in a fresh process and returns its report; SideError when it fails."""
  with tempfile.TemporaryDirectory(prefix="camera_paired_") as tmp:
    out = os.path.join(tmp, f"{side}.json")
    cmd = side_command(side, args, out)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      raise SideError(f"{cmd[1]} exited {proc.returncode}: {last}")
    try:
      with open(out, encoding="utf-8") as f:
        report = json.load(f)
    except (OSError, ValueError) as e:
      raise SideError(f"{cmd[1]} wrote no readable report ({e})") from None
  if not isinstance(report, dict) or not isinstance(report.get("results"), list):
    raise SideError(f"{cmd[1]} wrote a report without results")
  return report


def throughputs(report: dict[str, Any], side: str) -> dict[str, float]:
  """target name -> the side's throughput (the rebuild's rows, or our ``ours`` rows)."""
  variant = bench.AUTHORS_REBUILT if side == "authors" else "ours"
  rows = {(r["path"], r["size"]): r for r in report["results"] if r["variant"] == variant}
  return {name: float(rows[key]["throughput"]) for name, key in PAIRS.items() if key in rows}


def order(round_index: int) -> tuple[str, str]:
  """The sides' order in a round (``round_index`` from 0): authors first at even indices, that
  is in the printed rounds 1, 3, ..., ours first in rounds 2, 4, ....

  >>> [order(i)[0] for i in range(4)]
  ['authors', 'ours', 'authors', 'ours']
  """
  return SIDES if round_index % 2 == 0 else SIDES[::-1]


def summarize(rounds: list[dict[str, Any]], judged: bool, note: str | None) -> dict[str, Any]:
  """Per target: every round's ratio, their median, min and max, how many rounds reached the
  multiple, and ``met`` (the median reaches it; None when not judged here or not measured).

  >>> r = [{"ratio": {"ranker_train_step@8": x}} for x in (2.9, 3.2, 3.1)]
  >>> t = summarize(r, True, None)["ranker_train_step@8"]
  >>> t["median_ratio"], t["rounds_met"], t["met"]
  (3.1, 2, True)
  """
  out: dict[str, Any] = {}
  for name in PAIRS:
    ratios = [r["ratio"][name] for r in rounds if name in r["ratio"]]
    multiple = bench.TARGETS[name]
    if not ratios:
      out[name] = None
      continue
    med = statistics.median(ratios)
    out[name] = {"target_x_authors": multiple, "ratios": ratios, "median_ratio": med,
                 "min_ratio": min(ratios), "max_ratio": max(ratios),
                 "rounds_met": sum(x >= multiple for x in ratios), "rounds": len(ratios),
                 "met": (med >= multiple) if judged else None}
    if note:
      out[name]["note"] = note
  return out


def judged_here(ours: dict[str, Any]) -> str | None:
  """None when the targets are judged on the machine of our report, else why not (a note)."""
  meta = ours["meta"]
  if meta.get("backend") != "cpu":
    return f"a target for the 2-core CPU; not judged on {meta.get('backend')}"
  if meta.get("cpu_count") not in (None, bench.TARGET_CPU_COUNT):
    return f"a target for the 2-core CPU; not judged on a {meta.get('cpu_count')}-core CPU"
  return None


def run(args: argparse.Namespace, runner: Callable[[str, argparse.Namespace], dict[str, Any]]
        = run_side, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Alternates the sides ``args.rounds`` times; returns the report."""
  t0 = time.perf_counter()
  rounds: list[dict[str, Any]] = []
  for i in range(args.rounds):
    reports: dict[str, dict[str, Any]] = {}
    for side in order(i):
      try:
        reports[side] = runner(side, args)
      except SideError as e:
        raise SideError(f"round {i + 1}, {side}: {e}") from None
    rates = {side: throughputs(reports[side], side) for side in SIDES}
    ratio = {name: rates["ours"][name] / rates["authors"][name]
             for name in PAIRS if name in rates["ours"] and name in rates["authors"]}
    rounds.append({"order": list(order(i)), "throughput": rates, "ratio": ratio,
                   "reports": reports})
    log(f"round {i + 1} ({' then '.join(order(i))}): " + ", ".join(
        f"{name} {rates['ours'][name]:.1f} / {rates['authors'][name]:.1f} = {x:.2f}x"
        for name, x in ratio.items()))
  note = judged_here(rounds[-1]["reports"]["ours"])
  report = {"schema": SCHEMA, "meta": {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "rounds": args.rounds, "quick": bool(args.quick), "authors_python": args.authors_python,
      **bench.this_machine(), "seconds": time.perf_counter() - t0},
      "rounds": rounds, "targets": summarize(rounds, note is None, note)}
  for name, t in report["targets"].items():
    if t is not None:
      log(f"target {name}: median {t['median_ratio']:.2f}x (rounds {t['min_ratio']:.2f} to "
          f"{t['max_ratio']:.2f}x, {t['rounds_met']} of {t['rounds']} at >= "
          f"{t['target_x_authors']:g}x): met {t['met']}" + (f" ({note})" if note else ""))
  return report


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    report = run(args)
  except SideError as e:
    sys.stderr.write(f"{PROG}: error: {e}\n")
    return 1
  return bench.finish(args.out, report)


if __name__ == "__main__":
  raise SystemExit(main())
