"""Online charging through the gateway: concurrent sessions (initial, update, terminate).

Untimed set-up: start a local cluster (the embedded default: one Ray node with its own
temp dir and free loopback ports, every unit on it, synced RocksDB per unit, a gateway),
and create ``--accounts`` prepaid accounts through the SDK.

Timed, in one run:

1. **Cluster**: ``C`` concurrent sessions (asyncio tasks on one grpc.aio channel in this
   process, or with ``--clients N`` spread over N client processes, each its own channel,
   the clock started once every one is warm): each runs one session after another for
   ``--seconds``, every session an INITIAL (voice to a UK number, 60 s asked), an UPDATE
   (30 s used, 60 s asked) and a TERMINATE (20 s used), each step one
   ``ChargingService.ChargeSession`` call with its own request id, on a prepaid account
   (the subscriber named by account id, or with ``--by msisdn`` by number). A step's
   latency is from the client's call to its answer; every answer is checked (SUCCESS; the
   TERMINATE releases everything). ``--runs`` rounds at ``--concurrency`` (their medians
   are the headline figures), then one round per level of ``--sweep``.
2. **Baseline** (straight line, no Ray, no gRPC): the same steps of the same number of
   concurrent sessions on in-process account shards (``--shards`` of them, accounts spread
   by the cluster's hash), in rounds of ``C`` steps: each shard's part of a round applied
   in one commit (``ops.SessionSteps``, the group commit the cluster does), and,
   for comparison, one commit per step (the engine before group commit); every commit
   is synced before the next step, as in the cluster.

The last line is one JSON object: ``session_steps_per_s``, ``step_p50_ms``,
``step_p99_ms`` (medians of the rounds at ``--concurrency``), ``baseline_steps_per_s``,
``ratio`` (cluster ÷ baseline), the per-step-commit baseline, and the sweep.

    PYTHONPATH=.:proto .venv/bin/python bench/ocs.py [--concurrency 32] [--clients 1]
        [--sweep 1,8,32,128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

import grpc  # noqa: E402
from petribill.v1 import charging_pb2, charging_pb2_grpc, common_pb2  # noqa: E402

TARIFFS = ROOT / "conf" / "tariffs"
UK = "447700900123"  # international zone 1: 0.19 a minute, 60/1, no bundle
PLAN = "smart"
TOP_UP = "200.00"
ASKED_S, USED_S, FINAL_S = 60, 30, 20
OK = charging_pb2.SESSION_RESULT_SUCCESS
INITIAL, UPDATE, TERMINATE = (
    charging_pb2.SESSION_STEP_INITIAL,
    charging_pb2.SESSION_STEP_UPDATE,
    charging_pb2.SESSION_STEP_TERMINATE,
)


def account_of(index: int) -> str:
    return f"ocs-{index:05d}"


def msisdn_of(index: int) -> str:
    return f"49160{index:07d}"


def quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


# -- the cluster ------------------------------------------------------------------------


def create_accounts(addresses: list[str], accounts: int) -> None:
    from cluster.client import PetribillClient

    with PetribillClient(addresses, timeout_s=120) as client:

        def create(index: int) -> None:
            account_id = account_of(index)
            client.create_account(
                account_id, "prepaid", plan_id=PLAN, msisdns=[msisdn_of(index)],
                request_id=f"bench-create-{account_id}",
            )  # fmt: skip
            client.top_up(account_id, TOP_UP, request_id=f"bench-topup-{account_id}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(accounts)))


class CpuMeter:
    """CPU seconds (user + system, from /proc) of the cluster's processes by role, so a
    round can say what one step cost each process: where the time goes, in CPU."""

    ROLES = (("ray::RoutedHost", "host"), ("ray::GatewayActor", "gateway"),
             ("ray::CoordinatorService", "coordinator"), ("raylet", "raylet"),
             ("gcs_server", "gcs"))  # fmt: skip

    def __init__(self, pids: set[int]) -> None:
        self.roles: dict[int, str] = {}
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            role = next((r for marker, r in self.ROLES if marker in cmd.split(" ")[0]), "other")
            self.roles[pid] = role
        self.tick_s = 1 / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> dict[str, float]:
        found: dict[str, float] = {"client": time.process_time()}
        for pid, role in self.roles.items():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            found[role] = found.get(role, 0.0) + (int(fields[11]) + int(fields[12])) * self.tick_s
        return found

    @staticmethod
    def per_step_us(
        before: dict[str, float], after: dict[str, float], steps: int
    ) -> dict[str, int]:
        return {
            role: round((after[role] - before.get(role, 0.0)) / steps * 1e6)
            for role in after
            if steps and after[role] - before.get(role, 0.0) > 0
        }


class Sessions:
    """Runs concurrent sessions through one gateway and keeps every step's latency."""

    def __init__(
        self,
        address: str,
        args: argparse.Namespace,
        meter: CpuMeter | None,
        gateway: Any = None,
    ) -> None:
        self.address = address
        self.args = args
        self.meter = meter
        self.gateway = gateway  # the gateway's Ray actor: its coalescing counters
        self.round = 0
        self.ready: Callable[[], None] | None = None  # called once warm, before the clock

    def _coalesced(self) -> tuple[int, int]:
        if self.gateway is None:
            return 0, 0
        import ray

        stats = ray.get(self.gateway.stats.remote(), timeout=30)
        return stats.get("coalesced_batches", 0), stats.get("coalesced_calls", 0)

    def _request(self, sid: str, n: int, step: int, index: int) -> Any:
        who = (
            {"served_msisdn": msisdn_of(index)}
            if self.args.by == "msisdn"
            else {"account_id": account_of(index)}
        )
        if step == INITIAL:
            extra = {"service": common_pb2.SERVICE_VOICE, "called_number": UK,
                     "requested_units": ASKED_S}  # fmt: skip
        elif step == UPDATE:
            extra = {"used_units": USED_S, "requested_units": ASKED_S}
        else:
            extra = {"used_units": FINAL_S}
        return charging_pb2.SessionRequest(
            request_id=f"{sid}:{n}", session_id=sid, step=step, **who, **extra
        )

    async def _worker(
        self, stub: Any, worker: int, concurrency: int, until: float, out: dict[str, Any]
    ) -> None:
        latencies: list[float] = out["latencies_ms"]
        n = 0
        while time.perf_counter() < until:
            index = (worker + n * concurrency) % self.args.accounts
            sid = f"r{self.round}-w{worker}-s{n}"
            for k, step in enumerate((INITIAL, UPDATE, TERMINATE)):
                request = self._request(sid, k, step, index)
                began = time.perf_counter()
                answer = await stub.ChargeSession(request, timeout=30)
                latencies.append((time.perf_counter() - began) * 1000)
                if answer.result != OK:
                    out["failed"].append(f"{sid} step {k}: {answer.result} {answer.detail}")
                    return
            if answer.reserved.micros != 0:
                out["failed"].append(f"{sid}: {answer.reserved.micros} still reserved")
            out["sessions"] += 1
            n += 1

    async def drive(
        self, workers: Sequence[int], concurrency: int, seconds: float
    ) -> dict[str, Any]:
        """Run ``workers`` (of ``concurrency``) on one channel for ``seconds``, after a warm-up
        session: every step's latency, the failures, the sessions and this process's CPU."""
        out: dict[str, Any] = {"latencies_ms": [], "failed": [], "sessions": 0}
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = charging_pb2_grpc.ChargingServiceStub(channel)
            await self._warm(stub, min(workers, default=0))
            if self.ready is not None:
                self.ready()
            cpu0 = time.process_time()
            until = time.perf_counter() + seconds
            await asyncio.gather(*(self._worker(stub, w, concurrency, until, out) for w in workers))
            out["cpu_s"] = time.process_time() - cpu0
        return out

    def run_round(self, concurrency: int, seconds: float) -> dict[str, Any]:
        """One timed round of ``concurrency`` sessions, from ``--clients`` processes."""
        self.round += 1
        clients = max(1, min(self.args.clients, concurrency))
        cpu_before: dict[str, float] = {}
        batches_before = calls_before = 0
        began = 0.0

        def started() -> None:
            nonlocal cpu_before, batches_before, calls_before, began
            cpu_before = self.meter.snapshot() if self.meter is not None else {}
            batches_before, calls_before = self._coalesced()
            began = time.perf_counter()

        if clients == 1:
            self.ready = started
            parts = [asyncio.run(self.drive(range(concurrency), concurrency, seconds))]
        else:
            parts = _in_processes(self, clients, concurrency, seconds, started)
        elapsed = time.perf_counter() - began
        cpu_after = self.meter.snapshot() if self.meter is not None else {}
        batches_after, calls_after = self._coalesced()
        failed = [f for part in parts for f in part["failed"]]
        if failed:
            raise SystemExit(f"{len(failed)} sessions failed, e.g. {failed[:3]}")
        lat = sorted(ms for part in parts for ms in part["latencies_ms"])
        client_cpu = sum(part["cpu_s"] for part in parts)
        cpu_after["client"] = cpu_before.get("client", 0.0) + client_cpu
        batches = batches_after - batches_before
        return {
            "concurrency": concurrency,
            "clients": clients,
            "steps": len(lat),
            "session_steps_per_s": round(len(lat) / elapsed),
            "step_p50_ms": round(quantile(lat, 0.50), 2),
            "step_p99_ms": round(quantile(lat, 0.99), 2),
            "step_max_ms": round(lat[-1], 2),
            "client_cpu_share": round(client_cpu / elapsed, 2),
            "cpu_us_per_step": CpuMeter.per_step_us(cpu_before, cpu_after, len(lat)),
            "calls_per_host_call": round((calls_after - calls_before) / batches, 1)
            if batches
            else 0,
        }

    async def _warm(self, stub: Any, worker: int) -> None:
        """One session first: connections, handles and caches, untimed."""
        sid = f"r{self.round}-warm{worker}"
        for k, step in enumerate((INITIAL, UPDATE, TERMINATE)):
            answer = await stub.ChargeSession(self._request(sid, k, step, worker), timeout=60)
            if answer.result != OK:
                raise SystemExit(f"warm-up step {k} answered {answer.result}: {answer.detail}")


