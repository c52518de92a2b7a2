r"""Validates a format-v1 dataset directory (docs/dataset-format.md).

  python experiments/validate.py --data_dir=DIR [--check_images=true]

Prints the dataset's one-paragraph summary and exits 0 when it is valid; otherwise prints every
problem on stdout, one ``FILE:LINE: message`` line each, and exits 1. It never prints a
traceback (``camera_jax.data.validate.main_lines``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "The dataset directory (format v1).", required=True)
_CHECK_IMAGES = flags.DEFINE_bool("check_images", True,
                                  "Also decode every image (PNG or JPEG), one at a time.")


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv)):
    return 1
  from camera_jax.data import validate

  status, lines = validate.main_lines(_DATA_DIR.value, check_images=_CHECK_IMAGES.value)
  for line in lines:
    print(line)
  sys.stdout.flush()
  return status


if __name__ == "__main__":
  _cli.run(main)
