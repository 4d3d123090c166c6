"""The usage history of an account: its last charge rows, appended without copying.

``AccountState.history`` keeps the last ``history_max`` usage lines (up to
twice as many before it is trimmed). Charging appends to it on every record,
and every charging batch works on a new state of the account, so copying the
history into each new state made charging cost grow with the history's
length (each copy touches every old row, twice more when the cyclic GC
traverses the copy).

:class:`UsageHistory` is an immutable view of the first ``len`` rows of a list
that successive states share. :func:`appended` gives the successor's view:
when nobody has appended to the list beyond this view yet, the row goes on
the shared list in place (the old view still shows exactly its rows);
otherwise, say when a batch's effects were dropped and the old state is
charged again, the successor branches off with a copy of its prefix. A view
never changes what it shows, so the handed-in states of an operation are
never changed either (``billing.accounts``, "Purity"). Like ``AccountState``
itself, successive states of one account are not derived from two threads
at once (a shard serialises its calls).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from billing.charging.rows import Charge

__all__ = ["UsageHistory", "appended"]


class UsageHistory(Sequence["Charge"]):
    """The first ``len(self)`` rows of a list shared with later views (module docstring)."""

    __slots__ = ("_len", "_rows")

    def __init__(self, rows: list[Charge], length: int) -> None:
        self._rows = rows
        self._len = length

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Charge: ...

    @overload
    def __getitem__(self, index: slice) -> list[Charge]: ...

    def __getitem__(self, index: int | slice) -> Charge | list[Charge]:
        if isinstance(index, slice):
            return self._rows[: self._len][index]
        length = self._len
        position = index + length if index < 0 else index
        if not 0 <= position < length:
            raise IndexError("usage history index out of range")
        return self._rows[position]

    def __iter__(self) -> Iterator[Charge]:
        return islice(self._rows, self._len)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UsageHistory({list(self)!r})"


def appended(history: Sequence[Charge], row: Charge, history_max: int) -> UsageHistory:
    """``history`` with ``row`` added, trimmed to the last ``history_max`` rows once it
    holds more than twice that; ``history`` itself shows the same rows as before."""
    if type(history) is UsageHistory:
        rows, length = history._rows, history._len
        if len(rows) != length:
            rows = rows[:length]  # a successor of this view exists already: branch off
    else:
        rows = list(history)
        length = len(rows)
    rows.append(row)
    length += 1
    if length > 2 * history_max:
        rows = rows[-history_max:]
        length = len(rows)
    return UsageHistory(rows, length)
