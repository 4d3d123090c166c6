"""The seam between the gateway and the cluster: one async method per RPC, in proto messages.

The gateway (:mod:`cluster.gateway`) is stateless: it checks limits and the
shape of a request, then hands it to a :class:`Backend` and relays the answer.
The real backend routes to the Ray actors that own the data; tests use a small
in-memory one. Both speak in the generated ``petribill.v1`` messages, so the
wire type is the contract and nothing is converted twice.

Contract of every method:

- ``timeout_s`` is the time left for the call (the client's deadline, or the
  gateway's default when the client set none), always > 0. A backend should
  give up and raise ``BackendError(DEADLINE_EXCEEDED, ...)`` rather than
  overrun it; the gateway cancels the coroutine when it does overrun, so
  backend code must be safe to cancel at any ``await`` (a cancelled write is
  an unknown outcome, which the client resolves by retrying with the same id).
- Writes are idempotent by their ``request_id`` (usage by each ``record_id``):
  a retry with the same id and content returns the stored answer; the same id
  with other content raises ``ALREADY_EXISTS`` naming the differing field. The
  gateway has already refused a write without ``request_id``.
- An expected business outcome that the proto can carry is a value in the
  answer (a per-record ``RecordStatus``, a ``SessionResult``); an outcome that
  fails the whole call is a :class:`BackendError`; anything else that escapes
  is a bug and becomes ``INTERNAL`` (logged by the gateway).
- ``PriceEnquiry`` is served by both ChargingService and TariffService; both
  call :meth:`Backend.price_enquiry`.
- ``StreamUsage`` has no method of its own: the gateway calls
  :meth:`Backend.submit_usage` once per batch of the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import grpc
from petribill.v1 import (
    accounts_pb2,
    admin_pb2,
    billing_pb2,
    charging_pb2,
    notifications_pb2,
    tariffs_pb2,
    usage_pb2,
)

__all__ = ["RETRYABLE_CODES", "Backend", "BackendError"]

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
    """Raised by a :class:`Backend` method when the whole call fails with a gRPC status.

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


