"""Takeover time under ingestion load: kill a node, time until every unit is served again.

A local cluster of ``--nodes`` simulated nodes ingests usage through the
gateways (SDK, with retries and failover between gateway addresses). Then,
``--kills`` times, a worker node that is some unit's primary (or owner) dies:

- ``--mode replicated`` (the default with 2+ nodes): every process of the node is
  SIGKILLed and its folder ``data/nodes/<node>/`` deleted (its disk is gone); its
  units are promoted to their in-sync followers on other nodes.
- ``--mode shared``: the node's raylet is SIGKILLed; its units are reopened from the
  one shared folder by other nodes.

``takeover_s`` runs from the kill until the coordinator reports every unit owned
by an alive node other than the dead one (served again); ``writable_s`` until
every unit can also acknowledge writes (replicated, RF 2, ``min_in_sync`` 2: a
promoted unit has a new follower caught up). A fresh node is added to replace
the dead one. At the end every acknowledged record must appear exactly once in
its account's usage history (``lost`` and ``duplicated`` count the violations).

The last line is one JSON object with ``mode``, ``takeover_s_p50``,
``takeover_s_p99``, ``writable_s_p50``, ``writable_s_p99``, ``lost`` and
``duplicated``, and (replicated) how many of the coordinator's saves were short of
their control replicas (``control_short_saves``).

    .venv/bin/python bench/failover.py [--mode replicated] [--nodes 3] [--kills 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.client import PetribillClient  # noqa: E402
from cluster.config import parse_config  # noqa: E402
from cluster.deploy.runtime import Runtime  # noqa: E402

ACCOUNTS = 40
T_NOV = 1_793_700_000


def msisdn(i: int) -> str:
    return f"49151800{i:05d}"


class Load(threading.Thread):
    """Submits batches of unique records until stopped; remembers every acknowledgement."""

    def __init__(self, client: PetribillClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.acked: set[str] = set()
        self.stop = threading.Event()
        self.next_id = 0

    def run(self) -> None:
        while not self.stop.is_set():
            batch = []
            for _ in range(50):
                n = self.next_id
                self.next_id += 1
                batch.append({
                    "record_id": f"fo:{n}", "service": "voice",
                    "served_msisdn": msisdn(n % ACCOUNTS), "record_opening_time_s": T_NOV + n,
                    "called_number": "4930123456", "duration_s": 10 + n % 500,
                })  # fmt: skip
            while True:  # the same ids until acknowledged: exactly once
                try:
                    self.client.submit_usage(batch)
                    break
                except Exception:
                    time.sleep(0.1)
            self.acked.update(r["record_id"] for r in batch)


def wait_taken_over(
    runtime: Runtime, dead: str, started: float, timeout_s: float = 120
) -> tuple[float, float]:
    """Seconds from ``started`` until every unit is served by a node other than ``dead``,
    and until every unit can acknowledge writes as well."""
    served: float | None = None
    while time.monotonic() - started < timeout_s:
        status = runtime.status()
        owners = {u["node"] for u in status["units"]}
        if served is None and status["healthy"] and dead not in owners:
            served = time.monotonic() - started
        if served is not None and status.get("writable", status["healthy"]):
            return served, time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{dead}'s units were not taken over in {timeout_s} s")


def pick_victim(runtime: Runtime) -> tuple[int, str]:
    """A worker node (the head carries Ray's GCS) owning the most units."""
    assert runtime.local is not None
    owners = [u["node"] for u in runtime.status()["units"]]
    workers = [n for n in runtime.local.nodes if not n.is_head]
    victim = max(workers, key=lambda n: (owners.count(n.name), n.index))
    return victim.index, victim.name


def kill(runtime: Runtime, index: int, name: str, mode: str) -> float:
    """Kill node ``index`` as ``mode`` says; the moment of the kill."""
    assert runtime.local is not None
    if mode == "shared":
        started = time.monotonic()
        runtime.local.kill_node(index, signal.SIGKILL)
        return started
    pids = runtime.local.node_pids(index)
    started = time.monotonic()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(runtime.data_dir / "nodes" / name, ignore_errors=True)
    return started


def p99(values: list[float]) -> float:
    """The 99th percentile of sorted ``values`` (their maximum below 100 values)."""
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--mode", choices=("replicated", "shared"), default="replicated")
    args = parser.parse_args()
    config = parse_config(
        {"sharding": {"shards": 8, "partitions": 4}, "storage": {"mode": args.mode}},
        source="bench",
    )
    takeovers: list[float] = []
    writable: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pbfail") as data:
        runtime = Runtime(
            config, data_dir=Path(data), tariffs_dir=ROOT / "conf" / "tariffs",
            nodes=args.nodes, port=0,
        )  # fmt: skip
        info = runtime.start(timeout_s=180)
        assert runtime.local is not None
        try:
            client = PetribillClient(info.gateways, timeout_s=60, retries=40)
            for i in range(ACCOUNTS):
                client.create_account(
                    f"fo-{i}", payment_mode="postpaid", plan_id="business",
                    msisdns=[msisdn(i)], request_id=f"fo-create-{i}",
                )  # fmt: skip
            load = Load(client)
            load.start()
            for round_ in range(args.kills):
                time.sleep(2)
                index, name = pick_victim(runtime)
                started = kill(runtime, index, name, args.mode)
                took, usable = wait_taken_over(runtime, name, started)
                takeovers.append(took)
                writable.append(usable)
                print(
                    f"kill {round_ + 1}: {name} taken over in {took:.2f} s, "
                    f"writable again in {usable:.2f} s"
                )
                runtime.local.add_node()  # a replacement joins; units rebalance onto it
                wait_taken_over(runtime, name, time.monotonic())  # RF back before the next
            time.sleep(2)
            load.stop.set()
            load.join(timeout=120)
            seen: dict[str, int] = {}
            for i in range(ACCOUNTS):
                for line in client.iter_usage(f"fo-{i}"):
                    seen[line.record_id] = seen.get(line.record_id, 0) + 1
            lost = sum(1 for r in load.acked if r not in seen)
            duplicated = sum(1 for count in seen.values() if count > 1)
            report = client.reconcile()
            control = runtime.status().get("control", {})
        finally:
            runtime.stop()
    takeovers.sort()
    writable.sort()
    summary = {
        "mode": args.mode,
        "kills": len(takeovers),
        "acked": len(load.acked),
        "takeover_s_p50": round(statistics.median(takeovers), 3),
        "takeover_s_p99": round(p99(takeovers), 3),
        "takeover_s_max": round(takeovers[-1], 3),
        "writable_s_p50": round(statistics.median(writable), 3),
        "writable_s_p99": round(p99(writable), 3),
        "lost": lost,
        "duplicated": duplicated,
        "reconciled": report.balanced,
        # Replicated: the coordinator's saves that were not durable on the control
        # replicas they needed when made (a kill's node counted on, then skipped).
        "control_short_saves": control.get("short_saves"),
        "control_generation": control.get("generation"),
        "control_durable_generation": control.get("durable_generation"),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
