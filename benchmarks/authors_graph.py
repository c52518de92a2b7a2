#!/usr/bin/env python
"""The authors' graphs, rebuilt in TensorFlow, timed beside ours on the same machine.

``python benchmarks/authors_graph.py --out=/tmp/authors.json [--quick]`` with a Python that
has TensorFlow (not a dependency of camera-jax; e.g. ``python -m venv /tmp/tf &&
/tmp/tf/bin/pip install tensorflow==2.21.0``), then ``python benchmarks/run.py
--authors=/tmp/authors.json`` compares our rows with these instead of the issue's figures
(``--quick`` files are for smoke runs: run.py takes only a full one, from this machine;
``--judged`` times only batch 8, 512 and 64 px, for ``benchmarks/paired.py``, which alternates
them with ``run.py --judged`` and judges the median ratio).

The issue's figures (395, 1,250 and 1,692 triplets/s; 441 and 36.9 images/s) were measured
with the authors' own code on the issue's 2-core AVX-512 CPU; on another machine they say
nothing. This script is the way to rerun "the authors' graph" anywhere: a reconstruction, in
``tf.compat.v1`` graph mode as their TensorFlow 1.15 code is written, of the two graphs the
issue timed, from the facts in ``shared/notes/reference-implementation.md`` (their code is not
copied, and not available here):

* **The ranking train step** (``camera_v2.py``): a triplet (b, m+, m-) is two pair scores
  F(b, m+) and F(b, m-), each computed on its own from its own inputs (the brand's fed to both
  pairs, so nothing of the brand is computed once for both): psi on the pair's two accounts,
  rho on the two accounts' top-10 concept vectors (the 2 K rows), eq. 7's logits as the mean
  over the 512 features of psi * rho, eq. 8, gamma on concat(e_r, e_h) of both sides, S_con,
  and S_ed, S_in from the four phi MLPs (d = 64); DropConnect (dropout of the weight
  matrices, keep 0.6) on psi's and rho's two layers and gamma's first two, one mask per
  matrix a step (benchmarks/README.md says why); the hinge loss with margin 7 summed over the
  triplets and divided by the number with a positive loss (+1e-16), plus L1 0.001 on every
  weight matrix; Adam, lr 0.002 staircase-decayed by 0.99 every 24,000 steps; normal(0, 0.1)
  initialisation; the batch fed with ``feed_dict`` from numpy arrays every step, as their
  training loop does. Its analytic FLOPs are the issue's (1.665 GFLOP at batch 8,
  ``run.ranker_flops_authors``).
* **The COSMIC train step** (``cosmic/cosmic.py``): five 3x3 'SAME' convolutions (32, 64, 64,
  128, 128 channels) with BatchNorm (the fused kernel, Keras' default for NHWC maps; batch
  statistics, moving averages updated) and ReLU, max pools of 3 after conv1 and of 2 after
  conv3 and conv5, fc 1024 with BatchNorm and leaky_relu, a linear map to d_u = 100, the
  concept logits as the mean over the 100 dimensions of v2 * u_i for the 420 concepts of U_C,
  softmax cross-entropy against a soft target, L1 0.001 on the weight matrices, Adam lr 0.001
  staircase-decayed by 0.99 every 100 steps; batch 32 float32 images fed with ``feed_dict``.
  The same network and FLOPs as ``run.py``'s ``cosmic_train_step`` rows (ours also converts
  uint8 pixels and applies the augmentation's flips and shifts inside its step).

The graphs run as TensorFlow 1 code runs on TensorFlow 2 (``tf.compat.v1.disable_v2_behavior``).
What the rebuild cannot know (the exact placement of the dropout calls, their input
tensors' layout, TensorFlow's session options) moves its speed by an unknown amount, so its
rows are marked ``variant: "authors' graph (rebuilt)"``. On the issue's CPU, compare its rows
with the issue's figures to see how close the rebuild runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import run as bench  # noqa: E402  (numpy and the standard library only)

SCHEMA = 1
VARIANT = bench.AUTHORS_REBUILT
RANKER_BATCHES = (8, 64, 512)
IMAGE_SIZES = (64, 224)
JUDGED_BATCHES, JUDGED_SIZES = bench.JUDGED_BATCHES, bench.JUDGED_IMAGE_SIZES   # --judged

KEEP = 0.6           # DropConnect keep probability (the authors' code)
MARGIN = 7.0
L1 = 1e-3
PSI, GAMMA = bench.PSI, bench.GAMMA   # the paper's sizes (camera_jax.config.Config)
D_SCORE = 64
CHANNELS, POOLS, FC = bench.CNN_CHANNELS, bench.CNN_POOLS, bench.CNN_FC


def rows_to_run(quick: bool, judged: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The ranker batches and COSMIC image sides an invocation times.

  >>> rows_to_run(False, False), rows_to_run(False, True), rows_to_run(True, True)
  (((8, 64, 512), (64, 224)), ((8, 512), (64,)), ((8,), (64,)))
  """
  batches, sizes = (JUDGED_BATCHES, JUDGED_SIZES) if judged else (RANKER_BATCHES, IMAGE_SIZES)
  return (batches[:1], sizes[:1]) if quick else (batches, sizes)


