"""BillingService and NotificationService for the Ray backend.

A bill run fans out to every account shard at once (or only to the shards of
the accounts named) and reports progress as each shard finishes; each shard's
run is idempotent per (account, cycle), so a rerun after a broken stream
continues rather than bills twice. Invoices, payments and reversals are
single-shard calls. Notifications are read from the shards: listed per
account, or followed by polling every shard's sequence (``notifications_since``)
from the moment a subscription starts.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import structlog
from petribill.v1 import billing_pb2, notifications_pb2

from actors.router import deadline_after
from actors.router import time_left as _left
from actors.shard import ops
from actors.shard.billing import BillRunReport
from billing.writeoff import WriteoffOutcome, WriteoffResult
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import invoice_to_proto, notification_to_proto
from cluster.backend.status import raise_for
from cluster.backend.steps import UNITS_AT_ONCE
from cluster.wire import money

__all__ = [
    "apply_payment",
    "get_invoice",
    "list_invoices",
    "list_notifications",
    "reverse_payment",
    "run_billing",
    "subscribe",
]

_CYCLE_ID: Final = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
#: A bill run has no deadline of its own when the client set none; this bounds it.
BILL_RUN_TIMEOUT_S: Final = 3600.0
#: How far beyond the cluster's clock a bill run's ``at_s`` may lie (clocks of
#: clients and cluster differ by a little; a day ahead is a mistake, not skew).
BILL_RUN_AHEAD_MAX_S: Final = 300
POLL_INTERVAL_S: Final = 0.2
POLL_BATCH_MAX: Final = 1000
_NOTIFICATIONS_LIMIT_DEFAULT: Final = 50
_NOTIFICATIONS_LIMIT_MAX: Final = 1000
_UNLOCKING: set[asyncio.Future[Any]] = set()

log = structlog.get_logger("petribill.backend")


async def run_billing(
    cluster: Cluster, request: billing_pb2.BillRunRequest, timeout_s: float | None
) -> AsyncIterator[billing_pb2.BillRunProgress]:
    cycle_id = request.cycle_id
    if not _CYCLE_ID.match(cycle_id):
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"cycle_id: not YYYY-MM: {cycle_id!r}")
    deadline = deadline_after(timeout_s or BILL_RUN_TIMEOUT_S)
    now_s = cluster.now_s()
    at_s = cluster.now_s(request.at_s)
    if at_s > now_s + BILL_RUN_AHEAD_MAX_S:
        # A run dated in the future would close a cycle whose usage is still coming.
        raise BackendError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"at_s: {at_s} lies {at_s - now_s} s beyond the cluster's clock ({now_s}); "
            f"a bill run may be dated at most {BILL_RUN_AHEAD_MAX_S} s ahead",
        )
    jobs: dict[str, list[str] | None] = {}
    for account_id in dict.fromkeys(request.account_ids):
        cluster.check_account_id(account_id)
        ids = jobs.setdefault(cluster.router.shard(account_id), [])
        assert ids is not None
        ids.append(account_id)
    if not jobs:
        jobs = {unit: None for unit in cluster.router.all_shards()}
    total = len(set(request.account_ids))
    done = issued = invoiced = 0
    currency = cluster.catalogue.currency
    gate = asyncio.Semaphore(UNITS_AT_ONCE)  # a few shards at a time: see cluster.backend.steps
    tasks = [
        asyncio.ensure_future(_locked_bill_run(cluster, unit, cycle_id, at_s, ids, deadline, gate))
        for unit, ids in jobs.items()
    ]
    try:
        for pending, next_done in enumerate(asyncio.as_completed(tasks), start=1):
            report = await next_done
            if report.refused:
                raise_for(
                    report.refused,
                    f"cycle {cycle_id} at at_s={at_s}",
                    detail="a bill run is dated at or after the end of its cycle",
                )
            done += report.accounts
            issued += report.results.get("issued", 0)
            invoiced += report.invoiced
            yield billing_pb2.BillRunProgress(
                cycle_id=cycle_id,
                accounts_done=done,
                # Unknown until every shard has answered when billing all accounts.
                accounts_total=total or (done if pending == len(tasks) else 0),
                invoices_issued=issued,
                invoiced_total=money(invoiced, currency),
                finished=pending == len(tasks),
            )
    finally:
        for task in tasks:
            task.cancel()


async def _locked_bill_run(
    cluster: Cluster,
    unit: str,
    cycle_id: str,
    at_s: int,
    ids: list[str] | None,
    deadline: float,
    gate: asyncio.Semaphore,
) -> BillRunReport:
    """Bill one shard while holding its bill-run lock in the control net, so the
    coordinator never migrates a shard in the middle of its bill run."""
    async with gate:
        pause_s = 0.05
        while not await _lock(cluster, unit, deadline):
            if _left(deadline) <= pause_s:
                raise BackendError(
                    grpc.StatusCode.ABORTED,
                    f"{unit} is locked (a migration or another bill run); retry the bill run",
                )
            await asyncio.sleep(pause_s)
            pause_s = min(1.0, pause_s * 2)
        try:
            return await _bill_in_steps(cluster, unit, cycle_id, at_s, ids, deadline)
        finally:
            await cluster.coordinator("unlock", unit, "bill_run", timeout_s=10.0)


async def _bill_in_steps(
    cluster: Cluster, unit: str, cycle_id: str, at_s: int, ids: list[str] | None, deadline: float
) -> BillRunReport:
    """One shard's bill run as calls of at most ``BILL_RUN_STEP_ACCOUNTS`` accounts each (one
    commit each), each resuming after the last account the one before billed: the shard's
    lock and a host thread are held for one step at a time, and usage goes on between."""
    report: BillRunReport | None = None
    after = None
    while True:
        op = ops.BillRun(
            cycle_id=cycle_id,
            at_s=at_s,
            account_ids=ids,
            after=after,
            accounts_max=ops.BILL_RUN_STEP_ACCOUNTS,
        )
        step: BillRunReport = await cluster.run(unit, op, timeout_s=_left(deadline))
        report = step if report is None else report.plus(step)
        if step.refused or step.resume_after is None:
            return report
        after = step.resume_after
        # Each step renews the lock's lease, so a lock this gateway leaves behind when it
        # dies is released within the lease. Lost, the run carries on: its steps resume
        # by account, across a migration as across a takeover.
        if not await cluster.coordinator("renew", unit, "bill_run", timeout_s=_left(deadline)):
            log.warning("bill_run_lock_lost", shard=unit, cycle_id=cycle_id)


async def _lock(cluster: Cluster, unit: str, deadline: float) -> bool:
    """Ask for the bill-run lock of ``unit``. Cancelled meanwhile (a sibling shard's
    bill run failed), a lock the coordinator grants anyway is released, not leaked
    until its lease runs out."""
    call = asyncio.ensure_future(
        cluster.coordinator("lock", unit, "bill_run", timeout_s=_left(deadline))
    )
    try:
        return bool(await asyncio.shield(call))
    except asyncio.CancelledError:
        call.add_done_callback(lambda done: _unlock_if_granted(cluster, unit, done))
        raise


def _unlock_if_granted(cluster: Cluster, unit: str, done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and done.exception() is None and done.result():
        unlock = asyncio.ensure_future(
            cluster.coordinator("unlock", unit, "bill_run", timeout_s=10.0)
        )
        _UNLOCKING.add(unlock)  # a strong reference until it has run
        unlock.add_done_callback(_UNLOCKING.discard)


async def list_invoices(
    cluster: Cluster, request: billing_pb2.ListInvoicesRequest, timeout_s: float
) -> billing_pb2.ListInvoicesResponse:
    deadline = deadline_after(timeout_s)
    cluster.check_account_id(request.account_id)
    invoices = await cluster.on_shard(
        request.account_id,
        ops.ListInvoices(account_id=request.account_id, open_only=request.open_only),
        timeout_s=_left(deadline),
    )
    if not invoices:
        await cluster.state(request.account_id, timeout_s=_left(deadline))
    return billing_pb2.ListInvoicesResponse(invoices=[invoice_to_proto(i) for i in invoices])


async def get_invoice(
    cluster: Cluster, request: billing_pb2.GetInvoiceRequest, timeout_s: float
) -> billing_pb2.Invoice:
    cluster.check_account_id(request.account_id)
    invoice = await cluster.on_shard(
        request.account_id, ops.GetInvoice(invoice_id=request.invoice_id), timeout_s=timeout_s
    )
    if invoice is None or invoice.account_id != request.account_id:
        raise BackendError(
            grpc.StatusCode.NOT_FOUND,
            f"invoice {request.invoice_id} of account {request.account_id} not found",
        )
    return invoice_to_proto(invoice)


async def apply_payment(
    cluster: Cluster, request: billing_pb2.PaymentRequest, timeout_s: float
) -> billing_pb2.PaymentAnswer:
    deadline = deadline_after(timeout_s)
    account_id, rid = request.account_id, request.request_id
    cluster.check_account_id(account_id)
    out = await cluster.on_shard(
        account_id,
        ops.ApplyPayment(
            request_id=rid,
            account_id=account_id,
            amount=request.amount.micros,
            currency=request.amount.currency,
            at_s=cluster.now_s(request.at_s),
        ),
        timeout_s=_left(deadline),
    )
    currency = request.amount.currency or cluster.catalogue.currency
    return _payment_answer(out, rid, f"account {account_id}", currency)


async def reverse_payment(
    cluster: Cluster, request: billing_pb2.ReversePaymentRequest, timeout_s: float
) -> billing_pb2.PaymentAnswer:
    deadline = deadline_after(timeout_s)
    account_id, rid = request.account_id, request.request_id
    state = await cluster.state(account_id, timeout_s=_left(deadline))
    out = await cluster.on_shard(
        account_id,
        ops.ReversePayment(
            request_id=rid,
            account_id=account_id,
            payment_id=request.payment_request_id,
            at_s=cluster.now_s(request.at_s),
        ),
        timeout_s=_left(deadline),
    )
    subject = f"payment {request.payment_request_id} of account {account_id}"
    return _payment_answer(out, rid, subject, state.account.currency)


def _payment_answer(
    out: WriteoffOutcome | Any, request_id: str, subject: str, currency: str
) -> billing_pb2.PaymentAnswer:
    """The answer of a payment or a reversal (its allocations are the ones undone)."""
    if not isinstance(out, WriteoffOutcome):  # a Result: unknown account, currency mismatch
        raise_for(out.value, subject, request_id)
        raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"{subject}: {out.value}")
    raise_for(out.result.value, subject, request_id)
    answer = billing_pb2.PaymentAnswer(request_id=request_id)
    payment = out.payment
    if payment is not None:
        currency = payment.currency
        answer.allocations.extend(
            billing_pb2.Allocation(invoice_id=a.invoice_id, amount=money(a.amount, currency))
            for a in payment.allocations
        )
    credit = payment.credit if payment is not None else 0
    if out.reversal is not None and payment is None:  # a replayed reversal: what it took back
        credit = out.reversal.credit_taken + out.reversal.debt
    answer.credit.CopyFrom(money(credit, currency))
    assert out.result is not WriteoffResult.INVALID_AMOUNT
    return answer


async def list_notifications(
    cluster: Cluster, request: notifications_pb2.ListNotificationsRequest, timeout_s: float
) -> notifications_pb2.ListNotificationsResponse:
    deadline = deadline_after(timeout_s)
    cluster.check_account_id(request.account_id)
    limit = min(request.limit or _NOTIFICATIONS_LIMIT_DEFAULT, _NOTIFICATIONS_LIMIT_MAX)
    notes = await cluster.on_shard(
        request.account_id,
        ops.ListNotifications(account_id=request.account_id, limit=limit),
        timeout_s=_left(deadline),
    )
    if not notes:
        await cluster.state(request.account_id, timeout_s=_left(deadline))
    return notifications_pb2.ListNotificationsResponse(
        notifications=[notification_to_proto(n) for n in reversed(notes)]  # newest first
    )


async def _head(cluster: Cluster, unit: str) -> int:
    """The shard's latest notification sequence: an exponential, then binary, search
    over ``notifications_since(seq, 1)`` (non-empty exactly when seq < head)."""

    async def beyond(seq: int) -> bool:
        found = await cluster.run(unit, ops.NotificationsSince(seq=seq, limit=1), timeout_s=10.0)
        return bool(found)

    if not await beyond(0):
        return 0
    low, high = 0, 1  # invariant: head > low, and head <= high once the loop ends
    while await beyond(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await beyond(middle):
            low = middle
        else:
            high = middle
    return high


async def subscribe(
    cluster: Cluster, request: notifications_pb2.SubscribeRequest, timeout_s: float | None
) -> AsyncIterator[notifications_pb2.Notification]:
    """New notifications from now on, until the client goes away (``timeout_s`` unused:
    a subscription lasts as long as the client keeps it)."""
    wanted = frozenset(request.account_ids)
    units = (
        sorted({cluster.router.shard(a) for a in wanted}) if wanted else cluster.router.all_shards()
    )
    heads = await asyncio.gather(*(_head(cluster, unit) for unit in units))
    seqs = dict(zip(units, heads, strict=True))
    while True:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                cluster.run(
                    unit,
                    ops.NotificationsSince(seq=seqs[unit], limit=POLL_BATCH_MAX),
                    timeout_s=max(POLL_INTERVAL_S * 5, 1.0),
                )
                for unit in units
            ),
            return_exceptions=True,
        )
        for unit, found in zip(units, answers, strict=True):
            if isinstance(found, BaseException):
                if not isinstance(found, BackendError):
                    raise found
                continue  # the shard is being taken over: pick up from seq next round
            for seq, note in found:
                seqs[unit] = max(seqs[unit], seq)
                if not wanted or note.account_id in wanted:
                    yield notification_to_proto(note)
        await asyncio.sleep(max(POLL_INTERVAL_S - (time.monotonic() - started), 0.0))
