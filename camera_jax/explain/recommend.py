"""Ranked micro-influencer recommendations for a brand, with their explanation (eq. 18).

:func:`recommend` scores a brand of a finished run against candidate
influencers with ``run.score`` and returns one row per recommended influencer:
its rank, the four scores and the interpretability parameters ``Exp`` (the
brand's ``w_b`` and the influencer's ``w_m`` over their top-10 concepts).
:func:`recommend_new_brand` does the same for a brand the model has never
seen, from a folder of its posts.

Row schema (``SCHEMA_VERSION`` = 1; keys are stable, new keys may be added in
a later version, existing ones keep their meaning)::

    {
      "rank": int,                 # 1-based, by S descending (ties: influencer id)
      "brand": str,                # the brand id
      "influencer": str,           # the influencer id
      "category": str,             # the influencer's category ("" if unknown)
      "S": float,                  # ranking score S = S_con * S_ed * S_in (eq. 18)
      "S_con": float,              # content score (eq. 17)
      "S_ed": float,               # endorsement effect score (eq. 11)
      "S_in": float,               # influence score (eq. 14)
      "known_partner": bool,       # the dataset has a cooperation of this pair
      "brand_concepts": [          # the brand's top-10 concepts, by w_b descending
        {"concept": str, "weight": float,      # w_b (marketing direction, eq. 7)
         "history": float}, ...                # the brand's w_a of that concept (eq. 5)
      ],
      "influencer_concepts": [     # the influencer's top-10 concepts, by w_m descending
        {"concept": str, "weight": float, "history": float}, ...
      ]
    }

:func:`to_json` wraps the rows as ``{"schema_version": 1, "brand": ...,
<extra metadata>, "results": [rows]}``; :func:`to_csv` flattens the concept
lists into ``name:weight`` pairs joined by ``;``; :func:`format_table` prints
a fixed-width text table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from camera_jax import strict_json
from camera_jax.explain import names
from camera_jax.explain.names import UnknownNameError

__all__ = [
    "SCHEMA_VERSION",
    "UnknownNameError",
    "recommend",
    "recommend_new_brand",
    "read_brand_dir",
    "format_table",
    "to_json",
    "to_csv",
]

SCHEMA_VERSION = 1

_BRAND = names.BRAND
_INFLUENCER = names.INFLUENCER
_CSV_COLUMNS = (
    "rank", "brand", "influencer", "category", "S", "S_con", "S_ed", "S_in", "known_partner",
    "brand_concepts", "influencer_concepts",
)  # fmt: skip


def _default_candidates(run: Any, accounts: Mapping[str, Any]) -> list[str]:
    cands = list(getattr(run.dataset.split, "candidates", ()) or ())
    if not cands:
        cands = [a.id for a in run.dataset.accounts if a.kind == _INFLUENCER]
    return [c for c in cands if c in run.account_index]


def _concept_list(run: Any, row: int, weights: np.ndarray) -> list[dict[str, Any]]:
    idx = np.asarray(run.top_idx[row]).reshape(-1)
    hist = np.asarray(run.top_w[row], dtype=np.float64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    from camera_jax.explain.shown import shown_concepts
    shown = shown_concepts(run, row)   # not the zero-weight fillers
    order = sorted((j for j in range(len(idx)) if shown[j]),
                   key=lambda j: (-weights[j], run.concepts[int(idx[j])]))
    return [
        {"concept": str(run.concepts[int(idx[j])]), "weight": float(weights[j]), "history": float(hist[j])}
        for j in order
    ]


def recommend(
    run: Any, brand_id: str, top_k: int = 10, candidates: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Top-``top_k`` influencers for ``brand_id`` with scores and explanation (schema: module doc).

    Args:
      run: a :class:`camera_jax.run.Run` (``dataset``, ``concepts``,
        ``account_index``, ``top_idx``, ``top_w``, ``score``).
      brand_id: a brand of the run's dataset or one added with ``run.add_account``.
      top_k: number of rows (all candidates when <= 0 or larger than their number).
      candidates: influencer ids to rank; default: the dataset split's
        candidates, or every influencer when the split names none.

    Raises:
      UnknownNameError: unknown brand id (or an influencer id given as brand),
        or an unknown candidate id (or a brand id given as candidate).
    """
    accounts = names.dataset_accounts(run)
    names.account_row(run, brand_id, _BRAND, accounts)
    if candidates is None:
        cands = _default_candidates(run, accounts)
    else:
        cands = [str(c) for c in candidates]
        for c in cands:
            names.account_row(run, c, _INFLUENCER, accounts)
    cands = [c for c in dict.fromkeys(cands) if c != brand_id]
    if not cands:
        return []
    b = int(run.account_index[brand_id])
    m_rows = np.asarray([run.account_index[c] for c in cands], dtype=np.int64)
    out = run.score(np.full(len(cands), b, dtype=np.int64), m_rows)
    out = {k: np.asarray(v) for k, v in out.items()}
    s = out["S"].astype(np.float64).reshape(-1)
    order = sorted(range(len(cands)), key=lambda j: (-s[j], cands[j]))
    if top_k and top_k > 0:
        order = order[: int(top_k)]
    positives = {(c.brand, c.influencer) for c in run.dataset.cooperations}
    rows = []
    for rank, j in enumerate(order, start=1):
        m = cands[j]
        acc = accounts.get(m)
        rows.append(
            {
                "rank": rank,
                "brand": brand_id,
                "influencer": m,
                "category": acc.category if acc is not None else "",
                **{k: float(out[k].reshape(-1)[j]) for k in ("S", "S_con", "S_ed", "S_in")},
                "known_partner": (brand_id, m) in positives,
                "brand_concepts": _concept_list(run, b, out["w_b"][j]),
                "influencer_concepts": _concept_list(run, int(m_rows[j]), out["w_m"][j]),
            }
        )
    return rows


