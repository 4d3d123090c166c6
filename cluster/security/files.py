"""Writing a small secret-bearing file so that a reader sees the old or the new one, never half.

Tokens files and private keys are written here: into a temporary file beside
the target (created 0600, so the secret is never readable by others, not even
for a moment), synced, renamed over the target, and the folder synced so the
rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["folder_lock", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file ends with ``mode``.

    Raises ``OSError`` when the folder is missing or not writable; the target
    is then untouched and no temporary file is left behind.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that names created or renamed in it are durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` while read-modify-writing a file in it.

    Two ``petribill token create`` runs at once would otherwise both read the
    file and the second rename would drop the first's token. The folder, not
    the file, is locked because the file is replaced (a lock on its old inode
    would not exclude a writer that opens the new one); locking the folder
    also leaves no lock file behind.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
