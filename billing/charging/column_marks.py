"""An in-memory mark store fed by columnar charging answers, marks built on demand.

:class:`ColumnMarks` remembers, per stored key, which answer
(:class:`~billing.charging.columnar.ChargeColumns`) and position hold its usage
line, and builds the :class:`~billing.idempotency.Mark`
only when asked (a repeated or conflicting id, the rare case). It is what a
test, a benchmark or a single-process embedding keeps; a shard keeps its marks
in RocksDB and answers ``get_many`` with one multi-get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from billing.charging.columnar import ChargeColumns
from billing.charging.vector import code_of
from billing.idempotency import Mark
from billing.outcome import CHARGED_RESULTS, Result

__all__ = ["ColumnMarks"]

_LINE_CODES = np.array([code_of(r) for r in (*CHARGED_RESULTS, Result.SPONSORED)])


class ColumnMarks:
    """Marks of charged batches: ``key -> (answer, position)`` or a mark built already."""

    __slots__ = ("_built", "_where")

    def __init__(self) -> None:
        self._where: dict[str, tuple[ChargeColumns, int]] = {}
        self._built: dict[str, Mark[Any]] = {}

    def __len__(self) -> int:
        return len(self._where) + len(self._built)

    def add(self, out: ChargeColumns) -> None:
        """Remember the marks of one batch's fresh usage lines."""
        lines = np.isin(out.result, _LINE_CODES)
        if out.reference:
            lines[list(out.reference)] = False
        positions = np.flatnonzero(lines).tolist()
        ids = out.batch.record_ids
        self._where.update({ids[i]: (out, i) for i in positions})
        for i, row in out.reference.items():
            for charge in (*out.extras.get(i, ()), row):
                found = charge.to_mark() if charge.rated is not None else None
                if found is not None:
                    self._built[found[0]] = found[1]

    def get(self, key: str, /) -> Mark[Any] | None:
        built = self._built.get(key)
        if built is not None:
            return built
        where = self._where.get(key)
        if where is None:
            return None
        out, i = where
        found = out.row(i).to_mark()
        return None if found is None else found[1]

    def get_many(self, keys: Sequence[str]) -> list[Mark[Any] | None]:
        where, built = self._where, self._built
        found = list(map(where.__contains__, keys))
        if built:
            found = [f or k in built for f, k in zip(found, keys, strict=True)]
        if not any(found):
            return [None] * len(keys)  # the common case: fresh ids
        return [self.get(k) if f else None for f, k in zip(found, keys, strict=True)]