def _in_processes(
    sessions: Sessions, clients: int, concurrency: int, seconds: float, started: Callable[[], None]
) -> list[dict[str, Any]]:
    """Client ``i`` of ``clients`` processes runs the workers ``i, i + clients, ...``; the
    clock starts once every one is warm (its channel open, one session done)."""
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe() for _ in range(clients)]
    shared = (sessions.address, sessions.args, sessions.round)
    procs = [
        context.Process(
            target=_client_process, args=(*shared, i, clients, concurrency, seconds, child)
        )
        for i, (_, child) in enumerate(pipes)
    ]
    for proc in procs:
        proc.start()
    try:
        for parent, _ in pipes:
            _received(parent, 120)  # warm
        started()
        for parent, _ in pipes:
            parent.send("go")
        return [_received(parent, seconds + 120) for parent, _ in pipes]
    finally:
        for proc in procs:
            proc.join(timeout=30)


def _received(pipe: Any, timeout_s: float) -> Any:
    if not pipe.poll(timeout_s):
        raise SystemExit(f"a client process said nothing in {timeout_s:.0f} s")
    return pipe.recv()


def _client_process(
    address: str, args: argparse.Namespace, round_: int, index: int, clients: int,
    concurrency: int, seconds: float, pipe: Any,
) -> None:  # fmt: skip
    """One client process of a round (``--clients``): its share of the sessions."""
    sessions = Sessions(address, args, None)
    sessions.round = round_

    def wait_for_go() -> None:
        pipe.send("warm")
        pipe.recv()

    sessions.ready = wait_for_go
    workers = range(index, concurrency, clients)
    pipe.send(asyncio.run(sessions.drive(workers, concurrency, seconds)))


