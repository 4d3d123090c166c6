"""The files of a control state: ``<root>/control/state.json`` and its journal.

The coordinator keeps its own copy under the data folder (``cluster.control.state``);
in replicated mode every node's host keeps a *control replica* in the same layout
under its own node folder (``<data>/nodes/<node>/control/``), written only by the
coordinator's saves (:func:`save_copy`), so the control state survives the loss of
the coordinator's disk the way a unit survives the loss of its primary's.

A replica is fenced like the coordinator's own folder: a save below the generation it
holds is refused (:class:`ControlReplicaFenced`), so a coordinator that was replaced
while paused cannot roll a replica back. Every check-and-write holds the folder's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.store.files import write_atomic

__all__ = [
    "JOURNAL_BYTES_MAX",
    "ControlCopy",
    "ControlReplicaFenced",
    "append_journal",
    "journal_path",
    "locked",
    "persisted_generation",
    "read_copy",
    "read_journal",
    "save_copy",
    "state_path",
]

JOURNAL_BYTES_MAX = 32 * 1024 * 1024


def state_path(root: Path) -> Path:
    return root / "control" / "state.json"


def journal_path(root: Path) -> Path:
    return root / "control" / "transitions.jsonl"


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the control folder's lock (``control/.lock``, flock) for one check-and-write."""
    folder = state_path(root).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def persisted_generation(root: Path) -> int:
    """The generation of the state saved under ``root`` (0: none saved)."""
    path = state_path(root)
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["generation"])


def append_journal(root: Path, *events: dict[str, Any]) -> None:
    """Append fired transitions to the journal, one fsync for all (rotated once past its
    size bound)."""
    path = journal_path(root)
    if path.exists() and path.stat().st_size > JOURNAL_BYTES_MAX:
        os.replace(path, path.with_suffix(".jsonl.1"))
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(event) + "\n" for event in events))
        handle.flush()
        os.fsync(handle.fileno())


def read_journal(root: Path) -> list[dict[str, Any]]:
    """The journal's events, oldest first (the current file only)."""
    path = journal_path(root)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ControlReplicaFenced(Exception):
    """Raised by :func:`save_copy` when the replica holds a newer generation than the
    save's: the saving coordinator was replaced. Nothing was written."""

    def __init__(self, generation: int, held: int) -> None:
        super().__init__(f"control replica at generation {held} refuses generation {generation}")
        self.generation, self.held = generation, held

    def __reduce__(self) -> tuple[type[ControlReplicaFenced], tuple[int, int]]:
        return (ControlReplicaFenced, (self.generation, self.held))


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlCopy:
    """One node's control replica as read back: ``state`` is state.json's bytes (as the
    coordinator wrote them), ``journal`` the journal's; ``units`` counts the unit folders
    the node holds (evidence that a cluster ran here even without a control replica).
    Generation 0: the node holds no control replica."""

    node: str
    generation: int
    state: bytes
    journal: bytes
    units: int


def save_copy(root: Path, generation: int, state: bytes, events: Sequence[dict[str, Any]]) -> int:
    """Write the coordinator's save ``generation`` (state.json's ``state`` bytes) and the
    journal ``events`` newer than the generation held; returns the generation now held.

    Refused with :class:`ControlReplicaFenced` below the generation held; the same
    generation again is a resend and writes nothing. An event is appended only if its
    generation is above the one held before, so events sent twice are journaled once.
    """
    with locked(root):
        held = persisted_generation(root)
        if generation < held:
            raise ControlReplicaFenced(generation, held)
        if generation == held:
            return held
        write_atomic(state_path(root), state)
        new = [e for e in events if held < int(e["generation"]) <= generation]
        if new:
            append_journal(root, *new)
        return generation


def read_copy(root: Path, *, node: str, units: int) -> ControlCopy:
    """The control replica under ``root`` (generation 0 and no bytes when there is none)."""
    with locked(root):
        path = state_path(root)
        if not path.exists():
            return ControlCopy(node=node, generation=0, state=b"", journal=b"", units=units)
        state = path.read_bytes()
        journal = journal_path(root)
        return ControlCopy(
            node=node,
            generation=int(json.loads(state)["generation"]),
            state=state,
            journal=journal.read_bytes() if journal.exists() else b"",
            units=units,
        )
