"""The SDK's bulk calls: usage as Arrow columns in, results as Arrow columns out.

``client.submit_usage_columns(table)`` sends one batch (a ``pyarrow.Table``,
a ``RecordBatch`` or a dict of columns named as ``UsageRecord``'s fields) with
``UsageService.SubmitUsageColumns`` and answers a ``pyarrow.Table`` with a
result row per record, in order (usage.proto, ``SubmitUsageColumnsResponse``).
``client.stream_usage_columns(batches, window=2)`` keeps up to ``window``
batches in flight and yields their results in order. Retries are the
transport's: UNAVAILABLE and RESOURCE_EXHAUSTED resend the same batch (its
record ids make that harmless); any other failure raises
:class:`~cluster.client.transport.PetribillError`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import grpc
import pyarrow as pa
from petribill.v1 import usage_pb2

from cluster.api.columns import ipc_bytes, read_ipc
from cluster.api.errors import RETRYABLE_CODES
from cluster.client.streams import StreamCalls
from cluster.client.transport import PetribillError

__all__ = ["BulkCalls", "Columns"]

Columns: TypeAlias = "pa.Table | pa.RecordBatch | Mapping[str, Sequence[Any] | pa.Array]"
"""What a bulk call takes: a table, a record batch, or columns by name."""


def _table(records: Columns) -> pa.Table:
    if isinstance(records, pa.Table):
        return records
    if isinstance(records, pa.RecordBatch):
        return pa.Table.from_batches([records])
    return pa.table(dict(records))


class BulkCalls(StreamCalls):
    """``submit_usage_columns`` and ``stream_usage_columns`` (module docstring)."""

    def usage_columns_request(
        self, records: Columns, batch_id: str = ""
    ) -> usage_pb2.SubmitUsageColumnsRequest:
        """The request of one bulk batch (its columns as one Arrow IPC stream)."""
        return usage_pb2.SubmitUsageColumnsRequest(
            records=ipc_bytes(_table(records)), batch_id=batch_id
        )

    def submit_usage_columns(
        self, records: Columns, *, batch_id: str = "", timeout_s: float | None = None
    ) -> pa.Table:
        """Submit one batch of columns; a result row per record, in order."""
        request = self.usage_columns_request(records, batch_id)
        answer = self.call("UsageService", "SubmitUsageColumns", request, timeout_s=timeout_s)
        return read_ipc(answer.results)

    def stream_usage_columns(
        self, batches: Iterable[Columns], *, window: int = 2, timeout_s: float | None = None
    ) -> Iterator[pa.Table]:
        """Submit batches with up to ``window`` unanswered; yield each one's results in order."""
        pending: collections.deque[tuple[usage_pb2.SubmitUsageColumnsRequest, str, Any]]
        pending = collections.deque()
        for index, records in enumerate(batches):
            pending.append(self._send(self.usage_columns_request(records, str(index)), timeout_s))
            if len(pending) >= window:
                yield self._received(*pending.popleft(), timeout_s)
        while pending:
            yield self._received(*pending.popleft(), timeout_s)

    def _send(
        self, request: usage_pb2.SubmitUsageColumnsRequest, timeout_s: float | None
    ) -> tuple[usage_pb2.SubmitUsageColumnsRequest, str, Any]:
        address = self.addresses[self._current]
        stub = self._stub("UsageService", address)
        future = stub.SubmitUsageColumns.future(request, timeout=timeout_s or self.timeout_s)
        return request, address, future

    def _received(
        self,
        request: usage_pb2.SubmitUsageColumnsRequest,
        address: str,
        future: Any,
        timeout_s: float | None,
    ) -> pa.Table:
        try:
            answer = future.result()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE_CODES:
                raise PetribillError(exc.code(), exc.details() or "", address=address) from None
            # The same batch again, with the transport's backoff and failover.
            answer = self.call("UsageService", "SubmitUsageColumns", request, timeout_s=timeout_s)
        return read_ipc(answer.results)