def _variable(v1: Any, name: str, shape: Sequence[int]) -> Any:
  return v1.get_variable(name, shape, initializer=v1.random_normal_initializer(stddev=0.1))


class _Dense:
  """A stack of dense layers with leaky_relu after each; DropConnect on the first ``drop``
  weight matrices, one mask per matrix per step shared by every call (see the module doc)."""

  def __init__(self, v1: Any, name: str, d_in: int, widths: Sequence[int], drop: int):
    self.v1, self.layers = v1, []
    with v1.variable_scope(name):
      for i, w in enumerate(widths):
        kernel = _variable(v1, f"w{i}", (d_in, w))
        if i < drop:
          kernel = v1.nn.dropout(kernel, rate=1.0 - KEEP)
        self.layers.append((kernel, _variable(v1, f"b{i}", (w,))))
        d_in = w

  def __call__(self, x: Any) -> Any:
    for w, b in self.layers:
      x = self.v1.nn.leaky_relu(self.v1.matmul(x, w) + b, alpha=0.01)
    return x


class _Phi:
  """phi(x) = sigmoid(x W_1 + b) W_2 (eq. 12, 13, 15, 16) on [B] features."""

  def __init__(self, v1: Any, name: str):
    self.v1 = v1
    with v1.variable_scope(name):
      self.w1 = _variable(v1, "w1", (1, D_SCORE))
      self.b1 = _variable(v1, "b1", (D_SCORE,))
      self.w2 = _variable(v1, "w2", (D_SCORE, 1))

  def __call__(self, x: Any) -> Any:
    tf = self.v1
    return tf.matmul(tf.sigmoid(tf.matmul(x[:, None], self.w1) + self.b1), self.w2)[:, 0]


def _l1(v1: Any) -> Any:
  return v1.add_n([v1.reduce_sum(v1.abs(v)) for v in v1.trainable_variables()
                   if len(v.shape) >= 2])


#: Each pair's inputs (the authors feed every pair of a triplet on its own: the brand's rows
#: twice, so nothing of the brand is shared between the positive and the negative pair).
PAIR_INPUTS = ("brand_u", "brand_w", "inf_u", "inf_w", "ed_post", "ed_brand", "followers",
               "eng_inf")


