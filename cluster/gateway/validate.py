"""Request checks the gateway makes before a request reaches the backend.

Only the shape of a request is checked here: ids present, batch sizes within
limits, enums set, amounts positive. Whether an account exists or a record can
be rated is the backend's business. A failed check is INVALID_ARGUMENT whose
message names the field and, for a limit, the limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from cluster.gateway.calls import Failure
from cluster.gateway.limits import GatewayLimits

__all__ = ["UNREADABLE_RAW_CHARS_MAX", "check"]

_CYCLE_ID = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rule:
    """The shape one request message must have."""

    write: bool = False  # request_id is the idempotency key: required
    required: tuple[str, ...] = ()  # non-empty string fields
    any_of: tuple[str, ...] = ()  # at least one of these string fields set
    set_enums: tuple[str, ...] = ()  # enum fields that must not be UNSPECIFIED
    positive_money: tuple[str, ...] = ()  # Money fields that must be > 0
    non_negative: tuple[str, ...] = ()  # integer fields that must be >= 0
    bounded_lists: tuple[str, ...] = ()  # repeated fields of at most batch_records_max


_RULES: dict[str, _Rule] = {
    # AccountService
    "CreateAccountRequest": _Rule(write=True, required=("account_id",)),
    "GetAccountRequest": _Rule(required=("account_id",)),
    "TopUpRequest": _Rule(write=True, required=("account_id",), positive_money=("amount",)),
    "SwitchPaymentModeRequest": _Rule(
        write=True, required=("account_id",), set_enums=("payment_mode",)
    ),
    "SetCreditLimitRequest": _Rule(write=True, required=("account_id",)),
    # at_s 0 is now; a negative time is malformed.
    "ChangePlanRequest": _Rule(
        write=True, required=("account_id", "plan_id"), non_negative=("at_s",)
    ),
    "ListUsageRequest": _Rule(required=("account_id",), non_negative=("limit",)),
    # ChargingService
    "SessionRequest": _Rule(
        write=True,
        required=("session_id",),
        any_of=("account_id", "served_msisdn"),
        set_enums=("step",),
        non_negative=("requested_units", "used_units"),
    ),
    "DirectDebitRequest": _Rule(
        write=True, any_of=("account_id", "served_msisdn"), non_negative=("units",)
    ),
    "RefundRequest": _Rule(write=True, required=("account_id",), positive_money=("amount",)),
    "PriceEnquiryRequest": _Rule(any_of=("plan_id", "account_id"), non_negative=("units",)),
    "BalanceCheckRequest": _Rule(required=("account_id",)),
    # BillingService
    "BillRunRequest": _Rule(write=True, required=("cycle_id",), bounded_lists=("account_ids",)),
    "ListInvoicesRequest": _Rule(required=("account_id",)),
    "GetInvoiceRequest": _Rule(required=("account_id", "invoice_id")),
    "PaymentRequest": _Rule(write=True, required=("account_id",), positive_money=("amount",)),
    "ReversePaymentRequest": _Rule(write=True, required=("account_id", "payment_request_id")),
    # TariffService
    "LoadTariffsRequest": _Rule(write=True, required=("path",)),
    # NotificationService
    "SubscribeRequest": _Rule(bounded_lists=("account_ids",)),
    "ListNotificationsRequest": _Rule(required=("account_id",), non_negative=("limit",)),
    # AdminService
    "DrainRequest": _Rule(write=True, required=("node_id",)),
    "RebalanceRequest": _Rule(write=True),
    "ListRejectsRequest": _Rule(non_negative=("limit",)),
    "ReprocessRejectsRequest": _Rule(write=True, bounded_lists=("record_ids",)),
    # An empty path backs up under the data dir (cluster/backend/admin.py).
    "BackupRequest": _Rule(write=True),
}


def _invalid(message: str) -> Failure:
    return Failure(grpc.StatusCode.INVALID_ARGUMENT, message)


def check(request: Any, limits: GatewayLimits) -> None:
    """Raise an INVALID_ARGUMENT :class:`Failure` if ``request`` is malformed."""
    kind = request.DESCRIPTOR.name
    batch_check = _BATCHES.get(kind)
    if batch_check is not None:
        batch_check(request, limits)
        return
    rule = _RULES.get(kind)
    if rule is None:
        return
    if rule.write:
        request_id = request.request_id
        if not request_id:
            raise _invalid(f"{kind}.request_id is required: it is the idempotency key of a write")
        if len(request_id) > limits.request_id_chars_max:
            raise _invalid(
                f"{kind}.request_id has {len(request_id)} characters "
                f"(request_id_chars_max={limits.request_id_chars_max})"
            )
    for name in rule.required:
        if not getattr(request, name):
            raise _invalid(f"{kind}.{name} is required")
    if rule.any_of and not any(getattr(request, name) for name in rule.any_of):
        raise _invalid(f"{kind}: one of {', '.join(rule.any_of)} is required")
    for name in rule.set_enums:
        if getattr(request, name) == 0:
            raise _invalid(f"{kind}.{name} must be set (not UNSPECIFIED)")
    for name in rule.positive_money:
        if not request.HasField(name) or getattr(request, name).micros <= 0:
            raise _invalid(f"{kind}.{name} must be a positive amount (Money.micros > 0)")
    for name in rule.non_negative:
        if getattr(request, name) < 0:
            raise _invalid(f"{kind}.{name} must be >= 0")
    for name in rule.bounded_lists:
        count = len(getattr(request, name))
        if count > limits.batch_records_max:
            raise _invalid(
                f"{kind}.{name} has {count} entries (batch_records_max={limits.batch_records_max})"
            )
    if kind == "BillRunRequest" and not _CYCLE_ID.match(request.cycle_id):
        raise _invalid(f"BillRunRequest.cycle_id must be YYYY-MM, got {request.cycle_id!r}")


def _usage_batch(request: Any, limits: GatewayLimits) -> None:
    """A usage batch holds 1..batch_records_max records; each record is judged by the backend."""
    _check_batch_size("SubmitUsageRequest.records", "records", len(request.records), limits)


def _check_batch_size(name: str, what: str, count: int, limits: GatewayLimits) -> None:
    """1..batch_records_max items in the repeated field ``name``."""
    if count == 0:
        raise _invalid(f"{name} is empty: a batch needs at least one of its {what}")
    if count > limits.batch_records_max:
        raise _invalid(
            f"{name} has {count} {what} "
            f"(batch_records_max={limits.batch_records_max}); split the batch"
        )


#: The longest raw line kept for an unreadable line (the readers keep at most this much).
UNREADABLE_RAW_CHARS_MAX = 65_536


def _unreadable(request: Any, limits: GatewayLimits) -> None:
    """1..batch_records_max lines, each naming its file and a line number >= 1."""
    _check_batch_size("StoreUnreadableRequest.lines", "lines", len(request.lines), limits)
    for index, line in enumerate(request.lines):
        where = f"StoreUnreadableRequest.lines[{index}]"
        if not line.source_file or "\x00" in line.source_file:
            raise _invalid(f"{where}.source_file is required (the file the line came from)")
        if line.source_line < 1:
            raise _invalid(f"{where}.source_line must be >= 1, got {line.source_line}")
        if len(line.raw) > UNREADABLE_RAW_CHARS_MAX:
            raise _invalid(
                f"{where}.raw has {len(line.raw)} characters (at most {UNREADABLE_RAW_CHARS_MAX})"
            )


# Batches of records and of unreadable lines: each item is judged by the backend.
_BATCHES: dict[str, Callable[[Any, GatewayLimits], None]] = {
    "SubmitUsageRequest": _usage_batch,
    "StoreUnreadableRequest": _unreadable,
}
