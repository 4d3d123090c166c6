"""A scheduled bill run on a real local Ray cluster survives a SIGKILL of the coordinator.

The cluster runs with the adjustable clock (``[clock] adjustable``): the test moves every
process's time to the December cycle's end plus the grace, and the coordinator starts
the bill run by itself. One shard's bill-run lock is held by the test (as an operator's
bill run would), so the scheduled run stops there with two shards billed; the
coordinator's process is killed and Ray restarts it; once the lock is free the
restarted coordinator resumes the same run and finishes it. Every account ends with
exactly one invoice of the cycle and no shard is billed twice.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.clock import set_clock_offset
from actors.routing import shard_of
from billing.billrun.run import BillRunConfig
from billing.cycle import monthly_cycle
from cluster.client import PetribillClient
from cluster.config import parse_config
from cluster.control.state import read_journal
from cluster.deploy.runtime import Runtime

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
DEC = monthly_cycle(2026, 12, "Europe/Berlin")
DUE_S = DEC.end_s + BillRunConfig().grace_s
UK = "447700900123"
SHARDS = 4


def _until(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    """Poll ``check`` until it answers something truthy (a liveness bound, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # the coordinator restarting
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _bill_runs(runtime: Runtime) -> dict[str, Any]:
    status: dict[str, Any] = runtime.status()
    return status["schedule"]["bill_runs"]


def test_a_scheduled_bill_run_survives_a_coordinator_kill(tmp_path: Path) -> None:
    """Killed in the middle of a scheduled bill run, the coordinator comes back, resumes the
    run where it stood and finishes it: one invoice per account, each shard billed once."""
    config = parse_config(
        {
            "sharding": {"shards": SHARDS, "partitions": 2},
            "clock": {"adjustable": True},
            "bill_runs": {"check_every_s": 0.2},
        },
        source="test",
    )
    data_dir = tmp_path / "data"
    runtime = Runtime(
        config, data_dir=data_dir, tariffs_dir=ROOT / "conf" / "tariffs", nodes=1, port=0
    )
    info = runtime.start(timeout_s=240)
    try:
        assert runtime.local is not None
        _until("the schedule's start", lambda: _bill_runs(runtime)["next"]["cycle"] == "2026-12")
        accounts = [f"ray-p{n}" for n in range(10)]
        with PetribillClient(info.gateways, timeout_s=30) as client:
            for n, account_id in enumerate(accounts):
                msisdn = f"4915100020{n:03d}"
                client.create_account(account_id, "postpaid", msisdns=[msisdn])
                client.submit_usage(
                    [{"record_id": f"dec-{n}", "service": "voice", "served_msisdn": msisdn,
                      "record_opening_time_s": DEC.start_s + 86_400, "called_number": UK,
                      "duration_s": 90}]
                )  # fmt: skip
            assert {shard_of(a, SHARDS) for a in accounts} == {f"acct-0{i}" for i in range(4)}
            held = "acct-02"
            assert ray.get(runtime.coordinator.lock.remote(held, "bill_run"), timeout=30)
            set_clock_offset(data_dir, DUE_S - time.time() + 1)
            cut = _until(
                "two shards billed, the third locked",
                lambda: (r := _bill_runs(runtime)["running"]) and len(r["done"]) == 2 and r,
            )
            assert cut["done"] == ["acct-00", "acct-01"] and cut["cycle"] == "2026-12"

            pid = runtime.local.worker_pid(0, "CoordinatorService")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)  # let Ray notice before asking it again
            after = _until("the restarted coordinator", lambda: _bill_runs(runtime)["running"])
            assert after["done"] == cut["done"] and after["started_s"] == cut["started_s"]
            new_pid = runtime.local.worker_pid(0, "CoordinatorService")
            assert new_pid is not None and new_pid != pid

            assert ray.get(runtime.coordinator.unlock.remote(held, "bill_run"), timeout=30)
            last = _until("the run finished", lambda: _bill_runs(runtime)["last"])
            assert last["cycle"] == "2026-12" and last["started_s"] == cut["started_s"]
            assert last["done"] == [f"acct-0{i}" for i in range(4)]
            assert last["invoices"] == len(accounts)
            for account_id in accounts:
                invoices = client.list_invoices(account_id).invoices
                assert [i.cycle_id for i in invoices] == ["2026-12"]
                assert invoices[0].issued_at_s == DUE_S
        locks = [e["shard"] for e in read_journal(data_dir) if e["event"] == "bill_run_lock"]
        # The test's own lock of acct-02, then one lock per shard by the run: no shard twice.
        assert sorted(locks) == sorted(["acct-00", "acct-01", "acct-02", "acct-02", "acct-03"])
    finally:
        runtime.stop()
