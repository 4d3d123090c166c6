"""AccountService for the Ray backend: every call goes to the account's shard.

``CreateAccount`` writes the account on its shard, then the directory entry
of each MSISDN on that MSISDN's partition (concurrently), each idempotent by
its own id derived from the request id (``<request_id>/dir/<msisdn>``), so a
retried create finishes whatever a broken one left undone
(docs/architecture.md, "The subscriber directory lives in the partitions").
``ChangePlan`` goes the same way: the shard, then each MSISDN's directory entry
(``<request_id>/plan/<msisdn>``).
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from petribill.v1 import accounts_pb2

from actors.partition.directory import DirectoryAnswer
from billing.accounts import Account, Result, Subscription
from billing.invariant import InvariantViolation
from billing.plan_change import new_subscription
from billing.tariffs.model import PaymentMode
from cluster.api.backend import BackendError
from cluster.backend.convert import account_to_proto, balance_to_proto, usage_line_to_proto
from cluster.backend.core import BackendCore
from cluster.backend.router import deadline_after
from cluster.backend.router import time_left as _left
from cluster.backend.status import CONFLICT_PREFIX, raise_for
from cluster.wire import WireError, payment_mode_from_proto

__all__ = ["AccountOps", "directory_request_id", "plan_request_id"]

log = structlog.get_logger("petribill.backend")

_USAGE_LIMIT_DEFAULT = 50
_USAGE_LIMIT_MAX = 1000


def directory_request_id(request_id: str, msisdn: str) -> str:
    """The idempotency key of one MSISDN's directory write within a CreateAccount."""
    return f"{request_id}/dir/{msisdn}"


def plan_request_id(request_id: str, msisdn: str) -> str:
    """The idempotency key of one MSISDN's directory write within a ChangePlan."""
    return f"{request_id}/plan/{msisdn}"


