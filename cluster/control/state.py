"""The coordinator's durable state: the Petri-net marking and what it needs to rebuild the net.

Written atomically (temp file, fsync, rename, fsync of the folder) before the
coordinator acts on a decision, so a coordinator that dies at any point
restarts from a marking that is at least as new as anything it did.

Every write is fenced by the generation: a coordinator writes generation g+1
only while the folder holds the g it loaded or last wrote, checked and written
under one lock of the folder. A coordinator that was paused while a
replacement took over (Ray restarts the actor when its node is declared dead)
finds a newer generation when it resumes, and its write is refused
(:class:`StaleCoordinator`): it can neither append to the journal nor save its
stale marking.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.store.files import write_atomic

__all__ = [
    "ControlState",
    "StaleCoordinator",
    "append_journal",
    "check_current",
    "commit",
    "load_state",
    "read_journal",
    "repair_journal",
    "save_state",
]

JOURNAL_BYTES_MAX = 32 * 1024 * 1024

_FORMAT = "petribill.control/1"


@dataclass(slots=True, kw_only=True)
class ControlState:
    """``nodes`` maps a petribill node name to its Ray node id, in join order;
    ``replication_factor`` is the one the net of the marking was built with.

    ``schedule`` is what the coordinator's time-driven work must not forget across a
    restart (``cluster.control.duties``): the scheduled bill runs started and finished,
    and the last inspection. It is saved with the marking, in the same file.

    ``restores`` maps an operator's restore request id to what it restored (unit ->
    node, epoch and the backup's description), saved by the very commit that fires
    each unit's ``restore``: a retry of the request is answered the same.
    """

    marking_json: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    last_event: dict[str, Any] | None = None
    replication_factor: int = 1
    schedule: dict[str, Any] = field(default_factory=dict)
    restores: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def state_path(data_dir: Path) -> Path:
    return data_dir / "control" / "state.json"


def load_state(data_dir: Path) -> ControlState:
    """The persisted state, or a fresh one when the cluster has never run here."""
    path = state_path(data_dir)
    if not path.exists():
        return ControlState()
    raw = json.loads(path.read_text())
    if raw.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a petribill control state (format {raw.get('format')!r})")
    return ControlState(
        marking_json=raw["marking"],
        nodes=dict(raw["nodes"]),
        generation=int(raw["generation"]),
        last_event=raw.get("last_event"),
        replication_factor=int(raw.get("replication_factor", 1)),
        schedule=dict(raw.get("schedule") or {}),
        restores=dict(raw.get("restores") or {}),
    )


class StaleCoordinator(RuntimeError):
    """The control folder holds a newer generation than this coordinator's: another
    coordinator took over while this one was paused. Nothing was written."""


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold the control folder's lock (``control/.lock``, flock) for one check-and-write."""
    folder = state_path(data_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _persisted_generation(data_dir: Path) -> int:
    path = state_path(data_dir)
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["generation"])


def check_current(data_dir: Path, state: ControlState) -> None:
    """Raise :class:`StaleCoordinator` if the folder has moved past ``state``."""
    persisted = _persisted_generation(data_dir)
    if persisted != state.generation:
        raise StaleCoordinator(
            f"{state_path(data_dir)} is at generation {persisted}, this coordinator at "
            f"{state.generation}: another coordinator took over"
        )


def commit(data_dir: Path, state: ControlState, event: dict[str, Any] | None = None) -> None:
    """Save ``state`` (generation + 1) and journal ``event``, fenced by the generation:
    refused with :class:`StaleCoordinator`, writing nothing, if the folder has moved past
    the generation ``state`` holds."""
    with _locked(data_dir):
        check_current(data_dir, state)
        save_state(data_dir, state)
        if event is not None:
            append_journal(data_dir, event)


def save_state(data_dir: Path, state: ControlState) -> None:
    """Persist ``state`` durably and atomically (unfenced: :func:`commit` fences)."""
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.generation += 1
    body = json.dumps(
        {
            "format": _FORMAT,
            "generation": state.generation,
            "nodes": state.nodes,
            "marking": state.marking_json,
            "last_event": state.last_event,
            "replication_factor": state.replication_factor,
            "schedule": state.schedule,
            "restores": state.restores,
        },
        indent=1,
    )
    write_atomic(path, body.encode())


def journal_path(data_dir: Path) -> Path:
    return data_dir / "control" / "transitions.jsonl"


def append_journal(data_dir: Path, event: dict[str, Any]) -> None:
    """Append one fired transition to the journal (rotated once past its size bound)."""
    path = journal_path(data_dir)
    if path.exists() and path.stat().st_size > JOURNAL_BYTES_MAX:
        os.replace(path, path.with_suffix(".jsonl.1"))
    with open(path, "a") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_journal(data_dir: Path) -> list[dict[str, Any]]:
    """The journal's events, oldest first (the current file only)."""
    path = journal_path(data_dir)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def repair_journal(data_dir: Path, state: ControlState) -> bool:
    """Append the state's last event if a crash came between saving it and journaling it.

    The state file and the journal are two writes; the state (with the last
    event inside it) is written first, so the journal can lag by at most that
    one event, which is restored here. Returns True when it was missing.
    """
    event = state.last_event
    if event is None:
        return False
    events = read_journal(data_dir)
    last = events[-1]["generation"] if events else 0
    if last < event["generation"]:
        append_journal(data_dir, event)
        return True
    return False
