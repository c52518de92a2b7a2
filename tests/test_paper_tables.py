"""Tests of camera_jax.tables (Table II/III writers, significance) and a smoke test of the whole
paper_tables job (camera_jax.ablations.run_paper_tables, experiments/paper_tables.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from camera_jax import ablations
from camera_jax import pipeline
from camera_jax import tables

from conftest import REPO, tiny_config


# --------------------------------------------------------------------------- tables


SEEDS = [0, 1]
PER_SEED_ROWS = [
    {"CAMERA": {"mrr": 0.4, "recall@10": 0.2, "medr": 3.0, "auc": float("nan")},
     "RAND": {"mrr": 0.1, "recall@10": 0.05, "medr": 20.0, "auc": 0.5}},
    {"CAMERA": {"mrr": 0.6, "recall@10": 0.3, "medr": 2.0, "auc": 0.8},
     "RAND": {"mrr": 0.1, "recall@10": 0.05, "medr": 30.0, "auc": 0.5}},
]


def test_summarize_mean_and_sample_std_over_seeds():
  t = tables.summarize(PER_SEED_ROWS, row_order=["RAND", "CAMERA"])
  assert list(t) == ["RAND", "CAMERA"]
  c = t["CAMERA"]["mrr"]
  assert c["mean"] == pytest.approx(0.5) and c["std"] == pytest.approx(np.sqrt(0.02))
  assert c["n"] == 2 and c["values"] == [0.4, 0.6]
  assert t["CAMERA"]["auc"] == {"mean": 0.8, "std": None, "n": 1, "values": [0.8]}  # NaN dropped
  assert t["RAND"]["map"]["mean"] is None                                          # missing
  assert tables.format_cell(t["CAMERA"]["mrr"], "mrr") == "0.500 ± 0.141"
  assert tables.format_cell(t["RAND"]["medr"], "medr") == "25.0 ± 7.1"
  assert tables.format_cell(t["CAMERA"]["auc"], "auc") == "0.800"
  assert tables.format_cell(t["RAND"]["map"], "map") == "n/a"


def test_table_writers_round_trip_markdown_csv_json(tmp_path):
  t = tables.summarize(PER_SEED_ROWS)
  paths = tables.write_table(tmp_path / "table2", "Table II", t, "Method", SEEDS,
                             paper=tables.PAPER_TABLE_II, paper_title="The paper's Table II")
  assert {p.name for p in paths.values()} == {"table2.md", "table2.csv", "table2.json"}
  md = paths["md"].read_text()
  assert "| CAMERA | 0.800 | n/a | 0.250 ± 0.071 |" in md
  assert tables.PAPER_NOTE in md and "| CAMERA | 0.810 | 0.678 | 0.207 |" in md
  csv_doc = tables.read_table_csv(paths["csv"])
  assert csv_doc["row_key"] == "Method" and csv_doc["metrics"] == list(tables.METRICS)
  assert csv_doc["rows"]["CAMERA"]["mrr"]["mean"] == pytest.approx(0.5)
  assert csv_doc["rows"]["CAMERA"]["mrr"]["std"] == pytest.approx(np.sqrt(0.02))
  assert csv_doc["rows"]["CAMERA"]["auc"] == {"mean": 0.8, "std": None}
  assert csv_doc["rows"]["RAND"]["medr"]["mean"] == 25.0
  assert csv_doc["n_seeds"] == {"CAMERA": 2, "RAND": 2}
  js = tables.read_table_json(paths["json"])
  assert js["seeds"] == SEEDS and js["rows"] == t
  assert js["paper"]["note"] == tables.PAPER_NOTE and js["paper"]["rows"]["MIV"]["medr"] == 49


def _per_brand(values: dict[str, list[float]]) -> dict[str, list]:
  n = len(next(iter(values.values())))
  return {"brand": [f"b{i}" for i in range(n)], **values}


def test_significance_on_made_up_per_brand_values(tmp_path):
  rng = np.random.default_rng(0)
  per_seed = {}
  for s in (0, 1):
    cam = rng.uniform(0.5, 1.0, 12)
    per_seed[s] = {"per_brand": {
        "CAMERA": _per_brand({"mrr": cam.tolist(), "recall@10": cam.tolist()}),
        "WORSE": _per_brand({"mrr": (cam - 0.3).tolist(), "recall@10": (cam - 0.01).tolist()}),
        "SAME": _per_brand({"mrr": cam.tolist(), "recall@10": cam.tolist()}),
        "NOISY": _per_brand({"mrr": rng.uniform(0.5, 1.0, 12).tolist(),
                             "recall@10": rng.uniform(0.5, 1.0, 12).tolist()})}}
  sig = tables.significance(per_seed, n_resamples=300, alpha=0.05)
  assert sig["seeds"] == [0, 1] and set(sig["comparisons"]) == {"WORSE", "SAME", "NOISY"}
  worse = sig["comparisons"]["WORSE"]["mrr"]
  assert worse["pooled"]["diff"] == pytest.approx(0.3)
  assert worse["pooled"]["n_brands"] == 24 and worse["pooled"]["p_value"] == 0.0
  assert worse["pooled"]["significant"] and worse["all_seeds_significant"]
  assert set(worse["per_seed"]) == {"0", "1"} and worse["per_seed"]["0"]["n_brands"] == 12
  same = sig["comparisons"]["SAME"]["recall@10"]
  assert same["pooled"]["p_value"] == 1.0 and not same["pooled"]["significant"]
  assert same["seeds_significant"] == 0
  paths = tables.write_significance(tmp_path / "significance", sig)
  md = paths["md"].read_text()
  assert "| WORSE | +0.300 [+0.300, +0.300] | < 0.00333 | yes | 2/2 |" in md
  assert "brands of all seeds pooled" in md
  assert json.loads(paths["json"].read_text())["comparisons"]["SAME"]["mrr"]["pooled"][
      "significant"] is False
  with pytest.raises(ValueError, match="CAMERA"):
    tables.significance({0: {"per_brand": {"RAND": _per_brand({"mrr": [1.0]})}}})


def test_significance_with_the_same_brands_in_every_seed_resamples_each_brand_once():
  """A fixed dataset: brand b_i's seeds are averaged first (a cluster bootstrap)."""
  lead = np.array([0.4, -0.1, 0.3])          # CAMERA minus OTHER per brand, the same every seed
  per_seed = {}
  for s, shift in ((0, 0.0), (1, 0.1)):
    cam = np.array([0.5, 0.6, 0.7]) + shift
    per_seed[s] = {"per_brand": {"CAMERA": _per_brand({"mrr": cam.tolist()}),
                                 "OTHER": _per_brand({"mrr": (cam - lead).tolist()})}}
  sig = tables.significance(per_seed, metrics=("mrr",), n_resamples=2000,
                            same_brands_across_seeds=True)
  pooled = sig["comparisons"]["OTHER"]["mrr"]["pooled"]
  assert pooled["n_brands"] == 3 and sig["pooling"] == "brand means over seeds"
  assert pooled["diff"] == pytest.approx(lead.mean())
  # By hand: of the 27 equally likely resamples of 3 brands, the mean lead is <= 0 only when
  # all three draws are the -0.1 brand (two of them and a 0.3 already sum to +0.1): p = 1/27.
  assert pooled["p_value"] == pytest.approx(1 / 27, abs=0.015)
  apart = tables.significance(per_seed, metrics=("mrr",), n_resamples=2000)
  assert apart["comparisons"]["OTHER"]["mrr"]["pooled"]["n_brands"] == 6
  md = tables.significance_markdown(sig)
  assert "averaged over the seeds" in md


