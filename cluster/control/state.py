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

In replicated mode each save is also kept by every live node's host in its own
folder, fenced the same way (:mod:`cluster.control.mirror`); a coordinator whose
folder is gone rebuilds it from the newest of those (:func:`install_copy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.store.control_copy import (
    JOURNAL_BYTES_MAX,
    append_journal,
    journal_path,
    locked,
    persisted_generation,
    read_journal,
    state_path,
)
from actors.store.files import write_atomic

__all__ = [
    "JOURNAL_BYTES_MAX",
    "ControlState",
    "StaleCoordinator",
    "append_journal",
    "check_current",
    "commit",
    "install_copy",
    "journal_path",
    "load_state",
    "read_journal",
    "repair_journal",
    "save_state",
    "state_path",
]

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


def load_state(data_dir: Path) -> ControlState:
    """The persisted state, or a fresh one when the cluster has never run here."""
    path = state_path(data_dir)
    if not path.exists():
        return ControlState()
    return parse_state(path.read_bytes(), source=str(path))


def parse_state(body: bytes, *, source: str) -> ControlState:
    """A state from the bytes of a state.json (``source`` names them in errors)."""
    raw = json.loads(body)
    if raw.get("format") != _FORMAT:
        raise ValueError(f"{source}: not a petribill control state (format {raw.get('format')!r})")
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


def check_current(data_dir: Path, state: ControlState) -> None:
    """Raise :class:`StaleCoordinator` if the folder has moved past ``state``."""
    persisted = persisted_generation(data_dir)
    if persisted != state.generation:
        raise StaleCoordinator(
            f"{state_path(data_dir)} is at generation {persisted}, this coordinator at "
            f"{state.generation}: another coordinator took over"
        )


def commit(data_dir: Path, state: ControlState, event: dict[str, Any] | None = None) -> bytes:
    """Save ``state`` (generation + 1) and journal ``event``, fenced by the generation:
    refused with :class:`StaleCoordinator`, writing nothing, if the folder has moved past
    the generation ``state`` holds. Returns the bytes of state.json written (what the
    control replicas are sent)."""
    with locked(data_dir):
        check_current(data_dir, state)
        body = save_state(data_dir, state)
        if event is not None:
            append_journal(data_dir, event)
        return body


def save_state(data_dir: Path, state: ControlState) -> bytes:
    """Persist ``state`` durably and atomically (unfenced: :func:`commit` fences); the
    bytes written."""
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
    ).encode()
    write_atomic(path, body)
    return body


def install_copy(data_dir: Path, state: bytes, journal: bytes) -> ControlState:
    """Rebuild the coordinator's own copy from a control replica's bytes (its journal
    first, then its state); refused if the folder already holds a state."""
    parsed = parse_state(state, source="control replica")
    with locked(data_dir):
        if state_path(data_dir).exists():
            raise StaleCoordinator(f"{state_path(data_dir)} exists: not rebuilt from a replica")
        write_atomic(journal_path(data_dir), journal)
        write_atomic(state_path(data_dir), state)
    return parsed


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
