"""Chaos counts the takeovers no injected fault explains, from the coordinator's journal."""

from __future__ import annotations

from pathlib import Path

from chaos.auditor import spurious_takeovers
from cluster.control.state import append_journal


def journal(data_dir: Path, *events: dict[str, object]) -> None:
    (data_dir / "control").mkdir(parents=True, exist_ok=True)
    for generation, event in enumerate(events, start=1):
        append_journal(data_dir, {**event, "generation": generation})


def failover(node: str, at_s: float, cause: str, unit: str = "acct-00") -> list[dict[str, object]]:
    """A node failure and the fence and takeover of one of its units, as the journal has it."""
    return [
        {"event": "node_fail", "node": node, "at_s": at_s, "cause": cause},
        {"event": "fence", "shard": unit, "node": node, "epoch": 2, "at_s": at_s},
        {"event": "takeover", "shard": unit, "node": "n0", "epoch": 3, "at_s": at_s},
    ]


def test_a_takeover_after_a_fault_on_its_node_is_explained(tmp_path: Path) -> None:
    """A host killed at 100 s, its node failed at 100.4 s: nothing spurious."""
    journal(tmp_path, *failover("n1", 100.4, "host_gone"))
    assert spurious_takeovers(tmp_path, [("n1", 100.0)]) == []


def test_a_takeover_no_fault_explains_is_spurious(tmp_path: Path) -> None:
    """A busy host failed with no fault on it, one failed long after the fault on its node,
    and one whose fault hit another node: three spurious takeovers, each said why."""
    journal(
        tmp_path,
        *failover("n1", 50.0, "host_silent", "acct-00"),
        *failover("n2", 300.0, "host_silent", "acct-01"),
        *failover("n1", 400.0, "node_dead", "acct-02"),
    )
    found = spurious_takeovers(tmp_path, [("n2", 100.0), ("n3", 399.0)])
    assert [line.split()[0] for line in found] == ["acct-00", "acct-01", "acct-02"]
    assert "n1 failed (host_silent at 50.0) with no fault on it" in found[0]