def build_ranker(v1: Any, batch: int, k: int = bench.TOP_K, d: int = bench.D_U
                 ) -> tuple[Any, dict[str, Any]]:
  """The ranking train op and its placeholders, ``{pair}_{input}`` for pair "pos" and "neg"
  (static batch, as their graph has it)."""
  feeds = {}
  for pair_name in ("pos", "neg"):
    for name in PAIR_INPUTS:
      shape = {"u": (batch, k, d), "w": (batch, k)}.get(name.rsplit("_", 1)[-1], (batch,))
      feeds[f"{pair_name}_{name}"] = v1.placeholder(v1.float32, shape, name=f"{pair_name}_{name}")
  psi = _Dense(v1, "psi", d, PSI, 2)
  rho = _Dense(v1, "rho", d, PSI, 2)
  gamma = _Dense(v1, "gamma", 2 * d, GAMMA, 2)
  phis = [_Phi(v1, f"phi{i}") for i in range(4)]

  def pair(x: dict[str, Any]) -> Any:
    e_h_b = v1.reduce_sum(x["brand_w"][:, :, None] * x["brand_u"], axis=1)          # eq. 6
    e_h_m = v1.reduce_sum(x["inf_w"][:, :, None] * x["inf_u"], axis=1)
    psi_b, psi_m = psi(e_h_b), psi(e_h_m)
    rho_b = v1.reshape(rho(v1.reshape(x["brand_u"], (-1, d))), (batch, k, PSI[-1]))
    rho_m = v1.reshape(rho(v1.reshape(x["inf_u"], (-1, d))), (batch, k, PSI[-1]))
    att_b = v1.nn.softmax(v1.reduce_mean(psi_m[:, None, :] * rho_b, axis=2))       # eq. 7
    att_m = v1.nn.softmax(v1.reduce_mean(psi_b[:, None, :] * rho_m, axis=2))
    e_r_b = v1.reduce_sum(att_b[:, :, None] * x["brand_u"], axis=1)                 # eq. 8
    e_r_m = v1.reduce_sum(att_m[:, :, None] * x["inf_u"], axis=1)
    e_a_b = gamma(v1.concat([e_r_b, e_h_b], axis=1))                                # eq. 9
    e_a_m = gamma(v1.concat([e_r_m, e_h_m], axis=1))
    s_con = v1.reduce_sum(e_a_b * e_a_m, axis=1)                                    # eq. 17
    s_ed = v1.sigmoid(phis[0](x["ed_post"]) + phis[1](x["ed_brand"]))               # eq. 11
    s_in = v1.sigmoid(phis[2](x["followers"]) + phis[3](x["eng_inf"]))              # eq. 14
    return s_con * s_ed * s_in                                                      # eq. 18

  s_pos, s_neg = (pair({n: feeds[f"{p}_{n}"] for n in PAIR_INPUTS}) for p in ("pos", "neg"))
  hinge = v1.maximum(s_neg - s_pos + MARGIN, 0.0)
  positive = v1.reduce_sum(v1.cast(hinge > 0, v1.float32))
  loss = v1.reduce_sum(hinge) / (positive + 1e-16) + L1 * _l1(v1)
  step = v1.train.get_or_create_global_step()
  lr = v1.train.exponential_decay(2e-3, step, 24000, 0.99, staircase=True)
  return v1.train.AdamOptimizer(lr).minimize(loss, global_step=step), feeds


def ranker_feeds(feeds: dict[Any, Any], batch: int, rng: np.random.Generator,
                 concepts: np.ndarray) -> dict[Any, np.ndarray]:
  """One random batch of triplets (the speed does not depend on the values), the brand's
  arrays fed to both pairs."""
  def account() -> tuple[np.ndarray, np.ndarray]:
    w = rng.random((batch, bench.TOP_K)).astype(np.float32)
    return (concepts[rng.integers(0, concepts.shape[0], (batch, bench.TOP_K))],
            w / w.sum(1, keepdims=True) * 0.25)

  brand_u, brand_w = account()
  ed_brand = rng.random(batch).astype(np.float32)
  out = {}
  for p in ("pos", "neg"):
    inf_u, inf_w = account()
    values = dict(brand_u=brand_u, brand_w=brand_w, inf_u=inf_u, inf_w=inf_w, ed_brand=ed_brand,
                  **{n: rng.random(batch).astype(np.float32)
                     for n in ("ed_post", "followers", "eng_inf")})
    out.update({feeds[f"{p}_{n}"]: values[n] for n in PAIR_INPUTS})
  return out


