"""Atomic file writes: a temporary name beside the target, then one rename.

A reader never sees a half-written file under the final name, whatever moment a run is killed
at; a temporary file left by a killed run has a name no reader looks for.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import tempfile


def temp_path(path: str | os.PathLike) -> pathlib.Path:
  """A fresh hidden name beside ``path`` (same directory, so ``os.replace`` is atomic).

  >>> p = temp_path("/runs/a/h.npy")
  >>> p.parent.as_posix(), p.name.startswith(".h.npy."), p != temp_path("/runs/a/h.npy")
  ('/runs/a', True, True)
  """
  path = pathlib.Path(path)
  return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"


def output_problem(path: str | os.PathLike) -> str | None:
  """Why no file can be written at ``path``, or None: checked before a command's work, so that a
  bad output path fails at once rather than after it (one clause, for the caller to prefix
  with its flag): a parent that does not exist or is not a directory, ``path`` a directory, or
  a parent where no file can be created (a probe file, removed at once).
  """
  out = pathlib.Path(path).resolve()
  if not out.parent.exists():
    return f"directory {out.parent} does not exist"
  if not out.parent.is_dir():
    return f"{out.parent} is not a directory"
  if out.is_dir():
    return f"{out} is a directory"
  try:
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
      pass
  except OSError as e:
    return f"cannot write in {out.parent} ({e.strerror or e})"
  return None


def output_dir_problem(path: str | os.PathLike) -> str | None:
  """Why no output directory can be made or written at ``path``, or None (checked before a
  command's work, one clause as :func:`output_problem`): ``path`` an existing file, an ancestor
  that is a file, or a nearest existing ancestor where nothing can be created."""
  out = pathlib.Path(path).resolve()
  if out.exists() and not out.is_dir():
    return f"{out} is not a directory"
  probe = out
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir():
    return f"{probe} is not a directory"
  try:
    with tempfile.NamedTemporaryFile(dir=probe, prefix=".probe.", suffix=".probe"):
      pass
  except OSError as e:
    return f"cannot write in {probe} ({e.strerror or e})"
  return None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file and an atomic rename.

  The file gets the permissions of ``open()`` (0666 less the umask), not ``mkstemp``'s 0600.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_path(path)
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """:func:`write_bytes` of ``text`` encoded as UTF-8."""
  write_bytes(path, text.encode("utf-8"))
