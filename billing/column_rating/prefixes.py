"""Longest-prefix match over a column of numbers, with array operations only.

The scalar table (``billing.tariffs.prefixes.PrefixTable``) probes a dict once
per prefix length. Here every number becomes a point on one line: its first
15 digits, right-padded with zeros, as an int (``4930123`` is
``493012300000000``). A prefix ``p`` of ``L`` digits covers the half-open range
of points that start with it, and the ranges of a prefix table nest like a
trie. Cutting the line where a range starts or ends gives elementary
intervals, each with the longest prefix covering it; one ``searchsorted``
then finds the longest prefix of every point.

Two refinements:

* the padding is not the number: ``49`` padded is also ``490...``, inside the
  range of a prefix ``490`` it does not start with. A match longer than the
  number is therefore replaced by its parent (the next shorter prefix in the
  table) until it fits, which is what the scalar probe finds too;
* ``searchsorted`` costs ~45 ns a row. A dense table over the first ``head``
  digits answers most rows with one gather; only a head with a boundary inside
  it (a prefix longer than ``head`` digits starts there) is searched.

Numbers that are not ASCII digits are not points; :meth:`PrefixIndex.lookup`
flags them for the scalar path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from billing.tariffs.prefixes import E164_DIGITS_MAX

__all__ = ["NOT_DIGITS", "NO_NUMBER", "PrefixIndex"]

NO_NUMBER: Final = -2
"""Lookup answer for a null or empty number (the scalar's "without called number")."""
NOT_DIGITS: Final = -3
"""Lookup answer for a number with a character that is not an ASCII digit: rate it scalar."""

_WIDTH: Final = E164_DIGITS_MAX
_POW10: Final = np.array([10**k for k in range(_WIDTH + 1)], np.int64)
_HEAD_DIGITS_MAX: Final = 6  # a dense table of 10**6 int32: 4 MB
_AMBIGUOUS: Final = -2


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PrefixIndex:
    """The prefix table as elementary intervals, plus a dense table of the first digits.

    Prefix positions ``i`` index ``length``, ``parent`` and ``destination``;
    ``answers[j]`` is the longest prefix covering ``[bounds[j], bounds[j+1])``
    (``-1``: none), and ``heads[h]`` the same for every point whose first
    ``head_digits`` digits are ``h``, or ``-2`` when that varies inside ``h``.
    """

    length: NDArray[np.int64]
    parent: NDArray[np.int32]
    destination: NDArray[np.int32]
    bounds: NDArray[np.int64]
    answers: NDArray[np.int32]
    head_digits: int
    heads: NDArray[np.int32]

    @classmethod
    def build(cls, table: Mapping[str, int]) -> PrefixIndex:
        """Index ``table`` (prefix digits to destination index), as the scalar table holds it."""
        # Sorted by where the range starts, shorter first: an enclosing prefix
        # comes before the ones nested in it.
        ordered = sorted(table, key=lambda p: (int(p) * 10 ** (_WIDTH - len(p)), len(p)))
        lows = [int(p) * 10 ** (_WIDTH - len(p)) for p in ordered]
        highs = [(int(p) + 1) * 10 ** (_WIDTH - len(p)) for p in ordered]
        parent = [-1] * len(ordered)
        bounds: list[int] = [0]
        answers: list[int] = [-1]

        def cut(at: int, answer: int) -> None:
            if bounds[-1] == at:
                answers[-1] = answer
            else:
                bounds.append(at)
                answers.append(answer)

        open_ranges: list[int] = []  # positions whose range has not ended, innermost last
        for i, low in enumerate(lows):
            while open_ranges and highs[open_ranges[-1]] <= low:
                ended = open_ranges.pop()
                cut(highs[ended], open_ranges[-1] if open_ranges else -1)
            parent[i] = open_ranges[-1] if open_ranges else -1
            cut(low, i)
            open_ranges.append(i)
        while open_ranges:
            ended = open_ranges.pop()
            cut(highs[ended], open_ranges[-1] if open_ranges else -1)
        bounds_array = np.array(bounds, np.int64)
        answers_array = np.array(answers, np.int32)
        # About a hundred heads per prefix keeps the table small for small
        # catalogues and lets most rows skip the search in large ones.
        head_digits = min(_HEAD_DIGITS_MAX, max(1, math.ceil(math.log10(len(table) + 1)) + 2))
        span = 10 ** (_WIDTH - head_digits)
        firsts = np.arange(10**head_digits, dtype=np.int64) * span
        at_first = np.searchsorted(bounds_array, firsts, side="right") - 1
        at_last = np.searchsorted(bounds_array, firsts + (span - 1), side="right") - 1
        heads = np.where(at_first == at_last, answers_array[at_first], _AMBIGUOUS).astype(np.int32)
        return cls(
            length=np.array([len(p) for p in ordered], np.int64),
            parent=np.array(parent, np.int32),
            destination=np.array([table[p] for p in ordered], np.int32),
            bounds=bounds_array,
            answers=answers_array,
            head_digits=head_digits,
            heads=heads,
        )

    def lookup(self, numbers: pa.Array) -> NDArray[np.int32]:
        """The destination index of each number's longest prefix.

        ``-1`` where no prefix matches, :data:`NO_NUMBER` for a null or empty
        number, :data:`NOT_DIGITS` for one that is not all ASCII digits.
        """
        sizes, bad = _sizes_and_bad_rows(numbers)
        out = np.where(sizes == 0, NO_NUMBER, -1).astype(np.int32)
        out[bad] = NOT_DIGITS
        usable = sizes > 0
        usable[bad] = False
        if not usable.any() or len(self.destination) == 0:
            return out
        # Nulls stay null through the cast; empty strings and non-digits would
        # fail it, so they become "0" (their answer is already set).
        keep = usable | ~_valid(numbers)
        clean = numbers if keep.all() else pc.if_else(pa.array(keep), numbers, "0")
        if int(sizes.max()) > _WIDTH:
            clean = pc.utf8_slice_codeunits(clean, 0, _WIDTH)
        parsed = pc.cast(clean, pa.int64())
        value = (pc.fill_null(parsed, 0) if parsed.null_count else parsed).to_numpy()
        size = np.minimum(sizes, _WIDTH)
        point = value * _POW10[_WIDTH - size]
        found = self.heads[point // 10 ** (_WIDTH - self.head_digits)]
        search = np.flatnonzero(found == _AMBIGUOUS)
        if len(search):
            at = np.searchsorted(self.bounds, point[search], side="right") - 1
            found[search] = self.answers[at]
        # A match longer than the number came from the padding: step to shorter prefixes.
        too_long = np.flatnonzero((found >= 0) & (self.length[found] > size))
        while len(too_long):
            found[too_long] = self.parent[found[too_long]]
            keep = found[too_long] >= 0
            too_long = too_long[keep]
            too_long = too_long[self.length[found[too_long]] > size[too_long]]
        return np.where(usable & (found >= 0), self.destination[found], out).astype(np.int32)


def _valid(numbers: pa.Array) -> NDArray[np.bool_]:
    if numbers.null_count == 0:
        return np.ones(len(numbers), np.bool_)
    valid: NDArray[np.bool_] = numbers.is_valid().to_numpy(zero_copy_only=False)
    return valid


def _sizes_and_bad_rows(numbers: pa.Array) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """Each number's length (0 when null) and the rows holding a byte that is not a digit.

    Read from the Arrow buffers: lengths are differences of the offsets, and
    one pass over the character bytes finds the non-digits, whose rows are
    then found by bisecting the offsets (they are rare; readers normalise).
    """
    count = len(numbers)
    # A slice of a larger array starts part-way into its offsets (np.frombuffer counts bytes).
    offsets = np.frombuffer(numbers.buffers()[1], np.int32, count + 1, 4 * numbers.offset)
    sizes = np.diff(offsets).astype(np.int64)
    if numbers.null_count:
        # A null slot may still span bytes; it has no number.
        sizes[~_valid(numbers)] = 0
    data = numbers.buffers()[2]
    if data is None or count == 0:
        return sizes, np.zeros(0, np.intp)
    chars = np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]]
    wrong = np.flatnonzero((chars - np.uint8(48)) > 9)
    if len(wrong) == 0:
        return sizes, np.zeros(0, np.intp)
    rows = np.unique(np.searchsorted(offsets, wrong + offsets[0], side="right") - 1)
    return sizes, rows[sizes[rows] > 0].astype(np.intp)
