"""Interned codes and exact integer group-bys: the two tools of columnar charging.

:class:`Codes` turns the strings charging compares (cycle ids, usage classes,
bundle ids, currencies, account ids) into dense ``int`` codes in first-seen
order, so a batch is compared and grouped as integer arrays; the names come
back for output only.

:class:`Groups` is a group-by over integer keys that stays exact for money:
``np.bincount`` with weights sums in ``float64`` and loses micro-units beyond
2**53, so sums here are ``np.add.reduceat`` over a stable sort, which keeps
int64 and, being stable, keeps the records of a group in batch order (the
running sums of :meth:`Groups.cumsum` follow the order the reference charges
in).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["I64", "Codes", "Groups", "Ints"]

K = TypeVar("K", bound=Hashable)
Ints = npt.NDArray[np.int64]
I64 = np.int64


class Codes(Generic[K]):
    """Values interned to dense codes ``0, 1, 2...`` in first-seen order."""

    __slots__ = ("index", "names")

    def __init__(self, names: Iterable[K] = ()) -> None:
        self.names: list[K] = []
        self.index: dict[K, int] = {}
        for name in names:
            self.code(name)

    def __len__(self) -> int:
        return len(self.names)

    def code(self, name: K) -> int:
        """The code of ``name``, interned if new."""
        found = self.index.get(name)
        if found is None:
            found = self.index[name] = len(self.names)
            self.names.append(name)
        return found

    def codes(self, names: Sequence[K]) -> Ints:
        """The codes of ``names`` as an int64 array, interning the new ones."""
        index = self.index
        try:
            return np.fromiter(map(index.__getitem__, names), I64, count=len(names))
        except KeyError:
            return np.fromiter(map(self.code, names), I64, count=len(names))

    def find(self, names: Sequence[K], missing: int = -1) -> Ints:
        """The codes of ``names``, ``missing`` for a name not interned (nothing is added)."""
        get = self.index.get
        return np.fromiter((get(n, missing) for n in names), I64, count=len(names))


class Groups:
    """A group-by of ``keys`` (one int per record): stable order, group starts and ids.

    ``group[i]`` is record ``i``'s group (``0..count-1``, in key order);
    ``keys_of`` the key of each group.
    """

    __slots__ = ("count", "group", "keys_of", "order", "starts")

    def __init__(self, keys: Ints) -> None:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        n = len(keys)
        if n:
            edge = np.empty(n, dtype=bool)
            edge[0] = True
            np.not_equal(ordered[1:], ordered[:-1], out=edge[1:])
            starts = np.flatnonzero(edge)
        else:
            starts = np.zeros(0, dtype=I64)
        group_sorted = np.cumsum(edge) - 1 if n else np.zeros(0, dtype=I64)
        group = np.empty(n, dtype=I64)
        group[order] = group_sorted
        self.order = order
        self.starts = starts
        self.group = group
        self.count = len(starts)
        self.keys_of: Ints = ordered[starts] if n else np.zeros(0, dtype=I64)

    def sum(self, values: Ints) -> Ints:
        """Per group: the exact int64 sum of ``values``."""
        if not self.count:
            return np.zeros(0, dtype=I64)
        return np.add.reduceat(values[self.order].astype(I64, copy=False), self.starts)

    def any(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Per group: whether ``mask`` holds for any of its records."""
        if not self.count:
            return np.zeros(0, dtype=bool)
        return np.logical_or.reduceat(mask[self.order], self.starts)

    def cumsum(self, values: Ints) -> Ints:
        """Per record: the sum of ``values`` over its group up to and including itself,
        in record order."""
        n = len(values)
        if not n:
            return np.zeros(0, dtype=I64)
        ordered = values[self.order].astype(I64, copy=False)
        running = np.cumsum(ordered)
        before = running[self.starts] - ordered[self.starts]  # the total before each group
        sizes = np.diff(np.append(self.starts, n))
        running -= np.repeat(before, sizes)
        out = np.empty(n, dtype=I64)
        out[self.order] = running
        return out

    def spread(self, per_group: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Per record: its group's value of ``per_group``."""
        return per_group[self.group]
