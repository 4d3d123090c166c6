"""Content settlement: the revenue share owed to content providers, and its report.

A content purchase is a rated record with ``content_provider`` set; rating has
already split its price into the provider's share (``provider_share``) and,
implicitly, the operator's (``amount − provider_share``). Charging books the
whole price as ``op/revenue/content`` like any usage; the share owed to the
provider then moves out of revenue into ``op/provider/<provider>`` with one
entry per purchase, :func:`content_share_entry` (kind ``content_share``, ref
``content_share:<record_id>``, tagged with the cycle). The ABM's charging path
is the one place that posts it, in the same batch as the charge, so a
purchase and its share are never apart.

By the ledger's sign convention the provider account grows positive: it is
what the operator owes the provider. Paying the provider out (``op/cash``) is
outside this module.

:func:`settlement_report` computes, per provider and cycle, the items sold with
count, gross, provider share and operator share; :func:`reconcile` checks each
provider's share against the ledger's ``content_share`` entries of the cycle,
to the minor unit. A cluster's report is the :func:`merge` of its shards'
reports (each built from the shard's own ledger rows); :func:`with_rounding`
adds what rounding each purchase's share down kept from the provider:
``rounding`` = the item's revenue at its share rate, rounded down once, minus
the share owed (the sum of the per-purchase shares), so ``0 <= rounding <
purchases`` micro-units, and ``share + rounding`` is what one rounding of the
whole revenue would owe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from billing.invariant import invariant
from billing.ledger import Entry, EntryKind, Posting, op_key
from billing.rated import RatedRecord
from billing.rating import provider_share

__all__ = [
    "CONTENT_REVENUE",
    "ItemLine",
    "ProviderSettlement",
    "build_report",
    "content_share_entry",
    "merge",
    "provider_key",
    "reconcile",
    "settlement_report",
    "with_rounding",
]

CONTENT_REVENUE = op_key("revenue/content")


def provider_key(provider: str) -> str:
    """The ledger account of what the operator owes ``provider``."""
    return op_key(f"provider/{provider}")


def content_share_entry(rated: RatedRecord, *, at_s: int, cycle_id: str) -> Entry | None:
    """The entry moving ``rated``'s provider share out of content revenue, if it has one."""
    if rated.content_provider is None or rated.provider_share == 0:
        return None
    invariant(
        0 <= rated.provider_share <= rated.amount,
        f"{rated.record.record_id}: provider share {rated.provider_share} "
        f"outside 0..{rated.amount}",
    )
    return Entry(
        ref=f"content_share:{rated.record.record_id}",
        kind=EntryKind.CONTENT_SHARE,
        currency=rated.currency,
        at_s=at_s,
        cycle_id=cycle_id,
        postings=(
            Posting(CONTENT_REVENUE, -rated.provider_share),
            Posting(provider_key(rated.content_provider), rated.provider_share),
        ),
        memo=rated.record.content_item_id or "",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemLine:
    """Sales of one content item in the cycle."""

    item_id: str
    count: int
    gross: int
    provider_share: int
    rounding: int = 0

    @property
    def operator_share(self) -> int:
        return self.gross - self.provider_share


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSettlement:
    """What one provider sold in one cycle and is owed for it, in one currency."""

    provider: str
    cycle_id: str
    currency: str
    items: tuple[ItemLine, ...]
    count: int
    gross: int
    provider_share: int
    rounding: int = 0

    @property
    def operator_share(self) -> int:
        return self.gross - self.provider_share


def settlement_report(
    rated: Iterable[RatedRecord], *, cycle_id: str
) -> tuple[ProviderSettlement, ...]:
    """Settlement lines per (provider, currency) from the cycle's rated content purchases.

    Records without a provider are not settled. Providers and items are sorted
    by name, so the report is deterministic.
    """
    acc: dict[tuple[str, str], dict[str, list[int]]] = {}
    for record in rated:
        if record.content_provider is None:
            continue
        items = acc.setdefault((record.content_provider, record.currency), {})
        item_id = record.record.content_item_id or "?"
        line = items.setdefault(item_id, [0, 0, 0])
        line[0] += 1
        line[1] += record.amount
        line[2] += record.provider_share
    return build_report(acc, cycle_id=cycle_id)


ItemTotals = Mapping[tuple[str, str], Mapping[str, Sequence[int]]]
"""(provider, currency) -> item id -> [count, gross, provider share]."""


def build_report(totals: ItemTotals, *, cycle_id: str) -> tuple[ProviderSettlement, ...]:
    """The settlement report of accumulated item totals, sorted by provider and item."""
    report: list[ProviderSettlement] = []
    for (provider, currency), items in sorted(totals.items()):
        lines = tuple(
            ItemLine(item_id=item, count=c, gross=g, provider_share=s)
            for item, (c, g, s) in sorted(items.items())
        )
        report.append(
            ProviderSettlement(
                provider=provider,
                cycle_id=cycle_id,
                currency=currency,
                items=lines,
                count=sum(line.count for line in lines),
                gross=sum(line.gross for line in lines),
                provider_share=sum(line.provider_share for line in lines),
            )
        )
    return tuple(report)


def merge(reports: Iterable[Iterable[ProviderSettlement]]) -> tuple[ProviderSettlement, ...]:
    """One report of several (one per shard) of one cycle: the lines of a provider,
    currency and item added up, sorted as :func:`build_report` sorts."""
    totals: dict[tuple[str, str], dict[str, list[int]]] = {}
    cycles: set[str] = set()
    for report in reports:
        for line in report:
            cycles.add(line.cycle_id)
            items = totals.setdefault((line.provider, line.currency), {})
            for item in line.items:
                acc = items.setdefault(item.item_id, [0, 0, 0])
                acc[0] += item.count
                acc[1] += item.gross
                acc[2] += item.provider_share
    invariant(len(cycles) <= 1, f"merging reports of several cycles: {sorted(cycles)}")
    return build_report(totals, cycle_id=next(iter(cycles), ""))


def with_rounding(
    report: Iterable[ProviderSettlement], share_ppm: Callable[[str], int | None]
) -> tuple[ProviderSettlement, ...]:
    """``report`` with each item's ``rounding`` (module docstring) at the share rate
    ``share_ppm(item_id)`` gives; an item it does not know keeps rounding 0."""
    out = []
    for line in report:
        items = []
        for item in line.items:
            ppm = share_ppm(item.item_id)
            # One rounding of the whole revenue, by the very rule each purchase used.
            rounding = 0 if ppm is None else provider_share(item.gross, ppm) - item.provider_share
            items.append(replace(item, rounding=rounding))
        out.append(replace(line, items=tuple(items), rounding=sum(i.rounding for i in items)))
    return tuple(out)


def reconcile(
    report: Iterable[ProviderSettlement], entries: Iterable[Entry]
) -> Mapping[tuple[str, str], int]:
    """Differences (report − ledger) of provider shares per (provider, currency).

    Only ``content_share`` entries of the report's cycles count. An empty
    result means report and ledger agree to the minor unit.
    """
    lines = list(report)
    cycles = {line.cycle_id for line in lines}
    diff: dict[tuple[str, str], int] = {}
    for line in lines:
        key = (line.provider, line.currency)
        diff[key] = diff.get(key, 0) + line.provider_share
    prefix = provider_key("")
    for entry in entries:
        if entry.kind is not EntryKind.CONTENT_SHARE or entry.cycle_id not in cycles:
            continue
        for posting in entry.postings:
            if posting.account.startswith(prefix):
                key = (posting.account[len(prefix) :], entry.currency)
                diff[key] = diff.get(key, 0) - posting.amount
    return {key: value for key, value in diff.items() if value != 0}
