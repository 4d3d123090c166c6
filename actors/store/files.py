"""Writing a small file, or swapping a whole folder in, so that a crash leaves the old
content or the new, never half."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_folder", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably: a temp file beside it, fsync, rename over
    it, then fsync of the folder so the rename itself survives a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_folder(path: Path, staging: Path, *, trash: Path, tag: str) -> None:
    """Make the folder ``staging`` (its files written, not yet synced) the folder ``path``:
    its files synced, the old ``path`` moved into ``trash`` (as ``<name>.<tag>``) and
    deleted, ``staging`` renamed to ``path``, and the rename synced."""
    for name in os.listdir(staging):
        fd = os.open(staging / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.exists():
        trash.mkdir(parents=True, exist_ok=True)
        gone = trash / f"{path.name}.{tag}"
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(path, gone)
        shutil.rmtree(gone, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, path)
    _fsync_folder(path.parent)
