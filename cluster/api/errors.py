"""The statuses a call into the cluster may fail with, and which of them a client retries.

The gateway is stateless: it checks the shape of a request, then runs the RPC's
handler (``cluster.backend.rpcs``, the one table of RPCs) and relays the answer.
A handler answers with the response message, or fails the whole call with a
:class:`BackendError` carrying one of the codes below; an expected business
outcome the proto can carry (a per-record ``RecordStatus``, a
``SessionResult``) is a value in the answer, not an error. Anything else that
escapes a handler is a bug and becomes ``INTERNAL`` (logged by the gateway with
an error id).

Contract of every handler: ``timeout_s`` is the time left for the call (the
client's deadline, or the gateway's default), always > 0; a handler gives up
and raises ``BackendError(DEADLINE_EXCEEDED)`` or ``UNAVAILABLE`` rather than
overrun it, and must be safe to cancel at any ``await`` (a cancelled write is an
unknown outcome, which the client resolves by retrying with the same id).
Writes are idempotent by their ``request_id`` (usage by each ``record_id``).
"""

from __future__ import annotations

import grpc

__all__ = ["RETRYABLE_CODES", "BackendError"]

# The status codes a backend may raise, and what each means to the client.
_ALLOWED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,  # malformed request; never retry
        grpc.StatusCode.NOT_FOUND,  # unknown account, invoice, session, payment
        grpc.StatusCode.FAILED_PRECONDITION,  # insufficient funds, closed cycle, blocked
        grpc.StatusCode.ALREADY_EXISTS,  # id reused with other content; message names field
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # back-pressure; retry later with the same ids
        grpc.StatusCode.UNAVAILABLE,  # a unit is being taken over; retry with the same ids
        grpc.StatusCode.DEADLINE_EXCEEDED,  # timeout_s ran out; outcome unknown, retry
        grpc.StatusCode.ABORTED,  # a conflicting operation (e.g. a bill-run lock) holds
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,  # an RPC this backend does not serve (yet)
    }
)

#: Codes after which a client retries with the same idempotency keys.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class BackendError(Exception):
    """Raised by an RPC handler when the whole call fails with a gRPC status.

    The gateway answers the call with exactly ``code`` and ``message``. Raise it
    for: ``INVALID_ARGUMENT`` (malformed input the gateway could not see, e.g.
    an unknown currency), ``NOT_FOUND``, ``FAILED_PRECONDITION`` (insufficient
    funds for a direct debit, a closed or not yet ended cycle, a blocked
    account), ``ALREADY_EXISTS`` (an id reused with other content — the message
    names the field, e.g. ``"request_id top-1 reused with a different amount"``),
    ``RESOURCE_EXHAUSTED`` (back-pressure), ``UNAVAILABLE`` (a unit is being
    taken over: the client retries with the same ids), ``DEADLINE_EXCEEDED``
    (``timeout_s`` ran out). ``OK`` and the codes that belong to the transport
    (``CANCELLED``, ``UNKNOWN``, ``INTERNAL``, ``DATA_LOSS``...) are refused at
    construction with ``ValueError``: a bug should surface as one, not be
    disguised as a status.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        if code not in _ALLOWED:
            raise ValueError(f"BackendError cannot carry {code}; allowed: {sorted(_names())}")
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether a client should retry the call with the same idempotency keys."""
        return self.code in RETRYABLE_CODES


def _names() -> list[str]:
    return [code.name for code in _ALLOWED]
