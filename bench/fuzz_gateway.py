"""The long run of the gateway fuzzer (``chaos.fuzz``; CI runs a short one in
``tests/test_fuzz_gateway.py``): random, structured and mutated requests to every
RPC of a real gateway over an in-process cluster on RocksDB, then the books.

Prints the requests tried, the statuses seen (overall and per RPC), every
problem (an INTERNAL or UNKNOWN answer, or an undocumented status), and whether
Reconcile balanced and every shard's ledger replayed to its balances. The last
line is one JSON object: ``requests``, ``seconds``, ``statuses``, ``problems``,
``reconcile_balanced``, ``audit_ok``, ``ok``. Exit status 1 when not ok.

    PYTHONPATH=.:proto .venv/bin/python bench/fuzz_gateway.py [--examples 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from petribill.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

from actors.shard import ops  # noqa: E402
from chaos.fuzz import Case, Tally, fuzz_case, safe_paths, seed_accounts, send  # noqa: E402
from cluster.deploy.inprocess import InProcessCluster  # noqa: E402
from cluster.gateway.server import Gateway  # noqa: E402

TARIFFS = ROOT / "conf" / "tariffs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="requests to send")
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed (replays a run)")
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)

    with tempfile.TemporaryDirectory(prefix="pbfuzz") as folder:
        scratch = str(Path(folder) / "scratch")
        Path(scratch).mkdir()
        cluster = InProcessCluster(Path(folder) / "data", TARIFFS).start()
        backend = cluster.backend()
        gateway = Gateway(backend, "127.0.0.1", 0)
        address = on_loop(gateway.start())
        tally = Tally()
        began = time.monotonic()
        try:
            with grpc.insecure_channel(address) as channel:
                seed_accounts(channel)

                @seed(args.seed)
                @settings(
                    max_examples=args.examples,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=fuzz_case(scratch))
                def one(case: Case) -> None:
                    if safe_paths(case, scratch):
                        tally.add(case, *send(channel, case))

                one()
                seconds = time.monotonic() - began
                answer = admin_pb2_grpc.AdminServiceStub(channel).Reconcile(
                    admin_pb2.ReconcileRequest(), timeout=60
                )
            shards = backend.cluster.router.all_shards()
            reports = on_loop(backend.cluster.run_each(shards, ops.Audit(), timeout_s=60), 120)
        finally:
            on_loop(gateway.stop(0.5))
            cluster.close()
    audit_ok = all(report.ok for report in reports.values())
    for line in tally.lines():
        print(line)
    print("per RPC:")
    for name, count in sorted(tally.by_rpc.items()):
        print(f"  {name:<40} {count}")
    print(f"{tally.tried / seconds:.0f} requests/s over {seconds:.1f} s")
    print(f"reconcile balanced: {answer.balanced} ({answer.detail})")
    print(f"shard audits ok: {audit_ok}")
    ok = not tally.problems and answer.balanced and audit_ok
    figures = {
        "requests": tally.tried,
        "seconds": round(seconds, 1),
        "statuses": dict(tally.statuses.most_common()),
        "problems": len(tally.problems),
        "reconcile_balanced": answer.balanced,
        "audit_ok": audit_ok,
        "ok": ok,
    }
    print(json.dumps(figures, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
