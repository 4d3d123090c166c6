"""Backward (sponsored) billing: a third party pays for a subscriber's usage.

**Resolution** (:func:`resolve_sponsor`, pure): the subscriber's own
``SponsorRule``s first, in declaration order — a rule covers a record when
it is valid at the record's start time and each criterion it sets matches
(usage-class pattern, rating group, content provider, the subscriber's
number) — then the catalogue's sponsors by usage class
(``Catalogue.sponsor_for``). A rule that names the subscriber itself is
ignored. The sponsor pays ``price_key``'s price for the record's units when
the rule names one (a catalogue sponsor always does), else the record's rated
amount. That price is decided here, on the subscriber's side, once: it is the
``amount`` of the :class:`SponsoredUsage`, what the record's answer reports as
charged to the sponsor, and exactly what the sponsor's half posts.

**Charging a sponsored record** is two idempotent halves:

1. the subscriber's shard records a zero-money usage line ``SPONSORED`` with
   ``sponsored_by`` (mark key ``record_id``), no bundles used, no entry;
2. the sponsor's account is charged the money (mark key
   ``sponsor:<record_id>``, entry ref ``sponsor:<record_id>``) under the
   sponsor's own payment mode, as offline usage (it already happened).

When the sponsor's account is on the same shard (in the ``accounts`` handed to
charging) both halves happen in one outcome; otherwise half 2 is a
:class:`SponsoredUsage` in ``Effects.forwards``: an outbox entry the shard
persists with the batch and delivers at least once to the sponsor's shard,
which applies it with :func:`charge_sponsored` (a repeat is ``DUPLICATE``).
A sponsor's half refused on the same shard (sponsor closed, another currency,
a prepaid sponsor short of money under the offline policy ``reject``) becomes
such a forward too, so every refusal ends in one place: the sponsor's shard
keeps it as a ``sponsor_refused`` reject until it is reprocessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from billing.accounts import Account, AccountState, Outcome
from billing.bundles import Tariff
from billing.rated import RatedRecord
from billing.tariffs.model import class_matches

if TYPE_CHECKING:
    from billing.charging.config import ChargingConfig
    from billing.charging.rows import Charge, MarkStore

__all__ = ["SponsoredUsage", "Sponsorship", "charge_sponsored", "resolve_sponsor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sponsorship:
    """Who pays for a record, and how much."""

    sponsor_account_id: str
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SponsoredUsage:
    """The sponsor's half of a sponsored record, to apply on the sponsor's shard."""

    rated: RatedRecord
    subscriber_account_id: str
    sponsor_account_id: str
    amount: int
    cycle_id: str


def resolve_sponsor(account: Account, rated: RatedRecord, tariff: Tariff) -> Sponsorship | None:
    """The sponsor of ``rated`` for the subscriber ``account``, if any (module docstring)."""
    t_s = rated.record.record_opening_time_s
    for rule in account.sponsor_rules:
        if rule.sponsor_account_id == account.account_id:
            continue
        if not rule.valid_at(t_s):
            continue
        if rule.msisdn is not None and rule.msisdn != rated.record.served_msisdn:
            continue
        if rule.usage_classes and not any(
            class_matches(p, rated.usage_class) for p in rule.usage_classes
        ):
            continue
        if rule.rating_group is not None and rule.rating_group != rated.record.rating_group:
            continue
        if rule.content_provider is not None and rule.content_provider != rated.content_provider:
            continue
        amount = (
            tariff.price_units(rule.price_key, rated.units)
            if rule.price_key is not None
            else rated.amount
        )
        return Sponsorship(sponsor_account_id=rule.sponsor_account_id, amount=amount)
    found = tariff.sponsor_for(rated.usage_class)
    if found is not None and found[0] != account.account_id:
        sponsor_id, price_key = found
        return Sponsorship(
            sponsor_account_id=sponsor_id, amount=tariff.price_units(price_key, rated.units)
        )
    return None


def charge_sponsored(
    state: AccountState,
    usage: SponsoredUsage,
    *,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
) -> Outcome[Charge]:
    """Apply a forwarded :class:`SponsoredUsage` to the sponsor's account ``state``."""
    from billing.charging.step import ChargeBatch

    accounts: Mapping[str, AccountState] = {state.account.account_id: state}
    batch = ChargeBatch(accounts, marks, tariff, config)
    row = batch.charge_sponsor(usage, at_s)
    if row.rated is None:
        return Outcome(result=row.result, receipt=row)  # refused or replayed: nothing changed
    batch.rows.append(row)
    outcome = batch.outcome((row,))
    return Outcome(result=row.result, receipt=row, effects=outcome.effects)
