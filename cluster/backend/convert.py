"""The backend's answers: engine values to ``petribill.v1`` messages.

Money goes out as integer micros with ``decimal`` filled for display
(:func:`cluster.wire.money`); the core's enums map to proto enums by name
(``Result``/``RecordStatus``/``NotificationKind``/``InvoiceStatus`` are one to
one with the proto by design). What clients send in (records, money, enums) is
read in :mod:`cluster.wire`, shared with the SDK.
"""

from __future__ import annotations

import json
from typing import Any, Final

from petribill.v1 import (
    accounts_pb2,
    admin_pb2,
    billing_pb2,
    notifications_pb2,
    usage_pb2,
)

from actors.partition.codec import record_to_json
from actors.partition.engine import RecordResult
from actors.partition.rejects import RejectEntry
from billing.accounts import AccountState, AccountStatus, SponsorRule
from billing.charging.batch import Charge, calendar_for
from billing.invoice import Invoice
from billing.notifications import Notification
from billing.outcome import Result
from billing.settlement import ProviderSettlement
from billing.sponsor import SponsoredUsage
from billing.tariffs.model import Catalogue
from cluster.wire import money, payment_mode_to_proto, service_to_proto

__all__ = [
    "account_to_proto",
    "balance_to_proto",
    "invoice_to_proto",
    "notification_to_proto",
    "record_result_to_proto",
    "reject_to_proto",
    "settlement_to_proto",
    "sponsor_rule_to_proto",
    "usage_line_to_proto",
]

_STATUS: Final = {
    AccountStatus.ACTIVE: accounts_pb2.ACCOUNT_STATUS_ACTIVE,
    AccountStatus.BLOCKED: accounts_pb2.ACCOUNT_STATUS_BLOCKED,
    AccountStatus.CLOSED: accounts_pb2.ACCOUNT_STATUS_CLOSED,
}


# -- usage out --------------------------------------------------------------------


def record_result_to_proto(result: RecordResult, currency: str) -> usage_pb2.RecordResult:
    return usage_pb2.RecordResult(
        record_id=result.record_id,
        status=usage_pb2.RecordStatus.Value("RECORD_STATUS_" + result.status.name),
        reason=result.reason,
        detail=result.detail,
        amount=money(result.amount, currency),
        charged_account_id=result.charged_account_id,
        billed_units=result.billed_units,
        bundle_units=result.bundle_units,
        replay=result.replay,
    )


def usage_line_to_proto(line: Charge) -> accounts_pb2.UsageLine:
    return accounts_pb2.UsageLine(
        record_id=line.record_id,
        service=service_to_proto(line.service),
        at_s=line.at_s,
        units=line.units,
        amount=money(line.amount, line.currency),
        usage_class=line.usage_class,
        sponsored_by=line.sponsored_by or "",
        bundle_units=line.bundle_units,
    )


# -- accounts ---------------------------------------------------------------------


def balance_to_proto(state: AccountState, catalogue: Catalogue, at_s: int) -> accounts_pb2.Balance:
    """Books as the proto signs them: what is owed by the customer is positive."""
    cur = state.account.currency
    answer = accounts_pb2.Balance(
        account_id=state.account_id,
        prepaid=money(state.prepaid, cur),
        reserved=money(state.reserved, cur),
        unbilled=money(-state.unbilled, cur),
        receivable=money(-state.receivable, cur),
        credit=money(state.credit, cur),
        debt=money(-state.debt, cur),
    )
    plan_id = state.account.plan_at(at_s)
    version = catalogue.plan_version(plan_id, at_s) if plan_id else None
    if version is not None:
        cycle_id = calendar_for(catalogue.timezone).cycle_of(at_s).cycle_id
        for bundle in version.bundles:
            key = (cycle_id, bundle.bundle_id)
            used = state.bundle_used.get(key, 0) + state.bundle_held.get(key, 0)
            answer.bundles.append(
                accounts_pb2.BundleBalance(
                    bundle_id=bundle.bundle_id,
                    usage_class=",".join(bundle.usage_classes),
                    granted_units=bundle.units,
                    used_units=used,
                    cycle_id=cycle_id,
                )
            )
    return answer


def account_to_proto(state: AccountState, catalogue: Catalogue, at_s: int) -> accounts_pb2.Account:
    account = state.account
    subscriptions = account.subscriptions
    plan_id = account.plan_at(at_s) or (subscriptions[-1].plan_id if subscriptions else "")
    answer = accounts_pb2.Account(
        account_id=account.account_id,
        payment_mode=payment_mode_to_proto(account.payment_mode),
        currency=account.currency,
        status=_STATUS[account.status],
        plan_id=plan_id,
        msisdns=list(account.msisdns),
        balance=balance_to_proto(state, catalogue, at_s),
    )
    if account.credit_limit is not None:
        answer.credit_limit.CopyFrom(money(account.credit_limit, account.currency))
    return answer


