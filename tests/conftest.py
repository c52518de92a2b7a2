"""Shared fixtures: one tiny synthetic dataset and one tiny end-to-end run per test session.

The run uses the real pipeline (Word2Vec, concept generator, COSMIC, ranker, evaluation) with
small layer sizes and few epochs so that the default test run covers the whole method quickly.
"""

from __future__ import annotations

import os
import pathlib
import socket

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Full float32 matmuls in the tests (and the subprocesses they start): on a GPU JAX's default
# runs float32 matmuls in TF32 (10-bit mantissas), so the tests that compare two algebraically
# equal paths at rtol 1e-5 fail there (4 of them on an H100, benchmarks/README.md, fifth GPU
# run); with "highest" they passed on GPUs in earlier runs. No effect on a CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# Several processes share one GPU in the tests (the suite, the benchmark and training subprocesses
# it starts): without this, the first takes 75 % of the GPU's memory at start-up and the next
# fails to allocate (an H100 run: "INTERNAL: BlasLt is unavailable" in the quick benchmark's
# subprocess). No effect on a CPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Deterministic GPU reductions and scatter-adds in the test process, as every experiment runs
# (compiler_options.use_deterministic_gpu_ops): tests compare an in-process run with another
# (resumed, rescored) at rtol 1e-6 or bit for bit. Kept where XLA_FLAGS set it; no effect on a CPU.
from camera_jax.training import compiler_options as _compiler_options  # noqa: E402

_compiler_options.use_deterministic_gpu_ops()


def repo_on_pythonpath(env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of ``env`` (default ``os.environ``) whose PYTHONPATH starts with the repository.

  The entries already there stay, so a stack installed on PYTHONPATH (as on the GPU machines,
  where gensim came from carried wheels) is still importable in the subprocess.
  """
  out = dict(os.environ if env is None else env)
  rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
  out["PYTHONPATH"] = os.pathsep.join([str(REPO), *rest])
  return out


def without_gpu_determinism(env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of ``env`` (default ``os.environ``) whose XLA_FLAGS no longer set GPU determinism:
  for a subprocess whose own code must set it (this conftest sets it for the test process)."""
  out = dict(os.environ if env is None else env)
  flag = _compiler_options.GPU_DETERMINISM_FLAG
  words = [w for w in out.get("XLA_FLAGS", "").split() if w != flag and not w.startswith(flag + "=")]
  out["XLA_FLAGS"] = " ".join(words)
  return out


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (for jax.distributed coordinators)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def noise_source(n: int, size: int) -> list[dict]:
  """``n`` records of random-noise PNGs (lossless, and not uniform, so every shift shows)."""
  import io
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  out = []
  for row in range(n):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    out.append({"image": buf.getvalue(), "row": row})
  return out


def tiny_config(data_dir: str, **overrides):
  """A fast configuration of the full pipeline for tests."""
  from camera_jax.config import Config
  cfg = Config(
      data_dir=str(data_dir), image_size=32, seed=0, w2v_epochs=3, w2v_dim=32,
      cnn_channels=(8, 16, 16, 32, 32), cnn_fc=64, cg_epochs=2, cg_batch_size=32,
      cosmic_epochs=2, cosmic_batch_size=32, d_u=16, epochs=3, batch_size=8,
      psi_features=(64, 32), gamma_features=(64, 64, 32), d_score=16, dropout=0.1,
      l1=0.0, eval_chunk=1024, report=False)
  return cfg.replace(**overrides)


def ranker_tables(n_accounts=40, n=30, k=4, d_u=6, seed=0, masked=True) -> "ranker.Tables":
  """Small random ranker tables (top-k of a Dirichlet w_a, some slots masked)."""
  import numpy as np
  from camera_jax.training import ranker
  rng = np.random.default_rng(seed)
  w_a = rng.dirichlet(np.full(n, 0.3), size=n_accounts).astype(np.float32)
  idx = np.argsort(-w_a, 1, kind="stable")[:, :k].astype(np.int32)
  mask = rng.random((n_accounts, k)) > 0.3 if masked else np.ones((n_accounts, k), bool)
  mask[:, 0] = True
  return ranker.Tables(top_idx=idx, top_w=np.take_along_axis(w_a, idx, 1),
                       engagement=rng.random(n_accounts).astype(np.float32),
                       followers=rng.random(n_accounts).astype(np.float32),
                       concepts=rng.standard_normal((n, d_u)).astype(np.float32), top_mask=mask)


def ranker_cfg(**kw) -> "ranker.RankerConfig":
  """A small RankerConfig for fast tests; ``kw`` overrides."""
  from camera_jax.training import ranker
  base = dict(psi_features=(16, 8), gamma_features=(16, 16, 8), d_score=4, eval_chunk=64)
  return ranker.RankerConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
  """The tiny synthetic preset at 32 px (generated once per session)."""
  from camera_jax.data import synthetic
  out = tmp_path_factory.mktemp("tiny") / "data"
  return synthetic.generate(out, preset="tiny", seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
  """(workdir, metrics) of one end-to-end run of the pipeline on the tiny dataset."""
  from camera_jax import pipeline
  workdir = tmp_path_factory.mktemp("run") / "work"
  result = pipeline.train_and_evaluate(tiny_config(tiny_data), workdir)
  return workdir, result
