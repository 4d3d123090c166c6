"""Reading the catalogue folder: every ``*.toml`` file, merged section by section.

An operator may split the catalogue over files as they like (one for rates,
one for plans...). Each entry remembers the file it came from so that later
validation errors name the right file, and an id defined in two files is an
error naming both.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from billing.tariffs.errors import Loc, TariffError
from billing.tariffs.fields import Table, as_table

__all__ = ["ENTRY_SECTIONS", "SECTIONS", "Entry", "Sections", "read_folder"]

ENTRY_SECTIONS: Final = (
    "timebands",
    "destinations",
    "rates",
    "providers",
    "content",
    "plans",
    "sponsors",
)
SECTIONS: Final = ("catalogue", "prefix_files", *ENTRY_SECTIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One ``[section.<id>]`` table and where it was written."""

    entry_id: str
    table: Table
    loc: Loc


@dataclass(slots=True, kw_only=True)
class Sections:
    """The merged contents of the folder, before validation of the entries."""

    catalogue: Entry | None = None
    prefix_files: list[tuple[Path, str, Loc]] = field(default_factory=list)
    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {name: {} for name in ENTRY_SECTIONS}
    )

    def of(self, section: str) -> list[Entry]:
        return list(self.entries[section].values())


def _parse(path: Path, shown: str) -> Table:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TariffError(shown, "", f"cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TariffError(shown, "", f"not valid TOML: {exc}") from None


def read_folder(folder: Path) -> Sections:
    """Parse and merge every ``*.toml`` in ``folder`` (sorted by name, not recursive)."""
    if not folder.is_dir():
        raise TariffError(str(folder), "", "tariff catalogue folder does not exist")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise TariffError(str(folder), "", "no *.toml files in the tariff catalogue folder")
    merged = Sections()
    for path in files:
        shown = str(path)
        top = Loc(shown)
        for section, value in _parse(path, shown).items():
            loc = top.key(section)
            if section not in SECTIONS:
                raise loc.error(f"unknown section (expected one of: {', '.join(SECTIONS)})")
            if section == "catalogue":
                if merged.catalogue is not None:
                    raise loc.error(f"defined twice (also in {merged.catalogue.loc.file})")
                merged.catalogue = Entry(entry_id="catalogue", table=as_table(value, loc), loc=loc)
            elif section == "prefix_files":
                if not isinstance(value, list):
                    raise loc.error("expected an array of CSV file names")
                for position, name in enumerate(value):
                    if not isinstance(name, str) or not name:
                        raise loc.index(position).error(f"expected a file name, got {name!r}")
                    # Relative names are relative to the TOML file that lists them.
                    merged.prefix_files.append(
                        (path.parent / name, str(path.parent / name), loc.index(position))
                    )
            else:
                known = merged.entries[section]
                for entry_id, entry in as_table(value, loc).items():
                    entry_loc = loc.key(entry_id)
                    if entry_id in known:
                        raise entry_loc.error(f"defined twice (also in {known[entry_id].loc.file})")
                    known[entry_id] = Entry(
                        entry_id=entry_id, table=as_table(entry, entry_loc), loc=entry_loc
                    )
    if merged.catalogue is None:
        raise TariffError(
            str(folder), "catalogue", "missing: one file must have a [catalogue] table"
        )
    return merged
