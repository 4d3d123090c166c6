"""Accounts: creation, profile changes, and the shared test harness of the ABM tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from billing.account_status import change_status
from billing.accounts import (
    Account,
    AccountState,
    AccountStatus,
    Outcome,
    PaymentMode,
    Result,
    SponsorRule,
    create_account,
    set_credit_limit,
)
from billing.bundles import Bundle, order_bundles
from billing.charging.batch import ChargingConfig
from billing.idempotency import Mark
from billing.ledger import Ledger, replay
from billing.rated import RatedRecord
from billing.records import Service, UsageRecord
from billing.sponsor import charge_sponsored

EUR = 1_000_000
T0 = 1_717_200_000  # 2024-06-01 00:00:00 UTC
CONFIG = ChargingConfig()

PRICES = {"voice": 1_000, "data": 1, "sms": 90_000, "sponsor": 2_000}  # micro-units per unit


class FakeTariff:
    """A linear tariff: ``PRICES[price_key]`` per unit; plan "p" has two voice bundles."""

    def __init__(self, bundles: tuple[Bundle, ...] = (), sponsors: dict[str, str] | None = None):
        self.bundles = bundles
        self.sponsors = sponsors or {}
        self.memo: dict[str, tuple[Bundle, ...]] = {}

    def bundles_for(self, plan_id: str, plan_version: str, usage_class: str) -> tuple[Bundle, ...]:
        if usage_class not in self.memo:
            self.memo[usage_class] = order_bundles(self.bundles, usage_class)
        return self.memo[usage_class]

    def reprice(self, rated: RatedRecord, units: int) -> int:
        return self.price_units(rated.price_key, units)

    def price_units(self, price_key: str, units: int) -> int:
        return PRICES[price_key] * units

    def units_for_amount(self, price_key: str, amount_micros: int) -> int:
        return max(amount_micros, 0) // PRICES[price_key]

    def sponsor_for(self, usage_class: str) -> tuple[str, str] | None:
        account = self.sponsors.get(usage_class)
        return (account, "sponsor") if account else None


def rated(
    record_id: str,
    units: int,
    *,
    msisdn: str = "491",
    service: Service = Service.VOICE,
    usage_class: str = "voice.national",
    at_s: int = T0 + 3600,
    rating_group: int | None = None,
) -> RatedRecord:
    price_key = service.value
    record = UsageRecord(
        record_id=record_id,
        service=service,
        served_msisdn=msisdn,
        record_opening_time_s=at_s,
        duration_s=units if service is Service.VOICE else 0,
        downlink_bytes=units if service is Service.DATA else 0,
        sms_count=units if service is Service.SMS else 0,
        rating_group=rating_group,
    )
    return RatedRecord(
        record=record,
        plan_id="p",
        plan_version="1",
        currency="EUR",
        amount=PRICES[price_key] * units,
        units=units,
        billed_units=units,
        connect_fee=0,
        tiers=(),
        rate_ids=(price_key,),
        rounding="half_up/4",
        usage_class=usage_class,
        price_key=price_key,
    )


def account(
    account_id: str,
    mode: PaymentMode,
    *,
    limit: int | None = None,
    msisdn: str = "491",
    **extra: Any,
) -> Account:
    return Account(
        account_id=account_id,
        currency="EUR",
        payment_mode=mode,
        credit_limit=limit,
        msisdns=(msisdn,),
        **extra,
    )


def generated_state(
    n: int,
    mode: PaymentMode,
    limit: int | None,
    prepaid: int,
    status: AccountStatus,
    sponsor_class: str | None,
) -> AccountState:
    """Account ``A<n>`` (MSISDN ``49<n>``) as the charging properties generate it: a
    sponsor rule for ``sponsor_class`` naming ``A0`` (or, for ``A0`` itself, an account of
    another shard), ``limit`` unless prepaid, ``prepaid`` unless postpaid."""
    rules: tuple[SponsorRule, ...] = ()
    if sponsor_class is not None:
        sponsor = "A0" if n else "OTHER-SHARD"
        rules = (SponsorRule(sponsor_account_id=sponsor, usage_classes=(sponsor_class,)),)
    acct = account(
        f"A{n}",
        mode,
        limit=None if mode is PaymentMode.PREPAID else limit,
        msisdn=f"49{n}",
        status=status,
        sponsor_rules=rules,
    )
    state = AccountState(acct)
    state.prepaid = 0 if mode is PaymentMode.POSTPAID else prepaid
    return state


@dataclass
class World:
    """Applies outcomes like a shard would: states, marks and one ledger for everything."""

    states: dict[str, AccountState] = field(default_factory=dict)
    marks: dict[str, Mark[Any]] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    notes: list[Any] = field(default_factory=list)
    tariff: Any = field(default_factory=FakeTariff)
    config: ChargingConfig = CONFIG

    def apply(self, outcome: Outcome[Any]) -> Outcome[Any]:
        effects = outcome.effects
        for state in effects.accounts:
            self.states[state.account_id] = state
        for key, stored in effects.marks:
            assert key not in self.marks or self.marks[key].fields == stored.fields
            self.marks[key] = stored
        for entry in effects.entries:
            self.ledger.append(entry)
        self.notes.extend(effects.notifications)
        for usage in effects.forwards:
            sponsor = self.states[usage.sponsor_account_id]
            self.apply(
                charge_sponsored(
                    sponsor,
                    usage,
                    marks=self.marks,
                    tariff=self.tariff,
                    config=self.config,
                    at_s=T0,
                )
            )
        return outcome

    def add(self, acct: Account, prepaid: int = 0) -> AccountState:
        outcome = create_account(
            request_id=f"create:{acct.account_id}",
            account=acct,
            current=self.states.get(acct.account_id),
            existing=self.marks.get(f"create:{acct.account_id}"),
        )
        self.apply(outcome)
        if prepaid:
            from billing.charging.batch import top_up

            self.apply(
                top_up(
                    request_id=f"seed:{acct.account_id}",
                    state=self.states[acct.account_id],
                    amount=prepaid,
                    currency="EUR",
                    at_s=T0,
                    existing=None,
                    config=self.config,
                )
            )
        return self.states[acct.account_id]

    def check_books(self) -> None:
        """Money is conserved and every account's books equal the ledger replay."""
        assert self.ledger.total() == 0
        balances = replay(self.ledger.entries)
        for state in self.states.values():
            mine = {k: v for k, v in balances.items() if k.startswith(state.account_id + "/") and v}
            assert state.ledger_view() == mine, state
            assert state.prepaid >= 0 and state.reserved >= 0
            assert state.unbilled <= 0 and state.debt <= 0 and state.credit >= 0


