"""Fencing mechanics of a shard directory: RocksDB's LOCK, the EPOCH file, the OWNER record.

See :mod:`actors.store.storage` for how they combine, and docs/operations-notes.md
for the measurements (a second read-write open fails at once; a SIGSTOPped
holder keeps the lock; SIGKILL releases it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from actors.store.codec import decode_u64
from actors.store.files import write_atomic
from billing.invariant import invariant

__all__ = [
    "EPOCH_FILE",
    "OWNER_FILE",
    "FenceLock",
    "OwnerRecord",
    "StaleEpoch",
    "StorageError",
    "StoreClosed",
    "StoreLocked",
    "fence_holder",
    "held_paths",
    "lock_holder_pid",
    "process_start_ticks",
    "read_fence_epoch",
    "read_owner",
    "write_atomic",
]

EPOCH_FILE: Final = "EPOCH"
OWNER_FILE: Final = "OWNER"
FENCE_LOCK_FILE: Final = "FENCE.lock"
_FLOCK: Final = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid.

# Paths this process has open read-write. Closing *any* descriptor of a file
# drops all of this process's fcntl locks on it, so we must never probe the
# LOCK file of a database we hold ourselves.
_HELD: set[Path] = set()


def held_paths() -> set[Path]:
    """The (mutable) set of database paths this process holds read-write."""
    return _HELD


class StorageError(Exception):
    """Base class of the storage layer's exceptions."""


class StaleEpoch(StorageError):
    """Raised when the writer's epoch is not the shard's current one: on open, when
    the stored epoch is already >= the requested one; on commit, when the shard
    has been taken over since the store was opened. The store is closed; the
    caller has lost ownership and must stop serving the shard."""

    def __init__(self, path: Path, *, mine: int, stored: int) -> None:
        super().__init__(f"{path}: epoch {mine} is stale, shard epoch is {stored}")
        self.path, self.mine, self.stored = path, mine, stored

    def __reduce__(self) -> tuple[Any, tuple[Path, int, int]]:
        # Crosses process boundaries inside Ray's task errors: rebuild from fields.
        return (_stale_epoch, (self.path, self.mine, self.stored))


def _stale_epoch(path: Path, mine: int, stored: int) -> StaleEpoch:
    return StaleEpoch(path, mine=mine, stored=stored)


class StoreLocked(StorageError):
    """Raised when another live process holds the database's LOCK and was not
    fenced: it is not the recorded owner, or fencing was not asked for, or it
    did not release the lock within the timeout."""

    def __init__(self, path: Path, holder_pid: int | None, reason: str) -> None:
        super().__init__(f"{path}: locked by pid {holder_pid}: {reason}")
        self.path, self.holder_pid = path, holder_pid


class StoreClosed(StorageError):
    """Raised on any use of a store after :meth:`ShardStore.close` or a refused commit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerRecord:
    """Who opened the shard as owner; lets a takeover kill exactly that process."""

    epoch: int
    pid: int
    start_ticks: int
    host: str
    boot_id: str

    @staticmethod
    def of_this_process(epoch: int) -> OwnerRecord:
        pid = os.getpid()
        return OwnerRecord(
            epoch=epoch,
            pid=pid,
            start_ticks=process_start_ticks(pid) or 0,
            host=socket.gethostname(),
            boot_id=_boot_id(),
        )

    def is_alive_here(self) -> bool:
        """True if this record's process is running on this host right now."""
        if self.host != socket.gethostname() or self.boot_id != _boot_id():
            return False
        return process_start_ticks(self.pid) == self.start_ticks


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22).

    With the boot id this names a process uniquely, unlike a PID, which the
    kernel recycles. None if there is no such process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; split after it.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_fence_epoch(path: Path | str) -> int:
    """The epoch in ``<path>/EPOCH``, 0 if the shard was never owned."""
    # os-level calls, not Path.read_bytes: every commit reads it, and each system call
    # gives up the GIL, which a busy host takes back only after a switch interval.
    try:
        fd = os.open(os.path.join(path, EPOCH_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return decode_u64(os.read(fd, 64))
    finally:
        os.close(fd)


def lock_holder_pid(path: Path | str) -> int | None:
    """PID holding ``<path>/LOCK`` (RocksDB's lock), or None if it is free.

    Must not be called on a database this process has open (see ``_HELD``).
    """
    path = Path(path).resolve()
    invariant(path not in _HELD, f"{path}: probing our own LOCK would release it")
    try:
        fd = os.open(path / "LOCK", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def read_owner(path: Path) -> OwnerRecord | None:
    try:
        return OwnerRecord(**json.loads((path / OWNER_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def fence_holder(path: Path, *, kill: bool, timeout_s: float) -> None:
    """Make sure no other process holds the LOCK, killing the recorded owner if allowed."""
    holder = lock_holder_pid(path)
    if holder is None:
        return
    owner = read_owner(path)
    if not kill:
        raise StoreLocked(path, holder, "fencing not requested")
    if owner is None or owner.pid != holder or not owner.is_alive_here():
        raise StoreLocked(path, holder, "holder is not the recorded owner; not killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while lock_holder_pid(path) is not None:
        if time.monotonic() > deadline:
            raise StoreLocked(path, holder, f"still held {timeout_s}s after SIGKILL")
        time.sleep(0.01)


class FenceLock:
    """Short exclusive ``flock`` serialising epoch bumps of one shard (not fcntl:
    flock locks are per open file, so closing it cannot drop RocksDB's lock)."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self._path, self._timeout_s, self._fd = path / FENCE_LOCK_FILE, timeout_s, -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    raise StoreLocked(self._path.parent, None, "fence lock busy") from None
                time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
