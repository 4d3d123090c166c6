"""The control plane is fenced like the data plane: a coordinator that was replaced while it
was paused can neither journal nor save its marking when it resumes (issue 12, item 8).

One test drives two coordinators in one process; the other pauses a real coordinator
process with SIGSTOP, lets a replacement take over, and resumes it with SIGCONT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.control.coordinator import Coordinator, unit_specs
from cluster.control.state import StaleCoordinator, load_state, read_journal, state_path
from petri import NetConfig, PetriModel, check_trace
from tests.test_coordinator import Nodes

ROOT = Path(__file__).resolve().parent.parent

# A coordinator in its own process: it reconciles once, waits for a line on stdin, then
# sees n2 die and reconciles again, printing what became of its writes.
_PAUSED = """
import sys
from pathlib import Path
from cluster.control.coordinator import Coordinator
from cluster.control.state import StaleCoordinator
from tests.test_coordinator import Nodes

nodes = Nodes("n1", "n2")
coordinator = Coordinator(data_dir=Path(sys.argv[1]), shards=3, partitions=1, ops=nodes)
coordinator.reconcile()
print(">> ready", flush=True)
sys.stdin.readline()
nodes.kill("n2")
try:
    coordinator.reconcile()
    print(">> wrote", flush=True)
except StaleCoordinator as stale:
    print(">> refused:", stale, flush=True)
"""


def _said(process: subprocess.Popen[str]) -> str:
    """The process's next protocol line (``>> ...``), past its log lines."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(">> "):
            return line[3:].strip()
    raise AssertionError(f"the process ended, exit {process.wait()}")


def _replays(data_dir: Path, shards: int, partitions: int) -> None:
    """The journal is one path of the net ending at the persisted marking."""
    state = load_state(data_dir)
    config = NetConfig(
        nodes=tuple(state.nodes), shards=unit_specs(shards, partitions), initial_nodes=frozenset()
    )
    result = check_trace(PetriModel(config), read_journal(data_dir), strict=True)
    assert result.ok, result.rejection
    assert read_journal(data_dir)[-1]["generation"] == state.generation


def test_a_replaced_coordinator_writes_nothing(tmp_path: Path) -> None:
    """The first coordinator, resumed after a second took over and fired transitions, is
    refused at its next write: state.json and the journal stay the second's."""
    nodes = Nodes("n1", "n2")
    first = Coordinator(data_dir=tmp_path, shards=4, partitions=2, ops=nodes)
    first.reconcile()
    second = Coordinator(data_dir=tmp_path, shards=4, partitions=2, ops=nodes)
    nodes.kill("n2")
    assert second.reconcile() > 0  # node_fail, fences, takeovers
    saved, journal = state_path(tmp_path).read_bytes(), read_journal(tmp_path)
    with pytest.raises(StaleCoordinator, match="another coordinator took over"):
        first.check_current()
    with pytest.raises(StaleCoordinator):
        first.reconcile()
    assert state_path(tmp_path).read_bytes() == saved
    assert read_journal(tmp_path) == journal
    _replays(tmp_path, 4, 2)


def test_a_sigstopped_coordinator_resumed_after_its_replacement_is_refused(
    tmp_path: Path,
) -> None:
    """A real coordinator process is SIGSTOPped; a replacement loads the state and fires
    node_fail, fence and takeover; SIGCONT: the resumed process's own node_fail is refused,
    and the journal still replays through the net."""
    paused = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])},
    )
    try:
        assert paused.stdout is not None and paused.stdin is not None
        assert _said(paused) == "ready"
        os.kill(paused.pid, signal.SIGSTOP)
        nodes = Nodes("n1", "n2")
        replacement = Coordinator(data_dir=tmp_path, shards=3, partitions=1, ops=nodes)
        nodes.kill("n2")
        assert replacement.reconcile() > 0
        saved = state_path(tmp_path).read_bytes()
        os.kill(paused.pid, signal.SIGCONT)
        paused.stdin.write("go\n")
        paused.stdin.flush()
        answer = _said(paused)
        assert answer.startswith("refused:"), answer
        assert paused.wait(timeout=60) == 0
    finally:
        if paused.poll() is None:
            os.kill(paused.pid, signal.SIGCONT)
            paused.kill()
            paused.wait()
    assert state_path(tmp_path).read_bytes() == saved
    _replays(tmp_path, 3, 1)
