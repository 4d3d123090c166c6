"""The subscriber directory read for a column of numbers: the account and plan of each row.

The per-record path asks the directory once per record
(``actors.partition.settle``); the bulk path asks it once per distinct number
of a batch and answers every row with arrays. Per distinct number, its
subscriptions become a few rows of padded arrays (start, end, plan); a row's
plan is then "the last subscription active at its time", as
:meth:`~actors.partition.directory.DirectoryEntry.plan_at` says, decided for
all rows by one array comparison per subscription slot. A number that moved
between accounts (an entry with earlier holders) is rare: its rows ask
:meth:`~actors.partition.directory.DirectoryEntry.at` one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actors.partition.directory import Directory, DirectoryEntry
from billing.charging.codes import Codes

__all__ = ["Subscribers", "look_up"]

_FOREVER: Final = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribers:
    """Per row: ``account`` (a code of ``accounts``, ``-1``: not in the directory) and
    ``plan`` (a code of ``plans``, ``-1``: no subscription active at the row's time);
    ``msisdn`` the code of the row's number in ``msisdns``."""

    account: NDArray[np.int32]
    accounts: list[str]
    plan: NDArray[np.int32]
    plans: list[str]
    msisdn: NDArray[np.int32]
    msisdns: list[str]

    def plan_column(self, rows: NDArray[np.intp]) -> pa.DictionaryArray:
        """The plan ids of ``rows`` (each has one) as a dictionary column, for the rater."""
        return pa.DictionaryArray.from_arrays(
            pa.array(self.plan[rows]), pa.array(self.plans, pa.string())
        )


def look_up(directory: Directory, msisdn: pa.Array, t_s: NDArray[np.int64]) -> Subscribers:
    """The account and plan of every row (``msisdn`` a string column, ``t_s`` the opening
    times), as :func:`actors.partition.settle.settle` finds them one by one."""
    encoded = msisdn.dictionary_encode()
    row_code = encoded.indices.to_numpy().astype(np.int32, copy=False)
    numbers: list[str] = encoded.dictionary.to_pylist()
    accounts, plans = Codes[str](), Codes[str]()
    account_of = np.full(len(numbers), -1, np.int32)
    moved: dict[int, DirectoryEntry] = {}
    held: list[tuple[tuple[int, int, int], ...]] = [()] * len(numbers)
    for c, number in enumerate(numbers):
        entry = directory.get(number)
        if entry is None:
            continue
        if entry.earlier:
            moved[c] = entry
            continue
        account_of[c] = accounts.code(entry.account_id)
        held[c] = tuple(
            (s.start_s, _FOREVER if s.end_s is None else s.end_s, plans.code(s.plan_id))
            for s in entry.subscriptions
        )
    slots = max((len(h) for h in held), default=0)
    starts = np.zeros((slots, len(numbers)), np.int64)
    ends = np.zeros((slots, len(numbers)), np.int64)  # an empty slot is never active
    plan_ids = np.full((slots, len(numbers)), -1, np.int32)
    for c, subscriptions in enumerate(held):
        for k, (start, end, plan_code) in enumerate(subscriptions):
            starts[k, c], ends[k, c], plan_ids[k, c] = start, end, plan_code
    account = account_of[row_code]
    plan: NDArray[np.int32] = np.full(len(row_code), -1, np.int32)
    for k in range(slots):
        # The latest subscription active at the row's time wins (DirectoryEntry.plan_at).
        active = (starts[k, row_code] <= t_s) & (t_s < ends[k, row_code])
        plan = np.where(active, plan_ids[k, row_code], plan).astype(np.int32, copy=False)
    if moved:
        for row in np.flatnonzero(np.isin(row_code, list(moved))).tolist():
            entry = moved[int(row_code[row])].at(int(t_s[row]))
            account[row] = accounts.code(entry.account_id)
            found = entry.plan_at(int(t_s[row]))
            plan[row] = -1 if found is None else plans.code(found)
    return Subscribers(
        account=account,
        accounts=accounts.names,
        plan=plan,
        plans=plans.names,
        msisdn=row_code,
        msisdns=numbers,
    )