def _dataset_error(errors: list[str]) -> Exception:
    from camera_jax.data.format import DatasetError

    return DatasetError(errors)


def read_brand_dir(brand_dir: str | pathlib.Path,
                   concepts: Sequence[str] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Reads a new brand's folder: ``(account, posts)``.

    The folder holds ``posts.jsonl`` (format v1 post lines: ``id``, ``image``
    relative to the folder, ``caption``, ``likes``, ``comments``, optional
    ``account`` and ``concepts``) and its images, and optionally ``account.json``
    with ``id``, ``followers`` and ``category``.  The brand id is ``account.json``'s
    ``id``, else the posts' common ``account``, else the folder name.  A post's
    ``concepts`` (its ground-truth concepts, as in ``posts.jsonl`` of a dataset;
    what a ``--use_gt_concepts`` run reads) must be names of ``concepts`` (the
    run's vocabulary) when that is given.

    Returns:
      ``account`` dict (``id``, ``followers`` or ``None``, ``category``) and a
      list of :class:`camera_jax.data.format.Post` with ``account`` set to the id.

    Raises:
      FileNotFoundError: the folder or its ``posts.jsonl`` is missing.
      DatasetError: malformed files (lines ``FILE:LINE: message``) or no posts.
    """
    from camera_jax.data import format as fmt

    root = pathlib.Path(brand_dir)
    vocabulary = None if concepts is None else set(concepts)
    if not root.is_dir():
        raise FileNotFoundError(f"brand folder {str(root)!r} does not exist")
    posts_file = root / "posts.jsonl"
    if not posts_file.is_file():
        raise FileNotFoundError(f"{str(posts_file)!r} does not exist (a new brand needs posts.jsonl)")
    account: dict[str, Any] = {"id": None, "followers": None, "category": ""}
    acc_file = root / "account.json"
    acc_errs = fmt._FileErrors(str(acc_file))   # the folder named: not the dataset's files
    if acc_file.is_file():
        # Read as a dataset's split.json is: each problem on the line it is on.
        text, obj = fmt._read_json_object(acc_file, acc_errs) or ("", {})

        def field(name: str) -> Any:
            return fmt._Record(obj, fmt._key_line(text, name) or 1, acc_errs)

        if "id" in obj:
            aid = field("id").identifier("id")
            if aid is not None and aid.strip():
                account["id"] = aid.strip()
            elif aid is not None:
                acc_errs.add(fmt._key_line(text, "id") or 1, 'field "id" must be a non-empty string')
        if "followers" in obj:  # as accounts.jsonl: an engagement rate needs a follower
            account["followers"] = field("followers").integer(
                "followers", minimum=1, note="engagement rate is undefined")
        if "category" in obj:
            category = field("category").string("category", nonempty=False)
            account["category"] = category or ""
    errs = fmt._FileErrors(str(posts_file))   # the folder named: not a dataset's posts.jsonl
    raw_posts = list(fmt._iter_jsonl(posts_file, errs))
    owners = {}
    for lineno, obj in raw_posts:   # an optional "account" is checked as a dataset's post's is
        if "account" in obj:
            owner = fmt._Record(obj, lineno, errs).identifier("account")
            if owner is not None:
                owners.setdefault(owner, lineno)
    if account["id"] is None:
        account["id"] = next(iter(owners)) if len(owners) == 1 else root.resolve().name
    seen: set[str] = set()
    posts = []
    for lineno, obj in raw_posts:
        r = fmt._Record(obj, lineno, errs)
        pid = r.identifier("id")
        if pid is None:
            continue
        if pid in seen:
            r.error(f'field "id": duplicate post id {pid!r}')
            continue
        seen.add(pid)
        image = r.string("image")
        if image is None:
            continue
        # A brand's folder is small: decode every image now, as the dataset validator does,
        # rather than fail in the middle of the concept prediction.
        problem = fmt._image_problem(image, root, True, root_name="the brand folder")
        if problem is not None:
            r.error(problem)
            continue
        caption = r.string("caption", nonempty=False, required=False)
        likes = r.integer("likes", minimum=0)
        comments = r.integer("comments", minimum=0)
        names = obj.get("concepts")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                r.error('field "concepts" must be a list of concept names')
            else:
                unknown = [c for c in names if vocabulary is not None and c not in vocabulary]
                if unknown:
                    r.error(f'field "concepts": {unknown[0]!r} is not a concept of the run')
                names = tuple(dict.fromkeys(names))
        if not r.ok:
            continue
        posts.append(fmt.Post(id=pid, account=account["id"], image=image, caption=caption or "",
                              likes=likes, comments=comments, concepts=names))
    errors = acc_errs.lines() + errs.lines()
    if not errors and not posts:
        errors.append("posts.jsonl:0: no posts (a new brand needs at least one post)")
    if errors:
        raise _dataset_error(errors)
    return account, posts


def recommend_new_brand(
    run: Any,
    brand_dir: str | pathlib.Path,
    top_k: int = 10,
    candidates: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Recommendations for a brand the model has never seen (see :func:`read_brand_dir`).

    The brand's posts go through the trained concept layer
    (``run.represent_posts(posts, root, followers=...)``: ``w_a``, top-10
    concepts, mean engagement rate with ``account.json``'s ``followers``, or
    the run's median follower count when absent), the brand is appended with
    ``run.add_account(id, repr, category=...)`` and then ranked like a known
    brand by :func:`recommend`.

    Raises:
      FileNotFoundError, DatasetError: see :func:`read_brand_dir`.
      ValueError: the brand id already belongs to an account of the run.
    """
    account, posts = read_brand_dir(brand_dir, run.concepts)
    brand_id = account["id"]
    if brand_id in run.account_index:
        raise ValueError(
            f"brand id {brand_id!r} already exists in the run; use --brand={brand_id} or set another"
            " id in account.json"
        )
    root = pathlib.Path(brand_dir)
    if account["followers"] is not None:
        rep = dict(run.represent_posts(posts, root, followers=account["followers"]))
        rep["followers"] = account["followers"]
    else:
        rep = run.represent_posts(posts, root)
    if account["category"]:
        run.add_account(brand_id, rep, category=account["category"])
    else:
        run.add_account(brand_id, rep)
    return recommend(run, brand_id, top_k=top_k, candidates=candidates)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    # 6 significant digits: the parts multiply to the S shown (eq. 18) to its digits
    return f"{x:.6g}"


def _concepts_short(items: Sequence[Mapping[str, Any]], n: int = 3) -> str:
    return ", ".join(f"{c['concept']} ({c['weight']:.2f})" for c in items[:n])


def format_table(rows: Sequence[Mapping[str, Any]], n_concepts: int = 3) -> str:
    """Fixed-width text table: rank, influencer, category, scores and the top concepts of w_b / w_m."""
    header = ["rank", "influencer", "category", "S", "S_con", "S_ed", "S_in", "partner",
              "brand concepts (w_b)", "influencer concepts (w_m)"]  # fmt: skip
    body = [
        [
            str(r["rank"]), str(r["influencer"]), str(r.get("category", "")),
            _fmt(r["S"]), _fmt(r["S_con"]), _fmt(r["S_ed"]), _fmt(r["S_in"]),
            "yes" if r.get("known_partner") else "",
            _concepts_short(r["brand_concepts"], n_concepts),
            _concepts_short(r["influencer_concepts"], n_concepts),
        ]  # fmt: skip
        for r in rows
    ]
    if not body:
        return "(no candidates)"
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    numeric = {0, 3, 4, 5, 6}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    return "\n".join(out)


def to_json(rows: Sequence[Mapping[str, Any]], *, indent: int | None = 2, **meta: Any) -> str:
    """``{"schema_version": 1, "brand": ..., **meta, "results": rows}`` as JSON text.

    ``brand`` defaults to the rows' brand (``None`` for no rows); ``meta``
    adds keys such as ``brand_category`` or ``new_brand``.
    """
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "brand": rows[0]["brand"] if rows else None}
    doc.update(meta)
    doc["results"] = [dict(r) for r in rows]
    return strict_json.dumps(doc, indent=indent, ensure_ascii=False)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with a header; concept lists as ``name:weight`` joined by ``;`` (w_b / w_m order)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for r in rows:
        w.writerow(
            [
                r["rank"], r["brand"], r["influencer"], r.get("category", ""),
                repr(float(r["S"])), repr(float(r["S_con"])), repr(float(r["S_ed"])), repr(float(r["S_in"])),
                int(bool(r.get("known_partner"))),
                ";".join(f"{c['concept']}:{c['weight']:.6g}" for c in r["brand_concepts"]),
                ";".join(f"{c['concept']}:{c['weight']:.6g}" for c in r["influencer_concepts"]),
            ]  # fmt: skip
        )
    return buf.getvalue()
