"""What the gateway's security costs a call: tokens, roles, audit, TLS and mutual TLS.

Four real gateways (``cluster.gateway.server.Gateway``) over one in-process
cluster (real engines on RocksDB, no Ray): plaintext without security (the
baseline), plaintext with tokens and the audit log, TLS with both, mutual TLS
with both. One synchronous SDK client per gateway calls, in interleaved
rounds (a noisy neighbour hits all alike), ``AccountService.GetBalance``
(a read: token, role and account checks) and ``AdminService.ClusterStatus``
(an operator call: also written to the audit log). Each run's figure is the
median latency per call; the run is repeated ``--runs`` times and the
median of the runs is printed with its ratio to the baseline of the same run.

Run: ``PYTHONPATH=.:proto .venv/bin/python bench/gateway_security.py`` (≈30 s).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from cluster.client import PetribillClient  # noqa: E402
from cluster.deploy.inprocess import InProcessCluster  # noqa: E402
from cluster.gateway.guard import SecuritySettings  # noqa: E402
from cluster.gateway.server import Gateway  # noqa: E402
from cluster.security.certs import write_dev_certs  # noqa: E402
from cluster.security.roles import Role  # noqa: E402
from cluster.security.tokens import create_token  # noqa: E402

CONFIGS = ("plaintext", "tokens+audit", "tls+tokens+audit", "mtls+tokens+audit")


def _loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def _clients(
    folder: Path, cluster: InProcessCluster, loop: Any
) -> tuple[dict[str, Any], list[Gateway]]:
    """A gateway per configuration and the operator's and CRM's clients of each."""
    certs = write_dev_certs(folder / "certs")
    tokens_file = folder / "tokens.jsonl"
    operator = create_token(tokens_file, role=Role.OPERATOR).bearer
    crm = create_token(tokens_file, role=Role.CRM).bearer
    guarded = {"tokens_file": str(tokens_file), "audit_dir": str(folder / "audit")}
    tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    settings = {
        "plaintext": SecuritySettings(),
        "tokens+audit": SecuritySettings(**guarded),
        "tls+tokens+audit": SecuritySettings(**guarded, **tls),
        "mtls+tokens+audit": SecuritySettings(**guarded, **tls, client_ca=str(certs.ca)),
    }
    credentials = {
        "plaintext": {},
        "tokens+audit": {},
        "tls+tokens+audit": {"ca": certs.ca},
        "mtls+tokens+audit": {"ca": certs.ca, "cert": certs.client_cert, "key": certs.client_key},
    }
    backend = cluster.backend()
    gateways, clients = [], {}
    for name in CONFIGS:
        gateway = Gateway(backend, "127.0.0.1", 0, security=settings[name])
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(10)
        gateways.append(gateway)
        secured = name != "plaintext"
        clients[name] = {
            "crm": PetribillClient(
                gateway.address, token=crm if secured else None, **credentials[name]
            ),
            "operator": PetribillClient(
                gateway.address, token=operator if secured else None, **credentials[name]
            ),
        }
    return clients, gateways


def _median_ms(calls: list[Callable[[], Any]], rounds: int) -> list[float]:
    """Median latency (ms) of each call over ``rounds`` interleaved rounds."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for index, call in enumerate(calls):
            began = time.perf_counter()
            call()
            times[index].append((time.perf_counter() - began) * 1000)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    loop = _loop()
    with tempfile.TemporaryDirectory(prefix="pbbench") as folder_text:
        folder = Path(folder_text)
        cluster = InProcessCluster(folder / "data", ROOT / "conf" / "tariffs").start()
        clients, gateways = _clients(folder, cluster, loop)
        try:
            clients["tokens+audit"]["crm"].create_account("bench-1", msisdns=["4915100000001"])
            rpcs: dict[str, Callable[[Any], Callable[[], Any]]] = {
                "GetBalance": lambda c: lambda: c["crm"].get_balance("bench-1"),
                "ClusterStatus": lambda c: lambda: c["operator"].cluster_status(),
            }
            runs: dict[str, list[list[float]]] = {rpc: [] for rpc in rpcs}
            for rpc, make in rpcs.items():
                calls = [make(clients[name]) for name in CONFIGS]
                for call in calls:  # warm up channels and handshakes
                    call()
                for _ in range(args.runs):
                    runs[rpc].append(_median_ms(calls, args.rounds))
        finally:
            for pair in clients.values():
                for client in pair.values():
                    client.close()
            for gateway in gateways:
                asyncio.run_coroutine_threadsafe(gateway.stop(0.5), loop).result(10)
            cluster.close()
    result: dict[str, Any] = {"bench": "gateway_security", "rounds": args.rounds, "runs": args.runs}
    print(f"{'rpc':<14} {'config':<20} {'median ms':>10} {'ratio':>7}")
    for rpc, per_run in runs.items():
        ratios = [[ms / run[0] for ms in run] for run in per_run]
        for index, name in enumerate(CONFIGS):
            median_ms = statistics.median(run[index] for run in per_run)
            ratio = statistics.median(r[index] for r in ratios)
            print(f"{rpc:<14} {name:<20} {median_ms:>10.3f} {ratio:>7.2f}")
            result[f"{rpc}.{name}.ms"] = round(median_ms, 3)
            result[f"{rpc}.{name}.ratio"] = round(ratio, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
