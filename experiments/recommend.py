r"""Ranked micro-influencers for a brand of a finished run, or for a new brand.

  python experiments/recommend.py --workdir=runs/RUN --brand=BRAND_ID --top_k=10 --format=table
  python experiments/recommend.py --workdir=runs/RUN --brand_dir=DIR --format=json

--brand_dir is a folder with posts.jsonl (format-v1 post lines), their images and optionally
account.json ({"id", "followers", "category"}) for a brand the model has never seen. The JSON
schema is documented in camera_jax/explain/recommend.py and docs/interpretability.md.
Errors print one line to stderr and exit with status 1.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "work directory of a finished run")
_BRAND = flags.DEFINE_string("brand", None, "brand id of the run's dataset")
_BRAND_DIR = flags.DEFINE_string("brand_dir", None, "folder of a new brand (posts.jsonl, images, account.json)")
_TOP_K = flags.DEFINE_integer("top_k", 10, "number of influencers (0: all candidates)",
                              lower_bound=0)
_FORMAT = flags.DEFINE_enum("format", "table", ["table", "json", "csv"], "output format")
_CANDIDATES = flags.DEFINE_list("candidates", None, "influencer ids to rank (default: the split's candidates)")


def main(argv) -> int:
  if _cli.first_problem(_cli.stray_arguments(argv)):
    return 1
  from camera_jax.explain import recommend as rec

  try:
    if not _WORKDIR.value:
      raise ValueError("--workdir is required")
    if bool(_BRAND.value) == bool(_BRAND_DIR.value):
      raise ValueError("give exactly one of --brand=ID and --brand_dir=DIR")
    run = _cli.open_run(_WORKDIR.value)
    if _BRAND_DIR.value:
      rows = rec.recommend_new_brand(run, _BRAND_DIR.value, top_k=_TOP_K.value, candidates=_CANDIDATES.value)
      brand, new = run.account_ids[-1], True  # the account recommend_new_brand appended
    else:
      rows = rec.recommend(run, _BRAND.value, top_k=_TOP_K.value, candidates=_CANDIDATES.value)
      brand, new = _BRAND.value, False
  except (rec.UnknownNameError, *_cli.run_errors()) as e:
    print(_cli.error_line(e), file=sys.stderr)
    return 1
  accounts = {a.id: a for a in run.dataset.accounts}
  if brand in accounts:
    category = accounts[brand].category
  else:  # a new brand: Run.add_account records its category
    cats = getattr(run, "categories", None)
    row = run.account_index.get(brand) if brand is not None else None
    category = cats[row] if cats is not None and row is not None and row < len(cats) else ""
  if _FORMAT.value == "json":
    print(rec.to_json(rows, brand=brand, brand_category=category, new_brand=new, top_k=_TOP_K.value))
  elif _FORMAT.value == "csv":
    sys.stdout.write(rec.to_csv(rows))
  else:
    label = f"brand {brand}" + (f" ({category})" if category else "") + (" [new]" if new else "")
    print(f"{label}: top {len(rows)} influencers by S")
    print(rec.format_table(rows))
  return 0


if __name__ == "__main__":
  _cli.run(main)
