"""Accounts, balances and online charging (sessions, debits, refunds, enquiries)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from petribill.v1 import accounts_pb2, charging_pb2

from cluster.client.transport import Amount, Transport
from cluster.wire import money_to_proto, payment_mode_to_proto, service_to_proto

__all__ = ["AccountCalls"]

_STEPS = {
    "initial": charging_pb2.SESSION_STEP_INITIAL,
    "update": charging_pb2.SESSION_STEP_UPDATE,
    "terminate": charging_pb2.SESSION_STEP_TERMINATE,
}


class AccountCalls(Transport):
    """Accounts, balances and online charging (sessions, debits, refunds, enquiries)."""

    def create_account(
        self,
        account_id: str,
        *,
        payment_mode: str = "prepaid",
        currency: str = "EUR",
        plan_id: str = "",
        msisdns: Sequence[str] = (),
        credit_limit: Amount | None = None,
        start_s: int = 0,
        request_id: str | None = None,
    ) -> accounts_pb2.Account:
        request = accounts_pb2.CreateAccountRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            payment_mode=payment_mode_to_proto(payment_mode),
            currency=currency,
            plan_id=plan_id,
            msisdns=list(msisdns),
            start_s=start_s,
        )
        if credit_limit is not None:
            request.credit_limit.CopyFrom(money_to_proto(credit_limit, currency))
        return self.call("AccountService", "CreateAccount", request)

    def get_account(self, account_id: str) -> accounts_pb2.Account:
        request = accounts_pb2.GetAccountRequest(account_id=account_id)
        return self.call("AccountService", "GetAccount", request)

    def get_balance(self, account_id: str) -> accounts_pb2.Balance:
        request = accounts_pb2.GetAccountRequest(account_id=account_id)
        return self.call("AccountService", "GetBalance", request)

    def top_up(
        self,
        account_id: str,
        amount: Amount,
        *,
        currency: str = "",
        at_s: int = 0,
        request_id: str | None = None,
    ) -> accounts_pb2.Balance:
        request = accounts_pb2.TopUpRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            amount=money_to_proto(amount, currency),
            at_s=at_s,
        )
        return self.call("AccountService", "TopUp", request)

    def switch_mode(
        self, account_id: str, mode: str, *, at_s: int = 0, request_id: str | None = None
    ) -> accounts_pb2.Account:
        request = accounts_pb2.SwitchPaymentModeRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            payment_mode=payment_mode_to_proto(mode),
            at_s=at_s,
        )
        return self.call("AccountService", "SwitchPaymentMode", request)

    def set_credit_limit(
        self, account_id: str, amount: Amount, *, currency: str = "", request_id: str | None = None
    ) -> accounts_pb2.Account:
        request = accounts_pb2.SetCreditLimitRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            credit_limit=money_to_proto(amount, currency),
        )
        return self.call("AccountService", "SetCreditLimit", request)

    def change_plan(
        self, account_id: str, plan_id: str, *, at_s: int = 0, request_id: str | None = None
    ) -> accounts_pb2.Account:
        """Move the account to ``plan_id`` from ``at_s`` (Unix seconds; 0: the cluster's now)."""
        request = accounts_pb2.ChangePlanRequest(
            request_id=self._id(request_id), account_id=account_id, plan_id=plan_id, at_s=at_s
        )
        return self.call("AccountService", "ChangePlan", request)

    def list_usage(self, account_id: str, *, limit: int = 100) -> list[accounts_pb2.UsageLine]:
        """The newest ``limit`` usage lines of the account, newest first (any number:
        pages of at most 1000 are fetched as needed)."""
        lines: list[accounts_pb2.UsageLine] = []
        for line in self.iter_usage(account_id, page=min(limit, 1000)):
            lines.append(line)
            if len(lines) >= limit:
                break
        return lines

    def iter_usage(self, account_id: str, *, page: int = 1000) -> Iterator[accounts_pb2.UsageLine]:
        """Every usage line of the account, newest first, a page at a time."""
        token = ""
        while True:
            request = accounts_pb2.ListUsageRequest(
                account_id=account_id, limit=page, page_token=token
            )
            answer = self.call("AccountService", "ListUsage", request)
            yield from answer.lines
            token = answer.next_page_token
            if not token:
                return

    # --- online charging -----------------------------------------------------
    def charge_session(
        self,
        step: str,
        session_id: str,
        *,
        account_id: str = "",
        served_msisdn: str = "",
        service: str = "data",
        requested_units: int = 0,
        used_units: int = 0,
        called_number: str = "",
        rating_group: int | None = None,
        content_item_id: str = "",
        at_s: int = 0,
        roaming: bool = False,
        request_id: str | None = None,
    ) -> charging_pb2.SessionAnswer:
        """One session step: ``"initial"``, ``"update"`` or ``"terminate"``."""
        if step not in _STEPS:
            raise ValueError(f"step must be one of {sorted(_STEPS)}, got {step!r}")
        request = charging_pb2.SessionRequest(
            request_id=self._id(request_id),
            session_id=session_id,
            step=_STEPS[step],
            served_msisdn=served_msisdn,
            account_id=account_id,
            service=service_to_proto(service),
            called_number=called_number,
            rating_group=rating_group,
            content_item_id=content_item_id,
            requested_units=requested_units,
            used_units=used_units,
            at_s=at_s,
            roaming=roaming,
        )
        return self.call("ChargingService", "ChargeSession", request)

    def session_initial(self, session_id: str, **fields: Any) -> charging_pb2.SessionAnswer:
        return self.charge_session("initial", session_id, **fields)

    def session_update(self, session_id: str, **fields: Any) -> charging_pb2.SessionAnswer:
        return self.charge_session("update", session_id, **fields)

    def session_terminate(self, session_id: str, **fields: Any) -> charging_pb2.SessionAnswer:
        return self.charge_session("terminate", session_id, **fields)

    def direct_debit(
        self,
        account_id: str,
        *,
        service: str,
        units: int,
        served_msisdn: str = "",
        called_number: str = "",
        rating_group: int | None = None,
        content_item_id: str = "",
        at_s: int = 0,
        request_id: str | None = None,
    ) -> charging_pb2.DirectDebitAnswer:
        request = charging_pb2.DirectDebitRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            served_msisdn=served_msisdn,
            service=service_to_proto(service),
            called_number=called_number,
            rating_group=rating_group,
            content_item_id=content_item_id,
            units=units,
            at_s=at_s,
        )
        return self.call("ChargingService", "DirectDebit", request)

    def refund(
        self,
        account_id: str,
        amount: Amount,
        *,
        currency: str = "",
        refers_to: str = "",
        reason: str = "",
        at_s: int = 0,
        request_id: str | None = None,
    ) -> charging_pb2.RefundAnswer:
        request = charging_pb2.RefundRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            refers_to=refers_to,
            amount=money_to_proto(amount, currency),
            reason=reason,
            at_s=at_s,
        )
        return self.call("ChargingService", "Refund", request)

    def price_enquiry(
        self,
        *,
        service: str,
        units: int,
        plan_id: str = "",
        account_id: str = "",
        called_number: str = "",
        rating_group: int | None = None,
        content_item_id: str = "",
        at_s: int = 0,
        roaming: bool = False,
    ) -> charging_pb2.PriceEnquiryAnswer:
        request = charging_pb2.PriceEnquiryRequest(
            plan_id=plan_id,
            account_id=account_id,
            service=service_to_proto(service),
            called_number=called_number,
            rating_group=rating_group,
            content_item_id=content_item_id,
            units=units,
            at_s=at_s,
            roaming=roaming,
        )
        return self.call("ChargingService", "PriceEnquiry", request)

    def balance_check(
        self, account_id: str, amount: Amount, *, currency: str = ""
    ) -> charging_pb2.BalanceCheckAnswer:
        request = charging_pb2.BalanceCheckRequest(
            account_id=account_id, amount=money_to_proto(amount, currency)
        )
        return self.call("ChargingService", "BalanceCheck", request)
