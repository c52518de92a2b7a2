"""Tests of benchmarks/authors_graph.py, the authors' graphs rebuilt in TensorFlow.

TensorFlow is not a camera-jax dependency, so CI runs only the tests that need none; this file
imports neither JAX nor TensorFlow at the top, and the rest run where TensorFlow is installed:
``/tmp/tf/bin/python -m pytest --noconftest tests/test_authors_graph.py`` (a venv with
tensorflow, numpy and pytest).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import authors_graph  # noqa: E402
from benchmarks import run as bench  # noqa: E402

HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed (no dependency)")


def test_without_tensorflow_it_fails_with_one_line(tmp_path):
  if HAS_TF:
    pytest.skip("TensorFlow is installed here")
  proc = subprocess.run([sys.executable, "benchmarks/authors_graph.py", "--quick",
                         f"--out={tmp_path / 'a.json'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  assert "TensorFlow is not installed" in proc.stderr and not (tmp_path / "a.json").exists()


def test_a_bad_out_is_refused_before_any_work(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/authors_graph.py",
                         f"--out={tmp_path / 'no' / 'a.json'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr == (
      f"benchmarks/authors_graph.py: error: --out: directory {tmp_path / 'no'} does not exist\n")


def test_ranker_feeds_give_each_pair_the_triplets_brand():
  feeds = {f"{p}_{n}": f"{p}_{n}" for p in ("pos", "neg") for n in authors_graph.PAIR_INPUTS}
  concepts = np.arange(420 * 100, dtype=np.float32).reshape(420, 100)
  got = authors_graph.ranker_feeds(feeds, 8, np.random.default_rng(0), concepts)
  assert set(got) == set(feeds)
  assert got["pos_brand_u"].shape == (8, 10, 100) and got["pos_brand_w"].shape == (8, 10)
  assert got["pos_ed_post"].shape == (8,)
  for n in ("brand_u", "brand_w", "ed_brand"):       # one brand per triplet, fed to both pairs
    assert np.array_equal(got[f"pos_{n}"], got[f"neg_{n}"]), n
  assert not np.array_equal(got["pos_inf_u"], got["neg_inf_u"])
  # the rows are rows of U_C, the weights sum to 0.25 as top-10 w_a weights about do
  assert np.isin(got["neg_inf_u"][..., 0], concepts[:, 0]).all()
  np.testing.assert_allclose(got["pos_inf_w"].sum(1), 0.25, rtol=1e-5)


# --------------------------------------------------------------------- with TensorFlow


def _graph(build):
  import tensorflow as tf
  v1 = tf.compat.v1
  v1.disable_v2_behavior()
  graph = tf.Graph()
  with graph.as_default():
    train, feeds = build(v1)
  return graph, train, feeds


def _forward_matmul_flops(graph, skip_vectors: bool = True) -> int:
  """2 m k n over the forward MatMuls (not the gradients'); ``skip_vectors`` leaves out the phi
  MLPs' [B, 1] x [1, 64] and [B, 64] x [64, 1] products, which the FLOP formulas ignore."""
  total = 0
  for op in graph.get_operations():
    if op.type != "MatMul" or op.name.startswith("gradients"):
      continue
    a, b = (t.shape.as_list() for t in op.inputs)
    ta, tb = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    m, k = (a[1], a[0]) if ta else (a[0], a[1])
    n = b[0] if tb else b[1]
    if skip_vectors and (k == 1 or n == 1):
      continue
    total += 2 * m * k * n
  return total


def _placeholders_above(op) -> set[str]:
  seen, stack, found = set(), [op], set()
  while stack:
    o = stack.pop()
    if o.name in seen:
      continue
    seen.add(o.name)
    if o.type == "Placeholder":
      found.add(o.name)
    stack.extend(t.op for t in o.inputs)
  return found


@needs_tf
@pytest.mark.parametrize("batch", [8, 64])
def test_rebuilt_ranker_does_the_issues_work(batch):
  graph, _, _ = _graph(lambda v1: authors_graph.build_ranker(v1, batch))
  # psi on 4 B rows, rho on 40 B, gamma on 4 B: the issue's forward (0.555 GFLOP at batch 8);
  # nothing of the brand computed once for both pairs
  assert 3 * _forward_matmul_flops(graph) == bench.ranker_flops_authors(
      batch, 1, authors_graph.PSI, authors_graph.GAMMA)
  # one DropConnect mask per dropped matrix: psi 2, rho 2, gamma 2
  assert sum(op.type == "RandomUniform" for op in graph.get_operations()) == 6
  # no forward product reads both pairs' inputs (nothing TensorFlow could compute once for both)
  for op in graph.get_operations():
    if op.type == "MatMul" and not op.name.startswith("gradients"):
      pairs = {name.split("_")[0] for name in _placeholders_above(op)}
      assert len(pairs) <= 1, (op.name, pairs)


@needs_tf
def test_rebuilt_cosmic_is_our_network_with_its_statistics_updated():
  b, size = 4, 64
  graph, train, _ = _graph(lambda v1: authors_graph.build_cosmic(v1, b, size))
  import tensorflow as tf
  updates = graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  assert len(updates) == 12                          # 6 BatchNorms x (mean, variance)
  # ... and every one runs with each train step
  assert {getattr(u, "op", u) for u in updates} <= {
      c for op in graph.get_operations() for c in op.control_inputs}
  assert sum(op.type.startswith("FusedBatchNorm") for op in graph.get_operations()
             if not op.name.startswith("gradients")) == 5
  convs = 0
  for op in graph.get_operations():
    if op.type == "Conv2D" and not op.name.startswith("gradients"):
      out = op.outputs[0].shape.as_list()
      convs += 2 * out[1] * out[2] * out[3] * op.inputs[1].shape.as_list()[2] * 9 * b
  fwd = convs + _forward_matmul_flops(graph, skip_vectors=False)
  assert 3 * fwd - 2 * b * size * size * 3 * 32 * 9 == b * bench.cnn_train_flops(
      size, authors_graph.CHANNELS, authors_graph.POOLS, authors_graph.FC,
      (bench.D_U, bench.N_CONCEPTS))


@needs_tf
def test_the_report_is_what_run_reads(tmp_path):
  out = tmp_path / "a.json"
  proc = subprocess.run([sys.executable, "benchmarks/authors_graph.py", "--quick", f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(out.read_text())
  assert report["meta"]["quick"] is True and report["meta"]["cpu_count"] >= 1
  assert {(r["path"], r["authors_key"]) for r in report["results"]} == {
      ("ranker_train_step", 8), ("cosmic_train_step", 64)}
  # run.py takes only a full run of this machine: a --quick file is refused in one line
  with pytest.raises(ValueError, match="--quick"):
    bench.read_authors(str(out))