def sponsor_rule_to_proto(account_id: str, rule: SponsorRule) -> accounts_pb2.SponsorRule:
    answer = accounts_pb2.SponsorRule(
        rule_id=rule.rule_id,
        account_id=account_id,
        sponsor_account_id=rule.sponsor_account_id,
        msisdn=rule.msisdn or "",
        usage_classes=list(rule.usage_classes),
        content_provider=rule.content_provider or "",
        rate_id=rule.price_key or "",
        start_s=rule.start_s,
        end_s=rule.end_s or 0,
    )
    if rule.rating_group is not None:
        answer.rating_group = rule.rating_group
    return answer


# -- billing and notifications ------------------------------------------------------


def settlement_to_proto(
    line: ProviderSettlement, catalogue: Catalogue
) -> billing_pb2.ProviderSettlement:
    """One provider's settlement; money in the line's currency."""
    cur = line.currency
    provider = catalogue.providers.get(line.provider)
    return billing_pb2.ProviderSettlement(
        provider_id=line.provider,
        name=provider.name if provider is not None else "",
        cycle_id=line.cycle_id,
        purchases=line.count,
        revenue=money(line.gross, cur),
        share_owed=money(line.provider_share, cur),
        operator_share=money(line.operator_share, cur),
        rounding=money(line.rounding, cur),
        items=[
            billing_pb2.SettlementItem(
                item_id=item.item_id,
                purchases=item.count,
                revenue=money(item.gross, cur),
                share_owed=money(item.provider_share, cur),
                operator_share=money(item.operator_share, cur),
                rounding=money(item.rounding, cur),
            )
            for item in line.items
        ],
    )


def invoice_to_proto(invoice: Invoice) -> billing_pb2.Invoice:
    cur = invoice.currency
    return billing_pb2.Invoice(
        invoice_id=invoice.invoice_id,
        account_id=invoice.account_id,
        cycle_id=invoice.cycle_id,
        period_start_s=invoice.period_start_s,
        period_end_s=invoice.period_end_s,
        issued_at_s=invoice.issued_at_s,
        due_at_s=invoice.due_at_s,
        lines=[
            billing_pb2.InvoiceLine(
                kind=line.kind.value,
                description=line.description,
                amount=money(line.amount, cur),
                service=line.service or "",
                units=line.units or 0,
                count=line.count or 0,
            )
            for line in invoice.lines
        ],
        total=money(invoice.total, cur),
        paid=money(invoice.paid, cur),
        open=money(invoice.open_amount, cur),
        status=billing_pb2.InvoiceStatus.Value("INVOICE_STATUS_" + invoice.status.name),
    )


def notification_to_proto(note: Notification) -> notifications_pb2.Notification:
    return notifications_pb2.Notification(
        notification_id=note.notification_id,
        kind=notifications_pb2.NotificationKind.Value("NOTIFICATION_KIND_" + note.kind.name),
        account_id=note.account_id,
        at_s=note.at_s,
        cycle_id=note.cycle_id or "",
        subject=note.subject,
        data={key: str(value) for key, value in note.data},
    )


#: The reject reason of a sponsor charge the sponsor's shard refused (the sponsor's
#: account unknown or closed, another currency); kept there, retried by reprocessing.
SPONSOR_REFUSED: Final = "sponsor_refused"


def refused_forward_to_proto(usage: SponsoredUsage, result: Result) -> admin_pb2.Reject:
    """A refused sponsor charge as a reject: the subscriber's record, why it was refused."""
    record = usage.rated.record
    return admin_pb2.Reject(
        record_id=record.record_id,
        reason=SPONSOR_REFUSED,
        detail=(
            f"sponsor {usage.sponsor_account_id} of {usage.subscriber_account_id}: "
            f"{result.value}; the subscriber's line is recorded as sponsored, the sponsor "
            "is charged when this is reprocessed"
        ),
        source_file=record.source_file or "",
        source_line=record.source_line or 0,
        at_s=record.record_opening_time_s,
        record=admin_pb2.UsageRecordJson(json=json.dumps(record_to_json(record), sort_keys=True)),
    )


def reject_to_proto(entry: RejectEntry) -> admin_pb2.Reject:
    raw: Any = record_to_json(entry.record) if entry.record is not None else entry.raw
    text = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
    return admin_pb2.Reject(
        record_id=entry.record_id or entry.key,
        reason=entry.reason,
        detail=entry.detail,
        source_file=entry.source_file or "",
        source_line=entry.source_line or 0,
        at_s=entry.at_s,
        record=admin_pb2.UsageRecordJson(json=text or ""),
    )
