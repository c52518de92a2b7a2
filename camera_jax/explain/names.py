"""Account ids as a user gives them: known, and of the kind asked for.

Every explanation tool (:mod:`~camera_jax.explain.recommend`, :mod:`~camera_jax.explain.radar`)
resolves a brand or influencer id here, so an unknown id, or a brand given where an influencer is
wanted (or the reverse), is refused with the same one-line :class:`UnknownNameError` naming the
closest known ids, never scored as a pair the model was not trained on.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

__all__ = ["BRAND", "INFLUENCER", "UnknownNameError", "account_row", "dataset_accounts"]

BRAND = "brand"
INFLUENCER = "influencer"


class UnknownNameError(KeyError):
    """An id that the run does not know; the message is one line naming the closest known ids.

    A ``KeyError`` (so a ``LookupError``) whose ``str`` is the message itself, unquoted.

    Attributes:
      name: the unknown id.
      closest: up to 5 closest known ids (difflib).

    >>> str(UnknownNameError("brand", "nik", ["nike", "adidas"]))
    "unknown brand 'nik'; closest known ids: nike, adidas"
    """

    def __init__(self, what: str, name: str, known: Sequence[str], note: str = ""):
        self.name = name
        self.closest = difflib.get_close_matches(str(name), list(known), n=5, cutoff=0.0)
        msg = f"unknown {what} {name!r}{note}"
        msg += f"; closest known ids: {', '.join(self.closest)}" if self.closest else "; none known"
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def dataset_accounts(run: Any) -> dict[str, Any]:
    """The run's dataset accounts by id (none for a run object without a dataset)."""
    return {a.id: a for a in getattr(getattr(run, "dataset", None), "accounts", ())}


def account_row(run: Any, account_id: str, kind: str | None = None,
                accounts: Mapping[str, Any] | None = None) -> int:
    """The row of ``account_id`` in the run's tables (``run.account_index``).

    ``kind`` (``BRAND`` or ``INFLUENCER``): the dataset account must be of that kind; an account
    added after loading (``run.add_account``) has none recorded and is taken as asked. The known
    ids named on an error are the run's accounts of that kind (every account without ``kind``).
    ``accounts``: :func:`dataset_accounts` of the run, for a caller checking many ids.

    Raises:
      UnknownNameError: the run does not know ``account_id``, or it is of the other kind.
    """
    index = run.account_index
    accounts = dataset_accounts(run) if accounts is None else accounts
    given = accounts[account_id].kind if account_id in accounts else kind
    if account_id in index and (kind is None or given == kind):
        return int(index[account_id])
    if kind is None:
        known = list(index)
    elif kind == BRAND:   # the dataset's brands and those added after loading
        known = [i for i in index if i not in accounts or accounts[i].kind == BRAND]
    else:
        known = [i for i, a in accounts.items() if a.kind == kind]
    note = f" (it is {_article(given)})" if account_id in index else ""
    raise UnknownNameError(kind or "account", account_id, known, note)
