"""Validates a format-v1 dataset directory.

    python -m camera_jax.data.validate --data_dir=DIR [--check_images=true]

Prints the dataset's one-paragraph summary and exits 0 when it is valid; otherwise prints every
problem on stdout, one ``FILE:LINE: message`` line each, and exits 1. It never prints a
traceback. Library code reuses :func:`main_lines`; the absl flags are defined only when this
module runs as the program, so importing it defines no flags.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from camera_jax.data import format as fmt


def main_lines(
    data_dir: str | os.PathLike[str], check_images: bool = True, seed: int = 0
) -> tuple[int, list[str]]:
    """Validates ``data_dir`` and returns (exit status, lines to print).

    Returns (0, [summary]) for a valid dataset and (1, error lines) otherwise; an unexpected
    exception becomes one error line instead of propagating.
    """
    try:
        dataset = fmt.load(data_dir, seed=seed, check_images=check_images)
        return 0, [fmt.summary(dataset)]
    except fmt.DatasetError as e:
        return 1, list(e.errors)
    except Exception as e:  # pylint: disable=broad-except
        return 1, [f"{data_dir}: unexpected error while validating: {type(e).__name__}: {e}"]


def _define_flags() -> None:
    from absl import flags  # pylint: disable=g-import-not-at-top

    flags.DEFINE_string("data_dir", None, "The dataset directory (format v1).")
    flags.DEFINE_bool("check_images", True, "Also decode every image (PNG or JPEG), one at a time.")
    flags.mark_flag_as_required("data_dir")


def _main(argv: Sequence[str]) -> int:
    from absl import flags  # pylint: disable=g-import-not-at-top

    if len(argv) > 1:
        print(f"unexpected arguments: {' '.join(argv[1:])}")
        return 1
    status, lines = main_lines(flags.FLAGS.data_dir, check_images=flags.FLAGS.check_images)
    for line in lines:
        print(line)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    from absl import app  # pylint: disable=g-import-not-at-top

    _define_flags()
    app.run(_main)