def _batch_norm(v1: Any, x: Any, name: str) -> Any:
  """BatchNorm on batch statistics, its moving averages updated by the train op."""
  c = int(x.shape[-1])
  with v1.variable_scope(name):
    scale = v1.get_variable("scale", (c,), initializer=v1.ones_initializer())
    offset = v1.get_variable("offset", (c,), initializer=v1.zeros_initializer())
    ra_mean = v1.get_variable("mean", (c,), initializer=v1.zeros_initializer(), trainable=False)
    ra_var = v1.get_variable("var", (c,), initializer=v1.ones_initializer(), trainable=False)
  if len(x.shape) == 4:   # Keras' BatchNormalization: the fused kernel for NHWC maps
    y, mean, var = v1.nn.fused_batch_norm(x, scale, offset, epsilon=1e-3, is_training=True)
  else:
    mean, var = v1.nn.moments(x, axes=[0])
    y = v1.nn.batch_normalization(x, mean, var, offset, scale, 1e-3)
  v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(ra_mean, 0.99 * ra_mean + 0.01 * mean))
  v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v1.assign(ra_var, 0.99 * ra_var + 0.01 * var))
  return y


def build_cosmic(v1: Any, batch: int, size: int) -> tuple[Any, dict[str, Any]]:
  """The COSMIC CNN train op and its placeholders."""
  images = v1.placeholder(v1.float32, (batch, size, size, 3), name="images")
  target = v1.placeholder(v1.float32, (batch, bench.N_CONCEPTS), name="target")
  x, c_in = images, 3
  for i, (c, pool) in enumerate(zip(CHANNELS, POOLS)):
    w = _variable(v1, f"conv{i}", (3, 3, c_in, c))
    x = v1.nn.relu(_batch_norm(v1, v1.nn.conv2d(x, w, strides=1, padding="SAME"), f"bn{i}"))
    if pool > 1:
      x = v1.nn.max_pool2d(x, pool, pool, padding="VALID")
    c_in = c
  x = v1.reshape(x, (batch, -1))
  x = v1.nn.leaky_relu(_batch_norm(v1, v1.matmul(x, _variable(v1, "fc", (x.shape[1], FC))),
                                   "bn_fc"), alpha=0.01)
  v2 = v1.matmul(x, _variable(v1, "w_v", (FC, bench.D_U)))
  u_c = v1.get_variable("u_c", (bench.N_CONCEPTS, bench.D_U),
                        initializer=v1.random_uniform_initializer(-1.0, 1.0))
  logits = v1.matmul(v2, u_c, transpose_b=True) / bench.D_U   # mean over dims of v2 * u_i
  loss = v1.reduce_mean(v1.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits))
  loss = loss + L1 * _l1(v1)
  step = v1.train.get_or_create_global_step()
  lr = v1.train.exponential_decay(1e-3, step, 100, 0.99, staircase=True)
  with v1.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
    train = v1.train.AdamOptimizer(lr).minimize(loss, global_step=step)
  return train, {"images": images, "target": target}


def _timed_session(tf: Any, build: Callable[[Any], tuple[Any, dict[str, Any]]],
                   make_feeds: Callable[[dict[str, Any], np.random.Generator], dict[Any, Any]],
                   reps: int, rep_seconds: float) -> dict[str, Any]:
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    v1.set_random_seed(0)
    train, feeds = build(v1)
    init = v1.global_variables_initializer()
  rng = np.random.default_rng(1)
  batches = [make_feeds(feeds, rng) for _ in range(4)]
  with v1.Session(graph=graph) as sess:
    sess.run(init)
    t = bench.timed(lambda i: sess.run(train, feed_dict=batches[i % len(batches)]),
                    lambda out: out, reps, rep_seconds)
  t["compile_s"] = None   # JAX's compile counter says nothing here; first_call_s holds it
  return t


