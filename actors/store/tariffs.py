"""The tariff catalogue in force for a data dir: loaded copies and a pointer to one.

``LoadTariffs`` copies a validated catalogue folder to
``<data_dir>/tariffs/<name>/`` and then points ``<data_dir>/tariffs/CURRENT`` at
it (a small file replaced atomically). Whoever opens units later — a host
started for a takeover, a new node, a restart — rates and charges with
:func:`current_tariffs_dir`, so a loaded catalogue outlives the processes that
loaded it. A data dir without ``CURRENT`` uses the configured ``tariffs_dir``.

A copy is never changed once it is in place (a new load is a new name), so a
reader never sees a half-copied catalogue: the copy is made under a temporary
name and renamed, and only then does ``CURRENT`` move.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from pathlib import Path
from typing import Final

from actors.store.files import write_atomic

__all__ = ["NAME", "TariffsExist", "current_tariffs_dir", "persist_tariffs", "set_current"]

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a loaded catalogue may be named (it is a folder name)."""

_FOLDER: Final = "tariffs"
_CURRENT: Final = "CURRENT"


class TariffsExist(FileExistsError):
    """Raised by :func:`persist_tariffs` when ``name`` holds a different catalogue."""


def _root(data_dir: Path | str) -> Path:
    return Path(data_dir) / _FOLDER


def current_tariffs_dir(data_dir: Path | str, default: Path | str) -> str:
    """The catalogue folder in force for ``data_dir``: the last one loaded, else ``default``."""
    pointer = _root(data_dir) / _CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return str(default)
    return str(_root(data_dir) / name)


def _same_tree(left: Path, right: Path) -> bool:
    compared = filecmp.dircmp(left, right)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(left / d, right / d) for d in compared.common_dirs)


def persist_tariffs(source: Path | str, data_dir: Path | str, name: str) -> Path:
    """Copy the catalogue folder ``source`` to ``<data_dir>/tariffs/<name>`` (atomically)
    and return it; idempotent when the same files are already there under ``name``.

    Raises :class:`TariffsExist` when ``name`` holds other files, ``ValueError`` for a
    bad name.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"not a catalogue name (letters, digits, '._-'): {name!r}")
    target = _root(data_dir) / name
    if target.exists():
        if _same_tree(Path(source), target):
            return target
        raise TariffsExist(f"{target}: another catalogue was loaded under the name {name!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    staging.rename(target)
    return target


def set_current(data_dir: Path | str, name: str) -> None:
    """Make ``<data_dir>/tariffs/<name>`` the catalogue in force (one atomic rename)."""
    root = _root(data_dir)
    invalid = not NAME.fullmatch(name) or not (root / name).is_dir()
    if invalid:
        raise ValueError(f"no loaded catalogue named {name!r} in {root}")
    write_atomic(root / _CURRENT, (name + "\n").encode())
