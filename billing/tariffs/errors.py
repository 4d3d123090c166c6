"""The one exception the tariff catalogue raises, and where-in-the-files bookkeeping.

A catalogue either loads completely or not at all: every problem found while
reading ``conf/tariffs/`` becomes a :class:`TariffError` whose message starts
with the file and the key path, so an operator can go straight to the line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Loc", "TariffError"]


class TariffError(ValueError):
    """Raised by ``load_catalogue`` when a tariff file is missing, unreadable or invalid.

    The message reads ``<file>: <key path>: <what is wrong>``, for example
    ``conf/tariffs/plans.toml: plans.smart.versions[1].valid_from: overlaps
    version 0 (2026-01-01..2026-12-31)``. It is never raised while rating: a
    loaded catalogue prices every record or returns a ``RatingFailure``.
    """

    def __init__(self, file: str, key: str, what: str) -> None:
        super().__init__(f"{file}: {key}: {what}" if key else f"{file}: {what}")
        self.file = file
        self.key = key
        self.what = what


def _part(name: str) -> str:
    # Keys that are not bare TOML keys are quoted so the path can be pasted back.
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    return name if bare else f'"{name}"'


@dataclass(frozen=True, slots=True)
class Loc:
    """A position in the catalogue: a file and a dotted TOML key path in it."""

    file: str
    path: str = ""

    def key(self, name: str) -> Loc:
        """The location of ``name`` inside this table."""
        return Loc(self.file, f"{self.path}.{_part(name)}" if self.path else _part(name))

    def index(self, position: int) -> Loc:
        """The location of element ``position`` of this array."""
        return Loc(self.file, f"{self.path}[{position}]")

    def error(self, what: str) -> TariffError:
        return TariffError(self.file, self.path, what)
