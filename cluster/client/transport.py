"""The client's transport: channels to every gateway, retries with the same ids, failover.

See :mod:`cluster.client` for the rules; :class:`Transport` is the base every
group of SDK calls builds on.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from petribill.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    notifications_pb2,
    notifications_pb2_grpc,
    tariffs_pb2,
    tariffs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from billing.records import UsageRecord
from cluster.api.errors import RETRYABLE_CODES
from cluster.security.auth import bearer_metadata

__all__ = ["PROTO_MODULES", "PetribillError", "RecordLike", "Transport"]

RecordLike = UsageRecord | Mapping[str, Any]

#: The proto modules of petribill.v1 and their generated gRPC modules.
PROTO_MODULES: Final = (
    usage_pb2,
    charging_pb2,
    accounts_pb2,
    billing_pb2,
    tariffs_pb2,
    notifications_pb2,
    admin_pb2,
)
_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "UsageService": usage_pb2_grpc.UsageServiceStub,
    "ChargingService": charging_pb2_grpc.ChargingServiceStub,
    "AccountService": accounts_pb2_grpc.AccountServiceStub,
    "BillingService": billing_pb2_grpc.BillingServiceStub,
    "TariffService": tariffs_pb2_grpc.TariffServiceStub,
    "NotificationService": notifications_pb2_grpc.NotificationServiceStub,
    "AdminService": admin_pb2_grpc.AdminServiceStub,
    "Health": health_pb2_grpc.HealthStub,
}


class PetribillError(Exception):
    """Raised by every :class:`PetribillClient` call that ends without an answer.

    ``code`` is the final gRPC status (after retries, if it was retryable),
    ``details`` the server's message, ``address`` the gateway that gave it and
    ``attempts`` how many times the call was tried.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str, *, address: str = "", attempts: int = 1
    ) -> None:
        super().__init__(f"{code.name}: {details} (gateway {address}, attempts {attempts})")
        self.code = code
        self.details = details
        self.address = address
        self.attempts = attempts


