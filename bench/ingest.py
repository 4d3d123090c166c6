"""End-to-end ingestion through the gRPC gateway, against a straight-line baseline.

Untimed set-up: generate ``--records`` mixed usage records from a seed (the
generator of ``bench/rating.py``, folded onto ``--accounts`` subscribers),
start a local cluster (embedded default: one Ray node, every unit on it,
synced RocksDB per unit), and create the accounts through the SDK.

Timed, in one run:

1. **Cluster**: ``--streams`` client threads each stream their share of the
   records in batches of ``--batch`` through the gateway (StreamUsage); every
   result is durable (synced WAL) before it is answered. Meanwhile one thread
   asks GetBalance of random accounts; its latencies give ``query_p50_ms`` and
   ``query_p99_ms``.
2. **Cluster, columnar**: the same records under other ids, as Arrow columns
   through the bulk path (SubmitUsageColumns: Arrow IPC in, result columns
   out), same streams, batches and query thread.

Besides the query thread, which shares the streaming client's process (and its
GIL), a second querier runs in a process of its own, as a self-care app would:
``outside_query_p50_ms`` and ``outside_query_p99_ms``. The gateways' own count and
timing of the queries they answered from their node's copies (``local_reads``,
``local_read_p99_ms``: docs/architecture.md, "Local reads") close the figures.
3. **Baselines**: the same records in one process, with no Ray and no gRPC,
   through one RatingPartition and one AccountShard, one synced RocksDB batch
   per batch: decoding the protobuf batches and ``submit`` (per record), and
   decoding the Arrow IPC batches and ``submit_columns`` (columnar).

``--runs`` repeats every timed part (fresh ids on the cluster, fresh stores for
the baselines) and reports the median of each figure. The last line is one
JSON object with ``columnar_records_per_s``, ``columnar_baseline_records_per_s``,
``ratio`` (columnar end to end ÷ columnar baseline), ``records_per_s``,
``baseline_records_per_s``, ``per_record_ratio``, ``query_p50_ms`` and
``query_p99_ms`` (during per-record ingestion), ``columnar_query_p99_ms``, the
``outside_`` querier's figures and the gateways' ``local_`` ones.

With ``--mode replicated`` a second cluster runs the same records in the same
run: ``--replica-nodes`` simulated nodes (default 2) in ``storage.mode =
"replicated"`` (RF 2, ``min_in_sync`` 2: every synced batch also shipped to a
follower on another node and synced there before it is answered). Its figures
carry the prefix ``replicated_``; ``replicated_ratio`` is its per-record
throughput over the one-node ``local`` cluster's (``replicated_columnar_ratio``
the same for the bulk path): the cost of the second copy. Where that cost goes
is read from the nodes' Prometheus pages after its runs (``replicated_profile``):
seconds spent shipping batches to followers (``petribill_replication_seconds``,
inside the unit calls) against the seconds of the unit calls themselves
(``petribill_unit_call_seconds``), summed over the nodes.

With ``--mode shared`` the second cluster is ``--replica-nodes`` simulated nodes on
this machine over one shared data folder (``storage.mode = "shared"``), one copy of
each unit: the units spread over that many host processes, as ``hosts_per_node``
would spread them on one machine (issue #13 item 5). ``shared_ratio`` is its
throughput over the one-node cluster's: what more host processes buy here.

``--hosts-per-node K`` (default 1) runs every cluster of the run with ``[sharding]
hosts_per_node = K``: each node's units spread over K host processes (actors.slots).
Compare two runs, K = 1 and K = 2, for what more host processes per node buy.

    .venv/bin/python bench/ingest.py [--records 100000] [--accounts 2000] [--streams 4] [--runs 3]
        [--mode local|replicated|shared] [--replica-nodes 2] [--hosts-per-node 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow as pa  # noqa: E402
from petribill.v1 import usage_pb2  # noqa: E402
from rating import generate  # noqa: E402

from actors.partition.bulk import DirectReach  # noqa: E402
from actors.partition.engine import PartitionConfig, RatingPartition  # noqa: E402
from actors.partition.ops import PutSubscriber, Submit, SubmitColumns  # noqa: E402
from actors.shard import ops  # noqa: E402
from actors.shard.engine import AccountShard  # noqa: E402
from billing.accounts import Account, PaymentMode, Subscription  # noqa: E402
from billing.bundles import CatalogueTariff  # noqa: E402
from billing.charging.batch import ChargingConfig  # noqa: E402
from billing.rating import load_catalogue  # noqa: E402
from billing.records import UsageRecord  # noqa: E402
from cluster.api.columns import ipc_bytes, read_ipc  # noqa: E402
from cluster.cli.file_columns import records_table  # noqa: E402
from cluster.client import PetribillClient, PetribillError  # noqa: E402
from cluster.config import parse_config  # noqa: E402
from cluster.deploy.runtime import Runtime  # noqa: E402
from cluster.wire import record_from_proto, record_to_proto  # noqa: E402
from cluster.wire_columns import read_records  # noqa: E402

TARIFFS = ROOT / "conf" / "tariffs"


def msisdn_of(index: int) -> str:
    return f"49151{index:07d}"


def account_of(index: int) -> str:
    return f"acc-{index:06d}"


def workload(records: int, accounts: int, seed: int) -> list[UsageRecord]:
    """The rating benchmark's mix, with subscribers folded onto ``accounts`` numbers."""
    out = []
    for record in generate(records, seed):
        index = int(record.served_msisdn[-7:]) % accounts
        out.append(dataclasses.replace(record, served_msisdn=msisdn_of(index)))
    return out


def plan_of(index: int) -> tuple[str, PaymentMode]:
    return ("business", PaymentMode.POSTPAID) if index % 5 == 0 else ("smart", PaymentMode.PREPAID)


def batches_of(records: list[UsageRecord], size: int) -> list[list[UsageRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def renamed(records: list[UsageRecord], tag: str) -> list[UsageRecord]:
    """The records under other ids (``<tag><source>:<id>``): new to a cluster that has
    charged the originals."""
    return [dataclasses.replace(r, record_id=tag + r.record_id) for r in records]


# -- the cluster ----------------------------------------------------------------


def create_accounts(client: PetribillClient, accounts: int) -> None:
    def create(index: int) -> None:
        plan, mode = plan_of(index)
        client.create_account(
            account_id_of := account_of(index),
            payment_mode=mode.value,
            plan_id=plan,
            msisdns=[msisdn_of(index)],
            request_id=f"bench-create-{account_id_of}",
        )
        if mode is PaymentMode.PREPAID:
            client.top_up(account_id_of, "50.00", request_id=f"bench-topup-{account_id_of}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(accounts)))


def run_cluster(
    args: argparse.Namespace, records: list[UsageRecord], *, mode: str = "local", nodes: int = 1
) -> dict[str, Any]:
    config = parse_config(
        {
            "sharding": {
                "shards": args.shards,
                "partitions": args.partitions,
                "hosts_per_node": args.hosts_per_node,
            },
            "storage": {"mode": mode},
        },
        source="bench",
    )
    with tempfile.TemporaryDirectory(prefix="pbbench") as data:
        runtime = Runtime(config, data_dir=Path(data), tariffs_dir=TARIFFS, nodes=nodes, port=0)
        info = runtime.start(timeout_s=300)
        try:
            client = PetribillClient(info.gateways, timeout_s=120)
            started = time.perf_counter()
            create_accounts(client, args.accounts)
            print(f"created {args.accounts:,} accounts in {time.perf_counter() - started:.1f} s")
            before = profile() if mode == "replicated" else None
            runs: list[dict[str, Any]] = []
            for run in range(args.runs):
                per_record = measure_cluster(
                    args, client, renamed(records, f"r{run}"), gateways=info.gateways
                )
                print(f"cluster, per record, run {run + 1}: {per_record}")
                columnar = measure_cluster(
                    args, client, renamed(records, f"c{run}"), gateways=info.gateways, columnar=True
                )
                print(f"cluster, columnar, run {run + 1}: {columnar}")
                runs.append(
                    {
                        **per_record,
                        "columnar_records_per_s": columnar["records_per_s"],
                        "columnar_elapsed_s": columnar["elapsed_s"],
                        "columnar_statuses": columnar["statuses"],
                        "columnar_query_p50_ms": columnar["query_p50_ms"],
                        "columnar_query_p99_ms": columnar["query_p99_ms"],
                        "columnar_outside_query_p50_ms": columnar["outside_query_p50_ms"],
                        "columnar_outside_query_p99_ms": columnar["outside_query_p99_ms"],
                    }
                )
            figures = medians(runs)
            figures.update(gateway_reads(runtime))
            if before is not None:
                figures["profile"] = profile(since=before, wait_s=20)
            return figures
        finally:
            runtime.stop()


def gateway_reads(runtime: Runtime) -> dict[str, float]:
    """Queries a gateway answered from its node's copies (``local_reads``), passed to the
    hosts (``local_reads_passed``), how long its latest local reads took
    (``local_read_p99_ms``...: ``cluster.backend.reads``) and how late its event loop
    answered a 5 ms timer (``loop_lag_p99_ms``); the largest over the gateways. And
    the operations per coalesced host call over the whole run (``ops_per_host_call``:
    the bulk path's parts, ``actors.coalesce``)."""
    import ray

    stats = ray.get([g.stats.remote() for g in runtime.gateways.values()], timeout=30)
    wanted = [k for k in stats[0] if k.startswith(("local_", "loop_lag_"))]
    found = {key: max(s.get(key, 0) for s in stats) for key in wanted}
    batches = sum(s.get("coalesced_batches", 0) for s in stats)
    calls = sum(s.get("coalesced_calls", 0) for s in stats)
    found["ops_per_host_call"] = round(calls / batches, 2) if batches else 0.0
    return found


_SERIES = re.compile(
    r"^ray_petribill_(replication_seconds|unit_call_seconds)_(sum|count)\{([^}]*)\} (\S+)$", re.M
)


def profile(since: dict[str, float] | None = None, wait_s: float = 0) -> dict[str, float]:
    """Seconds and counts of batch shipping to followers and of unit calls, summed over
    every node's Prometheus page (minus ``since``); waits up to ``wait_s`` for Ray to
    publish the shipping of the last batches (it does every few seconds)."""
    import urllib.request

    from actors.metrics import metrics_urls

    deadline = time.monotonic() + wait_s
    while True:
        found: dict[str, float] = {}
        for url in metrics_urls().values():
            try:
                with urllib.request.urlopen(url, timeout=10) as page:
                    text = page.read().decode()
            except OSError:
                continue
            for name, part, _tags, value in _SERIES.findall(text):
                key = f"{name}_{part}"
                found[key] = found.get(key, 0.0) + float(value)
        if since is not None:
            found = {k: v - since.get(k, 0.0) for k, v in found.items()}
        calls = found.get("unit_call_seconds_count", 0.0)
        shipped = found.get("replication_seconds_count", 0.0)
        if since is None or time.monotonic() >= deadline or (calls and shipped):
            break
        time.sleep(2)
    if since is None:
        return found
    ship_s = found.get("replication_seconds_sum", 0.0)
    call_s = found.get("unit_call_seconds_sum", 0.0)
    return {
        "batches_shipped": round(shipped),
        "ship_s": round(ship_s, 2),
        "ship_ms_mean": round(1000 * ship_s / shipped, 2) if shipped else 0.0,
        "unit_calls": round(calls),
        "unit_call_s": round(call_s, 2),
        "ship_share_of_unit_calls": round(ship_s / call_s, 3) if call_s else 0.0,
    }


def outside_queries(gateways: list[str], accounts: int, ready: Any, stop: Any, out: Any) -> None:
    """GetBalance of random accounts every 20 ms from a process of its own (not sharing
    the streaming client's GIL), until ``stop``; its latencies (ms) go to ``out``."""
    rng = random.Random(2)
    latencies_ms: list[float] = []
    with PetribillClient(gateways, timeout_s=120) as client:
        client.get_balance(account_of(0))  # the channel is up before the timed part
        ready.set()
        while not stop.is_set():
            t0 = time.perf_counter()
            with contextlib.suppress(PetribillError):  # a failure is counted as its time
                client.get_balance(account_of(rng.randrange(accounts)))
            latencies_ms.append((time.perf_counter() - t0) * 1000)
            stop.wait(0.02)
    out.put(latencies_ms)


def percentiles(latencies_ms: list[float], prefix: str = "") -> dict[str, float]:
    """``<prefix>query_p50_ms`` and ``<prefix>query_p99_ms`` of ``latencies_ms``."""
    ordered = sorted(latencies_ms) or [0.0]
    return {
        f"{prefix}query_p50_ms": round(statistics.median(ordered), 2),
        f"{prefix}query_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def measure_cluster(
    args: argparse.Namespace,
    client: PetribillClient,
    records: list[UsageRecord],
    *,
    gateways: list[str],
    columnar: bool = False,
) -> dict[str, Any]:
    shares = [records[i :: args.streams] for i in range(args.streams)]
    tables = [[records_table(b) for b in batches_of(share, args.batch)] for share in shares]
    done = threading.Event()
    latencies_ms: list[float] = []
    failed: list[str] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def stream(index: int) -> None:
        counts: dict[str, int] = {}
        if columnar:
            for answer in client.stream_usage_columns(tables[index], window=2):
                status = answer.column("status").cast(pa.string())
                for found in status.value_counts().to_pylist():
                    name = "RECORD_STATUS_" + str(found["values"]).upper()
                    counts[name] = counts.get(name, 0) + int(found["counts"])
        else:
            batches = batches_of(shares[index], args.batch)
            for response in client.stream_usage(batches, window=2):
                for result in response.results:
                    name = usage_pb2.RecordStatus.Name(result.status)
                    counts[name] = counts.get(name, 0) + 1
        with lock:
            for name, count in counts.items():
                statuses[name] = statuses.get(name, 0) + count

    def query() -> None:
        rng = random.Random(1)
        while not done.is_set():
            account = account_of(rng.randrange(args.accounts))
            t0 = time.perf_counter()
            try:
                client.get_balance(account)
            except PetribillError as exc:  # counted as its time; the run goes on
                failed.append(str(exc)[:200])
            latencies_ms.append((time.perf_counter() - t0) * 1000)
            done.wait(0.02)

    spawn = multiprocessing.get_context("spawn")
    ready, stop, out = spawn.Event(), spawn.Event(), spawn.Queue()
    outside = spawn.Process(
        target=outside_queries, args=(gateways, args.accounts, ready, stop, out), daemon=True
    )
    outside.start()
    assert ready.wait(120), "the outside querier did not start"
    querier = threading.Thread(target=query, daemon=True)
    started = time.perf_counter()
    querier.start()
    with ThreadPoolExecutor(args.streams) as pool:
        list(pool.map(stream, range(args.streams)))
    elapsed = time.perf_counter() - started
    done.set()
    stop.set()
    querier.join()
    outside_ms: list[float] = out.get(timeout=60)
    outside.join(10)
    answered = sum(statuses.values())
    assert answered == len(records), f"{answered} results for {len(records)} records"
    return {
        "records_per_s": round(len(records) / elapsed),
        "elapsed_s": round(elapsed, 2),
        "statuses": statuses,
        "queries": len(latencies_ms),
        "queries_failed": len(failed),
        **percentiles(latencies_ms),
        "outside_queries": len(outside_ms),
        **percentiles(outside_ms, "outside_"),
    }


# -- the straight line ----------------------------------------------------------


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median of the runs (other values: the last run's)."""
    out = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def run_baseline(
    args: argparse.Namespace, records: list[UsageRecord], *, columnar: bool
) -> dict[str, Any]:
    """Decode, rate, charge and commit in one process: no Ray, no gRPC."""
    catalogue = load_catalogue(TARIFFS)
    if columnar:
        requests = [ipc_bytes(records_table(batch)) for batch in batches_of(records, args.batch)]
    else:
        requests = [
            usage_pb2.SubmitUsageRequest(
                records=[record_to_proto(r) for r in batch]
            ).SerializeToString()
            for batch in batches_of(records, args.batch)
        ]
    with tempfile.TemporaryDirectory(prefix="pbbase") as data:
        shard = AccountShard.open(
            Path(data) / "acct-00",
            epoch=1,
            tariff=CatalogueTariff(catalogue),
            unit_id="acct-00",
            catalogue=catalogue,
            charging=ChargingConfig(tz=catalogue.timezone),
        )
        partition = RatingPartition.open(
            Path(data) / "part-0",
            epoch=1,
            unit_id="part-0",
            catalogue=catalogue,
            config=PartitionConfig(shards=1),
        )
        try:
            for index in range(args.accounts):
                plan, mode = plan_of(index)
                account = Account(
                    account_id=account_of(index), currency="EUR", payment_mode=mode,
                    subscriptions=(Subscription(plan_id=plan, start_s=0),),
                )  # fmt: skip
                shard.run(ops.CreateAccount(request_id=f"c{index}", account=account))
                if mode is PaymentMode.PREPAID:
                    shard.run(ops.TopUp(
                        request_id=f"t{index}", account_id=account_of(index),
                        amount=50_000_000, currency="EUR", at_s=0,
                    ))  # fmt: skip
                partition.put_subscriber(PutSubscriber(
                    request_id=f"d{index}", msisdn=msisdn_of(index), account_id=account_of(index),
                    subscriptions=[Subscription(plan_id=plan, start_s=0)],
                ))  # fmt: skip

            def charge(shard_id: str, items: list[Any]) -> list[Any]:
                return list(shard.run(ops.ChargeBatch(items=items, at_s=int(time.time()))))

            reach = DirectReach({"part-0": partition}, {"acct-00": shard})
            started = time.perf_counter()
            for raw in requests:
                if columnar:
                    wire = read_records(read_ipc(raw))  # type: ignore[arg-type]
                    op = SubmitColumns(
                        usage=wire.usage,
                        positions=wire.positions,
                        rejects=wire.rejects,
                        at_s=int(time.time()),
                    )
                    answer = partition.submit_columns(op, reach)
                    ipc_bytes(answer)  # the answer as the gateway would send it
                else:
                    request = usage_pb2.SubmitUsageRequest.FromString(raw)
                    batch = [record_from_proto(p, index=i) for i, p in enumerate(request.records)]
                    partition.submit(Submit(items=batch, at_s=int(time.time())), charge)
            elapsed = time.perf_counter() - started
        finally:
            partition.close()
            shard.close()
    return {"records_per_s": round(len(records) / elapsed), "elapsed_s": round(elapsed, 2)}


def baselines(args: argparse.Namespace, records: list[UsageRecord]) -> dict[str, Any]:
    """Both straight lines, ``--runs`` times each; the medians."""
    runs = []
    for run in range(args.runs):
        plain = run_baseline(args, records, columnar=False)
        columns = run_baseline(args, records, columnar=True)
        print(f"baseline run {run + 1} (one process, no Ray, no gRPC): {plain}, columnar {columns}")
        runs.append(
            {
                "baseline_records_per_s": plain["records_per_s"],
                "columnar_baseline_records_per_s": columns["records_per_s"],
            }
        )
    return medians(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--runs", type=int, default=3, help="timed runs; medians reported")
    parser.add_argument("--no-cluster", action="store_true", help="the baselines only")
    parser.add_argument(
        "--mode",
        choices=("local", "replicated", "shared"),
        default="local",
        help="also run a second cluster of --replica-nodes nodes in this storage mode: "
        "replicated (the cost of the second copy) or shared (several host processes "
        "over one folder on this machine: what more hosts per node buy)",
    )
    parser.add_argument("--replica-nodes", type=int, default=2)
    parser.add_argument(
        "--hosts-per-node",
        type=lambda text: text if text == "auto" else int(text),
        default=1,
        help="[sharding] hosts_per_node of every cluster of the run: host processes per "
        "node, each serving its share of the node's units (an integer, or auto)",
    )
    args = parser.parse_args()

    records = workload(args.records, args.accounts, args.seed)
    print(f"workload: {len(records):,} records over {args.accounts:,} accounts (untimed)")
    baseline = baselines(args, records)
    print(f"baselines, medians of {args.runs}: {baseline}")
    if args.no_cluster:
        print(json.dumps({"records": len(records), "runs": args.runs, **baseline}))
        return
    cluster = run_cluster(args, records)
    print(f"cluster (gateway, {args.streams} streams), medians of {args.runs}: {cluster}")
    summary = {
        "records": len(records),
        "runs": args.runs,
        "hosts_per_node": args.hosts_per_node,
        **cluster,
        **baseline,
        "ratio": round(
            cluster["columnar_records_per_s"] / baseline["columnar_baseline_records_per_s"], 3
        ),
        "per_record_ratio": round(cluster["records_per_s"] / baseline["baseline_records_per_s"], 3),
    }
    if args.mode != "local":
        mode = args.mode
        other = run_cluster(args, records, mode=mode, nodes=args.replica_nodes)
        print(f"{mode} cluster ({args.replica_nodes} nodes): {other}")
        summary.update({f"{mode}_{k}": v for k, v in other.items()})
        summary[f"{mode}_ratio"] = round(other["records_per_s"] / cluster["records_per_s"], 3)
        summary[f"{mode}_columnar_ratio"] = round(
            other["columnar_records_per_s"] / cluster["columnar_records_per_s"], 3
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
