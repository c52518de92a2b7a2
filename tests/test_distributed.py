"""JAX's multi-controller runtime: the tiny run's ranking stage as 2 processes x 2 CPU devices.

Both processes run ``experiments/train.py`` with --coordinator_address/--num_processes/
--process_id on a copy of the tiny run whose concept layer is finished, so the job trains only
the ranker (each process feeding its half of every global batch through
``jax.make_array_from_process_local_data``), checkpoints it (every process takes part) and
evaluates on its local devices; only process 0 writes the log, metrics and the printed table.
Its loss curve must be the single-process run's (the session's tiny run; the same global batch;
where that run trained on an accelerator, one CPU process training the same ranker).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, free_port, tiny_config


def _losses(path, stage):
  recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  return [(r["epoch"], r["loss"]) for r in recs if r["stage"] == stage]


def _copy_with_concepts(workdir, copy):
  """A work directory holding ``workdir``'s finished concept layer (the ranker left to train)."""
  copy.mkdir()
  for name in ("flags.txt", "train_log.jsonl"):
    shutil.copy2(workdir / name, copy / name)
  for name in ("word2vec", "tfds", "concepts"):
    shutil.copytree(workdir / name, copy / name)
  for stage in ("concept_generator", "cosmic"):
    shutil.copytree(workdir / "checkpoints" / stage, copy / "checkpoints" / stage)
  return copy


def _train(workdir, copy, env, *extra):
  return subprocess.Popen(
      [sys.executable, "experiments/train.py", f"--flagfile={workdir / 'flags.txt'}",
       f"--workdir={copy}", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_processes(workdir, copy):
  """Runs train.py as 2 processes x 2 CPU devices on ``copy``; returns their (stdout, stderr)."""
  from camera_jax.training import sharding

  try:
    port = free_port()
  except OSError as err:  # pragma: no cover - sandboxes without loopback
    pytest.skip(f"cannot bind a local port: {err}")

  env = {**sharding.force_host_devices(2), "JAX_PLATFORMS": "cpu"}
  procs = [_train(workdir, copy, env, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={pid}") for pid in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=400))
  except subprocess.TimeoutExpired:
    pytest.fail("the 2-process job did not finish within 400 s")
  finally:
    for p in procs:  # a failed process leaves the other one waiting in a collective
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  errors = "\n".join(err[-3000:] for _, err in outs)
  if any(codes) and "gloo" in errors.lower() and any(
      s in errors.lower() for s in ("not available", "unavailable", "not supported", "not built")):
    pytest.skip(f"gloo CPU collectives are unavailable in this jaxlib: {errors[-500:]}")
  assert codes == [0, 0], errors
  return outs


def test_two_processes_train_the_ranker_like_one_process(tiny_run, tiny_data, tmp_path):
  from camera_jax import pipeline
  from camera_jax.training import checkpoint as ckpt_lib
  from camera_jax.training import ranker, sharding

  workdir, result = tiny_run
  cfg = tiny_config(tiny_data)
  assert cfg.batch_size % 4 == 0  # the same global batch on 1 and on 4 devices
  copy = _copy_with_concepts(workdir, tmp_path / "work")
  reference = workdir
  if jax.default_backend() != "cpu":
    # The session's run trained its ranker on the accelerator, which rounds differently: the
    # reference is then one CPU process training the same ranker.
    reference = _copy_with_concepts(workdir, tmp_path / "one_cpu_process")
    proc = _train(workdir, reference, {**sharding.force_host_devices(1), "JAX_PLATFORMS": "cpu"})
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads((reference / "metrics.json").read_text())
  outs = _two_processes(workdir, copy)

  # The loss curve of a single process, written once (by process 0) per epoch.
  single = _losses(reference / "train_log.jsonl", "ranker")
  multi = _losses(copy / "train_log.jsonl", "ranker")
  assert [e for e, _ in multi] == [e for e, _ in single] == list(range(1, cfg.epochs + 1))
  np.testing.assert_allclose([l for _, l in multi], [l for _, l in single], rtol=1e-4)
  for stage in ("concept_generator", "cosmic"):  # finished stages: kept, not retrained
    assert _losses(copy / "train_log.jsonl", stage) == _losses(workdir / "train_log.jsonl", stage)

  # Every process took part in the checkpoints: one complete step per kept epoch.
  checkpointer = ckpt_lib.Checkpointer(copy / "checkpoints" / "ranker")
  assert checkpointer.latest_step() == cfg.epochs
  tables = pipeline.ranker_inputs(
      cfg, *_dataset_and_concepts(tiny_data, copy, cfg))["tables"]
  got = ranker.restore_params(pipeline.ranker_config(cfg), tables, copy / "checkpoints" / "ranker")
  want = ranker.restore_params(pipeline.ranker_config(cfg), tables,
                                reference / "checkpoints" / "ranker")
  # Measured: at most 3.3e-4 apart. Adam moves a weight whose gradient is float noise (near 0)
  # by up to the learning rate (1e-3) a step, whatever the noise's size.
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-3)

  # Only process 0 reports; its evaluation (on its local devices) matches the single process's.
  metrics = json.loads((copy / "metrics.json").read_text())
  assert metrics["n_test_pairs"] == result["n_test_pairs"]
  for key, value in result["methods"]["CAMERA"].items():
    assert metrics["methods"]["CAMERA"][key] == pytest.approx(value, abs=1e-3), key
  (out0, _), (out1, _) = outs
  assert "CAMERA" in out0 and f"work directory: {copy}" in out0
  assert "CAMERA" not in out1 and "work directory" not in out1


def _dataset_and_concepts(data_dir, workdir, cfg):
  from camera_jax import pipeline
  from camera_jax.data import format as format_lib

  dataset = format_lib.load(data_dir, seed=cfg.seed, check_images=False)
  return (dataset, pipeline.load_account_sums(workdir / "concepts"), np.load(workdir / "concepts" / "U_C.npy"),
          pipeline.account_features(dataset))


def test_two_processes_share_an_image_stage_like_one_process(tiny_run, tiny_data, tmp_path):
  """COSMIC's last epoch as 2 processes x 2 CPU devices, each reading and decoding only its half
  of every global batch (``ImageBatches(part=...)``): the epoch's loss is the single process's."""
  workdir, _ = tiny_run
  if jax.default_backend() != "cpu":
    pytest.skip("the session's run trained on an accelerator, which rounds differently")
  cfg = tiny_config(tiny_data)
  copy = _copy_with_concepts(workdir, tmp_path / "work")
  (copy / "concepts" / "U_C.npy").unlink()  # COSMIC resumes from its epoch before the last
  shutil.rmtree(copy / "checkpoints" / "cosmic" / str(cfg.cosmic_epochs))
  _two_processes(workdir, copy)
  single = _losses(workdir / "train_log.jsonl", "cosmic")
  multi = _losses(copy / "train_log.jsonl", "cosmic")
  assert [e for e, _ in multi] == [e for e, _ in single] == list(range(1, cfg.cosmic_epochs + 1))
  np.testing.assert_allclose([l for _, l in multi], [l for _, l in single], rtol=1e-4)
  # the held-out predictions (predict_all), each process decoding its half of every batch and
  # the outputs gathered by row: the single process's agreement of z with z'
  got, want = (json.loads((w / "concepts" / "cosmic.json").read_text())["held_out"]
               for w in (copy, workdir))
  print("cosmic.json held_out:", got, want)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=0.02), key
