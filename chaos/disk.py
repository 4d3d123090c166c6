"""A full disk under one unit's data folder: a small tmpfs, filled and freed on demand.

The tmpfs is mounted on the unit's folder before the cluster starts (so the
unit's database lives on it from the first write), filled with a filler file
until the kernel says ``ENOSPC``, and freed by deleting the filler. Mounting
needs root (``CAP_SYS_ADMIN``); :func:`can_mount` says whether this machine
allows it, and the scenarios skip the fault, saying so, where it does not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["DiskError", "TmpfsDisk", "can_mount"]

_CHUNK: Final = 1 << 20


class DiskError(RuntimeError):
    """The tmpfs could not be mounted or unmounted."""


def _mount(path: Path, size_mb: int) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DiskError(f"mount tmpfs on {path}: {done.stderr.strip() or done.returncode}")


def _unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DiskError(f"umount {path}: {done.stderr.strip() or done.returncode}")


def can_mount() -> str | None:
    """None when a tmpfs can be mounted here; otherwise why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = Path(tempfile.mkdtemp(prefix="pbdisk"))
    try:
        _mount(probe, 1)
        _unmount(probe)
    except (DiskError, OSError) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return None


class TmpfsDisk:
    """A tmpfs of ``size_mb`` on ``path`` (created empty); a context manager."""

    def __init__(self, path: Path, size_mb: int = 64) -> None:
        self.path = path
        self.size_mb = size_mb
        self.filler = path / "FILLER"
        self.mounted = False

    def __enter__(self) -> TmpfsDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if any(self.path.iterdir()):
            raise DiskError(f"{self.path} is not empty: a tmpfs would hide its data")
        _mount(self.path, self.size_mb)
        self.mounted = True
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.mounted:
            _unmount(self.path)
            self.mounted = False

    def fill(self) -> int:
        """Write the filler until the disk is full; the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * _CHUNK
        try:
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return written
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize
