"""Takeover time under ingestion load: kill a node, time until every unit is served again.

A local cluster of ``--nodes`` simulated nodes ingests usage through the
gateways (SDK, with retries and failover between gateway addresses). Then,
``--kills`` times: SIGKILL the raylet of a worker node, and measure from the
kill until the coordinator reports every unit owned by an alive node other
than the dead one (``takeover_s``); a fresh node is added to replace it. At
the end every acknowledged record must appear exactly once in its account's
usage history (``lost`` and ``duplicated`` count the violations).

The last line is one JSON object with ``takeover_s_p50``, ``takeover_s_p99``,
``lost`` and ``duplicated``.

    .venv/bin/python bench/failover.py [--nodes 3] [--kills 5]
"""

from __future__ import annotations

import argparse
import json
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


def wait_taken_over(runtime: Runtime, dead: str, timeout_s: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        status = runtime.status()
        owners = {u["node"] for u in status["units"]}
        if status["healthy"] and dead not in owners:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{dead}'s units were not taken over in {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    config = parse_config({"sharding": {"shards": 8, "partitions": 4}}, source="bench")
    takeovers: list[float] = []
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
            for kill in range(args.kills):
                time.sleep(2)
                victim = runtime.local.nodes[-1]
                runtime.local.kill_node(victim.index, signal.SIGKILL)
                took = wait_taken_over(runtime, victim.name)
                takeovers.append(took)
                print(f"kill {kill + 1}: {victim.name} taken over in {took:.2f} s")
                runtime.local.add_node()  # a replacement joins; units rebalance onto it
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
        finally:
            runtime.stop()
    takeovers.sort()
    p99 = takeovers[min(len(takeovers) - 1, int(0.99 * len(takeovers)))]
    summary = {
        "kills": len(takeovers),
        "acked": len(load.acked),
        "takeover_s_p50": round(statistics.median(takeovers), 3),
        "takeover_s_p99": round(p99, 3),
        "takeover_s_max": round(takeovers[-1], 3),
        "lost": lost,
        "duplicated": duplicated,
        "reconciled": report.balanced,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