def measure(
    address: str, args: argparse.Namespace, meter: CpuMeter | None, gateway: Any = None
) -> dict[str, Any]:
    sessions = Sessions(address, args, meter, gateway)
    rounds = []
    for _ in range(args.runs):
        found = sessions.run_round(args.concurrency, args.seconds)
        print(f"  C={args.concurrency}: {found}", flush=True)
        rounds.append(found)
    sweep = {}
    for level in args.sweep:
        found = sessions.run_round(level, args.seconds)
        print(f"  sweep C={level}: {found}", flush=True)
        sweep[str(level)] = {k: found[k] for k in ("session_steps_per_s", "step_p50_ms",
                                                   "step_p99_ms")}  # fmt: skip
    return {
        "session_steps_per_s": round(statistics.median(r["session_steps_per_s"] for r in rounds)),
        "step_p50_ms": round(statistics.median(r["step_p50_ms"] for r in rounds), 2),
        "step_p99_ms": round(statistics.median(r["step_p99_ms"] for r in rounds), 2),
        "client_cpu_share": statistics.median(r["client_cpu_share"] for r in rounds),
        "cpu_us_per_step": {
            role: round(statistics.median(r["cpu_us_per_step"].get(role, 0) for r in rounds))
            for role in rounds[0]["cpu_us_per_step"]
        },
        "rounds": [r["session_steps_per_s"] for r in rounds],
        "sweep": sweep,
    }


