"""What the coordinator's ping costs while a host works on operators' long calls.

A one-node local cluster (the default 16 shards and 8 partitions, all on one host)
holds ``--accounts`` postpaid accounts (made on the shards directly, the fast path of
tests/seeding.py) and ``--lines`` usage lines over 64 accounts (through a gateway).
Three samplers run every 50 ms: ``ping`` on the host's liveness thread (what the
coordinator asks), ``pid``, a call as trivial on its default thread group (where
``ping`` ran before issue #16), and a 10-record usage batch through the gateway (does
ingestion stall?). Meanwhile the host works on, one after another:

- ``whole-audit``: every shard's one-call ``Audit`` at once (Reconcile before #16);
- ``reconcile``: Reconcile through the gateway (``AuditStep`` s, a few shards at a time);
- ``bill-run``: a bill run of every account (steps of 100 accounts);
- ``backup``: a backup of every unit (flushed first, a few units at a time);
- ``history``: every usage line paged through, 1,000 a page.

Per phase: its seconds and each sampler's latency in ms (p50, p99, max). The last line
is one JSON object; ``ratio_p99`` is the default-group call's p99 during the whole
audits over the liveness ping's p99 during the stepwise reconcile (the baseline and
the figure, measured in the same run); ``node_fails`` counts the times the coordinator
failed the busy node meanwhile (its journal).

    .venv/bin/python bench/liveness.py [--accounts 20000] [--lines 200000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from actors.remote import NAMESPACE, host_name  # noqa: E402
from actors.routing import shard_id  # noqa: E402
from actors.shard import ops  # noqa: E402
from cluster.client import PetribillClient  # noqa: E402
from cluster.config import parse_config  # noqa: E402
from cluster.control.state import read_journal  # noqa: E402
from cluster.deploy.runtime import Runtime  # noqa: E402
from tests.seeding import create_accounts  # noqa: E402

SHARDS, PARTITIONS = 16, 8
USAGE_ACCOUNTS = 64
T_NOV = 1_793_700_000
SAMPLE_EVERY_S = 0.05


class Samplers:
    """Threads timing ``ping`` and ``pid`` on the host, and a 10-record usage batch through
    the gateway (``ingest``), each sample tagged with the phase."""

    def __init__(self, host: Any, client: PetribillClient) -> None:
        self.host = host
        self.client = client
        self.phase = "idle"
        self.samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._ids = itertools.count(10**9)
        self._threads = [
            threading.Thread(target=self._sample, args=(probe,), daemon=True)
            for probe in ("ping", "pid", "ingest")
        ]

    def start(self) -> Samplers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _sample(self, probe: str) -> None:
        while not self._stop.is_set():
            phase = self.phase
            began = time.perf_counter()
            if probe == "ingest":
                self.client.submit_usage([record(next(self._ids)) for _ in range(10)])
            else:
                ray.get(getattr(self.host, probe).remote(), timeout=300)
            self.samples[(phase, probe)].append(1000 * (time.perf_counter() - began))
            self._stop.wait(SAMPLE_EVERY_S)

    def figures(self, phase: str, probe: str) -> dict[str, float]:
        found = sorted(self.samples[(phase, probe)])
        if not found:
            return {}
        p99 = found[min(len(found) - 1, int(0.99 * len(found)))]
        return {
            "p50_ms": round(statistics.median(found), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(found[-1], 2),
            "n": len(found),
        }


def msisdn(i: int) -> str:
    return f"49151900{i:05d}"


def record(n: int) -> dict[str, Any]:
    return {
        "record_id": f"lv:{n}",
        "service": "voice",
        "served_msisdn": msisdn(n % USAGE_ACCOUNTS),
        "record_opening_time_s": T_NOV + n % 86_400,
        "called_number": "4930123456",
        "duration_s": 10 + n % 300,
    }


def ingest(client: PetribillClient, lines: int) -> None:
    """``lines`` voice records over the usage accounts, 1,000 a batch, 4 batches at once."""

    def batch(start: int) -> None:
        client.submit_usage([record(n) for n in range(start, min(start + 1000, lines))])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(batch, range(0, lines, 1000)))


def whole_audits(runtime: Runtime) -> None:
    """Every shard's one-call Audit at once, straight to the host (Reconcile before #16)."""
    routes = ray.get(runtime.coordinator.routes.remote(), timeout=30)
    refs = []
    for i in range(SHARDS):
        node, epoch = routes[shard_id(i)]
        host = ray.get_actor(host_name(node), namespace=NAMESPACE)
        refs.append(host.run.remote(shard_id(i), epoch, ops.Audit()))
    assert all(report.ok for report in ray.get(refs, timeout=3600))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    config = parse_config(
        {"sharding": {"shards": SHARDS, "partitions": PARTITIONS}}, source="bench"
    )
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pblive") as data:
        runtime = Runtime(
            config, data_dir=Path(data), tariffs_dir=ROOT / "conf" / "tariffs", nodes=1, port=0
        )
        info = runtime.start(timeout_s=180)
        try:
            client = PetribillClient(info.gateways, timeout_s=3600)
            started = time.perf_counter()
            ids = [f"lv-{i:06d}" for i in range(args.accounts)]
            create_accounts(runtime.coordinator, ids, shards=SHARDS, plan_id="business")
            for i in range(USAGE_ACCOUNTS):
                client.create_account(
                    f"lvu-{i}", payment_mode="postpaid", plan_id="business",
                    msisdns=[msisdn(i)], request_id=f"lvu-create-{i}",
                )  # fmt: skip
            print(f"{args.accounts:,} accounts in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            ingest(client, args.lines)
            print(f"{args.lines:,} usage lines in {time.perf_counter() - started:.1f} s")
            host = ray.get_actor(host_name("n0"), namespace=NAMESPACE)
            generation = max(e["generation"] for e in read_journal(runtime.data_dir))
            samplers = Samplers(host, client).start()
            time.sleep(2)
            work = {
                "whole-audit": lambda: whole_audits(runtime),
                "reconcile": lambda: client.reconcile(),
                "bill-run": lambda: list(
                    client.run_billing("2026-10", at_s=T_NOV + 7 * 86_400, request_id="lv-bill")
                ),
                "backup": lambda: client.backup(request_id="lv-backup"),
                "history": lambda: [
                    sum(1 for _ in client.iter_usage(f"lvu-{i}")) for i in range(USAGE_ACCOUNTS)
                ],
            }
            for phase, call in work.items():
                samplers.phase = phase
                began = time.perf_counter()
                call()
                phases[phase] = round(time.perf_counter() - began, 2)
                samplers.phase = "idle"
                print(f"{phase}: {phases[phase]} s")
                time.sleep(1)
            samplers.stop()
            status = runtime.status()
            failed = [
                e
                for e in read_journal(runtime.data_dir)
                if e["generation"] > generation and e["event"] == "node_fail"
            ]
        finally:
            runtime.stop()
    result: dict[str, Any] = {"accounts": args.accounts, "lines": args.lines}
    for phase in ("idle", *phases):
        ping, pid = samplers.figures(phase, "ping"), samplers.figures(phase, "pid")
        ingest_ms = samplers.figures(phase, "ingest")
        print(f"{phase:12s} {phases.get(phase, '-')!s:>7} s  ping {ping}  default group {pid}")
        print(f"{'':12s} {'':>7}    a 10-record batch {ingest_ms}")
        result[phase] = {
            "seconds": phases.get(phase),
            "ping": ping,
            "default_group": pid,
            "ingest": ingest_ms,
        }
    baseline = result["whole-audit"]["default_group"]["p99_ms"]
    figure = result["reconcile"]["ping"]["p99_ms"]
    result["ratio_p99"] = round(baseline / figure, 1) if figure else None
    result["healthy"] = status["healthy"]
    result["node_fails"] = len(failed)  # the coordinator took the busy host for a dead one
    print(json.dumps(result))


if __name__ == "__main__":
    main()
