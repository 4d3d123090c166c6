"""Session steps coalesced into one commit per shard answer each its own money, and so do
their retries.

Real gRPC gateway and SDK over an in-process cluster on RocksDB (``running_gateways``).
The steps of many sessions are held at the gateway's backend until all have arrived and
then let go at once, so that they meet in the coalescer and on their shards: the
shards' commit counters show that they were committed in groups. Every answer must be
what the same step answers when the steps come one at a time (a second cluster, same
ids), money included, and a retry of every step — concurrent again, so grouped again —
must answer the same as the first time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from petribill.v1 import charging_pb2
from test_gateway_support import HookedBackend, LoopThread, running_gateways

from actors.store.codec import COMMITS_KEY, decode_u64
from billing.money import Money
from cluster.client import PetribillClient

pytestmark = pytest.mark.timeout(120)

T_NOV = 1_793_700_000  # 2026-11-03 10:00 UTC: one time band for every step
UK = "442071234567"  # international zone 1: 0.19 a minute, 60/1, no bundle of the smart plan
SESSIONS = 24
STEPS = ("initial", "update", "terminate")


def _account(n: int) -> str:
    return f"g{n:02d}"


def _step(client: PetribillClient, n: int, step: str) -> charging_pb2.SessionAnswer:
    """Step ``step`` of session ``n``: every session asks, uses and holds its own units,
    so that no two answers carry the same money."""
    sid = f"gs{n:02d}"
    common: dict[str, Any] = {"account_id": _account(n), "request_id": f"{sid}:{step}",
                              "at_s": T_NOV}  # fmt: skip
    if step == "initial":
        return client.charge_session(
            sid, "initial", service="voice", called_number=UK, requested_units=120 + 7 * n,
            **common,
        )  # fmt: skip
    if step == "update":
        return client.charge_session(
            sid, "update", used_units=61 + n, requested_units=90 + 5 * n, **common
        )
    return client.charge_session(sid, "terminate", used_units=7 + 3 * n, **common)


def _create(client: PetribillClient) -> None:
    for n in range(SESSIONS):
        client.create_account(_account(n), "prepaid", plan_id="smart")
        client.top_up(_account(n), Money(2_000_000 + 50_000 * n, "EUR"))


def _commits(backend: HookedBackend) -> int:
    """Synced commits of every account shard so far (their ``m/commits`` counters)."""
    counts: list[int] = []
    for host in backend.in_process.hosts.values():
        host.update_engines(
            "account", lambda engine: counts.append(decode_u64(engine.store.get(COMMITS_KEY)))
        )
    return sum(counts)


@contextmanager
def _held(loop: LoopThread, backend: HookedBackend, count: int) -> Iterator[None]:
    """Hold every call at the backend until ``count`` of them have arrived, then let them
    all go at once (they then queue in the coalescer together)."""
    gate = asyncio.Event()
    backend.gate = gate
    entered = backend.entered
    try:
        yield
    finally:
        deadline = time.monotonic() + 30
        while backend.entered < entered + count and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.gate = None
        loop.call(gate.set)


def _all_at_once(
    loop: LoopThread,
    backend: HookedBackend,
    call: Callable[[int], charging_pb2.SessionAnswer],
) -> list[charging_pb2.SessionAnswer]:
    with ThreadPoolExecutor(SESSIONS) as pool:
        with _held(loop, backend, SESSIONS):
            futures = [pool.submit(call, n) for n in range(SESSIONS)]
        return [future.result(timeout=60) for future in futures]


def _one_by_one() -> dict[str, list[charging_pb2.SessionAnswer]]:
    """Every step alone, in turn, on a cluster of its own: what each step answers."""
    with (
        running_gateways() as (_, _backend, (gateway,)),
        PetribillClient([gateway.address], timeout_s=20) as client,
    ):
        _create(client)
        return {s: [_step(client, n, s) for n in range(SESSIONS)] for s in STEPS}


def test_coalesced_steps_answer_their_own_money_and_their_retries_the_same() -> None:
    """Concurrent steps of 24 sessions, committed in groups on their shards, each answer
    what they answer one by one (money, units, validity); a concurrent retry of every
    step answers its first answer again, flagged as a replay."""
    alone = _one_by_one()
    with (
        running_gateways() as (loop, backend, (gateway,)),
        PetribillClient([gateway.address], timeout_s=20) as client,
    ):
        _create(client)
        coalescer = backend.cluster.coalescer
        for step in STEPS:
            commits, batches = _commits(backend), coalescer.batches
            first = _all_at_once(loop, backend, lambda n, s=step: _step(client, n, s))
            # Grouped: far fewer synced commits (and host calls) than steps.
            assert _commits(backend) - commits <= SESSIONS // 2, step
            assert coalescer.batches - batches <= SESSIONS // 4, step
            for n, (answer, expected) in enumerate(zip(first, alone[step], strict=True)):
                assert answer.result == charging_pb2.SESSION_RESULT_SUCCESS, (step, n)
                assert answer == expected, f"{step} of session {n}: {answer} != {expected}"
            again = _all_at_once(loop, backend, lambda n, s=step: _step(client, n, s))
            for n, (retry, answer) in enumerate(zip(again, first, strict=True)):
                assert retry.detail == "duplicate", (step, n)
                retry.detail = answer.detail
                assert retry == answer, f"retry of {step} of session {n}: {retry} != {answer}"
        balances = {_account(n): client.get_balance(_account(n)) for n in range(SESSIONS)}
        assert all(b.reserved.micros == 0 for b in balances.values())
        assert client.reconcile().balanced
