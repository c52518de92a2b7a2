"""The environments that the tests give their subprocesses (tests/conftest.py)."""

from __future__ import annotations

import os

from conftest import REPO, repo_on_pythonpath, without_gpu_determinism


def test_the_repository_goes_first_on_pythonpath_and_the_callers_entries_stay():
  env = {"PYTHONPATH": os.pathsep.join(["/site", str(REPO), "", "/b"]), "OTHER": "x"}
  out = repo_on_pythonpath(env)
  assert out == {"PYTHONPATH": os.pathsep.join([str(REPO), "/site", "/b"]), "OTHER": "x"}
  assert env["PYTHONPATH"] == os.pathsep.join(["/site", str(REPO), "", "/b"])  # a copy
  assert repo_on_pythonpath({})["PYTHONPATH"] == str(REPO)


def test_the_test_process_runs_with_gpu_determinism_and_a_subprocess_can_go_without():
  # conftest set the flag (=true, unless the caller's XLA_FLAGS chose): removing it changes them
  assert without_gpu_determinism()["XLA_FLAGS"] != os.environ["XLA_FLAGS"]
  env = {"XLA_FLAGS": "--xla_a=1 --xla_gpu_deterministic_ops=true --xla_b --xla_gpu_deterministic_ops"}
  assert without_gpu_determinism(env) == {"XLA_FLAGS": "--xla_a=1 --xla_b"}
  assert without_gpu_determinism({}) == {"XLA_FLAGS": ""}
