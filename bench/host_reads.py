"""Balance queries on one UnitHost while usage batches are charged on it (no Ray, no gRPC).

What the host itself adds to a query's latency under ingestion, without Ray's
call overhead, the gateway and the client, which ``bench/ingest.py`` includes:
two threads submit ``--records`` records in batches of ``--batch`` through the
host's partitions (each batch charges its shards under their locks), while one
thread asks ``get_account`` of random accounts every 5 ms, either through
``run`` (under the unit's lock, as every query did before) or ``read`` (the
lock-free path for committed state). Each mode runs with Python's default GIL
switch interval (5 ms) and with the hosts' 0.5 ms.

The last line is one JSON object: per mode and interval, ``records_per_s``,
``query_p50_ms`` and ``query_p99_ms``.

    PYTHONPATH=. .venv/bin/python bench/host_reads.py [--records 20000] [--accounts 400]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import account_of, batches_of, msisdn_of, plan_of, workload  # noqa: E402

from actors.engines import engine_factory  # noqa: E402
from actors.host import UnitHost  # noqa: E402
from actors.partition.ops import PutSubscriber, Submit  # noqa: E402
from actors.routing import partition_of, shard_of  # noqa: E402
from actors.shard import ops  # noqa: E402
from billing.accounts import Account, Subscription  # noqa: E402

SHARDS, PARTITIONS = 4, 2


def _host(data_dir: str, accounts: int) -> UnitHost:
    settings = {
        "shards": SHARDS,
        "partitions": PARTITIONS,
        "tariffs_dir": str(ROOT / "conf" / "tariffs"),
    }
    host = UnitHost(node="n", data_dir=data_dir, shards=SHARDS, factory=engine_factory(settings))
    for unit in [f"acct-{i:02d}" for i in range(SHARDS)] + [f"part-{i}" for i in range(PARTITIONS)]:
        host.open_unit(unit, 1)
    for index in range(accounts):
        plan, mode = plan_of(index)
        account_id, msisdn = account_of(index), msisdn_of(index)
        subscriptions = [Subscription(plan_id=plan, start_s=0)]
        account = Account(
            account_id=account_id, currency="EUR", payment_mode=mode,
            subscriptions=tuple(subscriptions),
        )  # fmt: skip
        host.run(shard_of(account_id, SHARDS), 1,
                 ops.CreateAccount(request_id=f"c{index}", account=account))  # fmt: skip
        host.run(partition_of(msisdn, PARTITIONS), 1,
                 PutSubscriber(request_id=f"d{index}", msisdn=msisdn, account_id=account_id,
                               subscriptions=subscriptions))  # fmt: skip
    return host


def run(args: argparse.Namespace, mode: str, switch_s: float) -> dict[str, Any]:
    sys.setswitchinterval(switch_s)
    records = workload(args.records, args.accounts, args.seed)
    with tempfile.TemporaryDirectory(prefix="pbhostreads") as data:
        host = _host(data, args.accounts)
        done = threading.Event()
        latencies_ms: list[float] = []

        def submit(share: list[Any]) -> None:
            for batch in batches_of(share, args.batch):
                by_partition: dict[str, list[Any]] = {}
                for record in batch:
                    unit = partition_of(record.served_msisdn, PARTITIONS)
                    by_partition.setdefault(unit, []).append(record)
                for unit, items in by_partition.items():
                    host.run(unit, 1, Submit(items=items, at_s=int(time.time())))

        def query() -> None:
            rng = random.Random(1)
            ask = getattr(host, mode)
            while not done.is_set():
                account_id = account_of(rng.randrange(args.accounts))
                t0 = time.perf_counter()
                ask(shard_of(account_id, SHARDS), 1, ops.GetAccount(account_id=account_id))
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                done.wait(0.005)

        querier = threading.Thread(target=query)
        writers = [threading.Thread(target=submit, args=(records[i::2],)) for i in range(2)]
        querier.start()
        started = time.perf_counter()
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        elapsed = time.perf_counter() - started
        done.set()
        querier.join()
        host.close_all()
    latencies_ms.sort()
    return {
        "records_per_s": round(len(records) / elapsed),
        "queries": len(latencies_ms),
        "query_p50_ms": round(statistics.median(latencies_ms), 2),
        "query_p99_ms": round(latencies_ms[int(0.99 * (len(latencies_ms) - 1))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    summary = {}
    for mode in ("run", "read"):
        for switch_s in (0.005, 0.0005):
            key = f"{mode}_switch_{switch_s * 1000:g}ms"
            summary[key] = run(args, mode, switch_s)
            print(f"{key}: {summary[key]}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