def ranker_row(tf: Any, batch: int, reps: int, rep_seconds: float) -> dict[str, Any]:
  concepts = np.random.default_rng(0).standard_normal(
      (bench.N_CONCEPTS, bench.D_U)).astype(np.float32)
  t = _timed_session(tf, lambda v1: build_ranker(v1, batch),
                     lambda feeds, rng: ranker_feeds(feeds, batch, rng, concepts),
                     reps, rep_seconds)
  flops = bench.ranker_flops_authors(batch, 1, PSI, GAMMA)
  return bench.row("ranker_train_step", VARIANT, f"batch {batch}", "triplets/s", batch, t,
                   flops, flops, None, authors_key=batch)   # no matmul peak measured here


def cosmic_row(tf: Any, size: int, reps: int, rep_seconds: float) -> dict[str, Any]:
  b = bench.IMAGE_BATCH

  def make_feeds(feeds: dict[str, Any], rng: np.random.Generator) -> dict[Any, np.ndarray]:
    target = rng.random((b, bench.N_CONCEPTS)).astype(np.float32)
    return {feeds["images"]: rng.random((b, size, size, 3), dtype=np.float32),
            feeds["target"]: target / target.sum(1, keepdims=True)}

  t = _timed_session(tf, lambda v1: build_cosmic(v1, b, size), make_feeds, reps, rep_seconds)
  flops = b * bench.cnn_train_flops(size, CHANNELS, POOLS, FC, (bench.D_U, bench.N_CONCEPTS))
  return bench.row("cosmic_train_step", VARIANT, f"{size} px, batch {b}", "images/s", b, t,
                   flops, flops, None, authors_key=size)   # no matmul peak measured here


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = bench._Parser(prog="benchmarks/authors_graph.py", description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true",
                 help="batch 8 and 64 px only, few repetitions (a smoke run)")
  p.add_argument("--out", default=None, help="write the JSON report here (a file name)")
  p.add_argument("--judged", action="store_true",
                 help="only the rows the issue's targets compare (batch 8 and 512, 64 px), as "
                      "benchmarks/paired.py runs them; run.py --authors takes no such file")
  args = p.parse_args(argv)
  problem = bench.out_problem(args.out)
  if problem:
    p.error(f"--out: {problem}")
  return args


def run(args: argparse.Namespace, tf: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times the rebuilt graphs; returns the report (see benchmarks/README.md)."""
  t0 = time.perf_counter()
  reps, rep_seconds = (3, 0.1) if args.quick else (bench.FULL.reps, bench.FULL.rep_seconds)
  log(f"the authors' graphs rebuilt, TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
      f"{bench.cpu_model()}")
  results = []
  judged = bool(getattr(args, "judged", False))
  batches, sizes = rows_to_run(args.quick, judged)
  for b in batches:
    results.append(ranker_row(tf, b, reps, rep_seconds))
    log(bench.format_row(results[-1]))
  for size in sizes:
    results.append(cosmic_row(tf, size, reps, rep_seconds))
    log(bench.format_row(results[-1]))
  return {"schema": SCHEMA, "meta": {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "tensorflow": tf.__version__, "python": platform.python_version(),
      **bench.this_machine(), "quick": bool(args.quick), "judged": judged,
      "wall_s": time.perf_counter() - t0}, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
  except ImportError:
    sys.stderr.write("benchmarks/authors_graph.py: error: TensorFlow is not installed in this "
                     "Python (it is not a camera-jax dependency); run this script with a Python "
                     "that has it, e.g. python -m venv /tmp/tf && /tmp/tf/bin/pip install "
                     "tensorflow==2.21.0\n")
    return 2
  tf.compat.v1.disable_v2_behavior()   # as TensorFlow 1 code runs on TensorFlow 2
  return bench.finish(args.out, run(args, tf))


if __name__ == "__main__":
  raise SystemExit(main())
