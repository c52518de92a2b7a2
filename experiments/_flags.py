"""Defines one absl flag per ``camera_jax.config.Config`` field (same name, same default)."""

from __future__ import annotations

import dataclasses
import typing

from absl import flags

from camera_jax import config as config_lib

_HELP = "see camera_jax/config.py"


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One flag per Config field; tuples become comma-separated lists."""
  fv = {"flag_values": flag_values}
  hints = typing.get_type_hints(config_lib.Config)
  for field in dataclasses.fields(config_lib.Config):
    hint, default = hints[field.name], field.default
    if hint is bool:
      flags.DEFINE_bool(field.name, default, _HELP, **fv)
    elif hint is int:
      flags.DEFINE_integer(field.name, default, _HELP, **fv)
    elif hint is float:
      flags.DEFINE_float(field.name, default, _HELP, **fv)
    elif hint is str:
      flags.DEFINE_string(field.name, default, _HELP, **fv)
    else:  # tuple[int, ...] or tuple[str, ...]
      flags.DEFINE_list(field.name, [str(v) for v in default], _HELP, **fv)


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
