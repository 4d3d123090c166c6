"""The SDK calls that are more than one RPC: usage streams, paging, resubscription."""

from __future__ import annotations

import collections
import queue
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from petribill.v1 import accounts_pb2, admin_pb2, notifications_pb2, usage_pb2

from cluster.client.transport import PetribillError, RecordLike, Transport
from cluster.wire import record_to_proto

__all__ = ["StreamCalls"]

# Notification ids remembered to skip repeats after a resubscription.
_SEEN_NOTIFICATIONS_MAX = 10_000

_END = object()  # closes a StreamUsage request queue


class StreamCalls(Transport):
    """The calls that are more than one RPC: paging, pipelined streams, resubscription.

    ``list_usage`` is the RPC method the client gets from its descriptor."""

    if TYPE_CHECKING:  # the RPC methods are made at import time: any name is a call to mypy

        def __getattr__(self, name: str) -> Callable[..., Any]: ...

    def iter_usage(self, account_id: str, *, page: int = 1000) -> Iterator[accounts_pb2.UsageLine]:
        """Every usage line of the account, newest first, a page at a time."""
        token = ""
        while True:
            answer = self.list_usage(account_id, limit=page, page_token=token)
            yield from answer.lines
            token = answer.next_page_token
            if not token:
                return

    def iter_rejects(self, reason: str = "", *, page: int = 1000) -> Iterator[admin_pb2.Reject]:
        """Every stored reject (of ``reason``), in store order, a page at a time."""
        token = ""
        while True:
            answer = self.list_rejects(limit=page, reason=reason, page_token=token)
            yield from answer.rejects
            token = answer.next_page_token
            if not token:
                return

    def notifications(
        self, account_ids: Sequence[str] = ()
    ) -> Generator[notifications_pb2.Notification, None, None]:
        """New notifications, forever (close the iterator to stop).

        After a retryable failure it subscribes again (failing over), and skips
        notifications it has already yielded; notifications raised while no
        subscription was open are in ``list_notifications``.
        """
        request = notifications_pb2.SubscribeRequest(account_ids=account_ids)
        seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        for item in self.server_stream("NotificationService", "Subscribe", request, timeout_s=None):
            if item.notification_id in seen:
                continue
            seen[item.notification_id] = None
            if len(seen) > _SEEN_NOTIFICATIONS_MAX:
                seen.popitem(last=False)
            yield item

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
