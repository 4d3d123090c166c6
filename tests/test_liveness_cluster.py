"""A busy host is not a dead host, on a real two-node Ray cluster under ingestion load.

While usage streams in through the gateways, an operator runs a reconcile, a bill run
over more than ten thousand accounts, a backup and a page-through of a 100,000-line
usage history: every call answers, no client call fails, and the coordinator's
journal shows no node failed and no unit fenced. Then a host really SIGKILLed is
still failed over at once (its ping raises), not after the bound for silent hosts.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster.client import PetribillClient, PetribillError
from cluster.control.coordinator import HOST_SILENT_MAX_S
from cluster.control.state import read_journal
from cluster.deploy.runtime import Runtime
from tests.local_cluster import running, small_runtime
from tests.seeding import create_accounts

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHARDS = 4
BILLED_ACCOUNTS = 10_000
HISTORY_LINES = 100_000
LOAD_ACCOUNTS = 16
T_NOV = 1_793_700_000  # 2026-11-03
HISTORY = "lc-history"


def msisdn(i: int) -> str:
    return f"49151600{i:05d}"


def voice(record_id: str, i: int, n: int) -> dict[str, object]:
    return {
        "record_id": record_id, "service": "voice", "served_msisdn": msisdn(i),
        "record_opening_time_s": T_NOV + n % 86_400, "called_number": "4930123456",
        "duration_s": 5 + n % 120,
    }  # fmt: skip


class Load(threading.Thread):
    """Submits small usage batches until stopped; every call that fails is kept."""

    def __init__(self, client: PetribillClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.acked = 0
        self.failed: list[str] = []

    def run(self) -> None:
        ids = itertools.count()
        while not self.stop.is_set():
            batch = [
                voice(f"load:{n}", 1 + n % LOAD_ACCOUNTS, n) for n in itertools.islice(ids, 50)
            ]
            try:
                self.acked += len(self.client.submit_usage(batch).results)
            except PetribillError as exc:
                self.failed.append(str(exc))


def journal_after(runtime: Runtime, generation: int) -> list[dict[str, object]]:
    return [e for e in read_journal(runtime.data_dir) if int(e["generation"]) > generation]


def test_long_admin_calls_under_load_fence_nothing_and_a_killed_host_fails_over(
    tmp_path: Path,
) -> None:
    """Reconcile, a bill run over 10k accounts, a backup and a 100k-line history page-through
    under ingestion on two nodes: all answer, no client call fails, no node_fail or fence
    in the journal; a SIGKILLed host is then failed over at once."""
    runtime = small_runtime(tmp_path / "data", shards=SHARDS, partitions=2, nodes=2, port=0)
    with running(runtime) as info:
        assert runtime.local is not None
        client = PetribillClient(info.gateways, timeout_s=120)
        create_accounts(
            runtime.coordinator,
            [f"lc-billed-{i:05d}" for i in range(BILLED_ACCOUNTS)],
            shards=SHARDS,
            plan_id="business",
        )
        for i in range(LOAD_ACCOUNTS + 1):
            client.create_account(
                HISTORY if i == 0 else f"lc-load-{i}", payment_mode="postpaid",
                plan_id="business", msisdns=[msisdn(i)], request_id=f"lc-create-{i}",
            )  # fmt: skip
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda start: client.submit_usage(
                        [voice(f"hist:{n}", 0, n) for n in range(start, start + 1000)]
                    ),
                    range(0, HISTORY_LINES, 1000),
                )
            )
        generation = max(int(e["generation"]) for e in read_journal(runtime.data_dir))

        load = Load(client)
        load.start()
        try:
            report = client.reconcile()
            billed = list(
                client.run_billing("2026-10", at_s=T_NOV + 7 * 86_400, request_id="lc-bill")
            )
            backup = client.backup(request_id="lc-backup")
            lines = sum(1 for _ in client.iter_usage(HISTORY))
            report_after = client.reconcile()
        finally:
            load.stop.set()
            load.join(timeout=120)
        assert report.ledger_total.micros == 0 and report_after.balanced, report_after.detail
        assert billed[-1].finished and billed[-1].accounts_done >= BILLED_ACCOUNTS
        assert backup.done
        assert lines == HISTORY_LINES
        assert load.failed == [] and load.acked > 0
        steps = {str(e["event"]) for e in journal_after(runtime, generation)}
        assert not steps & {"node_fail", "fence", "takeover"}, steps

        owned = {u["unit"]: u["epoch"] for u in runtime.status()["units"] if u["node"] == "n1"}
        assert owned, "n1 owns no unit to take over"
        pid = runtime.local.worker_pid(1, "RoutedHost")
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            units = {u["unit"]: u for u in runtime.status()["units"]}
            if all(units[u]["state"] == "owned" and units[u]["epoch"] > owned[u] for u in owned):
                break
            assert time.monotonic() - killed_at < 60, f"not taken over: {units}"
            time.sleep(0.05)
        took_s = time.monotonic() - killed_at
        failures = [e for e in journal_after(runtime, generation) if e["event"] == "node_fail"]
        assert [(e["node"], e["cause"]) for e in failures] == [("n1", "host_gone")]
        # Failed because its process was gone, not after the silence bound.
        assert took_s < HOST_SILENT_MAX_S
        print(f"host SIGKILLed: its units were taken over in {took_s:.2f} s")
