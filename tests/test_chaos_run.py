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
        sys.executable, "-m", "cluster.cli", "chaos",
        "--scenario", "mixed", "--duration", seconds, "--seed", "1", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=840, check=False
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == [], done.stderr[-3000:]
    assert report["violations"] == {}, report
    assert report["acked"] > 1000
    assert report["lost"] == 0 and report["duplicated"] == 0, report
    assert report["money_delta_minor"] == 0, report
    assert report["faults"] >= 4, report
    assert report["takeover_s_max"] is not None, "no fault needed a takeover"
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["replay"].startswith("petribill chaos --scenario mixed")
