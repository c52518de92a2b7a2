"""Every library module's doctests run (a module's examples are part of its tests: sharding's
``round_up(10, 4) == 12`` is the check that round_up rounds up)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import camera_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(camera_jax.__path__, "camera_jax."))


def test_the_library_has_doctests_to_run():
  with_examples = [name for name in MODULES
                   if doctest.DocTestFinder().find(importlib.import_module(name))
                   and any(t.examples for t in doctest.DocTestFinder().find(
                       importlib.import_module(name)))]
  for name in ("camera_jax.training.sharding", "camera_jax.training.ranker",
               "camera_jax.training.checkpoint", "camera_jax.training.trainer",
               "camera_jax.atomic", "camera_jax.losses", "camera_jax.metrics"):
    assert name in with_examples, name


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
