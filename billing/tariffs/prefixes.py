"""Destinations by longest prefix of an E.164 number (digits, no ``+``).

The table is one ``dict`` from prefix string to destination index. A lookup
probes the number's own prefixes from the longest possible length down, so it
costs at most ``max_len`` dict probes whatever the table size; tens of
thousands of prefixes load as fast as ``csv`` can read them.

Prefix files are CSV with the header ``prefix,destination,group`` (an optional
fourth column ``name``); lines starting with ``#`` and blank lines are skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from billing.tariffs.errors import TariffError

__all__ = ["E164_DIGITS_MAX", "PrefixRow", "PrefixTable", "read_prefix_csv"]

E164_DIGITS_MAX: Final = 15
_HEADER: Final = ("prefix", "destination", "group")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixRow:
    """One line of a prefix CSV, kept with its position for error messages."""

    prefix: str
    destination: str
    group: str
    name: str
    line: int


def valid_prefix(prefix: str) -> bool:
    """ASCII digits only, 1..15 of them: E.164 without the ``+``."""
    return 0 < len(prefix) <= E164_DIGITS_MAX and prefix.isascii() and prefix.isdigit()


def read_prefix_csv(path: Path, shown: str) -> list[PrefixRow]:
    """Read a prefix CSV; ``shown`` is the file name used in error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TariffError(shown, "", f"cannot read prefix file: {exc.strerror}") from None
    rows: list[PrefixRow] = []
    header_seen = False
    for line_no, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in fields]
        if not header_seen:
            if tuple(cells[:3]) != _HEADER or len(cells) > 4:
                raise TariffError(
                    shown, f"line {line_no}", "header must be prefix,destination,group[,name]"
                )
            header_seen = True
            continue
        if len(cells) not in (3, 4):
            raise TariffError(
                shown, f"line {line_no}", f"expected 3 or 4 columns, got {len(cells)}"
            )
        prefix, destination, group = cells[:3]
        if not valid_prefix(prefix):
            raise TariffError(shown, f"line {line_no}", f"prefix {prefix!r} is not 1..15 digits")
        if not destination or not group:
            raise TariffError(shown, f"line {line_no}", "destination and group must not be empty")
        name = cells[3] if len(cells) == 4 else destination
        rows.append(
            PrefixRow(prefix=prefix, destination=destination, group=group, name=name, line=line_no)
        )
    if not header_seen:
        raise TariffError(shown, "", "empty prefix file (no header prefix,destination,group)")
    return rows


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PrefixTable:
    """Longest-prefix match from digits to a destination index.

    ``lengths`` lists the prefix lengths that occur, longest first, so a lookup
    never probes a length no prefix has.
    """

    table: Mapping[str, int]
    lengths: tuple[int, ...]

    @classmethod
    def build(cls, table: Mapping[str, int]) -> PrefixTable:
        lengths = tuple(sorted({len(prefix) for prefix in table}, reverse=True))
        return cls(table=dict(table), lengths=lengths)

    @property
    def max_len(self) -> int:
        return self.lengths[0] if self.lengths else 0

    def lookup(self, number: str) -> int | None:
        """The destination index of the longest prefix of ``number``, or ``None``."""
        get = self.table.get
        size = len(number)
        for length in self.lengths:
            if length <= size:
                found = get(number[:length])
                if found is not None:
                    return found
        return None

    def __len__(self) -> int:
        return len(self.table)
