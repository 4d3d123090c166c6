"""ChargingService for the Ray backend: online charging on the account's shard.

A session step names the subscriber by account id or MSISDN; an MSISDN is
resolved through its partition's directory, whose plan is authoritative (as
for offline usage). The initial step prices a prototype record with the
catalogue (``billing.rating.price_enquiry``) into the session's ``Quote``;
later steps only report units. Outcomes the proto carries (no quota, unknown
subscriber or session, blocked account, unratable usage) are ``SessionResult``
values; id conflicts and malformed steps fail the call (``backend_status``).
"""

from __future__ import annotations

from typing import Final

import grpc
from petribill.v1 import charging_pb2, common_pb2

from actors.partition.directory import DirectoryEntry
from billing.accounts import AccountState, Result
from billing.ocs.session import Quote
from billing.rated import RatedRecord, RatingFailure, RejectReason
from billing.rating import price_enquiry, rate
from billing.records import Service, UsageRecord
from cluster.api.backend import BackendError
from cluster.backend.convert import money
from cluster.backend.core import BackendCore
from cluster.backend.router import deadline_after
from cluster.backend.router import time_left as _left
from cluster.backend.status import raise_for
from cluster.wire import WireError, service_from_proto

__all__ = ["ChargingOps"]

_INT64_MAX: Final = 2**63 - 1
#: Validity of a grant (Validity-Time), seconds.
VALIDITY_S: Final = 300
#: Units granted when a step asks for none ("0 lets the server choose").
DEFAULT_UNITS: Final = {
    Service.VOICE: 300,
    Service.SMS: 1,
    Service.DATA: 10 * 1024 * 1024,
    Service.CONTENT: 1,
}
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


