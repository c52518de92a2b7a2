"""Keyword-search evaluation: characteristic concepts by hand, and never-empty CAMERA search."""

from __future__ import annotations

import numpy as np

from camera_jax.explain import search_eval


def test_characteristic_concepts_by_lift():
  # Two categories, three concepts. Overall means: a 0.5, b 0.3, c 0.2.
  w_a = np.array([[0.8, 0.1, 0.1],    # cat x
                  [0.6, 0.3, 0.1],    # cat x  -> mean (0.7, 0.2, 0.1): lift (1.4, 0.67, 0.5)
                  [0.3, 0.3, 0.4],    # cat y
                  [0.3, 0.5, 0.2]])   # cat y  -> mean (0.3, 0.4, 0.3): lift (0.6, 1.33, 1.5)
  out = search_eval.characteristic_concepts(w_a, ["x", "x", "y", "y"], ["a", "b", "c"], n=2)
  assert out == {"x": ["a", "b"], "y": ["c", "b"]}


def test_camera_search_is_never_empty_on_the_tiny_run(tiny_run):
  from camera_jax import run as run_lib
  workdir, _ = tiny_run
  result = search_eval.evaluate_search(run_lib.load_run(workdir), top_k=3, lengths=(1, 3))
  for n, v in result["methods"]["CAMERA"].items():
    assert v["empty_rate"] == 0.0, n
  assert set(result["methods"]) == {"CAMERA", "caption", "exact"}
  # The exact-match baseline needs every keyword verbatim in a profile: long queries fail more.
  exact = result["methods"]["exact"]
  assert exact["3"]["empty_rate"] >= exact["1"]["empty_rate"]
  assert 0.0 < result["chance_category_share"] < 1.0


def test_without_bios_the_exact_match_baseline_reads_the_captions(tiny_run):
  """A dataset without profile texts (bio is optional): the exact-match baseline searches the
  joined captions, as experiments/search.py does, instead of finding nothing by construction."""
  import dataclasses

  from camera_jax import run as run_lib
  from camera_jax.explain import search as search_lib
  run = run_lib.load_run(tiny_run[0])
  ids = [a.id for a in run.dataset.accounts if a.kind == "influencer"]
  _, texts, source = search_lib.baseline_texts(run.dataset, ids)
  assert source == "bio" and texts[ids[0]] == run.dataset.accounts[run.account_index[ids[0]]].bio
  run.dataset = dataclasses.replace(
      run.dataset, accounts=tuple(dataclasses.replace(a, bio="") for a in run.dataset.accounts))
  captions, texts, source = search_lib.baseline_texts(run.dataset, ids)
  assert source == "captions" and texts[ids[0]] == " ".join(captions[ids[0]]) != ""
  exact = search_eval.evaluate_search(run, top_k=3, lengths=(1,))["methods"]["exact"]
  assert exact["1"]["empty_rate"] < 1.0


def test_cli_refuses_an_out_path_it_cannot_write_before_any_work(tmp_path):
  import subprocess
  import sys

  from conftest import REPO, repo_on_pythonpath

  for out, message in ((tmp_path, f"--out={tmp_path}: {tmp_path} is a directory"),
                       (tmp_path / "no" / "x.json",
                        f"--out={tmp_path / 'no' / 'x.json'}: directory {tmp_path / 'no'} does not exist")):
    proc = subprocess.run([sys.executable, "experiments/search_eval.py", f"--workdir={tmp_path / 'run'}",
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=repo_on_pythonpath())
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [message], proc.stderr
