"""The one table from the core's business results to gRPC status codes (docs/architecture.md).

The billing core answers with values (``billing.accounts.Result``,
``billing.writeoff.WriteoffResult``, a bill run's ``refused`` reason); the
backend turns the ones that fail a whole call into a :class:`BackendError`
here, and nowhere else. Both enums are ``StrEnum`` and share their value for
the same meaning (``duplicate``, ``exists_with_different_amount``), so the
table is keyed by value.
"""

from __future__ import annotations

from typing import Final

import grpc

from billing.accounts import Result
from billing.writeoff import WriteoffResult
from cluster.api.errors import BackendError

__all__ = ["CONFLICT_PREFIX", "STATUS_OF", "fail", "raise_for"]

CONFLICT_PREFIX: Final = "exists_with_different_"

_S = grpc.StatusCode

#: Every refusal the core can answer, by value, and the status that fails the call.
#: A value missing here is a success (``created``, ``charged``, ``duplicate``...).
STATUS_OF: Final[dict[str, grpc.StatusCode]] = {
    # Unknown things.
    Result.UNKNOWN_ACCOUNT.value: _S.NOT_FOUND,
    Result.UNKNOWN_SESSION.value: _S.NOT_FOUND,
    "unknown_invoice": _S.NOT_FOUND,
    # An id reused with other content (the message names the field), or taken.
    **{r.value: _S.ALREADY_EXISTS for r in Result if r.value.startswith(CONFLICT_PREFIX)},
    **{r.value: _S.ALREADY_EXISTS for r in WriteoffResult if r.value.startswith(CONFLICT_PREFIX)},
    Result.ACCOUNT_EXISTS.value: _S.ALREADY_EXISTS,
    Result.MSISDN_IN_USE.value: _S.ALREADY_EXISTS,
    Result.NOT_HOLDER.value: _S.FAILED_PRECONDITION,
    Result.SPONSOR_RULE_EXISTS.value: _S.ALREADY_EXISTS,
    Result.UNKNOWN_SPONSOR_RULE.value: _S.NOT_FOUND,
    # The state of the account or cycle does not allow it now.
    Result.INSUFFICIENT_BALANCE.value: _S.FAILED_PRECONDITION,
    Result.CREDIT_LIMIT_EXCEEDED.value: _S.FAILED_PRECONDITION,
    Result.ACCOUNT_BLOCKED.value: _S.FAILED_PRECONDITION,
    Result.ACCOUNT_CLOSED.value: _S.FAILED_PRECONDITION,
    Result.SESSION_CLOSED.value: _S.FAILED_PRECONDITION,
    Result.REJECTED_OFFLINE.value: _S.FAILED_PRECONDITION,
    Result.SAME_PLAN.value: _S.FAILED_PRECONDITION,
    Result.BEFORE_PLAN_START.value: _S.FAILED_PRECONDITION,
    # billing.limits: a book may not pass BALANCE_MAX_MICROS.
    Result.BALANCE_LIMIT.value: _S.FAILED_PRECONDITION,
    Result.SPONSOR_RULES_FULL.value: _S.FAILED_PRECONDITION,
    "cycle_not_ended": _S.FAILED_PRECONDITION,
    # billing.proto: reversing a payment that does not exist is FAILED_PRECONDITION.
    WriteoffResult.UNKNOWN_PAYMENT.value: _S.FAILED_PRECONDITION,
    WriteoffResult.ALREADY_REVERSED.value: _S.FAILED_PRECONDITION,
    # Malformed input the gateway could not see.
    Result.INVALID_ARGUMENT.value: _S.INVALID_ARGUMENT,
    Result.CURRENCY_MISMATCH.value: _S.INVALID_ARGUMENT,
    Result.UNKNOWN_PLAN.value: _S.INVALID_ARGUMENT,
    WriteoffResult.INVALID_AMOUNT.value: _S.INVALID_ARGUMENT,
}


def fail(result: str, subject: str, request_id: str = "", detail: str = "") -> BackendError:
    """The error for refusal ``result`` of the call on ``subject`` (e.g. ``"account a1"``)."""
    code = STATUS_OF[result]
    if result.startswith(CONFLICT_PREFIX):
        field = result.removeprefix(CONFLICT_PREFIX)
        message = f"request_id {request_id} reused with a different {field}"
    elif result == Result.ACCOUNT_EXISTS.value:
        message = f"{subject} already exists (created by another request)"
    else:
        message = f"{subject}: {result}"
    if detail:
        message = f"{message}: {detail}"
    return BackendError(code, message)


def raise_for(result: str, subject: str, request_id: str = "", detail: str = "") -> None:
    """Raise :func:`fail` when ``result`` is a refusal; return quietly on a success."""
    if result in STATUS_OF:
        raise fail(result, subject, request_id, detail)
