"""The short ``mixed`` chaos run of CI: every kind of fault on a real local cluster under
load, then the audit — nothing lost, nothing charged twice, money exact.

Runs the command operators run (``petribill chaos ... --json``) in a subprocess,
so it starts and stops its own Ray cluster. ``PETRIBILL_CHAOS_S`` sets the
seconds of load (default 45: about two and a half minutes in all on two
cores); the long run is described in bench/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


def test_mixed_chaos_run_loses_nothing_and_charges_nothing_twice() -> None:
    seconds = os.environ.get("PETRIBILL_CHAOS_S", "45")
    command = [
        sys.executable, "-m", "cluster.cli.main", "chaos",
        "--scenario", "mixed", "--duration", seconds, "--seed", "1", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=840, check=False
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == [], done.stderr[-3000:]
    assert report["violations"] == {}, _summary_lines(done.stderr)
    assert report["acked"] > 1000
    assert report["lost"] == 0 and report["duplicated"] == 0, report
    assert report["money_delta_minor"] == 0, report
    assert report["faults"] >= 4, report
    assert report["takeover_s_max"] is not None, "no fault needed a takeover"
    assert report["spurious_takeovers"] == 0, report
    assert set(report["operator_calls"]) >= {"reconcile", "bill_run"}, report
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["replay"].startswith("petribill chaos --scenario mixed")


def _summary_lines(stderr: str) -> str:
    """The run's own summary (faults, takeovers, each violation's text), not the logs."""
    lines = [line for line in stderr.splitlines() if line.startswith("  ")]
    return "\n".join(lines[-80:])


def test_chaos_on_a_given_cluster_audits_it_and_leaves_it_running(tmp_path: Path) -> None:
    """`petribill chaos --data DIR` uses a cluster started with `up --detach` on the
    chaos catalogue: faults hit its processes, the audit passes, the cluster is still
    up afterwards, and the same seed again is refused (its accounts exist)."""
    data = tmp_path / "data"
    petribill = [sys.executable, "-m", "cluster.cli.main"]
    up = [*petribill, "up", "--detach", "--nodes", "3", "--conf", "chaos", "--port", "0"]
    started = subprocess.run(
        [*up, "--data", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        chaos = [
            *petribill, "chaos", "--scenario", "kill-workers", "--duration", "20",
            "--seed", "5", "--every", "5", "--data", str(data), "--json",
        ]  # fmt: skip
        done = subprocess.run(chaos, cwd=ROOT, capture_output=True, text=True, timeout=600)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        why = {k: report.get(k) for k in ("errors", "violations", "spurious_takeovers", "faults")}
        assert report["ok"] and report["faults"] >= 2, why
        assert report["lost"] == 0 and report["duplicated"] == 0, report
        assert report["money_delta_minor"] == 0 and report["acked"] > 500, report
        assert f"--data {data}" in report["replay"]
        again = subprocess.run(chaos, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 1
        assert "already ran chaos seed 5" in json.loads(again.stdout.splitlines()[-1])["errors"][0]
        status = subprocess.run(
            [*petribill, "status", "--json", "--data", str(data)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0 and json.loads(status.stdout)["healthy"], status.stderr
    finally:
        subprocess.run(
            [*petribill, "down", "--data", str(data)], cwd=ROOT, timeout=120, check=False
        )
