"""UsageService.SubmitUsageColumns: the bulk path, a batch of columns split by partition.

The per-record handler (``cluster.backend.usage``) with columns in and out:

1. the Arrow IPC bytes are read (zero-copy) and judged row by row
   (``cluster.wire_columns``): readable records as one Arrow batch, malformed
   rows as rejects naming the field;
2. each row goes to the partition of its number (a malformed row: of its id,
   as SubmitUsage spreads them), keeping the request's order inside each
   partition's part, so a partition sees the very items SubmitUsage would send
   it; every part goes to its owner as one ``SubmitColumns`` (an Arrow batch in
   Ray's object store), concurrently, through the gateway's coalescer: the parts
   of concurrent calls bound for one partition travel in one host call and are
   settled together (``actors.partition.bulk_group``), so each shard sees one
   charge call for all of them, while each call keeps its own answer;
3. the parts' result columns are put back in request order and answered as
   Arrow IPC. Items a partition answers ``unavailable`` or
   ``resource_exhausted`` are resubmitted with the same ids until the call's
   time runs out, then the call fails UNAVAILABLE / RESOURCE_EXHAUSTED, as
   SubmitUsage does.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass
from typing import Final

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from petribill.v1 import usage_pb2

from actors.partition.ops import SubmitColumns
from actors.partition.outcomes import batch_to_results
from actors.router import deadline_after
from billing.readers import Reject
from cluster.api.columns import IpcError, ipc_bytes, read_ipc
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.usage import GRPC_SOURCE, retry_error, route_key
from cluster.wire_columns import WireColumnsError, WireRecords, read_records

__all__ = ["submit_usage_columns"]

_RETRY_PAUSE_S: Final = 0.1
_STATUS_RETRYABLE: Final = ("unavailable", "resource_exhausted")


@dataclass(frozen=True, slots=True)
class _Part:
    """One partition's items: the request rows (in order), which of them are usage rows
    (their rows in the request's usage batch) and which rejects."""

    rows: NDArray[np.int64]
    usage_rows: NDArray[np.int64]
    positions: NDArray[np.int64]
    rejects: list[tuple[int, Reject]]


async def submit_usage_columns(
    cluster: Cluster, request: usage_pb2.SubmitUsageColumnsRequest, timeout_s: float
) -> usage_pb2.SubmitUsageColumnsResponse:
    # Reading and judging the columns, and writing the answer, are CPU work: on a
    # worker thread they do not hold up the event loop, where queries are answered.
    records, parts = await asyncio.to_thread(_decode, cluster, request.records)
    answers = await _settle(cluster, records, parts, timeout_s)
    data = await asyncio.to_thread(_answer, cluster, records, parts, answers)
    return usage_pb2.SubmitUsageColumnsResponse(results=data, batch_id=request.batch_id)


def _decode(cluster: Cluster, data: bytes) -> tuple[WireRecords, dict[str, _Part]]:
    try:
        records = read_records(read_ipc(data))
    except (IpcError, WireColumnsError) as exc:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT, f"SubmitUsageColumnsRequest.records: {exc}"
        ) from None
    return records, _parts(cluster, records)


def _parts(cluster: Cluster, records: WireRecords) -> dict[str, _Part]:
    """Each partition's items, as SubmitUsage groups a batch (``usage._decode``)."""
    partitions = cluster.router.partitions
    rows = len(records.positions) + len(records.rejects)
    owner = np.empty(rows, np.int64)
    numbers = records.usage.column("served_msisdn").dictionary_encode()
    crc = zlib.crc32
    by_number = np.fromiter(
        (crc(n.encode()) % partitions for n in numbers.dictionary.to_pylist()),
        np.int64,
        len(numbers.dictionary),
    )
    owner[records.positions] = by_number[numbers.indices.to_numpy()]
    is_usage = np.zeros(rows, np.bool_)
    is_usage[records.positions] = True
    usage_row = np.full(rows, -1, np.int64)
    usage_row[records.positions] = np.arange(len(records.positions))
    reject_of: dict[int, Reject] = {}
    for row, reject in records.rejects:
        owner[row] = crc(route_key(reject, row).encode()) % partitions
        reject_of[row] = reject
    parts: dict[str, _Part] = {}
    for code in np.unique(owner).tolist():
        mine = np.flatnonzero(owner == code).astype(np.int64)
        usage_mask = is_usage[mine]
        parts[f"part-{code}"] = _Part(
            rows=mine,
            usage_rows=usage_row[mine[usage_mask]],
            positions=np.flatnonzero(usage_mask).astype(np.int64),
            rejects=[
                (k, reject_of[int(r)]) for k, r in enumerate(mine.tolist()) if not usage_mask[k]
            ],
        )
    return parts


