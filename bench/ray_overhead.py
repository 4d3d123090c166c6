"""Ray per-call overhead: actor round trips, empty and with batches of small records.

Starts its own one-node local cluster (cluster.deploy.localray, private temp dir and
ports), measures, shuts it down. Records are CDR-sized tuples
``(record_id, account, amount, duration_s)`` sent as a list, or the same packed
as fixed 40-byte rows in one ``bytes``.

Usage: .venv/bin/python bench/ray_overhead.py [--seconds 1.5]
Prints one line per case and a last-line JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from cluster.deploy.localray import LocalRay

BATCH_SIZES = (1, 100, 1_000, 10_000)
ROW = struct.Struct(">16s16sqI")  # record id, account, amount, duration: 44 bytes


class Sink:
    """Receives batches and answers with a count, like a shard acknowledging."""

    def empty(self) -> None:
        return None

    def take(self, batch: Any) -> int:
        return len(batch)

    def pid(self) -> int:
        return os.getpid()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _time_calls(call: Callable[[], Any], seconds: float) -> tuple[float, int]:
    call()  # warm-up: first call pays for serialisers and connections
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 5:
            return elapsed / calls, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    results: dict[str, Any] = {"bench": "ray_overhead", "cases": []}
    started = time.perf_counter()
    with LocalRay(nodes=1, temp_root="/tmp", num_cpus=1) as cluster:
        results["start_1_node_s"] = time.perf_counter() - started
        results["cluster_rss_mib"] = cluster.rss_bytes() / 2**20
        cluster.connect(namespace="bench")
        sink: Any = ray.remote(Sink).options(max_concurrency=1).remote()
        worker = ray.get(sink.pid.remote())
        results["actor_rss_mib_idle"] = _rss_mib(worker)
        per_call, n = _time_calls(lambda: ray.get(sink.empty.remote()), args.seconds)
        results["cases"].append({"case": "empty", "records": 0, "us_per_call": per_call * 1e6})
        print(f"empty call            : {per_call * 1e6:9.1f} us/call ({n} calls)")
        for records in BATCH_SIZES:
            tuples = [
                (f"sw1:{i:012d}", f"acct{i % 997:08d}", -1_250_000, 60) for i in range(records)
            ]
            packed = b"".join(ROW.pack(r.encode(), a.encode(), amt, d) for r, a, amt, d in tuples)
            payloads: tuple[tuple[str, object], ...] = (("tuples", tuples), ("bytes", packed))
            for kind, payload in payloads:

                def call(payload: object = payload) -> Any:
                    return ray.get(sink.take.remote(payload))

                per_call, n = _time_calls(call, args.seconds)
                case = {
                    "case": kind,
                    "records": records,
                    "us_per_call": per_call * 1e6,
                    "records_per_s": records / per_call,
                }
                results["cases"].append(case)
                print(
                    f"{kind:>6} x {records:>6}       : {per_call * 1e6:9.1f} us/call "
                    f"{records / per_call:12.0f} records/s ({n} calls)"
                )
        results["actor_rss_mib_after"] = _rss_mib(worker)
    print(
        f"1-node cluster start {results['start_1_node_s']:.1f}s, "
        f"cluster RSS {results['cluster_rss_mib']:.0f} MiB, actor worker RSS "
        f"{results['actor_rss_mib_idle']:.0f} MiB idle, "
        f"{results['actor_rss_mib_after']:.0f} MiB after"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