class ChargingOps(BackendCore):
    async def _payer(
        self, account_id: str, msisdn_text: str, deadline: float
    ) -> tuple[AccountState | None, DirectoryEntry | None, str]:
        """The paying account (and directory entry when named by MSISDN), or why not found."""
        entry = None
        if not account_id:
            msisdn = self.msisdn(msisdn_text)
            entry = await self.subscriber(msisdn, timeout_s=_left(deadline))
            if entry is None:
                return None, None, f"msisdn {msisdn} is not in the directory"
            account_id = entry.account_id
        self.check_account_id(account_id)
        state = await self.on_shard(
            account_id, "get_account", account_id, timeout_s=_left(deadline)
        )
        if state is None:
            return None, entry, f"account {account_id} not found"
        return state, entry, ""

    def _plan(self, state: AccountState, entry: DirectoryEntry | None, at_s: int) -> str | None:
        return (entry or state.account).plan_at(at_s)

    def _called(self, text: str) -> str | None:
        return self.msisdn(text, "called_number") if text else None

    async def charge_session(
        self, request: charging_pb2.SessionRequest, *, timeout_s: float
    ) -> charging_pb2.SessionAnswer:
        deadline = deadline_after(timeout_s)
        at_s, rid, sid = self.now_s(request.at_s), request.request_id, request.session_id
        answer = charging_pb2.SessionAnswer(request_id=rid, session_id=sid)
        state, entry, why = await self._payer(request.account_id, request.served_msisdn, deadline)
        if state is None:
            answer.result, answer.detail = _R.SESSION_RESULT_END_USER_NOT_FOUND, why
            return answer
        account_id, currency = state.account_id, state.account.currency
        before = state.reservations.get(sid)
        step = request.step
        common = {"request_id": rid, "account_id": account_id, "session_id": sid, "at_s": at_s}
        if step == _R.SESSION_STEP_INITIAL:
            service = _service(request.service)
            requested = request.requested_units or DEFAULT_UNITS[service]
            plan_id = self._plan(state, entry, at_s)
            rated = price_enquiry(
                self.catalogue,
                plan_id=plan_id,
                service=service,
                units=requested,
                at_s=at_s,
                called_number=self._called(request.called_number),
                rating_group=request.rating_group if request.HasField("rating_group") else None,
                content_item_id=request.content_item_id or None,
                roaming=request.roaming,
            )
            if isinstance(rated, RatingFailure) or plan_id is None:
                detail = "no plan" if plan_id is None else f"{rated.reason}: {rated.detail}"  # type: ignore[union-attr]
                answer.result, answer.detail = _R.SESSION_RESULT_RATING_FAILED, detail
                return answer
            quote = Quote(
                service=service.value,
                usage_class=rated.usage_class,
                price_key=rated.price_key,
                plan_id=rated.plan_id,
                plan_version=rated.plan_version,
            )
            out = await self.on_shard(
                account_id,
                "session_initial",
                quote=quote,
                requested_units=requested,
                validity_s=VALIDITY_S,
                timeout_s=_left(deadline),
                **common,
            )
        elif step == _R.SESSION_STEP_UPDATE:
            requested = request.requested_units
            if not requested and before is not None:
                requested = DEFAULT_UNITS.get(Service(before.quote.service), 1)
            out = await self.on_shard(
                account_id,
                "session_update",
                used_units=request.used_units,
                requested_units=requested,
                timeout_s=_left(deadline),
                **common,
            )
        elif step == _R.SESSION_STEP_TERMINATE:
            out = await self.on_shard(
                account_id,
                "session_terminate",
                used_units=request.used_units,
                timeout_s=_left(deadline),
                **common,
            )
        else:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, "step: not set")
        mapped = _SESSION_RESULT.get(out.result)
        if mapped is None:
            raise_for(out.result.value, f"session {sid}", rid)
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"session {sid}: {out.result}")
        answer.result = mapped
        grant = out.receipt
        # What the session holds after the step comes with the grant (a replayed step
        # answers as the first time): no second read of the account.
        answer.reserved.CopyFrom(money(grant.money_held if grant is not None else 0, currency))
        if grant is not None:
            answer.granted_units = grant.granted_units
            answer.validity_s = max(grant.expires_at_s - at_s, 0) if grant.granted_units else 0
            answer.final_unit = grant.final
            # A replayed step finds the session already past it: nothing more to report.
            charged = grant.charged - (before.charged if before is not None else 0)
            answer.charged.CopyFrom(money(max(charged, 0), currency))
        else:
            answer.charged.CopyFrom(money(0, currency))
        if out.result is not Result.GRANTED and out.result is not Result.TERMINATED:
            answer.detail = out.result.value
        return answer

    async def direct_debit(
        self, request: charging_pb2.DirectDebitRequest, *, timeout_s: float
    ) -> charging_pb2.DirectDebitAnswer:
        deadline = deadline_after(timeout_s)
        at_s, rid = self.now_s(request.at_s), request.request_id
        state, entry, why = await self._payer(request.account_id, request.served_msisdn, deadline)
        if state is None:
            raise BackendError(grpc.StatusCode.NOT_FOUND, why)
        service = _service(request.service)
        units = request.units or (1 if service in (Service.SMS, Service.CONTENT) else 0)
        record = UsageRecord(
            record_id=rid,
            service=service,
            served_msisdn=entry.msisdn if entry is not None else "",
            record_opening_time_s=at_s,
            called_number=self._called(request.called_number),
            duration_s=units if service is Service.VOICE else 0,
            sms_count=units if service is Service.SMS else 0,
            downlink_bytes=units if service is Service.DATA else 0,
            rating_group=request.rating_group if request.HasField("rating_group") else None,
            content_item_id=request.content_item_id or None,
        )
        rated = rate(record, self.catalogue, self._plan(state, entry, at_s))
        if isinstance(rated, RatingFailure):
            raise _rating_error(rated)
        assert isinstance(rated, RatedRecord)
        out = await self.on_shard(
            state.account_id,
            "direct_debit",
            account_id=state.account_id,
            rated=rated,
            at_s=at_s,
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {state.account_id}", rid)
        after = await self.state(state.account_id, timeout_s=_left(deadline))
        cur = after.account.currency
        charged = out.receipt.amount if out.receipt is not None else 0
        return charging_pb2.DirectDebitAnswer(
            request_id=rid, charged=money(charged, cur), balance_after=money(after.prepaid, cur)
        )

    async def refund(
        self, request: charging_pb2.RefundRequest, *, timeout_s: float
    ) -> charging_pb2.RefundAnswer:
        deadline = deadline_after(timeout_s)
        account_id, rid = request.account_id, request.request_id
        state = await self.state(account_id, timeout_s=_left(deadline))
        cur = state.account.currency
        if request.amount.currency and request.amount.currency != cur:
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"amount.currency {request.amount.currency} is not the account's {cur}",
            )
        out = await self.on_shard(
            account_id,
            "refund",
            request_id=rid,
            account_id=account_id,
            amount=request.amount.micros,
            service=REFUND_SERVICE,
            reason_ref=request.refers_to or request.reason,
            at_s=self.now_s(request.at_s),
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {account_id}", rid)
        after = await self.state(account_id, timeout_s=_left(deadline))
        book = (
            after.credit
            if out.receipt is not None and out.receipt.book.value == "credit"
            else (after.prepaid)
        )
        return charging_pb2.RefundAnswer(request_id=rid, balance_after=money(book, cur))

    async def price_enquiry(
        self, request: charging_pb2.PriceEnquiryRequest, *, timeout_s: float
    ) -> charging_pb2.PriceEnquiryAnswer:
        at_s = self.now_s(request.at_s)
        plan_id: str | None = request.plan_id
        if not plan_id:
            state = await self.state(request.account_id, timeout_s=timeout_s)
            plan_id = state.account.plan_at(at_s)
        rated = price_enquiry(
            self.catalogue,
            plan_id=plan_id,
            service=_service(request.service),
            units=request.units,
            at_s=at_s,
            called_number=self._called(request.called_number),
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
        self, request: charging_pb2.BalanceCheckRequest, *, timeout_s: float
    ) -> charging_pb2.BalanceCheckAnswer:
        self.check_account_id(request.account_id)
        out = await self.on_shard(
            request.account_id,
            "balance_check",
            request.account_id,
            at_s=self.now_s(),
            timeout_s=timeout_s,
        )
        raise_for(out.result.value, f"account {request.account_id}")
        view = out.receipt
        if request.amount.currency and request.amount.currency != view.currency:
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"amount.currency {request.amount.currency} is not the account's {view.currency}",
            )
        spendable = view.spendable
        if spendable is None:  # postpaid without a credit limit
            available = common_pb2.Money(
                micros=_INT64_MAX, currency=view.currency, decimal="unlimited"
            )
        else:
            available = money(spendable, view.currency)
        return charging_pb2.BalanceCheckAnswer(
            sufficient=spendable is None or spendable >= request.amount.micros,
            available=available,
        )
