"""The coordinator's durable state: the Petri-net marking and what it needs to rebuild the net.

Written atomically (temp file, fsync, rename, fsync of the folder) before the
coordinator acts on a decision, so a coordinator that dies at any point
restarts from a marking that is at least as new as anything it did.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ControlState", "load_state", "save_state"]

_FORMAT = "petribill.control/1"


@dataclass(slots=True, kw_only=True)
class ControlState:
    """``nodes`` maps a petribill node name to its Ray node id, in join order."""

    marking_json: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    generation: int = 0


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
    )


def save_state(data_dir: Path, state: ControlState) -> None:
    """Persist ``state`` durably and atomically."""
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.generation += 1
    body = json.dumps(
        {
            "format": _FORMAT,
            "generation": state.generation,
            "nodes": state.nodes,
            "marking": state.marking_json,
        },
        indent=1,
    )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
