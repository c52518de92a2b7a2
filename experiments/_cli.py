"""Small helpers shared by the experiments' absl mains."""

from __future__ import annotations


def one_line(text: str) -> str:
  """The first non-empty line of an error message, with a count of the lines left out."""
  lines = [x for x in str(text).splitlines() if x.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  return f"{lines[0]} (and {len(lines) - 1} more problem(s))"
