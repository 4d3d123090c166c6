"""ChargingService for the Ray backend: online charging on the account's shard.

A session step names the subscriber by account id or MSISDN; an MSISDN is
resolved through its partition's directory, whose plan is authoritative (as
for offline usage). A step is then one call to the account's shard
(``actors.shard.sessions``): the shard prices an initial step's prototype
record with its catalogue (``billing.rating.price_enquiry``) into the
session's ``Quote`` and reads the account itself; later steps only report
units. Concurrent steps bound for one host travel together and the steps that
meet on one shard are committed together (``actors.coalesce``; each keeps its
own request id and stored answer). Outcomes the proto carries (no quota, unknown
subscriber or session, blocked account, unratable usage) are ``SessionResult``
values; id conflicts and malformed steps fail the call (``backend_status``).

Every answer is built from what the shard stored with the request id — a
session step's ``Grant``, a direct debit's charge and balance, a refund's
receipt — never from the account's state at the time of a retry, so a retry
answers the first answer's money unchanged (flagged ``duplicate`` in
``detail`` for a session step). The Validity-Time is the shard's
(``[charging] session_validity_s``) and runs on the service's clock, whatever
event time a request carries.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import grpc
from petribill.v1 import charging_pb2, common_pb2

from actors.partition.directory import DirectoryEntry
from actors.router import deadline_after
from actors.router import time_left as _left
from actors.shard import ops
from actors.shard.sessions import INITIAL, TERMINATE, UPDATE, SessionStep
from billing.accounts import AccountState, Result
from billing.rated import RatedRecord, RatingFailure, RejectReason
from billing.rating import price_enquiry as quote_price
from billing.rating import rate
from billing.records import Service, UsageRecord
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.status import raise_for
from cluster.wire import WireError, money, service_from_proto

__all__ = [
    "balance_check",
    "charge_session",
    "direct_debit",
    "price_enquiry",
    "refund",
]

_INT64_MAX: Final = 2**63 - 1
#: Revenue book refunds are taken from (the request does not name a service).
REFUND_SERVICE: Final = "refund"
_R = charging_pb2
_SESSION_RESULT: Final = {
    Result.GRANTED: _R.SESSION_RESULT_SUCCESS,
    Result.TERMINATED: _R.SESSION_RESULT_SUCCESS,
    Result.DUPLICATE: _R.SESSION_RESULT_SUCCESS,
    Result.INSUFFICIENT_BALANCE: _R.SESSION_RESULT_CREDIT_LIMIT_REACHED,
    Result.CREDIT_LIMIT_EXCEEDED: _R.SESSION_RESULT_CREDIT_LIMIT_REACHED,
    Result.ACCOUNT_BLOCKED: _R.SESSION_RESULT_ACCOUNT_BLOCKED,
    Result.ACCOUNT_CLOSED: _R.SESSION_RESULT_ACCOUNT_BLOCKED,
    Result.UNKNOWN_ACCOUNT: _R.SESSION_RESULT_END_USER_NOT_FOUND,
    Result.UNKNOWN_SESSION: _R.SESSION_RESULT_UNKNOWN_SESSION,
    Result.SESSION_CLOSED: _R.SESSION_RESULT_UNKNOWN_SESSION,
}


def _service(number: int) -> Service:
    try:
        return service_from_proto(number)
    except WireError as exc:
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _rating_error(failure: RatingFailure) -> BackendError:
    code = (
        grpc.StatusCode.NOT_FOUND
        if failure.reason is RejectReason.NO_PLAN
        else (grpc.StatusCode.INVALID_ARGUMENT)
    )
    return BackendError(code, f"cannot be rated: {failure.reason.value}: {failure.detail}")


async def _payer(
    cluster: Cluster, account_id: str, msisdn_text: str, deadline: float
) -> tuple[AccountState | None, DirectoryEntry | None, str]:
    """The paying account (and directory entry when named by MSISDN), or why not found."""
    entry = None
    if not account_id:
        msisdn = cluster.msisdn(msisdn_text)
        entry = await cluster.subscriber(msisdn, timeout_s=_left(deadline))
        if entry is None:
            return None, None, f"msisdn {msisdn} is not in the directory"
        account_id = entry.account_id
    cluster.check_account_id(account_id)
    state = await cluster.on_shard(
        account_id, ops.GetAccount(account_id=account_id), timeout_s=_left(deadline)
    )
    if state is None:
        return None, entry, f"account {account_id} not found"
    return state, entry, ""


def _plan(state: AccountState, entry: DirectoryEntry | None, at_s: int) -> str | None:
    return (entry or state.account).plan_at(at_s)


def _called(cluster: Cluster, text: str) -> str | None:
    return cluster.msisdn(text, "called_number") if text else None


async def charge_session(
    cluster: Cluster, request: charging_pb2.SessionRequest, timeout_s: float
) -> charging_pb2.SessionAnswer:
    deadline = deadline_after(timeout_s)
    at_s, rid, sid = cluster.now_s(request.at_s), request.request_id, request.session_id
    now_s = cluster.now_s()  # what the grant's validity runs on (RFC 4006), not the event time
    answer = charging_pb2.SessionAnswer(request_id=rid, session_id=sid)
    account_id, entry = request.account_id, None
    if not account_id:
        msisdn = cluster.msisdn(request.served_msisdn)
        entry = await cluster.subscriber(msisdn, timeout_s=_left(deadline), coalesced=True)
        if entry is None:
            answer.result = _R.SESSION_RESULT_END_USER_NOT_FOUND
            answer.detail = f"msisdn {msisdn} is not in the directory"
            return answer
        account_id = entry.account_id
    cluster.check_account_id(account_id)
    step = _session_step(cluster, request, account_id, entry, at_s=at_s, now_s=now_s)
    # One round trip: the shard prices the quote and reads the account itself, and the
    # step travels with the concurrent steps bound for the same host (group commit).
    out = await cluster.coalesced(cluster.router.shard(account_id), step, timeout_s=_left(deadline))
    if out.result is Result.UNKNOWN_ACCOUNT:
        answer.result = _R.SESSION_RESULT_END_USER_NOT_FOUND
        answer.detail = f"account {account_id} not found"
        return answer
    if out.rating_failed:
        answer.result, answer.detail = _R.SESSION_RESULT_RATING_FAILED, out.rating_failed
        return answer
    grant, currency = out.grant, out.currency
    # A replay answers the stored step's own result, not "duplicate" (flagged in detail).
    result = grant.result if out.result is Result.DUPLICATE and grant is not None else out.result
    mapped = _SESSION_RESULT.get(result)
    if mapped is None:
        raise_for(out.result.value, f"session {sid}", rid)
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"session {sid}: {out.result}")
    answer.result = mapped
    # The whole answer is the stored grant: what this step charged, the validity of
    # its grant and what the session holds after it, as first decided.
    answer.reserved.CopyFrom(money(grant.money_held if grant is not None else 0, currency))
    answer.charged.CopyFrom(money(grant.charged_now if grant is not None else 0, currency))
    if grant is not None:
        answer.granted_units = grant.granted_units
        answer.validity_s = grant.validity_s
        answer.final_unit = grant.final
    if out.result is not Result.GRANTED and out.result is not Result.TERMINATED:
        answer.detail = out.result.value
    return answer


def _session_step(
    cluster: Cluster,
    request: charging_pb2.SessionRequest,
    account_id: str,
    entry: DirectoryEntry | None,
    *,
    at_s: int,
    now_s: int,
) -> SessionStep:
    """The request as the shard's step: an INITIAL carries what its quote is priced from
    (and, for a subscriber named by MSISDN, the directory entry's plan)."""
    step = partial(
        SessionStep, request_id=request.request_id, account_id=account_id,
        session_id=request.session_id, at_s=at_s, now_s=now_s,
    )  # fmt: skip
    kind = request.step
    if kind == _R.SESSION_STEP_INITIAL:
        return step(
            step=INITIAL, service=_service(request.service),
            requested_units=request.requested_units,
            called_number=_called(cluster, request.called_number),
            rating_group=request.rating_group if request.HasField("rating_group") else None,
            content_item_id=request.content_item_id or None, roaming=request.roaming,
            plan_from_entry=entry is not None,
            plan_id=entry.plan_at(at_s) if entry is not None else None,
        )  # fmt: skip
    if kind == _R.SESSION_STEP_UPDATE:
        return step(
            step=UPDATE, used_units=request.used_units, requested_units=request.requested_units
        )
    if kind == _R.SESSION_STEP_TERMINATE:
        return step(step=TERMINATE, used_units=request.used_units)
    raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, "step: not set")


