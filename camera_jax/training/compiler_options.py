"""XLA compiler options: the jitted image steps' and ranker steps' per backend, and GPU
determinism.

On the CPU, XLA sends convolutions to its YNNPACK library fusion by default
(``xla_cpu_experimental_ynn_fusion_type`` holds ``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION``,
jax 0.10.2). For the visual encoder's training step that path is slow: the COSMIC train step
at 64 px, batch 32, ran 186 images/s with it and 285 images/s with the list set to
``LIBRARY_FUSION_TYPE_REDUCE`` alone (XLA's own convolutions, YNNPACK reductions), measured
side by side on the 2-core development CPU (benchmarks/README.md). The option changes which
kernels run, not what is computed (results agree to float32 rounding).

:func:`image_step_options` returns the options for ``jax.jit(..., compiler_options=...)`` on the
current backend: the CPU setting above where this jaxlib accepts it (checked once by compiling
a tiny function), None elsewhere (GPU, or a jaxlib without the option).

:func:`ranker_step_options` returns the ranker's train step and epoch options: on the CPU,
``xla_cpu_prefer_vector_width=512`` (XLA's default, 256, keeps LLVM's loops to 256-bit
vectors on AVX-512 CPUs). The ranker's step spends its time outside the matmuls in
element-wise passes (activations, dropout masks, Adam), which the wider vectors speed up.
Measured in one process, each program compiled both ways and called in alternation (2-core
AMD EPYC with AVX-512, the benchmark's full model): batch 8 6.94 -> 6.76 ms a step (paired
median -0.20 ms over 30 pairs, both quartiles below 0), batch 64 16.30 -> 16.12 ms (-0.19 ms),
batch 512 78.20 -> 77.65 ms (-0.48 ms). The COSMIC step at 64 px (XLA's own convolutions) did
not gain (469 to 524 images/s both ways, alternating processes), so the image steps keep
their own setting. Only this CPU was measured: elsewhere the gain may be smaller or none. Like
the image steps' option it changes how loops are vectorised, not what is computed: sums are
added in another order, so results agree to float32 rounding, and training amplifies that
(docs/evaluation.md).

:func:`use_deterministic_gpu_ops` asks XLA for deterministic GPU kernels
(``--xla_gpu_deterministic_ops=true``): without it, GPU reductions such as scatter-adds (the
gradients of gathers, as in the ranker's table look-ups) may add in a different order each run.
Measured on one H100 (jax 0.11.2): retraining only the ranker of the tiny run on the same
concept layer gave other scores (CAMERA AUC 0.7307 and 0.7411) without the flag and
byte-identical ``scores.csv`` twice with it. On one H200 two whole tiny runs (every stage,
the image stages included) gave byte-identical ``scores.csv``; the flag cost the ranker's train
step 13 to 16 % there (benchmarks/README.md, fourth GPU run). The CPU ignores the flag. The experiments' entry points set it
(``experiments/_cli.py``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import MutableMapping
from typing import Any

import jax
import jax.numpy as jnp

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_IMAGE_STEP = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}
CPU_RANKER_STEP = {"xla_cpu_prefer_vector_width": 512}


@functools.lru_cache(maxsize=None)
def _accepted(items: tuple[tuple[str, str], ...], backend: str = "cpu") -> bool:
  """True when this jaxlib compiles a tiny function with these options on ``backend``."""
  try:
    fn = jax.jit(lambda x: jnp.sum(x * x), compiler_options=dict(items))
    x = jax.device_put(jnp.ones((4,), jnp.float32), jax.devices(backend)[0])
    jax.block_until_ready(fn(x))
    return True
  except Exception:  # noqa: BLE001 -- an unknown option or value: run without it
    return False


def _cpu_options(options: dict[str, Any], backend: str | None) -> dict[str, Any] | None:
  """``options`` on the CPU backend where this jaxlib accepts them, None elsewhere."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or not _accepted(tuple(sorted(options.items())), "cpu"):
    return None
  return dict(options)


def image_step_options(backend: str | None = None) -> dict[str, Any] | None:
  """Compiler options of the CNN train and predict steps on ``backend`` (default: JAX's)."""
  return _cpu_options(CPU_IMAGE_STEP, backend)


def ranker_step_options(backend: str | None = None) -> dict[str, Any] | None:
  """Compiler options of the ranker's train step and epoch on ``backend`` (default: JAX's)."""
  return _cpu_options(CPU_RANKER_STEP, backend)


GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops"


def with_deterministic_gpu_ops(xla_flags: str) -> str:
  """``XLA_FLAGS`` with ``--xla_gpu_deterministic_ops=true`` added, unless they set it already.

  >>> with_deterministic_gpu_ops("")
  '--xla_gpu_deterministic_ops=true'
  >>> with_deterministic_gpu_ops("--xla_dump_to=/tmp/d")
  '--xla_dump_to=/tmp/d --xla_gpu_deterministic_ops=true'
  >>> with_deterministic_gpu_ops("--xla_gpu_deterministic_ops=false")   # the user's choice
  '--xla_gpu_deterministic_ops=false'
  """
  words = xla_flags.split()
  if any(w == GPU_DETERMINISM_FLAG or w.startswith(GPU_DETERMINISM_FLAG + "=") for w in words):
    return xla_flags
  return " ".join(words + [GPU_DETERMINISM_FLAG + "=true"])


def use_deterministic_gpu_ops(environ: MutableMapping[str, str] | None = None) -> None:
  """Turns GPU determinism on in ``environ`` (default ``os.environ``) for this process.

  JAX reads ``XLA_FLAGS`` once, when it starts its backends: call this before the first JAX
  computation (the experiments call it before ``app.run``). An ``XLA_FLAGS`` that already sets
  the flag, to true or false, is kept.
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_deterministic_gpu_ops(environ.get("XLA_FLAGS", ""))
