"""The gateway under fuzzing: random and mutated requests to every RPC, over the real backend.

The short setting runs in CI; ``bench/fuzz_gateway.py`` runs the same cases for
longer. Afterwards the cluster's books must still add up: Reconcile balanced,
and every shard's ledger replays to its balances (the shard ``Audit``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from petribill.v1 import admin_pb2, admin_pb2_grpc
from test_gateway_support import running_gateways

from actors.shard import ops
from chaos.fuzz import Case, Tally, fuzz_case, judge, safe_paths, seed_accounts, send
from cluster.backend.rpcs import RPCS

pytestmark = pytest.mark.timeout(240)

#: Cases per run in CI; PETRIBILL_FUZZ_EXAMPLES raises it locally.
EXAMPLES = int(os.environ.get("PETRIBILL_FUZZ_EXAMPLES", "400"))


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[Any, Any, grpc.Channel, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="pbfuzz") as scratch,
        running_gateways() as (loop, backend, gateways),
        grpc.insecure_channel(gateways[0].address) as channel,
    ):
        seed_accounts(channel)
        yield loop, backend, channel, scratch


def test_every_rpc_is_fuzzed() -> None:
    """The cases cover every RPC of the table (a new RPC is fuzzed without a change here)."""
    seen = {case.rpc.name for case in _examples(fuzz_case("/nowhere"), 3000)}
    assert seen == {rpc.name for rpc in RPCS}


def test_fuzzed_requests_never_answer_internal_or_unknown(fuzzed: Any) -> None:
    """Random, structured and mutated requests to every RPC answer only documented
    statuses; afterwards Reconcile balances and every shard's ledger replays."""
    loop, backend, channel, scratch = fuzzed
    tally = Tally()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=fuzz_case(scratch))
    def one(case: Case) -> None:
        if not safe_paths(case, scratch):
            return
        code, message = send(channel, case)
        problem = tally.add(case, code, message)
        assert problem is None, problem

    one()
    print("\n".join(tally.lines()))
    assert tally.tried >= EXAMPLES // 2
    answer = admin_pb2_grpc.AdminServiceStub(channel).Reconcile(
        admin_pb2.ReconcileRequest(), timeout=30
    )
    assert answer.balanced, answer.detail
    shards = backend.cluster.router.all_shards()
    reports = loop.run(backend.cluster.run_each(shards, ops.Audit(), timeout_s=30), 60)
    assert all(report.ok for report in reports.values()), {
        unit: report.problems for unit, report in reports.items() if not report.ok
    }


def test_judge_refuses_internal_and_unknown() -> None:
    """The fuzzer's verdict: INTERNAL and UNKNOWN are problems, documented refusals are not."""
    case = Case(RPCS[0], b"", "random")
    assert judge(case, grpc.StatusCode.INTERNAL, "x") is not None
    assert judge(case, grpc.StatusCode.UNKNOWN, "x") is not None
    assert judge(case, grpc.StatusCode.INVALID_ARGUMENT, "x") is None


def _examples(strategy: Any, count: int) -> list[Case]:
    found: list[Case] = []

    @settings(max_examples=count, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def collect(case: Case) -> None:
        found.append(case)

    collect()
    return found
