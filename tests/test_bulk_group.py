"""Usage calls settled as one group equal the same calls one by one, on both paths.

Each example starts two fresh in-process clusters (real RocksDB, the real
backend behind a real gateway, one injected clock) with the accounts of
tests/test_bulk_equivalence.py, cuts the same batches into their partitions'
calls as the gateway does (``SubmitColumns`` for the bulk path,
``cluster.backend.usage_columns``; ``Submit`` for the per-record path,
``cluster.backend.usage``), and settles them on one cluster one call at a time
and on the other as one group per partition (``SubmitColumnsGroup`` /
``SubmitGroup``, in the same order). Every call's answer and everything a
client or an auditor can read afterwards must be the same. The batches carry
what decides whether a call may join a group (``actors.partition.grouping``):
ids repeated inside a call and across calls, malformed rows (rejects between
the rows), and calls made at another second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from petribill.v1 import usage_pb2
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
from actors.partition.ops import Submit, SubmitColumnsGroup, SubmitGroup
from cluster.api.columns import ipc_bytes
from cluster.backend import usage, usage_columns
from cluster.backend.context import Cluster
from cluster.client import PetribillClient
from cluster.client.requests import build_request
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


def _column_calls(
    cluster: Cluster, batches: list[list[dict[str, Any]]], seconds: list[int]
) -> dict[str, list[Any]]:
    """Per partition, the ``SubmitColumns`` SubmitUsageColumns would send it per batch."""
    calls: dict[str, list[Any]] = {}
    for batch, second in zip(batches, seconds, strict=True):
        data = ipc_bytes(pa.Table.from_pylist(batch, schema=SCHEMA))
        records, parts = usage_columns._decode(cluster, data)
        at_s = cluster.now_s() + second
        for unit, part in parts.items():
            items = np.arange(len(part.rows), dtype=np.int64)
            calls.setdefault(unit, []).append(usage_columns._op(records, part, items, at_s))
    return calls


def _record_calls(
    cluster: Cluster, batches: list[list[dict[str, Any]]], seconds: list[int]
) -> dict[str, list[Any]]:
    """Per partition, the ``Submit`` SubmitUsage would send it for each batch."""
    calls: dict[str, list[Any]] = {}
    for batch, second in zip(batches, seconds, strict=True):
        request = build_request(usage_pb2.SubmitUsageRequest, [batch], {}, lambda: "batch")
        items, groups = usage._decode(cluster, request)
        at_s = cluster.now_s() + second
        for unit, indexes in groups.items():
            part = [items[i] for i in indexes]
            calls.setdefault(unit, []).append(
                Submit(items=part, at_s=at_s, source=usage.GRPC_SOURCE)
            )
    return calls


def _answers(found: list[Any]) -> list[Any]:
    """Answers as plain values (columns as rows, an exception as its type and text)."""
    return [
        a.to_pylist()
        if isinstance(a, pa.RecordBatch)
        else [tuple(r) for r in a]
        if isinstance(a, list)
        else (type(a).__name__, str(a))
        for a in found
    ]


#: The calls each partition would be sent for the batches (at their seconds after now).
Calls = Callable[[Cluster, list[list[dict[str, Any]]], list[int]], dict[str, list[Any]]]

#: Per path, how its calls are cut and how a partition's calls become one group.
PATHS: dict[str, tuple[Calls, Callable[[tuple[Any, ...]], Any]]] = {
    "columns": (_column_calls, lambda parts: SubmitColumnsGroup(parts=parts)),
    "records": (_record_calls, lambda parts: SubmitGroup(parts=parts)),
}


def _compare(
    folder: Path, path: str, batches: list[list[dict[str, Any]]], seconds: list[int]
) -> None:
    """Settle the batches' calls of ``path`` one by one on one cluster and as one group per
    partition on another; the answers and the states read back must be equal."""
    calls_of, group_of = PATHS[path]
    loop = LoopThread()
    try:
        with ExitStack() as stack:
            alone, alone_client = stack.enter_context(_served(folder / "alone", loop))
            group, group_client = stack.enter_context(_served(folder / "group", loop))
            for unit, calls in sorted(calls_of(alone, batches, seconds).items()):
                expected = loop.run(_each(alone, unit, calls), 120)
                grouped = group_of(tuple(calls_of(group, batches, seconds)[unit]))
                got = loop.run(group.run(unit, grouped, timeout_s=60), 120)
                assert _answers(got) == _answers(expected), unit
            want, have = _state(alone_client), _state(group_client)
            assert have == want, _difference(want, have)
    finally:
        loop.close()


async def _each(cluster: Cluster, unit: str, calls: list[Any]) -> list[Any]:
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
@pytest.mark.parametrize("path", list(PATHS))
@given(batches=_batches(), data=st.data())
def test_group_equals_calls_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    path: str,
    batches: list[list[dict[str, Any]]],
    data: st.DataObject,
) -> None:
    """The same calls of either path settled one by one and as one group per partition
    give the same answers, balances, usage lines, notifications, rejects and counters."""
    seconds = [data.draw(st.sampled_from([0, 0, 1])) for _ in batches]
    _compare(tmp_path_factory.mktemp("calls"), path, batches, seconds)


_SMS = {
    "service": "sms",
    "served_msisdn": "4915100000002",
    "record_opening_time_s": T_NOV + 60,
    "called_number": "4930123456",
    "sms_count": 1,
}


def _sms(record_id: str, **fields: Any) -> dict[str, Any]:
    """An SMS record of ``record_id`` (fields replaced as given)."""
    return {**_SMS, "record_id": record_id, **fields}


@pytest.mark.parametrize("path", list(PATHS))
def test_group_of_calls_sharing_an_id_answers_as_one_by_one(tmp_path: Path, path: str) -> None:
    """Two calls with the same record id (a client's resend racing its first send), the
    second with a new id too, grouped: the id is charged once and the resend answered as
    a replay exactly as alone (not as a repeat inside one call)."""
    _compare(tmp_path, path, [[_sms("m:dup")], [_sms("m:new"), _sms("m:dup")]], [0, 0])


@pytest.mark.parametrize("path", list(PATHS))
def test_group_of_calls_with_rejects_answers_as_one_by_one(tmp_path: Path, path: str) -> None:
    """Grouped calls whose malformed rows lie between their readable ones: each reject
    keeps its place, and the counters and the reject store are as one by one."""

    def call(tag: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for n, number in enumerate(NUMBERS):
            rows.append(_sms(f"m:{tag}{n}", served_msisdn=number))
            rows.append(_sms(f"m:{tag}{n}x", service=None))
        return rows

    _compare(tmp_path, path, [call("a"), call("b")], [0, 0])


@pytest.mark.parametrize("path", list(PATHS))
def test_group_with_a_repeat_inside_a_call_answers_as_one_by_one(tmp_path: Path, path: str) -> None:
    """A call repeating an id inside itself, between two plain calls: its repeat names
    its own item (``repeats item k``), as alone, and the calls around it are charged."""
    inside = [_sms("m:b1"), _sms("m:b2"), _sms("m:b1")]
    _compare(tmp_path, path, [[_sms("m:a")], inside, [_sms("m:c")]], [0, 0, 0])


@pytest.mark.parametrize("path", list(PATHS))
def test_group_of_calls_at_other_seconds_answers_as_one_by_one(tmp_path: Path, path: str) -> None:
    """Grouped calls made at different seconds (a later call first in the group): each is
    charged at its own second, its usage lines stamped with it, as alone."""
    _compare(tmp_path, path, [[_sms("m:s1")], [_sms("m:s2")], [_sms("m:s3")]], [1, 0, 0])
