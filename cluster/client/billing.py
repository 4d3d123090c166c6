"""Bill runs, invoices, payments; tariffs; notifications; cluster administration."""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator, Sequence

from petribill.v1 import admin_pb2, billing_pb2, notifications_pb2, tariffs_pb2

from cluster.client.transport import Amount, Transport
from cluster.wire import money_to_proto

__all__ = ["BillingCalls"]

# Notification ids remembered to skip repeats after a resubscription.
_SEEN_NOTIFICATIONS_MAX = 10_000


class BillingCalls(Transport):
    """Bill runs, invoices, payments; tariffs; notifications; cluster administration."""

    def bill_run(
        self,
        cycle_id: str,
        *,
        account_ids: Sequence[str] = (),
        at_s: int = 0,
        request_id: str | None = None,
        on_progress: Callable[[billing_pb2.BillRunProgress], None] | None = None,
        timeout_s: float | None = None,
    ) -> billing_pb2.BillRunProgress:
        """Run billing for ``cycle_id`` (``"YYYY-MM"``); the final progress (``finished``)."""
        request = billing_pb2.BillRunRequest(
            request_id=self._id(request_id), cycle_id=cycle_id, account_ids=account_ids, at_s=at_s
        )
        last = billing_pb2.BillRunProgress(cycle_id=cycle_id)
        for progress in self._server_stream(
            "BillingService", "RunBilling", request, timeout_s=timeout_s
        ):
            last = progress
            if on_progress is not None:
                on_progress(progress)
        return last

    def list_invoices(
        self, account_id: str, *, open_only: bool = False
    ) -> list[billing_pb2.Invoice]:
        request = billing_pb2.ListInvoicesRequest(account_id=account_id, open_only=open_only)
        return list(self.call("BillingService", "ListInvoices", request).invoices)

    def get_invoice(self, account_id: str, invoice_id: str) -> billing_pb2.Invoice:
        request = billing_pb2.GetInvoiceRequest(account_id=account_id, invoice_id=invoice_id)
        return self.call("BillingService", "GetInvoice", request)

    def pay(
        self,
        account_id: str,
        amount: Amount,
        *,
        currency: str = "",
        at_s: int = 0,
        reference: str = "",
        request_id: str | None = None,
    ) -> billing_pb2.PaymentAnswer:
        request = billing_pb2.PaymentRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            amount=money_to_proto(amount, currency),
            at_s=at_s,
            reference=reference,
        )
        return self.call("BillingService", "ApplyPayment", request)

    def reverse(
        self,
        account_id: str,
        payment_request_id: str,
        *,
        at_s: int = 0,
        request_id: str | None = None,
    ) -> billing_pb2.PaymentAnswer:
        request = billing_pb2.ReversePaymentRequest(
            request_id=self._id(request_id),
            account_id=account_id,
            payment_request_id=payment_request_id,
            at_s=at_s,
        )
        return self.call("BillingService", "ReversePayment", request)

    # --- tariffs -------------------------------------------------------------
    def load_tariffs(
        self, path: str, *, request_id: str | None = None
    ) -> tariffs_pb2.TariffSummary:
        request = tariffs_pb2.LoadTariffsRequest(request_id=self._id(request_id), path=path)
        return self.call("TariffService", "LoadTariffs", request)

    def get_tariffs(self) -> tariffs_pb2.TariffSummary:
        request = tariffs_pb2.GetTariffsRequest()
        return self.call("TariffService", "GetTariffs", request)

    # --- notifications -------------------------------------------------------
    def notifications(
        self, account_ids: Sequence[str] = ()
    ) -> Generator[notifications_pb2.Notification, None, None]:
        """New notifications, forever (close the iterator to stop).

        After a retryable failure it subscribes again (failing over), and skips
        notifications it has already yielded; notifications raised while no
        subscription was open are in :meth:`list_notifications`.
        """
        request = notifications_pb2.SubscribeRequest(account_ids=account_ids)
        seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        for item in self._server_stream(
            "NotificationService", "Subscribe", request, timeout_s=None
        ):
            if item.notification_id in seen:
                continue
            seen[item.notification_id] = None
            if len(seen) > _SEEN_NOTIFICATIONS_MAX:
                seen.popitem(last=False)
            yield item

    def list_notifications(
        self, account_id: str, *, limit: int = 50
    ) -> list[notifications_pb2.Notification]:
        request = notifications_pb2.ListNotificationsRequest(account_id=account_id, limit=limit)
        return list(self.call("NotificationService", "ListNotifications", request).notifications)

    # --- admin ---------------------------------------------------------------
    def status(self) -> admin_pb2.ClusterStatusResponse:
        request = admin_pb2.ClusterStatusRequest()
        return self.call("AdminService", "ClusterStatus", request)

    def drain(self, node_id: str, *, request_id: str | None = None) -> admin_pb2.OperationAnswer:
        request = admin_pb2.DrainRequest(request_id=self._id(request_id), node_id=node_id)
        return self.call("AdminService", "Drain", request)

    def rebalance(self, *, request_id: str | None = None) -> admin_pb2.OperationAnswer:
        request = admin_pb2.RebalanceRequest(request_id=self._id(request_id))
        return self.call("AdminService", "Rebalance", request)

    def reconcile(self) -> admin_pb2.ReconcileResponse:
        request = admin_pb2.ReconcileRequest()
        return self.call("AdminService", "Reconcile", request)

    def list_rejects(self, *, limit: int = 100, reason: str = "") -> list[admin_pb2.Reject]:
        request = admin_pb2.ListRejectsRequest(limit=limit, reason=reason)
        return list(self.call("AdminService", "ListRejects", request).rejects)

    def reprocess_rejects(
        self, record_ids: Sequence[str] = (), *, request_id: str | None = None
    ) -> admin_pb2.ReprocessRejectsResponse:
        request = admin_pb2.ReprocessRejectsRequest(
            request_id=self._id(request_id), record_ids=record_ids
        )
        return self.call("AdminService", "ReprocessRejects", request)

    def backup(self, path: str = "", *, request_id: str | None = None) -> admin_pb2.OperationAnswer:
        """Back up every unit into ``path`` (absolute), or under the data dir when empty."""
        request = admin_pb2.BackupRequest(request_id=self._id(request_id), path=path)
        return self.call("AdminService", "Backup", request)
