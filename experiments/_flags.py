"""Defines one absl flag per ``camera_jax.config.Config`` field (same name, same default)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from absl import flags

from camera_jax import config as config_lib

_HELP = "see camera_jax/config.py"


def field_help() -> dict[str, str]:
  """Each Config field's comment in camera_jax/config.py (the text after ``#`` on its line)."""
  source = inspect.getsource(config_lib.Config)
  out = {}
  for m in re.finditer(r"^\s+(\w+): [^\n#]*#\s*(.+)$", source, flags=re.M):
    out[m.group(1)] = m.group(2).strip()
  return out


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One flag per Config field; tuples become comma-separated lists.

  Each flag's help is the field's comment in camera_jax/config.py (or a pointer to it). An
  entry point calls ``flags.adopt_module_key_flags(_flags)`` so that its ``--help`` lists them.
  """
  fv = {"flag_values": flag_values}
  hints = typing.get_type_hints(config_lib.Config)
  helps = field_help()
  for field in dataclasses.fields(config_lib.Config):
    hint, default = hints[field.name], field.default
    text = helps.get(field.name, _HELP)
    if field.name == "loss":   # the registered names, a fork's own included
      from camera_jax import losses
      text += f": {', '.join(sorted(losses.REGISTRY))}"
    if hint is bool:
      flags.DEFINE_bool(field.name, default, text, **fv)
    elif hint is int:
      flags.DEFINE_integer(field.name, default, text, **fv)
    elif hint is float or hint == (float | None):
      flags.DEFINE_float(field.name, default, text, **fv)
    elif hint is str:
      flags.DEFINE_string(field.name, default, text, **fv)
    else:  # tuple[int, ...] or tuple[str, ...]
      flags.DEFINE_list(field.name, [str(v) for v in default], text, **fv)
      if typing.get_args(hint)[0] is int:  # refused at parsing: one line, no traceback
        flags.register_validator(field.name, _all_ints,
                                 f"--{field.name} takes comma-separated integers", **fv)


def _all_ints(values: list[str]) -> bool:
  try:
    [int(v) for v in values]
  except ValueError:
    return False
  return True


def config_from_flags(values: flags.FlagValues) -> config_lib.Config:
  """The Config that the parsed flags describe."""
  hints = typing.get_type_hints(config_lib.Config)
  kwargs = {}
  for field in dataclasses.fields(config_lib.Config):
    value = getattr(values, field.name)
    hint = hints[field.name]
    if typing.get_origin(hint) is tuple:
      (elem, _) = typing.get_args(hint)
      value = tuple(elem(v) for v in value)
    kwargs[field.name] = value
  return config_lib.Config(**kwargs)
