"""XLA compiler options of the jitted image steps, per backend.

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
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_IMAGE_STEP = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}


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


def image_step_options(backend: str | None = None) -> dict[str, Any] | None:
  """Compiler options of the CNN train and predict steps on ``backend`` (default: JAX's)."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or not _accepted(tuple(sorted(CPU_IMAGE_STEP.items())), "cpu"):
    return None
  return dict(CPU_IMAGE_STEP)