async def direct_debit(
    cluster: Cluster, request: charging_pb2.DirectDebitRequest, timeout_s: float
) -> charging_pb2.DirectDebitAnswer:
    deadline = deadline_after(timeout_s)
    at_s, rid = cluster.now_s(request.at_s), request.request_id
    state, entry, why = await _payer(cluster, request.account_id, request.served_msisdn, deadline)
    if state is None:
        raise BackendError(grpc.StatusCode.NOT_FOUND, why)
    service = _service(request.service)
    units = request.units or (1 if service in (Service.SMS, Service.CONTENT) else 0)
    record = UsageRecord(
        record_id=rid,
        service=service,
        served_msisdn=entry.msisdn if entry is not None else "",
        record_opening_time_s=at_s,
        called_number=_called(cluster, request.called_number),
        duration_s=units if service is Service.VOICE else 0,
        sms_count=units if service is Service.SMS else 0,
        downlink_bytes=units if service is Service.DATA else 0,
        rating_group=request.rating_group if request.HasField("rating_group") else None,
        content_item_id=request.content_item_id or None,
    )
    rated = rate(record, cluster.catalogue, _plan(state, entry, at_s))
    if isinstance(rated, RatingFailure):
        raise _rating_error(rated)
    assert isinstance(rated, RatedRecord)
    out = await cluster.on_shard(
        state.account_id,
        ops.DirectDebit(account_id=state.account_id, rated=rated, at_s=at_s),
        timeout_s=_left(deadline),
    )
    raise_for(out.result.value, f"account {state.account_id}", rid)
    debit = out.receipt
    assert debit is not None  # charged or replayed: the stored charge and balance
    cur = state.account.currency
    return charging_pb2.DirectDebitAnswer(
        request_id=rid,
        charged=money(debit.charge.amount, cur),
        balance_after=money(debit.balance_after, cur),
    )


