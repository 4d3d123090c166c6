"""Usage submission: one batch, or a stream of batches resent after a failure."""

from __future__ import annotations

import collections
import queue
from collections.abc import Generator, Iterable
from typing import Any

import grpc
from petribill.v1 import usage_pb2

from billing.readers import Reject
from cluster.client.transport import PetribillError, RecordLike, Transport
from cluster.wire import record_to_proto, unreadable_to_proto

__all__ = ["UsageCalls"]

_END = object()  # closes a StreamUsage request queue


class UsageCalls(Transport):
    """Usage submission."""

    def submit_usage(
        self, records: Iterable[RecordLike], *, batch_id: str = ""
    ) -> usage_pb2.SubmitUsageResponse:
        """Submit one batch; a result per record, in order (retries reuse the record ids)."""
        request = usage_pb2.SubmitUsageRequest(
            records=[record_to_proto(r) for r in records], batch_id=batch_id
        )
        return self.call("UsageService", "SubmitUsage", request)

    def store_unreadable(
        self, rejects: Iterable[Reject], *, batch_id: str = ""
    ) -> usage_pb2.SubmitUsageResponse:
        """Store lines a reader could not read in the cluster's reject store (one batch).

        Keyed by file and line there, so sending a line again replaces it (and counts
        it again as received and rejected, as a record sent again counts as a duplicate).
        """
        request = usage_pb2.StoreUnreadableRequest(
            lines=[unreadable_to_proto(r) for r in rejects], batch_id=batch_id
        )
        return self.call("UsageService", "StoreUnreadable", request)

    def stream_usage(
        self, batches: Iterable[Iterable[RecordLike]], *, window: int = 4
    ) -> Generator[usage_pb2.SubmitUsageResponse, None, None]:
        """Stream batches, at most ``window`` unanswered; yield each batch's response in order.

        After a retryable failure the unanswered batches are sent again on a
        new stream (to the next gateway when UNAVAILABLE); their record ids
        make the resend harmless.
        """
        requests = (
            usage_pb2.SubmitUsageRequest(
                records=[record_to_proto(r) for r in batch], batch_id=str(index)
            )
            for index, batch in enumerate(batches)
        )
        pending: collections.deque[usage_pb2.SubmitUsageRequest] = collections.deque()
        outbox: queue.Queue[Any] = queue.Queue()
        exhausted = False

        def refill() -> None:
            """Send new batches until ``window`` are unanswered; half-close at the end."""
            nonlocal exhausted
            while not exhausted and len(pending) < window:
                request = next(requests, None)
                if request is None:
                    exhausted = True
                    outbox.put(_END)
                else:
                    pending.append(request)
                    outbox.put(request)

        attempt = 0
        while True:
            # A fresh queue per stream: the old stream's sender may still hold the old one.
            outbox = queue.Queue()
            for request in pending:
                outbox.put(request)
            if exhausted:
                outbox.put(_END)
            refill()
            if not pending:
                return
            attempt += 1
            address = self.addresses[self._current]
            stream = self._stub("UsageService", address).StreamUsage(iter(outbox.get, _END))
            try:
                for response in stream:
                    pending.popleft()
                    attempt = 0
                    yield response
                    refill()
                if not pending:
                    return
                raise PetribillError(
                    grpc.StatusCode.INTERNAL,
                    f"stream ended with {len(pending)} batches unanswered",
                    address=address,
                )
            except grpc.RpcError as exc:
                self._retry_or_raise(exc, address, max(attempt, 1), float("inf"))
            finally:
                outbox.put(_END)
                stream.cancel()