def run_cluster(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.config import parse_config
    from cluster.deploy.runtime import Runtime

    config = parse_config(
        {"sharding": {"shards": args.shards, "partitions": args.partitions}}, source="bench"
    )
    with tempfile.TemporaryDirectory(prefix="pbocs") as data:
        runtime = Runtime(config, data_dir=Path(data), tariffs_dir=TARIFFS, nodes=1, port=0)
        info = runtime.start()
        try:
            started = time.perf_counter()
            create_accounts(info.gateways, args.accounts)
            print(f"created {args.accounts:,} accounts in {time.perf_counter() - started:.1f} s")
            profilers = profile(runtime, args) if args.profile else []
            try:
                meter = CpuMeter(runtime.local.pids()) if runtime.local is not None else None
                gateway = next(iter(runtime.gateways.values()), None)
                return measure(info.gateways[0], args, meter, gateway)
            finally:
                for proc in profilers:
                    proc.wait(timeout=120)
        finally:
            runtime.stop()


def profile(runtime: Any, args: argparse.Namespace) -> list[Any]:
    """Profile the host and the gateway process for the first round (``--profile DIR``):
    py-spy's collapsed stacks (``--native`` with C frames, ``--idle`` with waiting threads),
    or with ``--perf`` a ``perf record`` of the whole process, kernel and C++ included."""
    import subprocess

    from cluster.deploy.localray import _proc_table

    table = _proc_table()
    wanted = {"host": "ray::RoutedHost", "gateway": "ray::GatewayActor"}
    procs = []
    folder = Path(args.profile)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = str(int(args.seconds))
    for pid in sorted(runtime.local.pids()):
        cmd = table.get(pid, ("", "", ""))[2]
        for name, marker in wanted.items():
            if not cmd.startswith(marker):
                continue
            if args.perf:
                out = str(folder / f"{name}-{pid}.perf")
                argv = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", out,
                        "--", "sleep", seconds]  # fmt: skip
            else:
                argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                        "-d", seconds, "-r", "100", "-f", "raw",
                        "-o", str(folder / f"{name}-{pid}.txt")]  # fmt: skip
                # --native must stop the process to unwind C frames; otherwise do not stop it.
                argv += ["--native"] if args.native else ["--nonblocking"]
                argv += ["--idle"] if args.idle else []
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    return procs


# -- the straight line -------------------------------------------------------------------