class Transport:
    """Channels to the gateways, and calls with retries and failover; the SDK's base.

    ``addresses``: the gateways, ``host:port``, tried in order from the one that
    last answered. ``timeout_s``: the budget of one unary call, retries
    included. ``retries``: retries after the first attempt (UNAVAILABLE and
    RESOURCE_EXHAUSTED only). ``backoff_s`` doubles per retry up to
    ``backoff_max_s``, with jitter; the first round of failovers does not wait.
    ``message_bytes_max`` should match the gateways'. ``new_id`` makes request
    ids (default: random UUIDs); ``sleep`` and ``rng`` are injectable for tests.
    A client may be shared by threads; close it (or use ``with``) when done.

    Security (docs/security.md): ``token`` is sent with every call as
    ``authorization: Bearer <token>``; ``ca`` (a PEM file) makes the client speak
    TLS and trust that CA, ``cert`` and ``key`` present a client certificate for
    mutual TLS; ``tls=True`` speaks TLS trusting the system's CAs. The files are
    read here (:class:`~cluster.security.tls.TlsConfigError`, a ``ValueError``,
    names a bad one).
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        timeout_s: float = 10.0,
        retries: int = 8,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        message_bytes_max: int = 16 * 1024 * 1024,
        new_id: Callable[[], str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        tls: bool = False,
    ) -> None:
        given = [addresses] if isinstance(addresses, str) else list(addresses)
        self.addresses = list(dict.fromkeys(given))  # failover walks positions: no repeats
        if not self.addresses:
            raise ValueError("a client needs at least one gateway address")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or backoff_max_s < backoff_s:
            raise ValueError("timeout_s must be > 0, retries >= 0, 0 <= backoff_s <= backoff_max_s")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._options = [
            ("grpc.max_send_message_length", message_bytes_max),
            ("grpc.max_receive_message_length", message_bytes_max),
        ]
        self._credentials = _channel_credentials(ca, cert, key, tls=tls)
        self._interceptors = [] if token is None else [_BearerToken(token)]
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._current = 0
        self._lock = threading.Lock()

    def add_address(self, address: str) -> None:
        """Also fail over to ``address`` (a gateway started later); a known one is ignored."""
        with self._lock:
            if address not in self.addresses:
                self.addresses.append(address)

    def learn_gateways(self) -> list[str]:
        """Also fail over to every gateway ``ClusterStatus`` lists (serving or restarting);
        returns the addresses now known. None is ever dropped, given or learnt: a status
        can miss a gateway (its node restarting), and a gateway that is down now serves
        again later, on the same address."""
        status = self.call("AdminService", "ClusterStatus", admin_pb2.ClusterStatusRequest())
        for address in status.gateways:
            self.add_address(address)
        with self._lock:
            return list(self.addresses)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _stub(self, service: str, address: str) -> Any:
        with self._lock:
            stub = self._stubs.get((service, address))
            if stub is None:
                channel = self._channels.get(address)
                if channel is None:
                    channel = self._channel(address)
                    self._channels[address] = channel
                stub = self._stubs[service, address] = _STUBS[service](channel)
            return stub

    def _channel(self, address: str) -> grpc.Channel:
        if self._credentials is None:
            channel = grpc.insecure_channel(address, options=self._options)
        else:
            channel = grpc.secure_channel(address, self._credentials, options=self._options)
        return (
            grpc.intercept_channel(channel, *self._interceptors) if self._interceptors else channel
        )

    def _retry_or_raise(
        self, exc: grpc.RpcError, address: str, attempt: int, left_s: float
    ) -> None:
        """Sleep before the next attempt, failing over on UNAVAILABLE; or raise the final error."""
        code = exc.code()
        if code not in RETRYABLE_CODES or attempt > self.retries or left_s <= 0:
            raise PetribillError(code, exc.details() or "", address=address, attempts=attempt)
        first_round = attempt < len(self.addresses)
        if code == grpc.StatusCode.UNAVAILABLE:
            with self._lock:  # the next position, unless another call moved on already
                if self.addresses[self._current] == address:
                    self._current = (self._current + 1) % len(self.addresses)
            if first_round:
                return  # another gateway may answer at once: no wait on the first round
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        self._sleep(min(left_s, delay * (0.5 + self._rng.random() / 2)))

    def call(
        self, service: str, method: str, request: Any, *, timeout_s: float | None = None
    ) -> Any:
        """One unary RPC with retries and failover; the answer message."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 0
        last = ""
        while True:
            attempt += 1
            address = self.addresses[self._current]
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                # The last refusal says why (a TLS handshake that failed, say).
                raise PetribillError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{service}.{method}: no answer within the client's timeout{last}",
                    address=address,
                    attempts=attempt - 1,
                )
            try:
                return getattr(self._stub(service, address), method)(request, timeout=left_s)
            except grpc.RpcError as exc:
                last = f"; last: {exc.code().name}: {exc.details() or ''}"
                self._retry_or_raise(exc, address, attempt, deadline - time.monotonic())

    def server_stream(
        self, service: str, method: str, request: Any, *, timeout_s: float | None
    ) -> Iterator[Any]:
        """A server stream, restarted (same request, so same ids) after a retryable failure."""
        attempt = 0
        while True:
            attempt += 1
            address = self.addresses[self._current]
            stream = getattr(self._stub(service, address), method)(request, timeout=timeout_s)
            try:
                for item in stream:
                    attempt = 0
                    yield item
                return
            except grpc.RpcError as exc:
                self._retry_or_raise(exc, address, max(attempt, 1), float("inf"))
            finally:
                stream.cancel()

    def new_request_id(self) -> str:
        """A fresh idempotency key (random by default; ``new_id`` replaces it)."""
        return self._new_id()

    def health(self, service: str = "") -> dict[str, str]:
        """Each gateway's health of ``service`` ("" for the server): SERVING, NOT_SERVING..."""
        answers = {}
        request = health_pb2.HealthCheckRequest(service=service)
        for address in self.addresses:
            try:
                reply = self._stub("Health", address).Check(request, timeout=self.timeout_s)
                answers[address] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                answers[address] = exc.code().name
        return answers


def _channel_credentials(
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    *,
    tls: bool,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any of ``ca``, ``cert``, ``key`` is given or ``tls``; else None."""
    if not (tls or ca or cert or key):
        return None
    from cluster.security.tls import channel_credentials  # loads cryptography: TLS only

    def path(given: str | os.PathLike[str] | None) -> Path | None:
        return Path(given) if given else None

    return channel_credentials(path(ca), path(cert), path(key))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        token = token.strip()  # a token read from a file or a variable often ends in a newline
        if not token or any(c.isspace() for c in token):
            raise ValueError("token: must be one word (petribill token create prints it)")
        self._metadata = bearer_metadata(token)

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), *self._metadata]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """grpc.ClientCallDetails is abstract: this is the usual concrete form."""
