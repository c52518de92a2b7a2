"""JSON that every parser reads: NaN and infinities become null.

Python's ``json`` writes a NaN as the bare word ``NaN``, which is not JSON (``jq``, JavaScript
and strict readers refuse the file). A metric is NaN when no test pair is positive, a loss when
a step was skipped, so the JSON files that hold numbers a run computed (metrics.json,
results.json, the concept layer's JSON, train_log.jsonl, recommendations, search output, the
benchmark report) go through :func:`dumps`; ``tables.py`` writes its cells as None already.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from camera_jax import atomic


def json_safe(x: Any) -> Any:
  """``x`` with every NaN or infinite float replaced by None (JSON null), numpy scalars as
  Python numbers; dicts, lists and tuples are walked.

  >>> json_safe({"a": float("nan"), "b": [np.float32(1.5), -math.inf], "c": np.int64(3)})
  {'a': None, 'b': [1.5, None], 'c': 3}
  """
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def dumps(obj: Any, **kwargs: Any) -> str:
  """``json.dumps(json_safe(obj), allow_nan=False, **kwargs)``.

  >>> dumps({"loss": float("nan"), "epoch": 1}, sort_keys=True)
  '{"epoch": 1, "loss": null}'
  """
  return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
  """Writes ``dumps(obj, **kwargs)`` and a newline to ``path`` atomically (:mod:`camera_jax.atomic`).

  >>> import pathlib, tempfile
  >>> f = pathlib.Path(tempfile.mkdtemp()) / "m.json"
  >>> write(f, {"auc": float("inf")}); f.read_text()
  '{"auc": null}\\n'
  """
  atomic.write_bytes(path, (dumps(obj, **kwargs) + "\n").encode("utf-8"))
