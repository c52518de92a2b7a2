"""End to end: the work directory of the tiny run, leak-free scores, rescoring and resuming.

Everything here reuses the session's one tiny run (``tiny_run``); only the permutation test starts
a subprocess (``experiments/evaluate.py``).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, repo_on_pythonpath, tiny_config

METHOD_KEYS = {"auc", "cauc", "recall@10", "recall@50", "mrr", "map", "medr"}


def read_log(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "train_log.jsonl").read_text().splitlines() if l.strip()]


def read_scores(path: pathlib.Path) -> list[list[str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.reader(f))


def test_workdir_has_every_documented_file(tiny_run, tiny_data):
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  workdir, result = tiny_run
  for name in ("flags.txt", "metrics.json", "scores.csv", "train_log.jsonl", "word2vec", "tfds"):
    assert (workdir / name).exists(), name
  for stage in ("concept_generator", "cosmic", "ranker"):
    steps = [p.name for p in (workdir / "checkpoints" / stage).iterdir() if p.name.isdigit()]
    assert steps, f"no {stage} checkpoint"
  cfg = tiny_config(tiny_data)
  assert max(int(s) for s in os.listdir(workdir / "checkpoints" / "ranker") if s.isdigit()) == cfg.epochs

  flags = (workdir / "flags.txt").read_text().splitlines()
  assert f"--epochs={cfg.epochs}" in flags and f"--workdir={workdir}" in flags
  assert f"--data_dir={tiny_data}" in flags

  dataset = format_lib.load(tiny_data, seed=cfg.seed, check_images=False)
  n, n_posts, n_acc = len(dataset.concepts), len(dataset.posts), len(dataset.accounts)
  cdir = workdir / "concepts"
  assert (cdir / "concepts.txt").read_text().splitlines() == list(dataset.concepts)
  assert (cdir / "accounts.txt").read_text().splitlines() == [a.id for a in dataset.accounts]
  u_c, w_a = np.load(cdir / "U_C.npy"), np.load(cdir / "w_a.npy")
  h, z = np.load(cdir / "h.npy"), np.load(cdir / "z_prime.npy")
  assert u_c.shape == (n, cfg.d_u) and np.isfinite(u_c).all()
  np.testing.assert_allclose(u_c.mean(0), 0.0, atol=1e-4)  # standardised per dimension
  assert h.shape == (n_posts, n) and h.dtype == bool and h.any(1).all()
  assert z.shape == (n_posts, n) and z.dtype == np.float32
  np.testing.assert_allclose(z.sum(1)[z.sum(1) > 0], 1.0, atol=1e-5)
  assert not (z[~h] > 0).any()  # masked mode: z' lives on the predicted concepts
  assert w_a.shape == (n_acc, n) and np.isfinite(w_a).all()
  has_posts = np.zeros(n_acc, bool)
  has_posts[[dataset.account_index()[p.account] for p in dataset.posts]] = True
  np.testing.assert_allclose(w_a[has_posts].sum(1), 1.0, atol=1e-5)

  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["methods"] == result["methods"]
  assert set(metrics["methods"]) == {"CAMERA", *cfg.baselines}
  for name, vals in metrics["methods"].items():
    assert set(vals) >= METHOD_KEYS, name
    assert 0.0 <= vals["auc"] <= 1.0 and vals["medr"] >= 1.0
  test_cats = {a.category for a in dataset.accounts if a.id in set(dataset.split.test)}
  assert set(metrics["per_category"]) == test_cats
  for vals in metrics["per_category"].values():
    assert set(vals) >= METHOD_KEYS

  # The images the image stages read, decoded once per split (docs/workdir.md).
  from camera_jax.data import input_pipeline
  (build,) = [d for d in (workdir / "tfds").iterdir() if d.is_dir()]
  s, key = cfg.image_size, input_pipeline.decoder_key()
  assert len(list((build / "decoded").iterdir())) == 4
  for split, count in (("posts", n_posts), ("labeled", len(dataset.labeled_posts))):
    pixels = np.load(build / "decoded" / f"{split}_{s}px_{key}.npy", mmap_mode="r")
    assert pixels.shape == (count, s, s, 3) and pixels.dtype == np.uint8
    assert sorted(np.load(build / "decoded" / f"{split}_{s}px_{key}.rows.npy")) == list(range(count))

  rows = read_scores(workdir / "scores.csv")
  assert rows[0] == ["brand", "influencer", "score", "label"]
  pairs = pipeline.test_pairs(dataset)
  assert len(rows) - 1 == len(pairs["label"]) == metrics["n_test_pairs"]
  assert len(dataset.split.test) * len(dataset.split.candidates) == metrics["n_test_pairs"]
  ids = [a.id for a in dataset.accounts]
  assert [(r[0], r[1]) for r in rows[1:]] == [(ids[b], ids[m]) for b, m in
                                              zip(pairs["brand"], pairs["influencer"])]
  labels = np.array([int(r[3]) for r in rows[1:]])
  np.testing.assert_array_equal(labels, pairs["label"])
  assert labels.sum() == metrics["n_test_positives"] > 0
  assert metrics["n_test_brands"] == len(dataset.split.test) > 0
  assert metrics["n_test_positives_not_candidates"] == 0 and metrics["warnings"] == []
  assert metrics["labels"] == pipeline.labels_record(dataset)     # the report checks them
  assert np.isfinite([float(r[2]) for r in rows[1:]]).all()
  # the loss and every setting it trained with: the triplet's own margin, which no flag set
  assert (cfg.loss, cfg.margin, cfg.loss_hparams) == ("triplet", None, "")
  assert metrics["ranker_loss"] == {"name": "triplet", "settings": {"margin": 7.0}}
  record = workdir / pipeline.RANKER_LOSS_RECORD   # written when the ranker trained
  assert json.loads(record.read_text()) == metrics["ranker_loss"]


def test_train_log_has_every_epoch_and_the_ranker_loss_goes_down(tiny_run, tiny_data):
  workdir, _ = tiny_run
  cfg = tiny_config(tiny_data)
  log = read_log(workdir)
  epochs = {"concept_generator": cfg.cg_epochs, "cosmic": cfg.cosmic_epochs, "ranker": cfg.epochs}
  for stage, n in epochs.items():
    recs = [r for r in log if r["stage"] == stage]
    assert [r["epoch"] for r in recs] == list(range(1, n + 1)), stage
    for r in recs:
      assert np.isfinite(r["loss"]) and r["loss"] >= 0.0 and r["lr"] > 0.0, r
  ranker = [r for r in log if r["stage"] == "ranker"]
  assert ranker[-1]["loss"] < ranker[0]["loss"]
  lrs = [r["lr"] for r in ranker]  # per-epoch staircase decay
  np.testing.assert_allclose(lrs, [cfg.learning_rate * cfg.lr_decay ** e for e in range(len(lrs))],
                             rtol=1e-6)
  np.testing.assert_allclose([r["lr_representation"] for r in ranker],
                             np.asarray(lrs) * cfg.representation_lr_scale, rtol=1e-6)


def permuted_copy(src: pathlib.Path, dst: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A copy of the dataset where each test brand cooperated with other influencers.

  Accounts, posts, the split and the training brands' cooperations stay identical.
  """
  from camera_jax.data import format as format_lib

  dataset = format_lib.load(src, seed=0, check_images=False)
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("images"))
  os.symlink(pathlib.Path(src, "images").resolve(), dst / "images")
  split = dataset.split
  (dst / "split.json").write_text(json.dumps(
      {"train": list(split.train), "test": list(split.test), "candidates": list(split.candidates)}))
  test = set(split.test)
  positives = dataset.positives()
  first_post = {}
  for p in dataset.posts:
    first_post.setdefault(p.account, p.id)
  rng = np.random.default_rng(seed)
  lines = []
  for c in dataset.cooperations:  # the training brands' lines, unchanged and in order
    if c.brand not in test:
      lines.append({"brand": c.brand, "influencer": c.influencer, "post": c.post})
  for brand in split.test:
    old = positives.get(brand, set())
    others = [m for m in split.candidates if m not in old and m in first_post]
    for m in rng.choice(others, size=max(1, len(old)), replace=False):
      lines.append({"brand": brand, "influencer": str(m), "post": first_post[str(m)]})
  (dst / "cooperations.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  return dst


def test_scores_do_not_depend_on_which_test_pairs_are_positive(tiny_run, tiny_data, tmp_path):
  from camera_jax.data import format as format_lib

  workdir, _ = tiny_run
  copy = permuted_copy(tiny_data, tmp_path / "permuted")
  assert format_lib.validate(copy, check_images=False) == []
  out = tmp_path / "rescored"
  proc = subprocess.run(
      [sys.executable, "experiments/evaluate.py", f"--workdir={workdir}", f"--data_dir={copy}",
       f"--out_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "CAMERA" in proc.stdout

  before, after = read_scores(workdir / "scores.csv"), read_scores(out / "scores.csv")
  assert len(before) == len(after) > 1
  assert [r[:2] for r in before] == [r[:2] for r in after]  # same pairs, row for row
  if jax.default_backend() == "cpu":
    assert [r[2] for r in before] == [r[2] for r in after]  # and the same scores, bit for bit
  else:
    # A GPU autotunes each compilation, so the rescoring process may pick other matmul kernels
    # than the training process did (XLA's determinism notes); the scores then differ by rounding.
    np.testing.assert_allclose([float(r[2]) for r in after[1:]],
                               [float(r[2]) for r in before[1:]], rtol=1e-5, atol=1e-6)
  labels_before = np.array([int(r[3]) for r in before[1:]])
  labels_after = np.array([int(r[3]) for r in after[1:]])
  assert (labels_before != labels_after).sum() > 0
  assert labels_after.sum() > 0
  assert ((labels_before == 1) & (labels_after == 1)).sum() == 0  # entirely new positives

  m_before = json.loads((workdir / "metrics.json").read_text())
  m_after = json.loads((out / "metrics.json").read_text())
  assert m_after["n_test_pairs"] == m_before["n_test_pairs"]
  assert m_after["methods"]["CAMERA"] != m_before["methods"]["CAMERA"]
  assert m_after["concept_layer"] == m_before["concept_layer"]


def test_test_positives_outside_the_candidates_and_an_empty_test_set_are_warned(tiny_run, tiny_data,
                                                                                  tmp_path):
  """A test brand's cooperation with an influencer that is not a candidate is in no test pair:
  metrics.json counts it and says so in a warning line, as it does for a split with no test
  brand or no candidate (every metric null)."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  workdir, result = tiny_run
  dataset = format_lib.load(tiny_data, check_images=False)
  positives = dataset.positives()
  brand = next(b for b in dataset.split.test if positives[b])
  dropped = sorted(positives[brand])[0]
  others = sum(dropped in positives[b] for b in dataset.split.test)
  partners = {m for b in dataset.split.test for m in positives[b]}
  n_partners = sum(len(positives[b]) for b in dataset.split.test)
  for name, split, want in (
      ("fewer_candidates", {"candidates": [m for m in dataset.split.candidates if m != dropped]},
       others),
      ("no_test", {"test": [], "train": [*dataset.split.train, *dataset.split.test]}, 0),
      ("no_partner", {"candidates": [m for m in dataset.split.candidates if m not in partners]},
       n_partners),
      ("no_candidate", {"candidates": []}, n_partners)):
    copy = tmp_path / name
    shutil.copytree(tiny_data, copy)
    obj = {"train": list(dataset.split.train), "test": list(dataset.split.test),
           "candidates": list(dataset.split.candidates), **split}
    (copy / format_lib.SPLIT_FILE).write_text(json.dumps(obj))
    metrics = pipeline.rescore(workdir, copy, tmp_path / f"{name}_out")
    saved = json.loads((tmp_path / f"{name}_out" / "metrics.json").read_text())
    assert saved["warnings"] == metrics["warnings"], name
    assert len(metrics["warnings"]) == (2 if name.startswith("no_") and name != "no_test"
                                        else 1), metrics["warnings"]
    assert metrics["n_test_positives_not_candidates"] == want
    if name == "no_candidate":
      assert metrics["n_test_pairs"] == 0 and saved["methods"]["CAMERA"]["mrr"] is None
      assert metrics["warnings"][0].startswith("no candidate in the split")
    elif name == "no_partner":
      assert metrics["n_test_positives"] == 0 and saved["methods"]["CAMERA"]["mrr"] is None
      assert metrics["warnings"][0].startswith(f"no test brand ({len(dataset.split.test)}) "
                                               "cooperated with a candidate")
    elif name == "no_test":
      assert metrics["n_test_brands"] == metrics["n_test_pairs"] == 0
      assert metrics["warnings"][0].startswith("no test brand in the split")
      assert saved["methods"]["CAMERA"]["mrr"] is None
    else:
      assert want >= 1 and metrics["warnings"][0].startswith(f"{want} cooperation(s) of a test brand")
      assert metrics["n_test_positives"] == result["n_test_positives"] - want


def test_rescoring_a_split_that_tests_training_brands_is_refused(tiny_run, tiny_data, tmp_path):
  """The ranker trained on the training brands' cooperations: testing on them leaks."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  workdir, _ = tiny_run
  split = format_lib.load(tiny_data, check_images=False).split
  obj = {"train": list(split.train[2:]), "test": [*split.test, *split.train[:2]],
         "candidates": list(split.candidates)}
  copy = tmp_path / "mixed"
  shutil.copytree(tiny_data, copy)
  (copy / format_lib.SPLIT_FILE).write_text(json.dumps(obj))
  with pytest.raises(ValueError) as err:
    pipeline.rescore(workdir, copy, tmp_path / "out")
  assert str(err.value) == (
      f"{copy / format_lib.SPLIT_FILE}: 2 test brand(s) (e.g. {split.train[0]!r}) were training "
      "brands of the run: their cooperations trained the ranker, so their metrics would be leaked")
  assert not (tmp_path / "out").exists()
  # the run's own split edited in place: its training brands are no longer known
  work, own = tmp_path / "work", tmp_path / "own"
  shutil.copytree(workdir, work)
  shutil.copytree(tiny_data, own)
  flags = [f"--data_dir={own}" if line.startswith("--data_dir=") else line
           for line in (work / "flags.txt").read_text().splitlines()]
  (work / "flags.txt").write_text("\n".join(flags) + "\n")
  pipeline.rescore(work, out_dir=tmp_path / "same")  # unchanged: rescored
  # the run's dataset moved (a run copied to another machine): rescored from the new place
  moved = tmp_path / "moved"
  own.rename(moved)
  pipeline.rescore(work, moved, tmp_path / "moved_out")
  assert ((tmp_path / "moved_out" / "scores.csv").read_bytes()
          == (tmp_path / "same" / "scores.csv").read_bytes())
  # the run trained on the default split: it is known from the accounts and the seed
  (moved / format_lib.SPLIT_FILE).write_text(json.dumps(obj))
  with pytest.raises(ValueError, match=r"2 test brand\(s\) .* were training brands of the run"):
    pipeline.rescore(work, moved, tmp_path / "moved_mixed")
  (moved / format_lib.SPLIT_FILE).unlink()
  moved.rename(own)
  (own / format_lib.SPLIT_FILE).write_text(json.dumps(obj))
  with pytest.raises(ValueError, match=r"split.json: not the split the run trained with"):
    pipeline.rescore(work, out_dir=tmp_path / "edited")


def test_rescoring_the_run_reproduces_its_files(tiny_run, tmp_path):
  from camera_jax import pipeline

  workdir, result = tiny_run
  out = tmp_path / "again"
  again = pipeline.rescore(workdir, out_dir=out)
  assert again["methods"] == result["methods"]
  assert again["per_category"] == result["per_category"]
  assert (out / "metrics.json").read_bytes() == (workdir / "metrics.json").read_bytes()
  assert (out / "scores.csv").read_bytes() == (workdir / "scores.csv").read_bytes()


def test_rescoring_other_accounts_is_refused_clearly(tiny_run, tiny_data, tmp_path):
  from camera_jax import run as run_lib

  workdir, _ = tiny_run
  copy = tmp_path / "more_accounts"
  shutil.copytree(tiny_data, copy, ignore=shutil.ignore_patterns("images"))
  os.symlink(pathlib.Path(tiny_data, "images").resolve(), copy / "images")
  with open(copy / "accounts.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"id": "influencer_new", "kind": "influencer", "category": "Food",
                        "followers": 1000}) + "\n")
  post = json.loads((copy / "posts.jsonl").read_text().splitlines()[0])
  post.update(id="influencer_new_p00", account="influencer_new")
  with open(copy / "posts.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps(post) + "\n")
  with pytest.raises(run_lib.RunError, match="1 account.*not supported yet"):
    run_lib.load_run(workdir, data_dir=copy)
  proc = subprocess.run(
      [sys.executable, "experiments/evaluate.py", f"--workdir={tmp_path / 'missing'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [f"{tmp_path / 'missing'}: work directory does not exist"]


def test_rescoring_other_posts_or_accounts_is_refused_clearly(tiny_run, tiny_data, tmp_path):
  """The same accounts in the same order and as many posts, but not the files the run was trained
  on: evaluate would otherwise score them with the run's concept layer and write metrics a user
  would trust. The refusal names the file; another split or other cooperations stay welcome."""
  from camera_jax import run as run_lib

  workdir, _ = tiny_run
  for name, edit in (("posts.jsonl", lambda p: {**p, "likes": p["likes"] * 50 + 1}),
                     ("accounts.jsonl", lambda a: {**a, "followers": a["followers"] + 1})):
    copy = tmp_path / name
    shutil.copytree(tiny_data, copy, ignore=shutil.ignore_patterns("images"))
    os.symlink(pathlib.Path(tiny_data, "images").resolve(), copy / "images")
    lines = [json.loads(l) for l in (copy / name).read_text().splitlines()]
    (copy / name).write_text("".join(json.dumps(edit(x)) + "\n" for x in lines))
    with pytest.raises(run_lib.RunError, match=f"{name}: not the file the run was trained on"):
      run_lib.load_run(workdir, data_dir=copy)
    out = tmp_path / f"out_{name}"
    proc = subprocess.run([sys.executable, "experiments/evaluate.py", f"--workdir={workdir}",
                           f"--data_dir={copy}", f"--out_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=repo_on_pythonpath())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"{copy / name}: not the file the run was trained on"), proc.stderr
    assert not (out / "metrics.json").exists() and not (out / "scores.csv").exists()
  # cooperations and split.json may differ
  copy = tmp_path / "other_split"
  shutil.copytree(tiny_data, copy, ignore=shutil.ignore_patterns("images"))
  os.symlink(pathlib.Path(tiny_data, "images").resolve(), copy / "images")
  lines = (copy / "cooperations.jsonl").read_text().splitlines()
  (copy / "cooperations.jsonl").write_text("\n".join(lines[:-1]) + "\n")
  run_lib.load_run(workdir, data_dir=copy)


def test_an_unfinished_or_misread_run_is_refused_in_one_line(tiny_run, tmp_path):
  """evaluate (and every command on a finished run) refuses a truncated or garbled file of the
  run, a ranker stopped before --epochs and a flags.txt value it cannot parse, naming the file
  (and line); no traceback."""
  from camera_jax import run as run_lib

  workdir, _ = tiny_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("tfds", "report"))
  # a truncated or garbled file of the run: one line naming it
  for rel, named, bad in (("concepts/w_a.npy", "concepts/w_a.npy", "truncated"),
                          ("concepts/top_mask.npy", "concepts/top_mask.npy", "truncated"),
                          ("word2vec/keyed_vectors.kv", "word2vec", "truncated"),
                          ("word2vec/keyed_vectors.kv", "word2vec", "garbage")):
    good = (copy / rel).read_bytes()
    (copy / rel).write_bytes(good[:90] if bad == "truncated" else b"garbage\n")
    with pytest.raises(run_lib.RunError) as err:
      run_lib.load_run(copy)
    assert str(err.value).startswith(f"{copy / named}: unreadable ("), err.value
    assert "\n" not in str(err.value)
    (copy / rel).write_bytes(good)
  steps = sorted(int(p.name) for p in (copy / "checkpoints" / "ranker").iterdir() if p.name.isdigit())
  shutil.rmtree(copy / "checkpoints" / "ranker" / str(steps[-1]))
  with pytest.raises(ValueError, match=f"stopped after epoch {steps[-2]} of {steps[-1]}"):
    run_lib.load_run(copy)
  # no ranker at all: refused without creating its directory (a checkpoint manager would)
  ranker_dir = copy / "checkpoints" / "ranker"
  shutil.move(ranker_dir, copy / "ranker.moved")
  with pytest.raises(FileNotFoundError, match="no ranker checkpoint"):
    run_lib.load_run(copy)
  assert not ranker_dir.exists()
  shutil.move(copy / "ranker.moved", ranker_dir)
  digests = (copy / "data_digests.json").read_text()
  (copy / "data_digests.json").write_text("[]")
  with pytest.raises(run_lib.RunError, match=r"data_digests.json: cannot read the run's record "
                     r"of its dataset \(not a JSON object\)"):
    run_lib.load_run(copy)
  (copy / "data_digests.json").write_text(digests)
  flags = (copy / "flags.txt").read_text().splitlines()
  line = next(i for i, l in enumerate(flags) if l.startswith("--epochs="))
  flags[line] = "--epochs=twenty"
  (copy / "flags.txt").write_text("\n".join(flags) + "\n")
  proc = subprocess.run([sys.executable, "experiments/evaluate.py", f"--workdir={copy}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"{copy / 'flags.txt'}:{line + 1}: --epochs=twenty: not a valid int"]


def test_rerunning_a_finished_run_resumes_without_training(tiny_run, tiny_data, monkeypatch):
  from camera_jax import pipeline
  from camera_jax.data import text as text_lib
  from camera_jax.training import concepts as concepts_lib
  from camera_jax.training import ranker as ranker_lib

  workdir, result = tiny_run
  log_before = (workdir / "train_log.jsonl").read_text()
  ckpts = {s: sorted(os.listdir(workdir / "checkpoints" / s)) for s in os.listdir(workdir / "checkpoints")}
  concept_files = {p.name: p.read_bytes() for p in (workdir / "concepts").iterdir()}

  def refuse(*args, **kwargs):
    raise AssertionError("a finished stage was trained again")

  real_make_train_step = ranker_lib.make_train_step
  monkeypatch.setattr(text_lib, "train_word2vec", refuse)
  monkeypatch.setattr(concepts_lib, "fit_image_model", refuse)
  monkeypatch.setattr(ranker_lib, "make_train_step",
                      lambda *a, **k: (real_make_train_step(*a, **k), refuse)[1])
  again = pipeline.train_and_evaluate(tiny_config(tiny_data), workdir)
  assert again["methods"] == result["methods"]
  assert again["per_category"] == result["per_category"]
  assert (workdir / "train_log.jsonl").read_text() == log_before
  assert {s: sorted(os.listdir(workdir / "checkpoints" / s)) for s in ckpts} == ckpts
  assert {p.name: p.read_bytes() for p in (workdir / "concepts").iterdir()} == concept_files


def test_resuming_with_other_settings_stops_in_one_line_and_keeps_the_flags(tiny_run, tiny_data, tmp_path,
                                                                            monkeypatch):
  """--representation_lr_scale changes the ranker's optimiser tree: its checkpoint cannot resume."""
  import dataclasses

  from camera_jax import pipeline
  from camera_jax.training.checkpoint import CheckpointMismatchError

  workdir = tmp_path / "work"
  shutil.copytree(tiny_run[0], workdir)
  flags_before = (workdir / "flags.txt").read_text()
  ckpts = sorted(os.listdir(workdir / "checkpoints" / "ranker"))
  other = dataclasses.replace(tiny_config(tiny_data), representation_lr_scale=0.5)
  # check_settings refuses this first (next test); here the checkpoint's own guard is tested.
  monkeypatch.setattr(pipeline, "check_settings", lambda cfg, workdir: None)
  with pytest.raises(CheckpointMismatchError) as err:
    pipeline.train_and_evaluate(other, workdir)
  assert str(err.value).startswith(str(workdir / "checkpoints" / "ranker" / ckpts[-1]))
  assert "\n" not in str(err.value)
  # flags.txt still describes the checkpoints, and nothing was written over them
  assert (workdir / "flags.txt").read_text() == flags_before
  assert sorted(os.listdir(workdir / "checkpoints" / "ranker")) == ckpts
  # Without a flags.txt before, the failed run leaves none: its settings built nothing, and a
  # flags.txt of them would make the next run blame the checkpoints on them
  (workdir / "flags.txt").unlink()
  with pytest.raises(CheckpointMismatchError):
    pipeline.train_and_evaluate(other, workdir)
  assert not (workdir / "flags.txt").exists()


def test_a_rerun_with_other_settings_is_refused_before_any_work(tiny_run, tiny_data, tmp_path,
                                                                monkeypatch):
  """A finished stage is reused, so a rerun that changes its settings must not pass silently
  (another --loss used to restore the finished triplet ranker and report it as the new loss)."""
  from camera_jax import pipeline
  from camera_jax.data import text as text_lib

  workdir = tmp_path / "work"
  shutil.copytree(tiny_run[0], workdir)
  flags_before = (workdir / "flags.txt").read_text()
  cfg = tiny_config(tiny_data)

  def refuse(*args, **kwargs):
    raise AssertionError("work started")

  monkeypatch.setattr(text_lib, "TextEmbedder", refuse)
  monkeypatch.setattr(pipeline, "load_dataset", refuse)
  for other, names in [
      (cfg.replace(loss="bpr"), "loss triplet -> bpr"),
      (cfg.replace(margin=2.0), "margin unset -> 2.0"),
      (cfg.replace(seed=1), "seed 0 -> 1"),
      (cfg.replace(cnn_fc=32, dropout=0.2), "cnn_fc 64 -> 32, dropout 0.1 -> 0.2"),
      (cfg.replace(epochs=cfg.epochs - 1), f"epochs {cfg.epochs} -> {cfg.epochs - 1}"),
  ]:
    with pytest.raises(pipeline.ConfigError) as err:
      pipeline.train_and_evaluate(other, workdir)
    line = str(err.value)
    assert line.startswith(f"{workdir / 'flags.txt'}: the stages in {workdir} (") and "\n" not in line
    assert f"were built with other settings ({names}); use a new --workdir" in line, line
    assert (workdir / "flags.txt").read_text() == flags_before
  # The loss's settings are compared by meaning: the triplet loss's own margin (7) spelt out
  # either way is the same loss (the finished ranker stands); another value is not.
  pipeline.check_settings(cfg.replace(loss_hparams="margin=7"), workdir)
  pipeline.check_settings(cfg.replace(margin=7.0), workdir)
  with pytest.raises(pipeline.ConfigError, match=r"\(loss_hparams \(empty\) -> margin=6\.5\)"):
    pipeline.check_settings(cfg.replace(loss_hparams="margin=6.5"), workdir)
  # A ranker setting only matters while the ranker's checkpoints exist.
  shutil.rmtree(workdir / "checkpoints" / "ranker")
  pipeline.check_settings(cfg.replace(loss="bpr"), workdir)
  # A setting blocks on the outputs of the first stage it shapes and of the stages after it.
  with pytest.raises(pipeline.ConfigError, match=r"\(word2vec, concepts/U_C.npy, checkpoints/cosmic\)"):
    pipeline.check_settings(cfg.replace(w2v_dim=8), workdir)
  with pytest.raises(pipeline.ConfigError, match=r"\(concepts/h.npy, checkpoints/concept_generator, "
                     r"concepts/U_C.npy, checkpoints/cosmic\) .*\(cg_epochs"):
    pipeline.check_settings(cfg.replace(cg_epochs=cfg.cg_epochs + 1), workdir)
  with pytest.raises(pipeline.ConfigError, match=r"\(concepts/U_C.npy, checkpoints/cosmic\) "
                     r".*\(cosmic_augment"):
    pipeline.check_settings(cfg.replace(cosmic_augment=not cfg.cosmic_augment), workdir)
  with pytest.raises(pipeline.ConfigError, match=r"\(word2vec, concepts/h.npy, "):  # --data_dir
    pipeline.check_settings(cfg.replace(seed=5), workdir)
  # docs/workdir.md's recipe: retrain COSMIC with other settings once its outputs are deleted;
  # a checkpoint directory without a finished epoch protects nothing
  (workdir / "concepts" / "U_C.npy").unlink()
  shutil.rmtree(workdir / "checkpoints" / "cosmic")
  (workdir / "checkpoints" / "cosmic").mkdir()
  pipeline.check_settings(cfg.replace(cosmic_epochs=cfg.cosmic_epochs + 1), workdir)
  with pytest.raises(pipeline.ConfigError, match=r"\(word2vec\) .*w2v_epochs"):
    pipeline.check_settings(cfg.replace(w2v_epochs=cfg.w2v_epochs + 1), workdir)
  # Neutral settings, more epochs and another path to the same data pass.
  pipeline.check_settings(cfg.replace(report=True, eval_chunk=7, check_images=False,
                                      epochs=cfg.epochs + 5, data_dir=str(tmp_path / "copy")),
                          workdir)


@pytest.mark.parametrize("augment, cosmic_augment", [(True, False), (False, True)])
def test_each_image_stage_takes_its_own_augmentation_switch(tiny_run, tiny_data, tmp_path,
                                                          monkeypatch, augment, cosmic_augment):
  """--augment is the concept generator's, --cosmic_augment COSMIC's (paper.flags: the authors'
  generator only)."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib
  from camera_jax.data import text as text_lib
  from camera_jax.training import concepts as concepts_lib

  seen = {}

  class Stop(Exception):
    pass

  def capture(name):
    def fake(*args, cfg, **kwargs):
      seen[name] = cfg.augment
      raise Stop
    return fake

  monkeypatch.setattr(concepts_lib, "train_cosmic", capture("cosmic"))
  monkeypatch.setattr(concepts_lib, "train_concept_generator", capture("concept_generator"))
  cfg = tiny_config(tiny_data, augment=augment, cosmic_augment=cosmic_augment)
  dataset = format_lib.load(tiny_data, check_images=False)
  embedder = text_lib.TextEmbedder.load(tiny_run[0] / "word2vec")
  h = np.ones((len(dataset.posts), len(dataset.concepts)), np.float32)
  with pytest.raises(Stop):
    pipeline.cosmic_stage(cfg, dataset, {"posts": None}, embedder, h, tmp_path, None, None)
  with pytest.raises(Stop):
    pipeline.concept_stage(cfg, dataset, {"posts": None, "labeled": None}, tmp_path, None, None)
  assert seen == {"cosmic": cosmic_augment, "concept_generator": augment}


def test_after_a_nan_the_stopped_stage_may_lower_its_learning_rate(tiny_run, tiny_data,
                                                                   tmp_path):
  """The NaN guard's advice, "lower the learning rate", must be followable in the same workdir."""
  from camera_jax import pipeline
  from camera_jax.training import trainer

  workdir = tmp_path / "work"
  shutil.copytree(tiny_run[0], workdir)
  cfg = tiny_config(tiny_data)
  lower = cfg.replace(learning_rate=cfg.learning_rate / 10)
  with pytest.raises(pipeline.ConfigError, match="learning_rate"):
    pipeline.check_settings(lower, workdir)
  (workdir / pipeline.NONFINITE_RECORD).write_text('{"stage": "ranker"}')
  pipeline.check_settings(lower, workdir)
  (workdir / pipeline.NONFINITE_RECORD).write_text('{"stage": "cosmic"}')   # COSMIC finished
  with pytest.raises(pipeline.ConfigError, match="cosmic_learning_rate"):       # since: refused
    pipeline.check_settings(cfg.replace(cosmic_learning_rate=cfg.cosmic_learning_rate / 10), workdir)
  (workdir / pipeline.NONFINITE_RECORD).write_text('{"stage": "ranker"}')
  for other in (cfg.replace(learning_rate=cfg.learning_rate * 10),            # not lower
                cfg.replace(cg_learning_rate=cfg.cg_learning_rate / 10),      # another stage's
                lower.replace(dropout=0.3)):                                   # anything else
    with pytest.raises(pipeline.ConfigError):
      pipeline.check_settings(other, workdir)
  # train_and_evaluate writes the record when a stage stops on a NaN, and removes it at the end
  def nan_ranker(**kwargs):
    raise trainer.NonFiniteError("ranker: NaN", stage="ranker")
  (workdir / pipeline.NONFINITE_RECORD).unlink()
  original = pipeline.ranker_lib.train_ranker
  pipeline.ranker_lib.train_ranker = nan_ranker
  try:
    with pytest.raises(trainer.NonFiniteError):
      pipeline.train_and_evaluate(cfg.replace(report=False), workdir)
  finally:
    pipeline.ranker_lib.train_ranker = original
  assert json.loads((workdir / pipeline.NONFINITE_RECORD).read_text()) == {"stage": "ranker"}
  pipeline.train_and_evaluate(lower.replace(report=False), workdir)
  assert not (workdir / pipeline.NONFINITE_RECORD).exists()
  assert "--learning_rate=0.0001" in (workdir / "flags.txt").read_text().splitlines()


def test_an_unreadable_flags_txt_is_refused_in_one_line(tmp_path):
  from camera_jax import pipeline

  work = tmp_path / "work"
  work.mkdir()
  (work / "flags.txt").write_text("--seed=0\n--w2v_dim=abc\n")
  with pytest.raises(pipeline.ConfigError) as err:
    pipeline.check_settings(pipeline.Config(), work)
  assert err.value.errors == [
      f"{work / 'flags.txt'}:2: --w2v_dim=abc: not a valid int; it records the settings the "
      f"stages in {work} were built with: fix it, or use a new --workdir"]
  (work / "flags.txt").write_bytes(b"\xff\xfe--seed=0\n")
  with pytest.raises(pipeline.ConfigError, match=r"flags.txt: cannot read it \('utf-8' codec"):
    pipeline.check_settings(pipeline.Config(), work)


def test_a_mismatch_after_a_rewritten_concept_layer_keeps_the_new_flags(tiny_run, tiny_data,
                                                                         tmp_path, monkeypatch):
  """When a stage of the failing run rewrote the concept layer, the new flags describe it."""
  import dataclasses

  from camera_jax import pipeline
  from camera_jax.training.checkpoint import CheckpointMismatchError

  workdir = tmp_path / "work"
  shutil.copytree(tiny_run[0], workdir)
  real_account_stage = pipeline.account_stage

  def other_history(cfg, dataset, z_prime, wd):   # as if --history had changed w_a
    w_a, sums = real_account_stage(cfg, dataset, z_prime, wd)
    pipeline.save_npy(wd / "concepts" / "w_a.npy", w_a * 0.5)
    return w_a, sums

  monkeypatch.setattr(pipeline, "account_stage", other_history)
  monkeypatch.setattr(pipeline, "check_settings", lambda cfg, workdir: None)
  other = dataclasses.replace(tiny_config(tiny_data), representation_lr_scale=0.5)
  with pytest.raises(CheckpointMismatchError):
    pipeline.train_and_evaluate(other, workdir)
  assert "--representation_lr_scale=0.5\n" in (workdir / "flags.txt").read_text()


def test_history_option_drops_only_sponsored_posts_from_the_features(tiny_data, tmp_path):
  """--history=unsponsored: w_a and E(m) leave out the posts named by cooperations."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib
  from camera_jax.models import camera as camera_lib
  from camera_jax.training import concepts as concepts_lib

  dataset = format_lib.load(tiny_data, seed=0, check_images=False)
  cfg_all = tiny_config(str(tiny_data))
  cfg_uns = cfg_all.replace(history="unsponsored")
  assert pipeline.history_mask(cfg_all, dataset).all()
  mask = pipeline.history_mask(cfg_uns, dataset)
  sponsored = {c.post for c in dataset.cooperations}
  assert (~mask).sum() == len(sponsored) > 0
  feats_all = pipeline.account_features(dataset, cfg_all)
  feats_uns = pipeline.account_features(dataset, cfg_uns)
  acc = dataset.account_index()
  owner = np.array([acc[p.account] for p in dataset.posts])
  np.testing.assert_array_equal(feats_all["n_posts"], np.bincount(owner, minlength=len(acc)))
  np.testing.assert_array_equal(feats_uns["n_posts"],  # MIV's activity: the kept posts only
                                np.bincount(owner[mask], minlength=len(acc)))
  touched = {acc[dataset.posts[i].account] for i in np.flatnonzero(~mask)}
  changed = set(np.flatnonzero(feats_all["mean_engagement"] != feats_uns["mean_engagement"]))
  assert changed and changed <= touched
  # w_a: the same z' summed over the kept posts only.
  rng = np.random.default_rng(0)
  z = rng.random((len(dataset.posts), len(dataset.concepts))).astype(np.float32)
  (tmp_path / "concepts").mkdir()
  w_all, _ = pipeline.account_stage(cfg_all, dataset, z, tmp_path)
  w_uns, sums_uns = pipeline.account_stage(cfg_uns, dataset, z, tmp_path)
  post_account = np.array([acc[p.account] for p in dataset.posts])
  sums = concepts_lib.account_distributions(z[mask], post_account[mask], len(dataset.accounts))
  untouched = sorted(set(range(len(dataset.accounts))) - touched)
  assert untouched
  np.testing.assert_allclose(w_uns, camera_lib.historical_distribution(sums), rtol=1e-6)
  np.testing.assert_array_equal(sums_uns, sums)
  np.testing.assert_array_equal(pipeline.load_account_sums(tmp_path / "concepts"), sums)
  np.testing.assert_allclose(w_all[untouched], w_uns[untouched], rtol=1e-6)
  assert not np.allclose(w_all[sorted(touched)], w_uns[sorted(touched)])


def test_a_dataset_edited_in_place_is_refused_before_any_work(tiny_run, tiny_data, tmp_path,
                                                             monkeypatch):
  """Stages cached in the work directory are tied to the data: an edited file stops the rerun."""
  import dataclasses

  from camera_jax import pipeline
  from camera_jax.data import text as text_lib

  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)   # copy2 keeps the images' mtimes: the same digests
  workdir = tmp_path / "work"
  shutil.copytree(tiny_run[0], workdir)
  record = (workdir / pipeline.DATA_RECORD).read_text()
  assert json.loads(record) == pipeline.data_digests(data)
  assert (workdir / "tfds" / json.loads(record)["image files"]).is_dir()   # the same key
  coops = (data / "cooperations.jsonl").read_text().splitlines(keepends=True)
  (data / "cooperations.jsonl").write_text("".join(coops[:-1]))   # still a valid dataset

  def refuse(*args, **kwargs):
    raise AssertionError("a stage ran on the edited dataset")

  monkeypatch.setattr(text_lib, "train_word2vec", refuse)
  monkeypatch.setattr(pipeline, "cosmic_stage", refuse)
  cfg = dataclasses.replace(tiny_config(tiny_data), data_dir=str(data))
  with pytest.raises(pipeline.ConfigError) as err:
    pipeline.train_and_evaluate(cfg, workdir)
  assert err.value.errors == [
      f"{data / 'cooperations.jsonl'}: not as when the stages in {workdir} (word2vec, "
      f"concepts, checkpoints) were built (edited since, or another dataset); use a new "
      f"--workdir, or delete those to rebuild them"]
  assert (workdir / pipeline.DATA_RECORD).read_text() == record   # not taken over
  # The same files but an image's modification time (as a plain cp -r leaves it)
  (data / "cooperations.jsonl").write_text("".join(coops))
  image = data / json.loads((data / "posts.jsonl").read_text().splitlines()[0])["image"]
  os.utime(image, (image.stat().st_atime, image.stat().st_mtime + 10))
  with pytest.raises(pipeline.ConfigError) as err:
    pipeline.train_and_evaluate(cfg, workdir)
  assert err.value.errors == [
      f"{data}: the image files of the posts: not as when the stages in {workdir} (word2vec, "
      "concepts, checkpoints) were built (an image's size or modification time differs: edited "
      "since, another dataset, or a copy that did not keep the files' times (cp -a and rsync -a "
      "keep them)); use a new --workdir, or delete those to rebuild them"]
  (data / "cooperations.jsonl").write_text("".join(coops[:-1]))
  # Without the cached stages the edited dataset is accepted and recorded.
  for name in ("word2vec", "concepts", "checkpoints"):
    shutil.rmtree(workdir / name)
  pipeline.check_data_record(data, workdir)
  assert json.loads((workdir / pipeline.DATA_RECORD).read_text())["cooperations.jsonl"] != (
      json.loads(record)["cooperations.jsonl"])


def test_training_positives_are_the_training_brands_cooperations_only(tiny_data):
  """The ranker learns from the training brands' cooperations, each (brand, influencer) pair
  once, and never from a test brand's (those are the held-out labels)."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  dataset = format_lib.load(tiny_data, check_images=False)
  acc = dataset.account_index()
  pairs, ed = pipeline.training_positives(
      dataset, {"followers": np.full(len(dataset.accounts), 1000.0)})
  train, test = set(dataset.split.train), set(dataset.split.test)
  assert train and test and not train & test
  want = {(acc[c.brand], acc[c.influencer]) for c in dataset.cooperations if c.brand in train}
  assert sorted(map(tuple, pairs.tolist())) == sorted(want)
  assert any(c.brand in test for c in dataset.cooperations)        # there was something to leak
  assert ed.shape == (len(pairs),) and np.all(np.isfinite(ed))


def test_a_dataset_without_training_positives_is_refused_in_one_line(tiny_data, tmp_path):
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  (data / "cooperations.jsonl").write_text("")
  assert format_lib.validate(data, check_images=False) == []   # valid, but nothing to learn
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.load_dataset(tiny_config(data), data)
  dataset = format_lib.load(data, check_images=False)
  assert err.value.errors == [
      f"{data / 'cooperations.jsonl'}:0: no cooperation of a training brand "
      f"({len(dataset.split.train)} in the default split's \"train\"): the ranker has no "
      "positive to learn from"]
  # with a split.json the line counts its training brands
  brands = sorted(dataset.split.train + dataset.split.test)
  (data / "split.json").write_text(json.dumps(
      {"train": brands[:2], "test": brands[2:], "candidates": list(dataset.split.candidates)}))
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.load_dataset(tiny_config(data), data)
  assert len(err.value.errors) == 1
  assert "no cooperation of a training brand (2 in split.json's \"train\")" in err.value.errors[0]


def test_a_dataset_the_ranker_cannot_sample_from_is_refused_in_one_line(tiny_data, tmp_path):
  """A training brand that cooperated with every influencer (the negative sampler's rejection
  loop never ended), an account with no unsponsored post under --history=unsponsored (a made-up
  history), or fewer concepts than --top_k (lax.top_k raised): each a valid dataset
  the method cannot run on, refused before any work. The negatives come from every influencer
  (paper III-D-3), not from split.json's candidates: a split with no candidate trains."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  cfg = tiny_config(data)
  dataset = format_lib.load(data, seed=cfg.seed, check_images=False)
  split = {"train": list(dataset.split.train), "test": list(dataset.split.test)}
  brand = next(c.brand for c in dataset.cooperations if c.brand in split["train"])
  partners = sorted({c.influencer for c in dataset.cooperations if c.brand == brand})
  for candidates in ([], partners):   # the candidates are the test's, not the negatives' pool
    (data / "split.json").write_text(json.dumps({**split, "candidates": candidates}))
    assert format_lib.validate(data, check_images=False) == []
    loaded = pipeline.load_dataset(cfg, data)   # raises on a training problem
    pool = pipeline.negative_pool(loaded)
    assert [loaded.accounts[i].id for i in pool] == [a.id for a in dataset.influencers()]
    n, rows = len(loaded.concepts), len(loaded.accounts)   # what the ranker is given
    inputs = pipeline.ranker_inputs(cfg, loaded, np.zeros((rows, n), np.float32),
                                    np.zeros((n, 4), np.float32), pipeline.account_features(loaded, cfg))
    np.testing.assert_array_equal(inputs["candidates"], pool)
  # the brand now cooperates with every influencer (one of each one's posts)
  posts_of = dataset.posts_of()
  coop = data / "cooperations.jsonl"
  with coop.open("a", encoding="utf-8") as f:
    for a in dataset.influencers():
      if a.id not in partners:
        post = dataset.posts[posts_of[a.id][0]].id
        f.write(json.dumps({"brand": brand, "influencer": a.id, "post": post}) + "\n")
  assert format_lib.validate(data, check_images=False) == []
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.load_dataset(cfg, data)
  assert err.value.errors == [
      f"{coop}:0: training brand {brand!r} cooperated with every influencer "
      f"({len(dataset.influencers())}): no negative to draw for it"]
  shutil.copy(tiny_data / "cooperations.jsonl", coop)
  # every post of one influencer sponsored: no history post under --history=unsponsored
  bare = dataset.influencers()[0].id
  with coop.open("a", encoding="utf-8") as f:
    for row in posts_of[bare]:
      f.write(json.dumps({"brand": brand, "influencer": bare, "post": dataset.posts[row].id}) + "\n")
  pipeline.load_dataset(cfg, data)   # every post is history by default
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.load_dataset(cfg.replace(history="unsponsored"), data)
  assert err.value.errors == [
      f"{coop}:0: 1 account(s) with every post sponsored (e.g. {bare!r}): no history under "
      "--history=unsponsored"]
  shutil.copy(tiny_data / "cooperations.jsonl", coop)
  (data / "split.json").unlink()
  few = cfg.replace(top_k=len(dataset.concepts) + 1)
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.load_dataset(few, data)
  assert err.value.errors == [
      f"{data / 'concepts.txt'}:0: {len(dataset.concepts)} concept(s), fewer than "
      f"--top_k={few.top_k} (the concepts that represent each account)"]


def test_decoded_sources_wrap_the_splits_that_fit_the_limit(tmp_path):
  from camera_jax import pipeline
  from camera_jax.config import Config
  from camera_jax.data import input_pipeline

  sources = {"posts": [{}] * 1000, "labeled": [{}] * 10, "none": None}
  cfg = Config(image_size=64, image_cache_gb=2e-4)   # 200 KB: 10 images of 12,288 bytes fit
  cache = tmp_path / "key" / "decoded"
  cache.mkdir(parents=True)
  name = f"labeled_64px_{input_pipeline.decoder_key()}"
  for old in (f"{name}.npy", f"{name}.rows.npy", "labeled_32px_v0-pil1.0.npy", ".posts_64px.npy.1.ab"):
    (cache / old).write_bytes(b"x")   # this config's files, and another size's, decoder's, temporary
  out = pipeline.decoded_sources(cfg, sources, tmp_path, "key")
  assert out["posts"] is sources["posts"] and out["none"] is None
  assert isinstance(out["labeled"], input_pipeline.DecodedImages)
  assert out["labeled"].path == cache / f"{name}.npy" and out["labeled"].nbytes == 10 * 64 * 64 * 3
  assert sorted(p.name for p in cache.iterdir()) == [f"{name}.npy", f"{name}.rows.npy"]
  assert pipeline.decoded_sources(cfg.replace(image_cache_gb=0), sources, tmp_path, "key") == sources
  assert list(cache.iterdir()) == []   # not used: removed


def test_written_files_follow_the_umask_and_leave_no_temporary_behind(tmp_path):
  """mkstemp made every output 0600 (unreadable to a group on a shared server)."""
  import stat

  from camera_jax import pipeline

  old = os.umask(0o022)
  try:
    pipeline.atomic_write_text(tmp_path / "a" / "metrics.json", "{}")
    os.umask(0o077)
    pipeline.save_npy(tmp_path / "a" / "x.npy", np.zeros(2))
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "a" / "metrics.json").stat().st_mode) == 0o644
  assert stat.S_IMODE((tmp_path / "a" / "x.npy").stat().st_mode) == 0o600
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.json", "x.npy"]


def test_undefined_metrics_are_written_as_json_null():
  from camera_jax import strict_json

  out = strict_json.json_safe({"a": float("nan"), "b": [1.5, np.float32("inf"), 2], "c": {"d": -np.inf},
                            "e": "x", "f": np.float64(0.25)})
  assert out == {"a": None, "b": [1.5, None, 2], "c": {"d": None}, "e": "x", "f": 0.25}
  json.dumps(out, allow_nan=False)


def test_train_log_lines_are_strict_json(tmp_path):
  """A skipped step's NaN loss is written as null (Python's json would write the non-JSON
  word NaN); the report's reader skips that line and keeps the others."""
  from camera_jax.explain import report
  from camera_jax.training import trainer

  log = trainer.TrainLog(tmp_path / "train_log.jsonl")
  log.write(stage="ranker", epoch=1, loss=float("nan"), lr=np.float32(1e-3))
  log.write(stage="ranker", epoch=2, loss=np.float32(0.5), lr=np.float32(1e-3))
  lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
  assert "NaN" not in lines[0] and json.loads(lines[0])["loss"] is None
  stages, skipped = report.read_train_log(tmp_path)
  assert stages == {"ranker": [(2.0, 0.5)]} and skipped == 1


def test_a_missing_concept_source_stops_before_any_work(tiny_data, tmp_path, monkeypatch):
  """No labeled_posts.jsonl (or, with --use_gt_concepts, a post without concepts) is one line,
  raised before Word2Vec and the TFDS build."""
  from camera_jax import pipeline
  from camera_jax.data import text as text_lib

  def refuse(*args, **kwargs):
    raise AssertionError("a stage ran although the concept stage cannot")

  monkeypatch.setattr(text_lib, "train_word2vec", refuse)
  monkeypatch.setattr(pipeline, "open_sources", refuse)
  data = pathlib.Path(shutil.copytree(tiny_data, tmp_path / "data"))
  (data / "labeled_posts.jsonl").unlink()
  with pytest.raises(pipeline.ConfigError) as err:
    pipeline.train_and_evaluate(tiny_config(data), tmp_path / "work")
  assert err.value.errors == [
      f"{data / 'labeled_posts.jsonl'}:0: no labeled post; the file is needed to train the concept "
      f"generator (or pass --use_gt_concepts when posts carry `concepts`)"]
  assert not (tmp_path / "work" / "word2vec").exists()
  posts = (data / "posts.jsonl").read_text().splitlines()
  third = json.loads(posts[2])
  del third["concepts"]
  posts[2] = json.dumps(third)
  (data / "posts.jsonl").write_text("\n".join(posts) + "\n")
  with pytest.raises(pipeline.ConfigError) as err:
    pipeline.train_and_evaluate(tiny_config(data, use_gt_concepts=True), tmp_path / "work2")
  assert err.value.errors == [
      f'{data / "posts.jsonl"}:3: field "concepts": missing, which --use_gt_concepts needs for '
      f"every post (post {third['id']!r})"]


def test_unreadable_images_unchecked_by_the_validator_stop_in_one_line(tiny_data, tmp_path):
  """With check_images=False the validator reads no image: a missing file stops the run before
  any work, an undecodable one the first batch that holds it, each with one FILE:LINE line
  naming the file that holds the record (a post id may be in both files)."""
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  data = pathlib.Path(shutil.copytree(tiny_data, tmp_path / "data"))
  post = json.loads((data / "posts.jsonl").read_text().splitlines()[1])
  (data / post["image"]).unlink()
  cfg = tiny_config(data, check_images=False)
  work = tmp_path / "work"
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.train_and_evaluate(cfg, work)
  assert err.value.errors == [f'{data / "posts.jsonl"}:2: field "image": cannot read '
                              f"{post['image']!r} (No such file or directory)"]
  assert sorted(p.name for p in work.iterdir()) == []   # no record, stage or flags.txt left
  (data / post["image"]).write_bytes(b"not an image")
  # The labeled post on line 5 takes the id of that post: the error must still name its file.
  labeled = (data / "labeled_posts.jsonl").read_text().splitlines()
  fifth = json.loads(labeled[4])
  fifth["id"] = post["id"]
  labeled[4] = json.dumps(fifth)
  (data / "labeled_posts.jsonl").write_text("\n".join(labeled) + "\n")
  (data / fifth["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
  unknown = "(UnidentifiedImageError: cannot identify image file)"
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.train_and_evaluate(cfg, tmp_path / "work2")
  # The concept generator decodes the labeled posts first.
  assert err.value.errors == [f'{data / "labeled_posts.jsonl"}:5: field "image": cannot decode '
                              f"{fifth['image']!r} {unknown}"]
  # With ground-truth concepts no labeled image is read: COSMIC meets the post's.
  with pytest.raises(format_lib.DatasetError) as err:
    pipeline.train_and_evaluate(cfg.replace(use_gt_concepts=True), tmp_path / "work3")
  assert err.value.errors == [f'{data / "posts.jsonl"}:2: field "image": cannot decode '
                              f"{post['image']!r} {unknown}"]


def test_record_line():
  from camera_jax.data import format as format_lib
  import tempfile

  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d, "posts.jsonl")
    path.write_text('\ufeff{"id": "a"}\n\n{"id": "b"}\nnot json\n{"id": "c"}\n', encoding="utf-8")
    assert [format_lib.record_line(path, x) for x in ("a", "b", "c", "z")] == [1, 3, 5, 0]


def test_a_new_accounts_posts_go_through_the_trained_concept_layer_in_padded_chunks(tiny_run):
  """Run.represent_posts (recommend.py --brand_dir) predicts h with the run's concept generator,
  a jitted batch of cg_batch_size images at a time (the last one padded): an account's own posts
  give the h the run computed for them, whatever the chunk."""
  from camera_jax import run as run_lib

  workdir, _ = tiny_run
  run = run_lib.load_run(workdir)
  h_run = np.load(workdir / "concepts" / "h.npy")
  account = run.dataset.accounts[-1].id
  rows = [i for i, p in enumerate(run.dataset.posts) if p.account == account]
  paths = [run.dataset.root / run.dataset.posts[i].image for i in rows]
  assert len(paths) % 4 != 0  # a padded last chunk
  for chunk in (4, 32):
    run.config = run.config.replace(cg_batch_size=chunk)
    h = run._predict_concepts(paths)
    assert h.shape == (len(rows), len(run.concepts))
    np.testing.assert_array_equal(h, h_run[rows])
  rep = run.represent_posts([run.dataset.posts[i] for i in rows], run.dataset.root)
  assert rep["top_idx"].shape == (run.config.top_k,) and rep["top_mask"].dtype == bool


def test_a_finished_run_is_scored_with_the_mask_its_ranker_trained_with(tiny_run, tmp_path):
  """concepts/top_mask.npy is the top-k support mask the ranker trained with: load_run uses it
  (a run trained before the mask came from the posts' h keeps its row-minimum mask)."""
  from camera_jax import pipeline
  from camera_jax import run as run_lib

  workdir, _ = tiny_run
  saved = np.load(workdir / "concepts" / pipeline.TOP_MASK_FILE)
  run = run_lib.load_run(workdir)
  np.testing.assert_array_equal(run.tables.top_mask, saved)
  work = tmp_path / "work"
  shutil.copytree(workdir, work)
  other = saved.copy()
  other[:, 1:] = False
  np.save(work / "concepts" / pipeline.TOP_MASK_FILE, other)
  np.testing.assert_array_equal(run_lib.load_run(work).tables.top_mask, other)
  # An older run (no top_mask.npy) trained with the row-minimum rule on its sums: load_run keeps
  # it. Sums where the two rules differ: a concept no post of account 0 shows, raised above
  # the row's minimum (as a shown concept's negative cosine does under --zprime_mode=faithful)
  (work / "concepts" / pipeline.TOP_MASK_FILE).unlink()
  sums = np.load(work / "concepts" / "z_prime_sum.npy")
  shown = run.shown
  never = int(np.flatnonzero(~shown[0])[0])
  sums[0] = np.where(shown[0], sums[0] + 1.0, sums[0])
  top = np.sort(sums[0])[::-1]
  sums[0, never] = (top[0] + top[1]) / 2   # ranked second, but never shown
  np.save(work / "concepts" / "z_prime_sum.npy", sums)
  old = run_lib.load_run(work)
  assert old.tables.top_idx[0, 1] == never and bool(old.tables.top_mask[0, 1])  # row-minimum
  assert not bool(pipeline.account_shown(old.config, old.dataset,
                                         np.load(work / "concepts" / "h.npy"))[0, never])
  # rerunning such a run neither rescores it with another mask nor records one as its own
  before = (work / "scores.csv").read_bytes()
  pipeline.train_and_evaluate(old.config, work)
  assert not (work / "concepts" / pipeline.TOP_MASK_FILE).exists()
  assert (work / "scores.csv").read_bytes() == before