# --------------------------------------------------------------------------- the whole job


def test_paper_tables_smoke_on_the_tiny_run(tmp_path, tiny_run, tiny_data):
  """One seed: the session's tiny run is seed 0's CAMERA run; the other methods are trained."""
  run_dir, _ = tiny_run
  cfg = tiny_config(tiny_data)
  work = ablations.init_workdir(tmp_path / "tables", cfg)
  shutil.copytree(run_dir, work / "seed_0" / "camera", symlinks=True)
  lines: list[str] = []
  out = ablations.run_paper_tables(cfg, work, [0], n_resamples=50, progress=lines.append)
  assert out["seconds"][0]["CAMERA"] == 0.0                      # reused, not retrained
  assert all(out["seconds"][0][m] > 0 for m in ("C-w/o-SI", "C-w/o-MR", "Hp+MR"))
  for name in ("table2.md", "table2.csv", "table2.json", "table3.md", "table3.csv",
               "table3.json", "significance.md", "significance.json"):
    assert (work / name).stat().st_size > 0, name
  t2 = tables.read_table_json(work / "table2.json")
  assert list(t2["rows"]) == list(ablations.METHODS)
  assert tables.read_table_csv(work / "table2.csv")["rows"].keys() == set(ablations.METHODS)
  md = (work / "table2.md").read_text()
  for m in ablations.METHODS:
    assert f"| {m} |" in md
  cats = {a for a in tables.read_table_json(work / "table3.json")["rows"]}
  assert cats == {"Auto", "Clothes", "Food", "Makeup"}
  sig = json.loads((work / "significance.json").read_text())
  assert set(sig["comparisons"]) == set(ablations.METHODS) - {"CAMERA"}
  for seed_dir in ("camera", "wo_si", "wo_mr", "hp_mr"):
    assert (work / "seed_0" / seed_dir / "scores.csv").exists()
    metrics = json.loads((work / "seed_0" / seed_dir / "metrics.json").read_text())
    assert metrics["n_test_pairs"] > metrics["n_test_positives"] > 0, seed_dir
    assert metrics["warnings"] == [] and metrics["n_test_brands"] > 0, seed_dir
    assert metrics["ranker_loss"] == pipeline.ranker_loss_record(cfg), seed_dir
  # The ablations changed what they should: C-w/o-SI a new U_C, C-w/o-MR the CAMERA one.
  u_c = np.load(work / "seed_0" / "camera" / "concepts" / "U_C.npy")
  assert not np.allclose(np.load(work / "seed_0" / "wo_si" / "concepts" / "U_C.npy"), u_c)
  np.testing.assert_array_equal(np.load(work / "seed_0" / "wo_mr" / "concepts" / "U_C.npy"), u_c)
  # A rerun reuses everything; other settings are refused.
  again = ablations.run_paper_tables(cfg, work, [0], n_resamples=50, progress=lines.append)
  assert set(again["seconds"][0].values()) == {0.0}
  with pytest.raises(ablations.ConfigMismatchError):
    ablations.run_paper_tables(cfg.replace(epochs=cfg.epochs + 1), work, [0])
  # A cached CAMERA run made from another version of the dataset is refused, not reused.
  record = work / "seed_0" / "camera" / pipeline.DATA_RECORD
  record.write_text(json.dumps({**json.loads(record.read_text()), "image files": "another"}))
  with pytest.raises(pipeline.ConfigError, match="image files of the posts: not as when the stages"):
    ablations.run_paper_tables(cfg, work, [0], n_resamples=50)


@pytest.mark.parametrize("args, message", [
    (["--seeds=0,x"], "--seeds must be integers"),
    (["--seeds=1,1"], "without repeats"),
    (["--seeds=0,-1"], "--seeds must lie in [0, 2^32), got -1"),   # before seed 0 trains
    (["--methods=CAMERA,MIR"], "unknown method 'MIR'"),
    (["--methods=,"], "no method named"),
    (["--batch_size=0"], "--batch_size=0: must be >= 1"),
])
def test_paper_tables_cli_bad_input_is_one_line(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "paper_tables.py"),
       f"--workdir={tmp_path / 'w'}", *args], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()  # nothing recorded that a corrected rerun would refuse
  assert len([l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("W", "I"))]) == 1


def test_paper_tables_cli_refuses_a_workdir_that_is_a_file_in_one_line(tmp_path):
  (tmp_path / "file").write_text("not a directory\n")
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "paper_tables.py"),
       f"--workdir={tmp_path / 'file'}", "--seeds=0"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("W", "I"))]
  assert len(lines) == 1 and "Not a directory" in lines[0], proc.stderr
