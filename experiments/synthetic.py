r"""Writes a synthetic dataset in format v1 (the generative story: camera_jax/data/synthetic.py).

  python experiments/synthetic.py --out=DIR [--preset=tiny|small|paper] [--seed=N]

The output depends only on (preset, seed, image_size). An existing non-empty --out that is not
the same dataset is refused in one line on stderr (exit 1); nothing half-written is left.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402
from camera_jax.data import synthetic  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output dataset directory.", required=True)
_PRESET = flags.DEFINE_enum("preset", "tiny", sorted(synthetic.PRESETS), "Dataset size preset.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side in pixels.", lower_bound=24)
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Rendering processes (0: automatic). Output does not depend on it.", lower_bound=0)


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv)):
    return 1
  try:
    path = synthetic.generate(_OUT.value, preset=_PRESET.value, seed=_SEED.value,
                              image_size=_IMAGE_SIZE.value, workers=_WORKERS.value or None)
  except (FileExistsError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  p = synthetic.get_preset(_PRESET.value)
  print(f"{path}: preset={p.name} seed={_SEED.value} image_size={_IMAGE_SIZE.value}: "
        f"{p.num_brands} brands, {p.influencers} influencers, {p.num_posts} posts, "
        f"{p.labeled_posts} labeled posts, {p.num_concepts} concepts")
  return 0


if __name__ == "__main__":
  _cli.run(main)
