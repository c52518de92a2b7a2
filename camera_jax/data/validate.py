"""Validates a format-v1 dataset directory.

The command is ``python experiments/validate.py --data_dir=DIR [--check_images=true]``: it
prints the dataset's one-paragraph summary and exits 0 when it is valid; otherwise it prints
every problem, one ``FILE:LINE: message`` line each, and exits 1, never a traceback. It prints
what :func:`main_lines` returns.
"""

from __future__ import annotations

import os

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


if __name__ == "__main__":   # the command moved: never a silent exit 0 for the old one
    import sys

    print("camera_jax.data.validate is no longer a command: run "
          "python experiments/validate.py --data_dir=DIR", file=sys.stderr)
    sys.exit(2)