async def refund(
    cluster: Cluster, request: charging_pb2.RefundRequest, timeout_s: float
) -> charging_pb2.RefundAnswer:
    deadline = deadline_after(timeout_s)
    account_id, rid = request.account_id, request.request_id
    state = await cluster.state(account_id, timeout_s=_left(deadline))
    cur = state.account.currency
    if request.amount.currency and request.amount.currency != cur:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"amount.currency {request.amount.currency} is not the account's {cur}",
        )
    out = await cluster.on_shard(
        account_id,
        ops.Refund(
            request_id=rid,
            account_id=account_id,
            amount=request.amount.micros,
            service=REFUND_SERVICE,
            reason_ref=request.refers_to or request.reason,
            at_s=cluster.now_s(request.at_s),
        ),
        timeout_s=_left(deadline),
    )
    raise_for(out.result.value, f"account {account_id}", rid)
    receipt = out.receipt
    assert receipt is not None  # refunded or replayed: the stored refund
    balance = money(receipt.balance_after, cur)
    return charging_pb2.RefundAnswer(request_id=rid, balance_after=balance)


async def price_enquiry(
    cluster: Cluster, request: charging_pb2.PriceEnquiryRequest, timeout_s: float
) -> charging_pb2.PriceEnquiryAnswer:
    at_s = cluster.now_s(request.at_s)
    plan_id: str | None = request.plan_id
    if not plan_id:
        state = await cluster.state(request.account_id, timeout_s=timeout_s)
        plan_id = state.account.plan_at(at_s)
    rated = quote_price(
        cluster.catalogue,
        plan_id=plan_id,
        service=_service(request.service),
        units=request.units,
        at_s=at_s,
        called_number=_called(cluster, request.called_number),
        rating_group=request.rating_group if request.HasField("rating_group") else None,
        content_item_id=request.content_item_id or None,
        roaming=request.roaming,
    )
    if isinstance(rated, RatingFailure):
        raise _rating_error(rated)
    return charging_pb2.PriceEnquiryAnswer(
        price=money(rated.amount, rated.currency),
        billed_units=rated.billed_units,
        rate_ids=list(rated.rate_ids),
        destination=rated.destination or "",
        time_band=rated.time_band or "",
    )


async def balance_check(
    cluster: Cluster, request: charging_pb2.BalanceCheckRequest, timeout_s: float
) -> charging_pb2.BalanceCheckAnswer:
    cluster.check_account_id(request.account_id)
    out = await cluster.on_shard(
        request.account_id,
        ops.BalanceCheck(account_id=request.account_id, at_s=cluster.now_s()),
        timeout_s=timeout_s,
    )
    raise_for(out.result.value, f"account {request.account_id}")
    view = out.receipt
    assert view is not None  # a known account always has a view
    if request.amount.currency and request.amount.currency != view.currency:
        raise BackendError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"amount.currency {request.amount.currency} is not the account's {view.currency}",
        )
    spendable = view.spendable
    if spendable is None:  # postpaid without a credit limit
        available = common_pb2.Money(micros=_INT64_MAX, currency=view.currency, decimal="unlimited")
    else:
        available = money(spendable, view.currency)
    return charging_pb2.BalanceCheckAnswer(
        sufficient=spendable is None or spendable >= request.amount.micros,
        available=available,
    )