def run_baseline(args: argparse.Namespace, concurrency: int, grouped: bool) -> dict[str, Any]:
    """The same sessions' steps on in-process shards, in rounds of ``concurrency`` steps:
    each shard's part of a round in one synced commit (``grouped``), or one per step."""
    from actors.routing import shard_id, shard_of
    from actors.shard import ops
    from actors.shard.engine import AccountShard
    from billing.accounts import Account, PaymentMode, Subscription
    from billing.bundles import CatalogueTariff
    from billing.charging.batch import ChargingConfig
    from billing.ocs.session import Quote
    from billing.rating import load_catalogue, price_enquiry
    from billing.records import Service

    try:  # the group commit of session steps (absent before it was built)
        from actors.shard import sessions
    except ImportError:
        sessions = None  # type: ignore[assignment]

    catalogue = load_catalogue(TARIFFS)
    tariff = CatalogueTariff(catalogue)
    now_s = int(time.time())
    rated = price_enquiry(
        catalogue, plan_id=PLAN, service=Service.VOICE, units=ASKED_S, at_s=now_s,
        called_number=UK, rating_group=None, content_item_id=None, roaming=False,
    )  # fmt: skip
    quote = Quote(
        service=Service.VOICE.value, usage_class=rated.usage_class,  # type: ignore[union-attr]
        price_key=rated.price_key, plan_id=rated.plan_id,  # type: ignore[union-attr]
        plan_version=rated.plan_version,  # type: ignore[union-attr]
    )  # fmt: skip
    if grouped and sessions is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="pbocsb") as data:
        shards = {}
        for i in range(args.shards):
            shards[shard_id(i)] = AccountShard.open(
                Path(data) / shard_id(i), epoch=1, tariff=tariff, unit_id=shard_id(i),
                catalogue=catalogue, charging=ChargingConfig(tz=catalogue.timezone),
            )  # fmt: skip
        try:
            for index in range(args.accounts):
                account = Account(
                    account_id=account_of(index), currency="EUR",
                    payment_mode=PaymentMode.PREPAID,
                    subscriptions=(Subscription(plan_id=PLAN, start_s=0),),
                )  # fmt: skip
                shard = shards[shard_of(account.account_id, args.shards)]
                shard.run(ops.CreateAccount(request_id=f"c{index}", account=account))
                shard.run(ops.TopUp(
                    request_id=f"t{index}", account_id=account.account_id,
                    amount=200_000_000, currency="EUR", at_s=now_s,
                ))  # fmt: skip

            def step_op(sid: str, k: int, index: int) -> Any:
                common = {"request_id": f"{sid}:{k}", "account_id": account_of(index),
                          "session_id": sid, "at_s": now_s, "now_s": now_s}  # fmt: skip
                if grouped:  # as the gateway sends it: the shard prices the INITIAL's quote
                    return sessions.SessionStep(
                        step=(sessions.INITIAL, sessions.UPDATE, sessions.TERMINATE)[k],
                        service=Service.VOICE, called_number=UK, requested_units=ASKED_S,
                        used_units=(0, USED_S, FINAL_S)[k], **common,
                    )  # fmt: skip
                if k == 0:
                    return ops.SessionInitial(quote=quote, requested_units=ASKED_S, **common)
                if k == 1:
                    return ops.SessionUpdate(used_units=USED_S, requested_units=ASKED_S, **common)
                return ops.SessionTerminate(used_units=FINAL_S, **common)

            steps = 0
            began = time.perf_counter()
            n = 0
            while time.perf_counter() - began < args.seconds:
                for k in range(3):
                    by_shard: dict[str, list[Any]] = {}
                    for worker in range(concurrency):
                        index = (worker + n * concurrency) % args.accounts
                        op = step_op(f"b-w{worker}-s{n}", k, index)
                        by_shard.setdefault(shard_of(op.account_id, args.shards), []).append(op)
                    for unit, group_ops in by_shard.items():
                        if grouped:
                            group = sessions.SessionSteps(steps=tuple(group_ops))
                            answers = shards[unit].run(group)
                            grants = [a.grant for a in answers]
                        else:
                            grants = [shards[unit].run(op).receipt for op in group_ops]
                        assert all(g is not None for g in grants), grants
                        steps += len(group_ops)
                n += 1
            elapsed = time.perf_counter() - began
        finally:
            for shard in shards.values():
                shard.close()
    return {"steps_per_s": round(steps / elapsed), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--clients", type=int, default=1,
        help="client processes the sessions are spread over (each its own channel)",
    )  # fmt: skip
    parser.add_argument("--sweep", default="1,8,32,128")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--by", choices=("account", "msisdn"), default="account")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--profile", help="py-spy the host and gateway into this folder")
    parser.add_argument("--idle", action="store_true", help="profile idle threads too")
    parser.add_argument("--native", action="store_true", help="profile native frames too")
    parser.add_argument("--perf", action="store_true", help="perf record instead of py-spy")
    args = parser.parse_args()
    args.sweep = [int(x) for x in args.sweep.split(",") if x]
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    baseline: dict[str, Any] = {}
    if not args.no_baseline:
        grouped = [run_baseline(args, args.concurrency, True) for _ in range(args.runs)]
        each = [run_baseline(args, args.concurrency, False) for _ in range(args.runs)]
        if grouped[0]:
            baseline["baseline_steps_per_s"] = statistics.median(g["steps_per_s"] for g in grouped)
        baseline["baseline_commit_each_steps_per_s"] = statistics.median(
            e["steps_per_s"] for e in each
        )
        print(f"baseline (in-process shards, no Ray, no gRPC): {baseline}", flush=True)
    cluster = run_cluster(args)
    summary: dict[str, Any] = {
        "concurrency": args.concurrency,
        "clients": args.clients,
        "by": args.by,
        **{k: cluster[k] for k in ("session_steps_per_s", "step_p50_ms", "step_p99_ms")},
        **baseline,
    }
    reference = baseline.get("baseline_steps_per_s") or baseline.get(
        "baseline_commit_each_steps_per_s"
    )
    if reference:
        summary["ratio"] = round(cluster["session_steps_per_s"] / reference, 3)
    summary.update(
        {k: cluster[k] for k in ("client_cpu_share", "cpu_us_per_step", "rounds", "sweep")}
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
