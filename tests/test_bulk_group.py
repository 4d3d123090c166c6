"""Bulk calls settled as one group (``SubmitColumnsGroup``) equal the same calls one by one.

Each example starts two fresh in-process clusters (real RocksDB, the real
backend behind a real gateway, one injected clock) with the accounts of
tests/test_bulk_equivalence.py, cuts the same batches into their partitions'
``SubmitColumns`` as the gateway does, and settles them on one cluster one call
at a time and on the other as one ``SubmitColumnsGroup`` per partition (in the
same order). Every call's answer and everything a client or an auditor can read
afterwards must be the same. The batches carry what decides whether a call may
join a group: ids repeated inside a call and across calls, malformed rows
(rejects between the rows), and calls made at another second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bulk_equivalence import (
    NUMBERS,
    SCHEMA,
    _batches,
    _difference,
    _open_accounts,
    _state,
)
from test_gateway_support import T_NOV, TARIFFS, LoopThread

from actors.clock import ManualClock
from actors.partition.ops import SubmitColumns, SubmitColumnsGroup
from cluster.api.columns import ipc_bytes
from cluster.backend.context import Cluster
from cluster.backend.usage_columns import _decode, _op
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

pytestmark = pytest.mark.timeout(900)


@contextmanager
def _served(folder: Path, loop: LoopThread) -> Iterator[tuple[Cluster, PetribillClient]]:
    """A fresh in-process cluster behind a gateway, with the accounts; its backend's view."""
    clock = ManualClock(T_NOV + 3 * 86_400)
    cluster = InProcessCluster(folder, TARIFFS, shards=3, partitions=2, clock=clock, duties=False)
    cluster.start()
    backend = cluster.backend()
    gateway = Gateway(backend, "127.0.0.1", 0)
    try:
        loop.run(gateway.start())
        with PetribillClient([gateway.address], timeout_s=60) as client:
            _open_accounts(client)
            yield backend.cluster, client
    finally:
        loop.run(gateway.stop(0.2))
        cluster.close()


def _calls(
    cluster: Cluster, batches: list[list[dict[str, Any]]], seconds: list[int]
) -> dict[str, list[SubmitColumns]]:
    """Per partition, the ``SubmitColumns`` the gateway would send it for each batch."""
    calls: dict[str, list[SubmitColumns]] = {}
    for batch, second in zip(batches, seconds, strict=True):
        data = ipc_bytes(pa.Table.from_pylist(batch, schema=SCHEMA))
        records, parts = _decode(cluster, data)
        at_s = cluster.now_s() + second
        for unit, part in parts.items():
            items = np.arange(len(part.rows), dtype=np.int64)
            calls.setdefault(unit, []).append(_op(records, part, items, at_s))
    return calls


def _answers(found: list[Any]) -> list[Any]:
    """Answers as plain values (an exception as its type and text)."""
    return [
        a.to_pylist() if isinstance(a, pa.RecordBatch) else (type(a).__name__, str(a))
        for a in found
    ]


def _compare(folder: Path, batches: list[list[dict[str, Any]]], seconds: list[int]) -> None:
    """Settle the batches' calls one by one on one cluster and as one group per partition
    on another; the answers and the states read back must be equal."""
    loop = LoopThread()
    try:
        with ExitStack() as stack:
            alone, alone_client = stack.enter_context(_served(folder / "alone", loop))
            group, group_client = stack.enter_context(_served(folder / "group", loop))
            for unit, calls in sorted(_calls(alone, batches, seconds).items()):
                expected = loop.run(_each(alone, unit, calls), 120)
                grouped = _calls(group, batches, seconds)[unit]
                got = loop.run(group.run(unit, SubmitColumnsGroup(parts=tuple(grouped)),
                                         timeout_s=60), 120)  # fmt: skip
                assert _answers(got) == _answers(expected), unit
            want, have = _state(alone_client), _state(group_client)
            assert have == want, _difference(want, have)
    finally:
        loop.close()


async def _each(cluster: Cluster, unit: str, calls: list[SubmitColumns]) -> list[Any]:
    answers: list[Any] = []
    for call in calls:
        try:
            answers.append(await cluster.run(unit, call, timeout_s=60))
        except Exception as exc:
            answers.append(exc)
    return answers


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batches=_batches(), data=st.data())
def test_group_equals_calls_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[dict[str, Any]]],
    data: st.DataObject,
) -> None:
    """The same bulk calls settled one by one and as one group per partition give the
    same answers, balances, usage lines, notifications, rejects and counters."""
    seconds = [data.draw(st.sampled_from([0, 0, 1])) for _ in batches]
    _compare(tmp_path_factory.mktemp("calls"), batches, seconds)


_SMS = {
    "service": "sms",
    "served_msisdn": "4915100000002",
    "record_opening_time_s": T_NOV + 60,
    "called_number": "4930123456",
    "sms_count": 1,
}


def test_group_of_calls_sharing_an_id_answers_as_one_by_one(tmp_path: Path) -> None:
    """Two calls with the same record id (a client's resend racing its first send), the
    second with a new id too, grouped: the id is charged once and the resend answered as
    a replay exactly as alone (not as a repeat inside one call)."""
    first = [{"record_id": "m:dup", **_SMS}]
    again = [{"record_id": "m:new", **_SMS}, {"record_id": "m:dup", **_SMS}]
    _compare(tmp_path, [first, again], [0, 0])


def test_group_of_calls_with_rejects_answers_as_one_by_one(tmp_path: Path) -> None:
    """Grouped calls whose malformed rows lie between their readable ones: each reject
    keeps its place, and the counters and the reject store are as one by one."""

    def call(tag: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for n, number in enumerate(NUMBERS):
            rows.append({**_SMS, "record_id": f"m:{tag}{n}", "served_msisdn": number})
            rows.append({**_SMS, "record_id": f"m:{tag}{n}x", "service": None})
        return rows

    _compare(tmp_path, [call("a"), call("b")], [0, 0])
