"""Usage totals of many accounts as sorted integer columns: what the bill run invoices.

The ABM keeps, per account, cycle and usage class, five totals: records,
units, bundle units, money and its unbilled part (``AccountState.usage``).
:class:`UsageTotals` keeps them for a whole :class:`~billing.charging.table.AccountTable`
as one sorted key column and five value columns (a ``(5, n)`` array: each
total contiguous, since gathering rows of an ``(n, 5)`` one costs five times
more), the key being
``row << 32 | cycle << 16 | usage_class`` (codes of the table). A dense
column per (cycle, class) would cost every account 40 bytes for every class
anyone used; most accounts use a handful.

Charging adds one aggregated, sorted chunk per batch (:meth:`UsageTotals.add`,
no copy of what is stored) and never reads the totals back; chunks are
merged into the sorted main columns when a reader wants the whole view (the
bill run, :meth:`UsageTotals.merged`) or once they hold twice as many totals
as the main columns, so each total is moved a bounded number of times, as in
a log-structured merge. One account's totals (:meth:`UsageTotals.of_row`)
are found by a binary search in the main columns and in each chunk.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from billing.charging.codes import I64, Groups, Ints
from billing.invariant import invariant

__all__ = ["ROW_SHIFT", "UsageTotals", "usage_key"]

ROW_SHIFT = 32
CYCLE_SHIFT = 16
_LOW = (1 << CYCLE_SHIFT) - 1
_MERGE_MIN = 1 << 20


def usage_key(rows: Ints, cycles: Ints, classes: Ints) -> Ints:
    """The store's key of (account row, cycle code, class code), elementwise."""
    invariant(
        not len(cycles) or (int(cycles.max()) <= _LOW and int(classes.max()) <= _LOW),
        "usage codes fit 16 bits",
    )
    return (rows.astype(I64) << ROW_SHIFT) | (cycles.astype(I64) << CYCLE_SHIFT) | classes


class UsageTotals:
    """Sorted ``(key, 5 totals)`` columns plus the chunks added since the last merge."""

    __slots__ = ("_chunks", "_pending", "keys", "values")

    def __init__(self) -> None:
        self.keys: Ints = np.zeros(0, dtype=I64)
        self.values: npt.NDArray[np.int64] = np.zeros((5, 0), dtype=I64)
        self._chunks: list[tuple[Ints, npt.NDArray[np.int64]]] = []
        self._pending = 0

    def add(self, keys: Ints, values: npt.NDArray[np.int64]) -> None:
        """Add ``values`` (``(n, 5)``) to the totals under ``keys`` (repeats allowed)."""
        if not len(keys):
            return
        if len(keys) > 1 and bool(np.any(keys[1:] < keys[:-1])):
            order = np.argsort(keys, kind="stable")
            keys, values = keys[order], values[order]
        self._chunks.append((keys, np.ascontiguousarray(values.T, dtype=I64)))
        self._pending += len(keys)
        if self._pending >= max(_MERGE_MIN, 2 * len(self.keys)):
            self.merge()

    def merge(self) -> None:
        """Fold the pending chunks into the sorted main columns."""
        if not self._chunks:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self._chunks)])
        values = np.concatenate([self.values, *(v for _, v in self._chunks)], axis=1)
        self._chunks.clear()
        self._pending = 0
        groups = Groups(keys)
        summed = np.stack([np.add.reduceat(v[groups.order], groups.starts) for v in values])
        self.keys, self.values = groups.keys_of, summed

    def of_row(self, row: int) -> dict[tuple[int, int], tuple[int, int, int, int, int]]:
        """The totals of one account row: ``{(cycle code, class code): 5 totals}`` (the
        main columns and every pending chunk are sorted: a binary search in each)."""
        first, last = row << ROW_SHIFT, (row + 1) << ROW_SHIFT
        sums: dict[int, list[int]] = {}
        for keys, values in (self.keys, self.values), *self._chunks:
            lo, hi = np.searchsorted(keys, first), np.searchsorted(keys, last)
            for key, totals in zip(keys[lo:hi].tolist(), values[:, lo:hi].T.tolist(), strict=True):
                found = sums.get(key)
                if found is None:
                    sums[key] = totals
                else:
                    for i in range(5):
                        found[i] += totals[i]
        return {
            ((key >> CYCLE_SHIFT) & _LOW, key & _LOW): (t[0], t[1], t[2], t[3], t[4])
            for key, t in sorted(sums.items())
            if any(t)
        }

    def merged(self) -> tuple[Ints, Ints, Ints, npt.NDArray[np.int64]]:
        """Everything, merged: ``(rows, cycle codes, class codes, totals)`` sorted by row,
        the totals as a ``(5, n)`` array."""
        self.merge()
        keys = self.keys
        return keys >> ROW_SHIFT, (keys >> CYCLE_SHIFT) & _LOW, keys & _LOW, self.values
