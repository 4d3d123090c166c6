"""Request checks the gateway makes before a request reaches the backend.

Only the shape of a request is checked here, by the rules each field carries in
the protos (``proto/petribill/v1/rules.proto``: required fields, lengths and
patterns of ids, bounds of amounts, units and times, sizes of batches); the
batch limit itself is the gateway's ``batch_records_max``. Whether an account
exists or a record can be rated is the backend's business, and so is each
record of a usage batch (a malformed record is rejected on its own). A failed
check is INVALID_ARGUMENT whose message names the field and the rule; so is a
request that could not be read as its message type at all.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from cluster.api.rules import RuleError, check_message
from cluster.gateway.calls import Failure
from cluster.gateway.limits import GatewayLimits

__all__ = ["UNREADABLE_RAW_CHARS_MAX", "Unreadable", "check"]

#: The longest raw line kept for an unreadable line (``UnreadableLine.raw``'s max_len).
UNREADABLE_RAW_CHARS_MAX: Final = 65_536


class Unreadable:
    """What the gateway's deserializer hands the servicer for bytes that are not a message.

    grpc.aio answers a request whose deserializer raises with UNKNOWN; the gateway's
    deserializers return this instead (``cluster.gateway.servicers``), and
    :func:`check` refuses it with INVALID_ARGUMENT.
    """

    __slots__ = ("reason", "type_name")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason


def check(request: Any, limits: GatewayLimits) -> None:
    """Raise an INVALID_ARGUMENT :class:`Failure` if ``request`` is malformed."""
    if isinstance(request, Unreadable):
        raise Failure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{request.type_name}: the request is not a readable message ({request.reason})",
        )
    try:
        check_message(request, batch_items_max=limits.batch_records_max)
    except RuleError as exc:
        raise Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
