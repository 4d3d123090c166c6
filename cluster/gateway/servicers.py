"""The servicers of every ``petribill.v1`` service: thin relays to the :class:`Backend`.

Each RPC is one line naming its backend method and its check; the rules of a
call (deadline, limits, status mapping) live in :mod:`cluster.gateway.calls`.
StreamUsage is the one RPC with logic of its own: it pipelines a stream's
batches (up to ``stream_batches_inflight_max`` at once) and answers them in
order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from petribill.v1 import (
    accounts_pb2_grpc,
    admin_pb2_grpc,
    billing_pb2_grpc,
    charging_pb2_grpc,
    notifications_pb2_grpc,
    tariffs_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from cluster.api.backend import Backend
from cluster.gateway.calls import Calls, Failure, internal_failure
from cluster.gateway.limits import Overloaded
from cluster.gateway.validate import check, check_unreadable, check_usage_batch

__all__ = ["SERVICERS", "add_servicers"]

Handler = Callable[[Any, Any, Any], Awaitable[Any]]


# The generated *_pb2_grpc modules have no type stubs, so their servicer bases
# are Any to mypy; they are subclassed anyway so that an RPC added to the proto
# and not yet relayed answers UNIMPLEMENTED instead of breaking registration.


class _Relay:
    """Holds the backend and the call runner every servicer relays through."""

    def __init__(self, backend: Backend, calls: Calls) -> None:
        self._backend = backend
        self._calls = calls


def _unary(rpc: str, method: str) -> Handler:
    """A servicer method that checks the request and relays it to ``backend.<method>``."""

    async def handler(self: _Relay, request: Any, context: Any) -> Any:
        call = getattr(self._backend, method)
        return await self._calls.unary(context, rpc, call, request, check=check)

    handler.__name__ = rpc.rsplit(".", 1)[-1]
    return handler


class UsageServicer(_Relay, usage_pb2_grpc.UsageServiceServicer):  # type: ignore[misc]
    async def SubmitUsage(
        self, request: usage_pb2.SubmitUsageRequest, context: Any
    ) -> usage_pb2.SubmitUsageResponse:
        return await self._calls.unary(
            context,
            "UsageService.SubmitUsage",
            self._backend.submit_usage,
            request,
            check=check_usage_batch,
            records=len(request.records),
        )

    async def StoreUnreadable(
        self, request: usage_pb2.StoreUnreadableRequest, context: Any
    ) -> usage_pb2.SubmitUsageResponse:
        return await self._calls.unary(
            context,
            "UsageService.StoreUnreadable",
            self._backend.store_unreadable,
            request,
            check=check_unreadable,
            records=len(request.lines),
        )

    async def StreamUsage(
        self, request_iterator: AsyncIterator[usage_pb2.SubmitUsageRequest], context: Any
    ) -> None:
        """Answer each batch in order; end the stream with the first batch's failure status.

        Batches before a failed one are answered first, so a client knows which
        batches to resend (the failed one and those after it).
        """
        calls = self._calls
        try:
            calls.admission.open_stream("usage_streams")
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        window = calls.limits.stream_batches_inflight_max
        answers: asyncio.Queue[asyncio.Future[usage_pb2.SubmitUsageResponse] | None]
        answers = asyncio.Queue(maxsize=window)
        reader = asyncio.create_task(self._read_batches(request_iterator, context, answers))
        failure: Failure | None = None
        try:
            while (answer := await answers.get()) is not None:
                try:
                    response = await answer
                except Failure as exc:
                    failure = exc
                    break
                await context.write(response)
        finally:
            reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is None:
                    continue
                if pending.done() and not pending.cancelled():
                    pending.exception()  # retrieved: a batch after the failed one
                pending.cancel()
            calls.admission.close_stream("usage_streams")
        if failure is not None:
            await context.abort(failure.code, failure.message)

    async def _read_batches(
        self,
        request_iterator: AsyncIterator[usage_pb2.SubmitUsageRequest],
        context: Any,
        answers: asyncio.Queue[asyncio.Future[usage_pb2.SubmitUsageResponse] | None],
    ) -> None:
        """Start a backend call per batch read; queue its future in stream order."""
        loop = asyncio.get_running_loop()
        calls = self._calls

        async def fail(exc: Failure) -> None:
            failed: asyncio.Future[usage_pb2.SubmitUsageResponse] = loop.create_future()
            failed.set_exception(exc)
            await answers.put(failed)

        try:
            async for request in request_iterator:
                try:
                    check_usage_batch(request, calls.limits)
                    timeout_s = calls.timeout_s(context)
                except Failure as exc:
                    await fail(exc)
                    return
                task = asyncio.ensure_future(
                    calls.run(
                        "UsageService.StreamUsage",
                        self._backend.submit_usage,
                        request,
                        timeout_s=timeout_s,
                        records=len(request.records),
                    )
                )
                await answers.put(task)
        except Exception as exc:  # reading the client's stream failed
            await fail(internal_failure("UsageService.StreamUsage", exc))
            return
        # The end of the client's stream. A cancellation skips this on purpose:
        # then the writer is gone, and nobody would take the marker.
        await answers.put(None)


class ChargingServicer(_Relay, charging_pb2_grpc.ChargingServiceServicer):  # type: ignore[misc]
    ChargeSession = _unary("ChargingService.ChargeSession", "charge_session")
    DirectDebit = _unary("ChargingService.DirectDebit", "direct_debit")
    Refund = _unary("ChargingService.Refund", "refund")
    PriceEnquiry = _unary("ChargingService.PriceEnquiry", "price_enquiry")
    BalanceCheck = _unary("ChargingService.BalanceCheck", "balance_check")


class AccountServicer(_Relay, accounts_pb2_grpc.AccountServiceServicer):  # type: ignore[misc]
    CreateAccount = _unary("AccountService.CreateAccount", "create_account")
    GetAccount = _unary("AccountService.GetAccount", "get_account")
    GetBalance = _unary("AccountService.GetBalance", "get_balance")
    TopUp = _unary("AccountService.TopUp", "top_up")
    SwitchPaymentMode = _unary("AccountService.SwitchPaymentMode", "switch_payment_mode")
    SetCreditLimit = _unary("AccountService.SetCreditLimit", "set_credit_limit")
    ChangePlan = _unary("AccountService.ChangePlan", "change_plan")
    ListUsage = _unary("AccountService.ListUsage", "list_usage")


class BillingServicer(_Relay, billing_pb2_grpc.BillingServiceServicer):  # type: ignore[misc]
    ListInvoices = _unary("BillingService.ListInvoices", "list_invoices")
    GetInvoice = _unary("BillingService.GetInvoice", "get_invoice")
    ApplyPayment = _unary("BillingService.ApplyPayment", "apply_payment")
    ReversePayment = _unary("BillingService.ReversePayment", "reverse_payment")

    async def RunBilling(self, request: Any, context: Any) -> None:
        try:
            check(request, self._calls.limits)
            timeout_s = self._calls.stream_timeout_s(context)
        except Failure as exc:
            await context.abort(exc.code, exc.message)
            return
        await self._calls.server_stream(
            context,
            "BillingService.RunBilling",
            lambda: self._backend.run_billing(request, timeout_s=timeout_s),
            kind="bill_runs",
        )


class TariffServicer(_Relay, tariffs_pb2_grpc.TariffServiceServicer):  # type: ignore[misc]
    LoadTariffs = _unary("TariffService.LoadTariffs", "load_tariffs")
    GetTariffs = _unary("TariffService.GetTariffs", "get_tariffs")
    PriceEnquiry = _unary("TariffService.PriceEnquiry", "price_enquiry")


class NotificationServicer(_Relay, notifications_pb2_grpc.NotificationServiceServicer):  # type: ignore[misc]
    ListNotifications = _unary("NotificationService.ListNotifications", "list_notifications")

    async def Subscribe(self, request: Any, context: Any) -> None:
        try:
            check(request, self._calls.limits)
        except Failure as exc:
            await context.abort(exc.code, exc.message)
            return
        await self._calls.server_stream(
            context,
            "NotificationService.Subscribe",
            lambda: self._backend.subscribe(request),
            kind="subscriptions",
        )


class AdminServicer(_Relay, admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    ClusterStatus = _unary("AdminService.ClusterStatus", "cluster_status")
    Drain = _unary("AdminService.Drain", "drain")
    Rebalance = _unary("AdminService.Rebalance", "rebalance")
    Reconcile = _unary("AdminService.Reconcile", "reconcile")
    ListRejects = _unary("AdminService.ListRejects", "list_rejects")
    ReprocessRejects = _unary("AdminService.ReprocessRejects", "reprocess_rejects")
    Backup = _unary("AdminService.Backup", "backup")


# Servicer class, and the generated function that registers it, per service.
SERVICERS: tuple[tuple[type[_Relay], Callable[[Any, Any], None]], ...] = (
    (UsageServicer, usage_pb2_grpc.add_UsageServiceServicer_to_server),
    (ChargingServicer, charging_pb2_grpc.add_ChargingServiceServicer_to_server),
    (AccountServicer, accounts_pb2_grpc.add_AccountServiceServicer_to_server),
    (BillingServicer, billing_pb2_grpc.add_BillingServiceServicer_to_server),
    (TariffServicer, tariffs_pb2_grpc.add_TariffServiceServicer_to_server),
    (NotificationServicer, notifications_pb2_grpc.add_NotificationServiceServicer_to_server),
    (AdminServicer, admin_pb2_grpc.add_AdminServiceServicer_to_server),
)


def add_servicers(server: Any, backend: Backend, calls: Calls) -> None:
    """Register every petribill.v1 servicer on ``server``."""
    for servicer_class, register in SERVICERS:
        register(servicer_class(backend, calls), server)