class AccountOps(BackendCore):
    def _new_account(self, request: accounts_pb2.CreateAccountRequest) -> Account:
        self.check_account_id(request.account_id)
        plan_id = self.plan_or_default(request.plan_id)
        currency = request.currency or self.catalogue.currency
        if len(currency) != 3 or not currency.isupper():
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT, f"currency: not an ISO 4217 code: {currency!r}"
            )
        if request.payment_mode:
            try:
                mode = payment_mode_from_proto(request.payment_mode)
            except WireError as exc:
                raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        else:
            version = self.catalogue.plan_version(plan_id, self.now_s(request.start_s))
            mode = version.payment_mode if version is not None else PaymentMode.PREPAID
        limit = None
        if request.HasField("credit_limit"):
            limit = request.credit_limit.micros
            if limit < 0:
                raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, "credit_limit: must be >= 0")
        msisdns = tuple(
            dict.fromkeys(self.msisdn(m, f"msisdns[{i}]") for i, m in enumerate(request.msisdns))
        )
        return Account(
            account_id=request.account_id,
            currency=currency,
            payment_mode=mode,
            credit_limit=limit,
            subscriptions=(Subscription(plan_id=plan_id, start_s=max(request.start_s, 0)),),
            msisdns=msisdns,
            created_at_s=self.now_s(),
        )

    async def create_account(
        self, request: accounts_pb2.CreateAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        deadline = deadline_after(timeout_s)
        account = self._new_account(request)
        rid = request.request_id
        out = await self.on_shard(
            account.account_id,
            "create_account",
            request_id=rid,
            account=account,
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {account.account_id}", rid)
        stored: Account = out.receipt if out.receipt is not None else account
        answers = await asyncio.gather(
            *(
                self.router.call(
                    self.router.partition(msisdn),
                    "put_subscriber",
                    directory_request_id(rid, msisdn),
                    msisdn,
                    stored.account_id,
                    list(stored.subscriptions),
                    list(stored.sponsor_rules),
                    timeout_s=_left(deadline),
                )
                for msisdn in stored.msisdns
            )
        )
        for msisdn, answer in zip(stored.msisdns, answers, strict=True):
            _check_directory(answer, msisdn, rid)
        state = await self.state(account.account_id, timeout_s=_left(deadline))
        return account_to_proto(state, self.catalogue, self.now_s())

    async def get_account(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        state = await self.state(request.account_id, timeout_s=timeout_s)
        return account_to_proto(state, self.catalogue, self.now_s())

    async def get_balance(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance:
        state = await self.state(request.account_id, timeout_s=timeout_s)
        return balance_to_proto(state, self.catalogue, self.now_s())

    async def top_up(
        self, request: accounts_pb2.TopUpRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance:
        deadline = deadline_after(timeout_s)
        account_id = request.account_id
        self.check_account_id(account_id)
        currency = await self.currency_of(
            account_id, request.amount.currency, timeout_s=_left(deadline)
        )
        out = await self.on_shard(
            account_id,
            "top_up",
            request_id=request.request_id,
            account_id=account_id,
            amount=request.amount.micros,
            currency=currency,
            at_s=self.now_s(request.at_s),
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {account_id}", request.request_id)
        return await self.get_balance(
            accounts_pb2.GetAccountRequest(account_id=account_id), timeout_s=_left(deadline)
        )

    async def switch_payment_mode(
        self, request: accounts_pb2.SwitchPaymentModeRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        deadline = deadline_after(timeout_s)
        self.check_account_id(request.account_id)
        try:
            mode = payment_mode_from_proto(request.payment_mode)
        except WireError as exc:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        out = await self.on_shard(
            request.account_id,
            "switch_mode",
            request_id=request.request_id,
            account_id=request.account_id,
            to_mode=mode,
            at_s=self.now_s(request.at_s),
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {request.account_id}", request.request_id)
        return await self.get_account(
            accounts_pb2.GetAccountRequest(account_id=request.account_id),
            timeout_s=_left(deadline),
        )

    async def set_credit_limit(
        self, request: accounts_pb2.SetCreditLimitRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        deadline = deadline_after(timeout_s)
        self.check_account_id(request.account_id)
        # An absent limit means unlimited (postpaid without a cap).
        limit = request.credit_limit.micros if request.HasField("credit_limit") else None
        out = await self.on_shard(
            request.account_id,
            "set_credit_limit",
            request_id=request.request_id,
            account_id=request.account_id,
            credit_limit=limit,
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {request.account_id}", request.request_id)
        return await self.get_account(
            accounts_pb2.GetAccountRequest(account_id=request.account_id),
            timeout_s=_left(deadline),
        )

    async def change_plan(
        self, request: accounts_pb2.ChangePlanRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        """The account's shard first (``billing.plan_change``), then the directory entry of
        each of its MSISDNs on that MSISDN's partition, so records from the change on are
        rated with the new plan. Each write is idempotent by its own id (the directory's
        ``<request_id>/plan/<msisdn>``, at the time the shard stored), so a retry
        finishes whatever a broken call left undone."""
        deadline = deadline_after(timeout_s)
        account_id = request.account_id
        self.check_account_id(account_id)
        rid = request.request_id
        out = await self.on_shard(
            account_id,
            "change_plan",
            request_id=rid,
            account_id=account_id,
            plan_id=request.plan_id,
            at_s=self.now_s(request.at_s),
            at_from_clock=request.at_s <= 0,
            timeout_s=_left(deadline),
        )
        raise_for(
            out.result.value,
            f"account {account_id}",
            rid,
            self._plan_refusal(out.result, request.plan_id, out.receipt),
        )
        changed: Account = out.receipt
        opened = new_subscription(changed)
        if opened is None:
            raise InvariantViolation(f"account {account_id}: changed, yet without a plan")
        answers = await asyncio.gather(
            *(
                self.router.call(
                    self.router.partition(msisdn),
                    "change_plan",
                    plan_request_id(rid, msisdn),
                    msisdn,
                    opened.plan_id,
                    opened.start_s,
                    account_id,
                    timeout_s=_left(deadline),
                )
                for msisdn in changed.msisdns
            )
        )
        for msisdn, answer in zip(changed.msisdns, answers, strict=True):
            if answer.result is Result.UNKNOWN_ACCOUNT and answer.entry is not None:
                # The number moved to another account since: its plan is not ours to change.
                log.info("plan_change_skips_moved_msisdn", msisdn=msisdn, detail=answer.detail)
                continue
            if answer.result is Result.UNKNOWN_ACCOUNT:
                raise BackendError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"msisdn {msisdn} of account {account_id} is not in the directory: retry "
                    f"its CreateAccount, then this ChangePlan with the same request_id",
                )
            _check_directory(answer, msisdn, rid)
        return await self.get_account(
            accounts_pb2.GetAccountRequest(account_id=account_id), timeout_s=_left(deadline)
        )

    def _plan_refusal(self, result: Result, plan_id: str, current: Account | None) -> str:
        """The detail of a refused plan change: what the catalogue or the account has."""
        if result is Result.UNKNOWN_PLAN:
            known = ", ".join(sorted(self.catalogue.plans)) or "none"
            return f"plan_id {plan_id!r}: no version at that time (the catalogue has: {known})"
        latest = new_subscription(current) if current is not None else None
        if latest is None:
            return ""
        if result is Result.BEFORE_PLAN_START:
            return f"at_s must be after {latest.start_s}, when plan {latest.plan_id} started"
        if result is Result.SAME_PLAN:
            return f"the account is on plan {latest.plan_id} since {latest.start_s}"
        return ""

    async def list_usage(
        self, request: accounts_pb2.ListUsageRequest, *, timeout_s: float
    ) -> accounts_pb2.ListUsageResponse:
        deadline = deadline_after(timeout_s)
        self.check_account_id(request.account_id)
        limit = min(request.limit or _USAGE_LIMIT_DEFAULT, _USAGE_LIMIT_MAX)
        before = None
        if request.page_token:
            if not request.page_token.isdigit() or int(request.page_token) <= 0:
                raise BackendError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"page_token: {request.page_token!r} is not a token this service gave",
                )
            before = int(request.page_token)
        lines, next_before = await self.on_shard(
            request.account_id,
            "usage_page",
            request.account_id,
            limit,
            before,
            timeout_s=_left(deadline),
        )
        if not lines:  # no usage, or no account: tell NOT_FOUND apart
            await self.state(request.account_id, timeout_s=_left(deadline))
        return accounts_pb2.ListUsageResponse(
            lines=[usage_line_to_proto(x) for x in lines],
            next_page_token=str(next_before) if next_before else "",
        )


def _check_directory(answer: DirectoryAnswer, msisdn: str, request_id: str) -> None:
    result = answer.result
    if result in (Result.CREATED, Result.UPDATED, Result.DUPLICATE):
        return
    if result.value.startswith(CONFLICT_PREFIX) and answer.field:
        raise BackendError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"request_id {request_id} reused with a different {answer.field} (msisdn {msisdn})",
        )
    raise_for(result.value, f"msisdn {msisdn}", request_id, answer.detail)
    raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"msisdn {msisdn}: {result.value}")
