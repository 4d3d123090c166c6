"""UsageService for the Ray backend: a batch split by partition, submitted concurrently.

Each record is validated and normalised here (``cluster.backend.convert``); a
malformed one travels on as a reader reject so its partition stores it with
reason ``malformed`` and counts it, and the rest of the batch proceeds. Every
partition's part goes to its owner in one call; the answers are put back in
request order. Records a partition answers ``unavailable`` (a shard did not
answer) are resubmitted with the same ids until the call's time runs out:
the shards' marks make a resubmission a duplicate, never a second charge.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import grpc
from petribill.v1 import usage_pb2

from actors.partition.engine import RecordResult, RecordStatus, SourceProgress
from actors.partition.ops import Submit
from actors.router import deadline_after
from billing.readers import Reject
from billing.records import UsageRecord
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import record_result_to_proto
from cluster.wire import record_from_proto, unreadable_from_proto

__all__ = ["GRPC_SOURCE", "retry_error", "route_key", "store_unreadable", "submit_usage"]

#: The collection source gRPC usage is counted under in the partitions' counters.
GRPC_SOURCE: Final = SourceProgress(source_id="grpc", offset=0)
_RETRY_PAUSE_S: Final = 0.1


async def submit_usage(
    cluster: Cluster, request: usage_pb2.SubmitUsageRequest, timeout_s: float
) -> usage_pb2.SubmitUsageResponse:
    # Decoding a batch and encoding its answer are milliseconds of CPU; on a worker
    # thread they do not hold up the event loop, where queries are answered.
    items, groups = await asyncio.to_thread(_decode, cluster, request)
    results = await _settle(cluster, items, groups, timeout_s)
    return await asyncio.to_thread(_answer, cluster, request.batch_id, results)


async def store_unreadable(
    cluster: Cluster, request: usage_pb2.StoreUnreadableRequest, timeout_s: float
) -> usage_pb2.SubmitUsageResponse:
    """Store lines no reader could read in the partitions' reject stores, counted.

    The gateway checked each line names its file and line number. A line goes
    to the partition of its file, so a file's bad lines are listed together.
    """
    items: list[UsageRecord | Reject] = [unreadable_from_proto(line) for line in request.lines]
    groups: dict[str, list[int]] = {}
    for index, line in enumerate(request.lines):
        groups.setdefault(cluster.router.partition(line.source_file), []).append(index)
    results = await _settle(cluster, items, groups, timeout_s)
    return _answer(cluster, request.batch_id, results)


async def _settle(
    cluster: Cluster,
    items: list[UsageRecord | Reject],
    groups: dict[str, list[int]],
    timeout_s: float,
) -> list[RecordResult | None]:
    """Submit each partition's items to it; resubmit the retryable ones until the deadline."""
    deadline = deadline_after(timeout_s)
    at_s = cluster.now_s()
    results: list[RecordResult | None] = [None] * len(items)

    async def settle(unit: str, indexes: list[int]) -> None:
        pending = indexes
        while True:
            left = deadline - time.monotonic()
            op = Submit(items=[items[i] for i in pending], at_s=at_s, source=GRPC_SOURCE)
            answers = await cluster.run(unit, op, timeout_s=max(left, 0.001))
            retry = []
            for index, answer in zip(pending, answers, strict=True):
                results[index] = answer
                if answer.retryable:
                    retry.append(index)
            if not retry:
                return
            if deadline - time.monotonic() < 2 * _RETRY_PAUSE_S:
                raise retry_error(unit, [results[i] for i in retry])
            pending = retry
            await asyncio.sleep(_RETRY_PAUSE_S)

    await asyncio.gather(*(settle(unit, idx) for unit, idx in groups.items()))
    return results


def _decode(
    cluster: Cluster, request: usage_pb2.SubmitUsageRequest
) -> tuple[list[UsageRecord | Reject], dict[str, list[int]]]:
    """The batch's items (records or rejects) and their indexes by partition."""
    items = [record_from_proto(r, index=i) for i, r in enumerate(request.records)]
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        key = item.served_msisdn if isinstance(item, UsageRecord) else route_key(item, index)
        groups.setdefault(cluster.router.partition(key), []).append(index)
    return items, groups


def _answer(
    cluster: Cluster, batch_id: str, results: list[RecordResult | None]
) -> usage_pb2.SubmitUsageResponse:
    currency = cluster.catalogue.currency
    answer = usage_pb2.SubmitUsageResponse(batch_id=batch_id)
    for result in results:
        assert result is not None  # every index belongs to one group
        answer.results.append(record_result_to_proto(result, currency))
    return answer


def route_key(reject: Reject, index: int) -> str:
    """What routes the reject of request row ``index`` to a partition: a malformed
    record may have no usable MSISDN, so such rejects are spread by id."""
    return reject.record_id or f"{reject.source_file}#{index}"


def retry_error(unit: str, results: list[RecordResult | None]) -> BackendError:
    """The failure of a call whose ``results`` stayed retryable until its deadline."""
    statuses = {r.status for r in results if r is not None}
    first = next((r for r in results if r is not None), None)
    detail = f"{first.reason}: {first.detail}" if first else ""
    if statuses == {RecordStatus.RESOURCE_EXHAUSTED}:
        return BackendError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{unit}: {len(results)} records refused, retry later with the same ids ({detail})",
        )
    return BackendError(
        grpc.StatusCode.UNAVAILABLE,
        f"{unit}: {len(results)} records not settled, retry with the same ids ({detail})",
    )