@runtime_checkable
class Backend(Protocol):
    """What the gateway needs from the cluster: every RPC of ``petribill.v1``.

    Methods are grouped by service, named after the RPC in snake_case. Unary
    RPCs are coroutines; server streams are async iterators (``async def`` with
    ``yield``), which the gateway consumes and closes (``aclose``) when the
    client goes away.
    """

    # --- UsageService -------------------------------------------------------
    async def submit_usage(
        self, request: usage_pb2.SubmitUsageRequest, *, timeout_s: float
    ) -> usage_pb2.SubmitUsageResponse:
        """One batch: a result per record, in order, each durable before it is answered.

        ``request.records`` is non-empty and within the gateway's batch limit.
        A malformed or unratable record gets its own REJECTED result; it never
        fails the batch. Echo ``request.batch_id``.
        """
        ...

    async def store_unreadable(
        self, request: usage_pb2.StoreUnreadableRequest, *, timeout_s: float
    ) -> usage_pb2.SubmitUsageResponse:
        """Store unreadable file lines in the reject store, counted; a REJECTED result per
        line, in order. Every line names its file and line number (checked)."""
        ...

    # --- ChargingService ----------------------------------------------------
    async def charge_session(
        self, request: charging_pb2.SessionRequest, *, timeout_s: float
    ) -> charging_pb2.SessionAnswer: ...

    async def direct_debit(
        self, request: charging_pb2.DirectDebitRequest, *, timeout_s: float
    ) -> charging_pb2.DirectDebitAnswer: ...

    async def refund(
        self, request: charging_pb2.RefundRequest, *, timeout_s: float
    ) -> charging_pb2.RefundAnswer: ...

    async def price_enquiry(
        self, request: charging_pb2.PriceEnquiryRequest, *, timeout_s: float
    ) -> charging_pb2.PriceEnquiryAnswer: ...

    async def balance_check(
        self, request: charging_pb2.BalanceCheckRequest, *, timeout_s: float
    ) -> charging_pb2.BalanceCheckAnswer: ...

    # --- AccountService -----------------------------------------------------
    async def create_account(
        self, request: accounts_pb2.CreateAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account: ...

    async def get_account(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Account: ...

    async def get_balance(
        self, request: accounts_pb2.GetAccountRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance: ...

    async def top_up(
        self, request: accounts_pb2.TopUpRequest, *, timeout_s: float
    ) -> accounts_pb2.Balance: ...

    async def switch_payment_mode(
        self, request: accounts_pb2.SwitchPaymentModeRequest, *, timeout_s: float
    ) -> accounts_pb2.Account: ...

    async def set_credit_limit(
        self, request: accounts_pb2.SetCreditLimitRequest, *, timeout_s: float
    ) -> accounts_pb2.Account: ...

    async def change_plan(
        self, request: accounts_pb2.ChangePlanRequest, *, timeout_s: float
    ) -> accounts_pb2.Account:
        """Move the account to ``request.plan_id`` from ``request.at_s`` (0: now) on.

        Changes the account's subscriptions (which the bill run prorates) and the
        rating directory of its MSISDNs, both idempotent by ``request_id``; a
        retry finishes what a broken call left undone.
        """
        ...

    async def list_usage(
        self, request: accounts_pb2.ListUsageRequest, *, timeout_s: float
    ) -> accounts_pb2.ListUsageResponse: ...

    # --- BillingService -----------------------------------------------------
    def run_billing(
        self, request: billing_pb2.BillRunRequest, *, timeout_s: float | None
    ) -> AsyncIterator[billing_pb2.BillRunProgress]:
        """Progress of a bill run; the last item has ``finished`` set.

        ``timeout_s`` is None when the client set no deadline: a bill run may
        take long, and its progress stream is what shows it is alive.
        Idempotent per (account, cycle): a rerun after a broken stream
        continues rather than bills twice.
        """
        ...

    async def list_invoices(
        self, request: billing_pb2.ListInvoicesRequest, *, timeout_s: float
    ) -> billing_pb2.ListInvoicesResponse: ...

    async def get_invoice(
        self, request: billing_pb2.GetInvoiceRequest, *, timeout_s: float
    ) -> billing_pb2.Invoice: ...

    async def apply_payment(
        self, request: billing_pb2.PaymentRequest, *, timeout_s: float
    ) -> billing_pb2.PaymentAnswer: ...

    async def reverse_payment(
        self, request: billing_pb2.ReversePaymentRequest, *, timeout_s: float
    ) -> billing_pb2.PaymentAnswer: ...

    # --- TariffService ------------------------------------------------------
    async def load_tariffs(
        self, request: tariffs_pb2.LoadTariffsRequest, *, timeout_s: float
    ) -> tariffs_pb2.TariffSummary: ...

    async def get_tariffs(
        self, request: tariffs_pb2.GetTariffsRequest, *, timeout_s: float
    ) -> tariffs_pb2.TariffSummary: ...

    # --- NotificationService ------------------------------------------------
    def subscribe(
        self, request: notifications_pb2.SubscribeRequest
    ) -> AsyncIterator[notifications_pb2.Notification]:
        """New notifications from now on (of ``request.account_ids``, or all).

        Runs until the client cancels (the gateway then closes the iterator)
        or the gateway stops; it has no timeout of its own.
        """
        ...

    async def list_notifications(
        self, request: notifications_pb2.ListNotificationsRequest, *, timeout_s: float
    ) -> notifications_pb2.ListNotificationsResponse: ...

    # --- AdminService -------------------------------------------------------
    async def cluster_status(
        self, request: admin_pb2.ClusterStatusRequest, *, timeout_s: float
    ) -> admin_pb2.ClusterStatusResponse: ...

    async def drain(
        self, request: admin_pb2.DrainRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer: ...

    async def rebalance(
        self, request: admin_pb2.RebalanceRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer: ...

    async def reconcile(
        self, request: admin_pb2.ReconcileRequest, *, timeout_s: float
    ) -> admin_pb2.ReconcileResponse: ...

    async def list_rejects(
        self, request: admin_pb2.ListRejectsRequest, *, timeout_s: float
    ) -> admin_pb2.ListRejectsResponse: ...

    async def reprocess_rejects(
        self, request: admin_pb2.ReprocessRejectsRequest, *, timeout_s: float
    ) -> admin_pb2.ReprocessRejectsResponse: ...

    async def backup(
        self, request: admin_pb2.BackupRequest, *, timeout_s: float
    ) -> admin_pb2.OperationAnswer: ...
