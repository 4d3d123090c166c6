"""Support for the gateway and client tests: an in-memory Backend and a gateway on a loop thread.

The backend is small but honest about the contract of ``cluster.api.backend``:
idempotency by request id and record id (ALREADY_EXISTS naming the field that
differs), NOT_FOUND, FAILED_PRECONDITION for insufficient funds, notifications
on a balance crossing. What is under test is the gateway and the SDK, over
real gRPC on loopback; tests may script failures and block calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from petribill.v1 import (
    accounts_pb2,
    admin_pb2,
    billing_pb2,
    charging_pb2,
    common_pb2,
    notifications_pb2,
    tariffs_pb2,
    usage_pb2,
)

from cluster.api.backend import BackendError
from cluster.gateway.limits import GatewayLimits
from cluster.gateway.server import Gateway

T = TypeVar("T")

UNIT_PRICE_MICROS = 10_000  # every unit of usage costs 0.01
LOW_BALANCE_MICROS = 1_000_000


class LoopThread:
    """An asyncio loop on a daemon thread, for servers that tests call synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _differing_field(old: Message, new: Message) -> str:
    for field in old.DESCRIPTOR.fields:
        name: str = field.name
        if getattr(old, name) != getattr(new, name):
            return name
    return ""


class MemoryBackend:
    """One process's worth of accounts, balances, usage and notifications, in dicts."""

    def __init__(self) -> None:
        self.accounts: dict[str, accounts_pb2.Account] = {}
        self.msisdns: dict[str, str] = {}
        self.records: dict[str, common_pb2.UsageRecord] = {}
        self.answers: dict[str, tuple[Message, Message]] = {}
        self.notifications: list[notifications_pb2.Notification] = []
        self.subscribers: list[asyncio.Queue[notifications_pb2.Notification]] = []
        self.invoices: dict[str, billing_pb2.Invoice] = {}
        # Test hooks: a gate every call waits on, scripted failures per method,
        # and a log of (method, request) of every call that reached the backend.
        self.gate: asyncio.Event | None = None
        self.delay_s = 0.0
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, Message]] = []
        self.timeouts: list[float | None] = []
        self.entered = 0

    async def _enter(self, method: str, request: Message, timeout_s: float | None) -> None:
        self.calls.append((method, request))
        self.timeouts.append(timeout_s)
        self.entered += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        scripted = self.failures.get(method)
        if scripted:
            raise scripted.pop(0)

    def _replay(self, request: Any) -> Message | None:
        """The stored answer of a write retried with the same id, or None for a new id."""
        stored = self.answers.get(request.request_id)
        if stored is None:
            return None
        old, answer = stored
        if old != request:
            field = _differing_field(old, request)
            raise BackendError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {request.request_id} reused with a different {field}",
            )
        return answer

    def _remember(self, request: Any, answer: T) -> T:
        self.answers[request.request_id] = (request, answer)
        return answer

    def _account(self, account_id: str) -> accounts_pb2.Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise BackendError(grpc.StatusCode.NOT_FOUND, f"account {account_id} not found")
        return account

    def _notify(self, account_id: str, kind: int, subject: str) -> None:
        note = notifications_pb2.Notification(
            notification_id=f"n-{len(self.notifications) + 1}",
            kind=kind,
            account_id=account_id,
            subject=subject,
        )
        self.notifications.append(note)
        for queue in self.subscribers:
            queue.put_nowait(note)

    # --- usage ----------------------------------------------------------------
    async def submit_usage(
        self, request: usage_pb2.SubmitUsageRequest, *, timeout_s: float
    ) -> usage_pb2.SubmitUsageResponse:
        await self._enter("submit_usage", request, timeout_s)
        answer = usage_pb2.SubmitUsageResponse(batch_id=request.batch_id)
        for record in request.records:
            answer.results.append(self._charge(record))
        return answer

    async def store_unreadable(
        self, request: usage_pb2.StoreUnreadableRequest, *, timeout_s: float
    ) -> usage_pb2.SubmitUsageResponse:
        await self._enter("store_unreadable", request, timeout_s)
        answer = usage_pb2.SubmitUsageResponse(batch_id=request.batch_id)
        for line in request.lines:
            record_id = line.record_id or f"{line.source_file}:{line.source_line}"
            answer.results.append(
                usage_pb2.RecordResult(
                    record_id=record_id,
                    status=usage_pb2.RECORD_STATUS_REJECTED,
                    reason="malformed",
                    detail=line.message,
                )
            )
        return answer

    def _charge(self, record: common_pb2.UsageRecord) -> usage_pb2.RecordResult:
        result = usage_pb2.RecordResult(record_id=record.record_id)
        seen = self.records.get(record.record_id)
        if not record.record_id:
            result.status, result.reason = usage_pb2.RECORD_STATUS_REJECTED, "malformed"
        elif seen is not None:
            field = _differing_field(seen, record)
            result.status = (
                usage_pb2.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT
                if field
                else usage_pb2.RECORD_STATUS_DUPLICATE
            )
            result.reason = field
        elif record.served_msisdn not in self.msisdns:
            result.status, result.reason = usage_pb2.RECORD_STATUS_REJECTED, "unknown_account"
        else:
            account = self.accounts[self.msisdns[record.served_msisdn]]
            units = record.duration_s + record.sms_count + record.uplink_bytes
            units += record.downlink_bytes
            amount = units * UNIT_PRICE_MICROS
            before = account.balance.prepaid.micros
            account.balance.prepaid.micros -= amount
            self.records[record.record_id] = record
            result.status = usage_pb2.RECORD_STATUS_CHARGED
            result.amount.CopyFrom(common_pb2.Money(micros=amount, currency=account.currency))
            result.charged_account_id = account.account_id
            result.billed_units = units
            if before >= LOW_BALANCE_MICROS > account.balance.prepaid.micros:
                self._notify(
                    account.account_id, notifications_pb2.NOTIFICATION_KIND_LOW_BALANCE, "1"
                )
        return result

    # --- accounts -------------------------------------------------------------
    async def create_account(
        self, request: accounts_pb2.CreateAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        await self._enter("create_account", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        if request.account_id in self.accounts:
            raise BackendError(grpc.StatusCode.ALREADY_EXISTS, "account_id exists")
        account = accounts_pb2.Account(
            account_id=request.account_id,
            payment_mode=request.payment_mode,
            currency=request.currency or "EUR",
            status=accounts_pb2.ACCOUNT_STATUS_ACTIVE,
            plan_id=request.plan_id,
            msisdns=request.msisdns,
        )
        account.balance.account_id = request.account_id
        account.balance.prepaid.currency = account.currency
        self.accounts[request.account_id] = account
        for msisdn in request.msisdns:
            self.msisdns[msisdn] = request.account_id
        answer = accounts_pb2.Account()
        answer.CopyFrom(account)
        return self._remember(request, answer)

    async def get_account(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        await self._enter("get_account", request, timeout_s)
        return self._account(request.account_id)

    async def get_balance(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance:
        await self._enter("get_balance", request, timeout_s)
        return self._account(request.account_id).balance

    async def top_up(
        self, request: accounts_pb2.TopUpRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance:
        await self._enter("top_up", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        account = self._account(request.account_id)
        account.balance.prepaid.micros += request.amount.micros
        answer = accounts_pb2.Balance()
        answer.CopyFrom(account.balance)
        return self._remember(request, answer)

    async def switch_payment_mode(
        self, request: accounts_pb2.SwitchPaymentModeRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        await self._enter("switch_payment_mode", request, timeout_s)
        account = self._account(request.account_id)
        account.payment_mode = request.payment_mode
        return account

    async def set_credit_limit(
        self, request: accounts_pb2.SetCreditLimitRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        await self._enter("set_credit_limit", request, timeout_s)
        account = self._account(request.account_id)
        account.credit_limit.CopyFrom(request.credit_limit)
        return account

    async def change_plan(
        self, request: accounts_pb2.ChangePlanRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        await self._enter("change_plan", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        account = self._account(request.account_id)
        account.plan_id = request.plan_id
        answer = accounts_pb2.Account()
        answer.CopyFrom(account)
        return self._remember(request, answer)

    async def list_usage(
        self, request: accounts_pb2.ListUsageRequest, *, timeout_s: float
    ) -> accounts_pb2.ListUsageResponse:
        await self._enter("list_usage", request, timeout_s)
        account = self._account(request.account_id)
        lines = [
            accounts_pb2.UsageLine(record_id=r.record_id, service=r.service)
            for r in self.records.values()
            if self.msisdns.get(r.served_msisdn) == account.account_id
        ]
        return accounts_pb2.ListUsageResponse(lines=lines[::-1])

    # --- charging -------------------------------------------------------------
    async def charge_session(
        self, request: charging_pb2.SessionRequest, *, timeout_s: float
    ) -> charging_pb2.SessionAnswer:
        await self._enter("charge_session", request, timeout_s)
        self._account(request.account_id)
        return charging_pb2.SessionAnswer(
            request_id=request.request_id,
            session_id=request.session_id,
            result=charging_pb2.SESSION_RESULT_SUCCESS,
            granted_units=request.requested_units,
        )

    async def direct_debit(
        self, request: charging_pb2.DirectDebitRequest, *, timeout_s: float
    ) -> charging_pb2.DirectDebitAnswer:
        await self._enter("direct_debit", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        account = self._account(request.account_id)
        price = request.units * UNIT_PRICE_MICROS
        if account.balance.prepaid.micros < price:
            raise BackendError(grpc.StatusCode.FAILED_PRECONDITION, "insufficient funds")
        account.balance.prepaid.micros -= price
        answer = charging_pb2.DirectDebitAnswer(request_id=request.request_id)
        answer.charged.micros = price
        answer.balance_after.CopyFrom(account.balance.prepaid)
        return self._remember(request, answer)

    async def refund(
        self, request: charging_pb2.RefundRequest, *, timeout_s: float
    ) -> charging_pb2.RefundAnswer:
        await self._enter("refund", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        account = self._account(request.account_id)
        account.balance.prepaid.micros += request.amount.micros
        answer = charging_pb2.RefundAnswer(request_id=request.request_id)
        answer.balance_after.CopyFrom(account.balance.prepaid)
        return self._remember(request, answer)

    async def price_enquiry(
        self, request: charging_pb2.PriceEnquiryRequest, *, timeout_s: float
    ) -> charging_pb2.PriceEnquiryAnswer:
        await self._enter("price_enquiry", request, timeout_s)
        answer = charging_pb2.PriceEnquiryAnswer(billed_units=request.units)
        answer.price.micros = request.units * UNIT_PRICE_MICROS
        return answer

    async def balance_check(
        self, request: charging_pb2.BalanceCheckRequest, *, timeout_s: float
    ) -> charging_pb2.BalanceCheckAnswer:
        await self._enter("balance_check", request, timeout_s)
        prepaid = self._account(request.account_id).balance.prepaid
        return charging_pb2.BalanceCheckAnswer(
            sufficient=prepaid.micros >= request.amount.micros, available=prepaid
        )

    # --- billing --------------------------------------------------------------
    async def run_billing(
        self, request: billing_pb2.BillRunRequest, *, timeout_s: float | None
    ) -> AsyncIterator[billing_pb2.BillRunProgress]:
        await self._enter("run_billing", request, timeout_s)
        ids = list(request.account_ids) or sorted(self.accounts)
        for done, account_id in enumerate(ids, start=1):
            invoice_id = f"inv-{account_id}-{request.cycle_id}"
            self.invoices.setdefault(
                invoice_id,
                billing_pb2.Invoice(
                    invoice_id=invoice_id,
                    account_id=account_id,
                    cycle_id=request.cycle_id,
                    status=billing_pb2.INVOICE_STATUS_OPEN,
                ),
            )
            yield billing_pb2.BillRunProgress(
                cycle_id=request.cycle_id,
                accounts_done=done,
                accounts_total=len(ids),
                invoices_issued=done,
                finished=done == len(ids),
            )

    async def list_invoices(
        self, request: billing_pb2.ListInvoicesRequest, *, timeout_s: float
    ) -> billing_pb2.ListInvoicesResponse:
        await self._enter("list_invoices", request, timeout_s)
        found = [i for i in self.invoices.values() if i.account_id == request.account_id]
        return billing_pb2.ListInvoicesResponse(invoices=found)

    async def get_invoice(
        self, request: billing_pb2.GetInvoiceRequest, *, timeout_s: float
    ) -> billing_pb2.Invoice:
        await self._enter("get_invoice", request, timeout_s)
        invoice = self.invoices.get(request.invoice_id)
        if invoice is None or invoice.account_id != request.account_id:
            raise BackendError(grpc.StatusCode.NOT_FOUND, f"invoice {request.invoice_id}")
        return invoice

    async def apply_payment(
        self, request: billing_pb2.PaymentRequest, *, timeout_s: float
    ) -> billing_pb2.PaymentAnswer:
        await self._enter("apply_payment", request, timeout_s)
        if (stored := self._replay(request)) is not None:
            return stored
        self._account(request.account_id)
        answer = billing_pb2.PaymentAnswer(request_id=request.request_id, credit=request.amount)
        return self._remember(request, answer)

    async def reverse_payment(
        self, request: billing_pb2.ReversePaymentRequest, *, timeout_s: float
    ) -> billing_pb2.PaymentAnswer:
        await self._enter("reverse_payment", request, timeout_s)
        if request.payment_request_id not in self.answers:
            raise BackendError(
                grpc.StatusCode.FAILED_PRECONDITION, f"no payment {request.payment_request_id}"
            )
        return billing_pb2.PaymentAnswer(request_id=request.request_id)

    # --- tariffs --------------------------------------------------------------
    async def load_tariffs(
        self, request: tariffs_pb2.LoadTariffsRequest, *, timeout_s: float
    ) -> tariffs_pb2.TariffSummary:
        await self._enter("load_tariffs", request, timeout_s)
        return tariffs_pb2.TariffSummary(catalogue_version=request.path)

    async def get_tariffs(
        self, request: tariffs_pb2.GetTariffsRequest, *, timeout_s: float
    ) -> tariffs_pb2.TariffSummary:
        await self._enter("get_tariffs", request, timeout_s)
        return tariffs_pb2.TariffSummary(catalogue_version="memory-1", default_plan="basic")

    # --- notifications --------------------------------------------------------
    async def subscribe(
        self, request: notifications_pb2.SubscribeRequest
    ) -> AsyncIterator[notifications_pb2.Notification]:
        await self._enter("subscribe", request, None)
        queue: asyncio.Queue[notifications_pb2.Notification] = asyncio.Queue()
        self.subscribers.append(queue)
        wanted = set(request.account_ids)
        try:
            while True:
                note = await queue.get()
                if not wanted or note.account_id in wanted:
                    yield note
        finally:
            self.subscribers.remove(queue)

    async def list_notifications(
        self, request: notifications_pb2.ListNotificationsRequest, *, timeout_s: float
    ) -> notifications_pb2.ListNotificationsResponse:
        await self._enter("list_notifications", request, timeout_s)
        found = [n for n in self.notifications if n.account_id == request.account_id]
        return notifications_pb2.ListNotificationsResponse(notifications=found[::-1])

    # --- admin ----------------------------------------------------------------
    async def cluster_status(
        self, request: admin_pb2.ClusterStatusRequest, *, timeout_s: float
    ) -> admin_pb2.ClusterStatusResponse:
        await self._enter("cluster_status", request, timeout_s)
        return admin_pb2.ClusterStatusResponse(
            nodes=[admin_pb2.NodeStatus(node_id="n1", state="alive")],
            marking_summary="memory",
        )

    async def drain(
        self, request: admin_pb2.DrainRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer:
        await self._enter("drain", request, timeout_s)
        return admin_pb2.OperationAnswer(request_id=request.request_id, done=True)

    async def rebalance(
        self, request: admin_pb2.RebalanceRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer:
        await self._enter("rebalance", request, timeout_s)
        return admin_pb2.OperationAnswer(request_id=request.request_id, done=True)

    async def reconcile(
        self, request: admin_pb2.ReconcileRequest, *, timeout_s: float
    ) -> admin_pb2.ReconcileResponse:
        await self._enter("reconcile", request, timeout_s)
        count = len(self.records)
        return admin_pb2.ReconcileResponse(received=count, rated=count, balanced=True)

    async def list_rejects(
        self, request: admin_pb2.ListRejectsRequest, *, timeout_s: float
    ) -> admin_pb2.ListRejectsResponse:
        await self._enter("list_rejects", request, timeout_s)
        return admin_pb2.ListRejectsResponse()

    async def reprocess_rejects(
        self, request: admin_pb2.ReprocessRejectsRequest, *, timeout_s: float
    ) -> admin_pb2.ReprocessRejectsResponse:
        await self._enter("reprocess_rejects", request, timeout_s)
        return admin_pb2.ReprocessRejectsResponse(reprocessed=len(request.record_ids))

    async def backup(
        self, request: admin_pb2.BackupRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer:
        await self._enter("backup", request, timeout_s)
        return admin_pb2.OperationAnswer(request_id=request.request_id, done=True)


@contextmanager
def running_gateways(
    count: int = 1, *, limits: GatewayLimits | None = None, backend: MemoryBackend | None = None
) -> Iterator[tuple[LoopThread, MemoryBackend, list[Gateway]]]:
    """``count`` gateways on free loopback ports sharing one backend; all stopped afterwards."""
    loop = LoopThread()
    backend = backend or MemoryBackend()
    gateways = [Gateway(backend, "127.0.0.1", 0, limits) for _ in range(count)]
    try:
        for gateway in gateways:
            loop.run(gateway.start())
        yield loop, backend, gateways
    finally:
        for gateway in gateways:
            loop.run(gateway.stop(0.5))
        loop.close()