def _op(records: WireRecords, part: _Part, items: NDArray[np.int64], at_s: int) -> SubmitColumns:
    """The ``SubmitColumns`` of the part's items ``items`` (indexes into its item list)."""
    chosen = np.zeros(len(part.rows), np.bool_)
    chosen[items] = True
    renumber = np.cumsum(chosen) - 1  # an item's place among the chosen ones
    usage_chosen = chosen[part.positions]
    usage_rows = part.usage_rows[usage_chosen]
    whole = len(usage_rows) == records.usage.num_rows
    usage = records.usage if whole else records.usage.take(pa.array(usage_rows))
    return SubmitColumns(
        usage=usage,
        positions=renumber[part.positions[usage_chosen]],
        rejects=[(int(renumber[k]), r) for k, r in part.rejects if chosen[k]],
        at_s=at_s,
        source=GRPC_SOURCE,
    )


async def _settle(
    cluster: Cluster, records: WireRecords, parts: dict[str, _Part], timeout_s: float
) -> dict[str, pa.RecordBatch]:
    """Each part's result columns; retryable items resubmitted until the deadline."""
    deadline = deadline_after(timeout_s)
    at_s = cluster.now_s()

    async def settle(unit: str, part: _Part) -> pa.RecordBatch:
        items = np.arange(len(part.rows), dtype=np.int64)
        answer: pa.RecordBatch | None = None
        while True:
            left = deadline - time.monotonic()
            # Coalesced: the parts bound for one partition from concurrent calls are
            # settled as one (actors.partition.bulk_group), each answered its own rows.
            got = await cluster.coalesced(
                unit, _op(records, part, items, at_s), timeout_s=max(left, 0.001)
            )
            answer = got if answer is None else _merged(answer, items, got)
            status = pc.cast(answer.column("status"), pa.string())
            retry = pc.is_in(status, value_set=pa.array(_STATUS_RETRYABLE)).to_numpy(
                zero_copy_only=False
            )
            if not retry.any():
                return answer
            items = np.flatnonzero(retry).astype(np.int64)
            if deadline - time.monotonic() < 2 * _RETRY_PAUSE_S:
                left_over = batch_to_results(answer.take(pa.array(items)))
                raise retry_error(unit, list(left_over))
            await asyncio.sleep(_RETRY_PAUSE_S)

    units = list(parts)
    found = await asyncio.gather(*(settle(unit, parts[unit]) for unit in units))
    return dict(zip(units, found, strict=True))


def _merged(
    answer: pa.RecordBatch, items: NDArray[np.int64], again: pa.RecordBatch
) -> pa.RecordBatch:
    """``answer`` with the rows ``items`` replaced by ``again``'s (a resubmission)."""
    pick = np.arange(answer.num_rows, dtype=np.int64)
    pick[items] = answer.num_rows + np.arange(len(items))
    table = pa.Table.from_batches([answer]).unify_dictionaries()
    both = pa.concat_tables([table, pa.Table.from_batches([again])], promote_options="permissive")
    return both.take(pa.array(pick)).combine_chunks().to_batches()[0]


def _answer(
    cluster: Cluster,
    records: WireRecords,
    parts: dict[str, _Part],
    answers: dict[str, pa.RecordBatch],
) -> bytes:
    """The results in request order, with the currency, as Arrow IPC."""
    rows = len(records.positions) + len(records.rejects)
    order = np.empty(rows, np.int64)
    offset = 0
    batches = []
    for unit, part in parts.items():
        order[part.rows] = offset + np.arange(len(part.rows))
        offset += len(part.rows)
        batches.append(answers[unit])
    table = pa.Table.from_batches(batches).take(pa.array(order)) if batches else None
    if table is None:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, "no records")
    currency = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(rows, np.int8)), pa.array([cluster.catalogue.currency])
    )
    out = table.combine_chunks().append_column("currency", currency)
    return ipc_bytes(out.select(_WIRE_ORDER))


_WIRE_ORDER: Final = (
    "record_id",
    "status",
    "reason",
    "detail",
    "amount",
    "currency",
    "charged_account_id",
    "billed_units",
    "bundle_units",
    "replay",
)
