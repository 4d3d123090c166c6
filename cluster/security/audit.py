"""The audit log: who moved money or ran an operator action, and how it ended.

One JSON line per audited call, rendered here into a file of its own (not the
process log, whose level, format and processors an operator may change; nor
through structlog's processor chain, which cost more than the line's write on
the online-charging path)::

    {"rpc": "Pay", "outcome": "OK", "token_id": "3f9c0a1b2c4d", "role": "billing",
     "account_id": "a-1001", "request_id": "pay-7", "detail": null, "event": "audit",
     "ts": "2026-05-01T09:00:00.123456Z", "process": "node1:4242"}

The token id names the token; the token itself is never in the log (the
writer is handed a :class:`~.auth.Principal`, which has no secret). Each
process writes its own files in the audit folder — no two writers share a
file — named ``audit-<host>-<pid>-<start>-<n>.jsonl`` and rolled over to the
next ``n`` beyond ``file_bytes_max``; nothing is deleted here (retention is
the operator's). Each line is one ``write`` on an append-only descriptor, so
a crash of the process loses no line it returned from; a crash of the
machine may lose the last ones not yet flushed by the kernel (call
:meth:`AuditLog.sync` where that matters). :func:`read_events` lists the
events of every file, for ``petribill audit``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
import structlog

from cluster.security.auth import Principal

__all__ = ["FILE_BYTES_MAX_DEFAULT", "AuditEvent", "AuditLog", "read_events"]

log = structlog.get_logger("petribill.security")

FILE_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
_PATTERN: Final = "audit-*.jsonl"
_NAME_TRIES_MAX: Final = 10_000
_FIELDS: Final = ("rpc", "outcome", "token_id", "role", "account_id", "request_id", "detail")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One audited call, as :func:`read_events` returns it."""

    ts: datetime
    rpc: str
    outcome: str  # the gRPC status name: OK, PERMISSION_DENIED, FAILED_PRECONDITION...
    token_id: str | None = None  # None: the call was not authenticated
    role: str | None = None
    account_id: str | None = None
    request_id: str | None = None
    detail: str | None = None
    process: str = ""  # host:pid of the writer

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": _ts_text(self.ts),
            "rpc": self.rpc,
            "outcome": self.outcome,
            "token_id": self.token_id,
            "role": self.role,
            "account_id": self.account_id,
            "request_id": self.request_id,
            "detail": self.detail,
            "process": self.process,
        }


def _ts_text(when: datetime) -> str:
    # isoformat, not strftime: the same text ("%Y-%m-%dT%H:%M:%S.%fZ"), in half the time.
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class AuditLog:
    """This process's audit writer into ``folder`` (created if missing). Thread-safe."""

    def __init__(
        self,
        folder: Path,
        *,
        file_bytes_max: int = FILE_BYTES_MAX_DEFAULT,
        clock: Callable[[], float] = time.time,
        process: str | None = None,
    ) -> None:
        if file_bytes_max <= 0:
            raise ValueError("file_bytes_max must be > 0")
        self.folder = folder
        self.file_bytes_max = file_bytes_max
        self._clock = clock
        self.process = process or f"{socket.gethostname()}:{os.getpid()}"
        started = datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        # The start time tells apart two processes that got the same pid (pid 1 in containers).
        host = self.process.replace(":", "-").replace("/", "_")
        self._stem = f"audit-{host}-{started}"
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._sequence = 0
        self._bytes = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._open_next()

    @property
    def path(self) -> Path:
        """The file being written now."""
        return self.folder / f"{self._stem}-{self._sequence:04d}.jsonl"

    def record(
        self,
        *,
        rpc: str,
        outcome: grpc.StatusCode | str,
        principal: Principal | None,
        account_id: str | None = None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one event: ``rpc`` ended with ``outcome`` for ``principal`` (None: the
        call was refused before anyone was authenticated)."""
        # Nothing filters an audit event (not the process's log level): every call writes.
        # The keys in the order the lines have always had (structlog's: the fields, then
        # the event name, then the stamp), so a line is byte for byte what it was.
        event = {
            "rpc": rpc,
            "outcome": outcome.name if isinstance(outcome, grpc.StatusCode) else outcome,
            "token_id": principal.token_id if principal is not None else None,
            "role": principal.role.value if principal is not None else None,
            "account_id": account_id,
            "request_id": request_id,
            "detail": detail,
            "event": "audit",
            "ts": _ts_text(datetime.fromtimestamp(self._clock(), UTC)),
            "process": self.process,
        }
        self._append(json.dumps(event))

    def sync(self) -> None:
        """fsync the current file: every event recorded so far survives a machine crash."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open_next(self) -> None:
        # Called with the lock held, or from __init__.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        # Another writer of this process that started in the same second (a gateway
        # started again after a failed bind) has the same stem: take its next number.
        for _ in range(_NAME_TRIES_MAX):
            self._sequence += 1
            try:
                self._fd = os.open(self.path, flags, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"{self.path}: no free audit file name")
        self._bytes = 0

    def _append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError("the audit log is closed")
            if self._bytes and self._bytes + len(data) > self.file_bytes_max:
                self._open_next()
            fd = self._fd
            if fd is None:  # only if reopening failed half-way; never write nowhere silently
                raise ValueError("the audit log has no open file")
            view = memoryview(data)
            while view:  # a regular file writes all at once unless the disk fills
                view = view[os.write(fd, view) :]
            self._bytes += len(data)


def read_events(
    folder: Path,
    *,
    account_id: str | None = None,
    rpc: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """The audit events in ``folder``, oldest first, filtered; with ``limit``, the latest ones.

    ``since`` is inclusive. A line that is not a complete event (the last line
    of a process that died while writing it) is skipped with a warning.
    """
    events = [
        event
        for event in _events(folder)
        if (account_id is None or event.account_id == account_id)
        and (rpc is None or event.rpc == rpc)
        and (since is None or event.ts >= since)
    ]
    events.sort(key=lambda e: e.ts)
    if limit is not None:
        events = events[-limit:] if limit > 0 else []
    return events


def _events(folder: Path) -> Iterator[AuditEvent]:
    for path in sorted(folder.glob(_PATTERN)):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                event = _parse(line)
                if event is None:
                    log.warning("audit_line_unreadable", file=str(path), line=number)
                    continue
                yield event


def _parse(line: str) -> AuditEvent | None:
    try:
        obj = json.loads(line)
        ts = datetime.strptime(obj["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        values = {name: obj.get(name) for name in _FIELDS}
        if not isinstance(values["rpc"], str) or not isinstance(values["outcome"], str):
            return None
        return AuditEvent(ts=ts, process=str(obj.get("process", "")), **values)
    except (ValueError, KeyError, TypeError):
        return None