def test_create_is_idempotent_and_ids_are_unique() -> None:
    """Creating twice with one request id replays; another request for the same id is refused."""
    world = World()
    acct = account("A1", PaymentMode.PREPAID)
    first = world.apply(create_account(request_id="r1", account=acct, current=None, existing=None))
    assert first.result is Result.CREATED
    again = create_account(
        request_id="r1", account=acct, current=world.states["A1"], existing=world.marks["r1"]
    )
    assert again.result is Result.DUPLICATE and again.effects.accounts == ()
    other = create_account(request_id="r2", account=acct, current=world.states["A1"], existing=None)
    assert other.result is Result.ACCOUNT_EXISTS
    changed = account("A1", PaymentMode.POSTPAID)
    conflict = create_account(
        request_id="r1", account=changed, current=world.states["A1"], existing=world.marks["r1"]
    )
    assert conflict.result is Result.EXISTS_WITH_DIFFERENT_MODE


def test_profile_changes_do_not_mutate_the_input_state() -> None:
    """Status and credit-limit changes return new states and leave the old one untouched."""
    world = World()
    state = world.add(account("A1", PaymentMode.POSTPAID, limit=10 * EUR))
    blocked = change_status(
        request_id="b", state=state, status=AccountStatus.BLOCKED, reason="", at_s=0,
        existing=None, config=ChargingConfig(),
    )  # fmt: skip
    assert blocked.result is Result.UPDATED
    assert blocked.effects.accounts[0].account.status is AccountStatus.BLOCKED
    assert state.account.status is AccountStatus.ACTIVE
    limit = set_credit_limit(request_id="l", state=state, credit_limit=-1, existing=None)
    assert limit.result is Result.INVALID_ARGUMENT
    limit = set_credit_limit(request_id="l", state=state, credit_limit=5 * EUR, existing=None)
    assert limit.effects.accounts[0].account.credit_limit == 5 * EUR
