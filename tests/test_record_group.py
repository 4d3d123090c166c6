"""Per-record calls settled as one group (``SubmitGroup``) equal the same calls one by one.

The per-record twin of tests/test_bulk_group.py, with its helper: two fresh
in-process clusters (real RocksDB, the real backend behind a real gateway, one
injected clock), the same batches cut into their partitions' ``Submit`` calls as
SubmitUsage cuts them (``cluster.backend.usage``), settled on one cluster one
call at a time and on the other as one ``SubmitGroup`` per partition. Every
call's answer and everything a client or an auditor can read afterwards must be
the same. The batches carry what decides whether a call may join a group: ids
repeated inside a call and across calls, malformed records (reader rejects
between the records), and calls made at another second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from petribill.v1 import usage_pb2
from test_bulk_equivalence import NUMBERS, _batches
from test_bulk_group import _compare
from test_gateway_support import T_NOV

from actors.partition.ops import Submit, SubmitGroup
from cluster.backend.context import Cluster
from cluster.backend.usage import GRPC_SOURCE, _decode
from cluster.client.requests import build_request

pytestmark = pytest.mark.timeout(900)


def _calls(
    cluster: Cluster, batches: list[list[dict[str, Any]]], seconds: list[int]
) -> dict[str, list[Any]]:
    """Per partition, the ``Submit`` SubmitUsage would send it for each batch."""
    calls: dict[str, list[Any]] = {}
    for batch, second in zip(batches, seconds, strict=True):
        request = build_request(usage_pb2.SubmitUsageRequest, [batch], {}, lambda: "batch")
        items, groups = _decode(cluster, request)  # type: ignore[arg-type]
        at_s = cluster.now_s() + second
        for unit, indexes in groups.items():
            part = [items[i] for i in indexes]
            calls.setdefault(unit, []).append(Submit(items=part, at_s=at_s, source=GRPC_SOURCE))
    return calls


def _compare_records(folder: Path, batches: list[list[dict[str, Any]]], seconds: list[int]) -> None:
    _compare(folder, batches, seconds, _calls, lambda parts: SubmitGroup(parts=parts))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batches=_batches(), data=st.data())
def test_group_equals_calls_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[dict[str, Any]]],
    data: st.DataObject,
) -> None:
    """The same per-record calls settled one by one and as one group per partition give
    the same answers, balances, usage lines, notifications, rejects and counters."""
    seconds = [data.draw(st.sampled_from([0, 0, 1])) for _ in batches]
    _compare_records(tmp_path_factory.mktemp("calls"), batches, seconds)


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


def test_group_of_calls_sharing_an_id_answers_as_one_by_one(tmp_path: Path) -> None:
    """Two calls with the same record id (a resend racing its first send), the second
    with a new id too, grouped: the id is charged once and the resend answered as a
    replay exactly as alone (not as a repeat inside one call)."""
    _compare_records(tmp_path, [[_sms("m:dup")], [_sms("m:new"), _sms("m:dup")]], [0, 0])


def test_group_of_calls_with_a_repeat_inside_answers_as_one_by_one(tmp_path: Path) -> None:
    """A call repeating an id inside itself, between two plain calls: its repeat names
    its own item (``repeats item k``), as alone, and the calls around it are charged."""
    inside = [_sms("m:b1"), _sms("m:b2"), _sms("m:b1")]
    _compare_records(tmp_path, [[_sms("m:a")], inside, [_sms("m:c")]], [0, 0, 0])


def test_group_of_calls_with_rejects_answers_as_one_by_one(tmp_path: Path) -> None:
    """Grouped calls whose malformed records lie between their readable ones: each reject
    keeps its place, and the counters and the reject store are as one by one."""

    def call(tag: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for n, number in enumerate(NUMBERS):
            rows.append(_sms(f"m:{tag}{n}", served_msisdn=number))
            rows.append(_sms(f"m:{tag}{n}x", service=None))
        return rows

    _compare_records(tmp_path, [call("a"), call("b")], [0, 0])


def test_group_of_calls_at_other_seconds_answers_as_one_by_one(tmp_path: Path) -> None:
    """Grouped calls made at different seconds (a later call first in the group): each is
    charged at its own second, its usage lines stamped with it, as alone."""
    calls = [[_sms("m:s1")], [_sms("m:s2")], [_sms("m:s3")]]
    _compare_records(tmp_path, calls, [1, 0, 0])
