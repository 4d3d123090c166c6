"""Charging: bundles first, money by payment mode, idempotency, top-ups (docs/billing-rules.md)."""

from __future__ import annotations

from dataclasses import replace

from test_accounts import EUR, T0, FakeTariff, World, account, rated

from billing.accounts import AccountStatus, PaymentMode, Result
from billing.bundles import Bundle
from billing.charging.batch import ChargingConfig, OfflinePolicy, charge, charge_batch, top_up
from billing.ledger import Book
from billing.notifications import NotificationKind

VOICE_BUNDLES = (
    Bundle(bundle_id="any-voice", usage_classes=("voice.*",), units=100, unit="seconds"),
    Bundle(bundle_id="national", usage_classes=("voice.national",), units=60, unit="seconds"),
)


def _charge(world: World, account_id: str, r, offline: bool = True):  # type: ignore[no-untyped-def]
    return world.apply(
        charge(
            world.states[account_id],
            r,
            marks=world.marks,
            tariff=world.tariff,
            config=world.config,
            at_s=T0,
            offline=offline,
            others=world.states,
        )
    )


def test_bundles_first_narrowest_first_then_money() -> None:
    """A 200 s national call uses the 60 s national bundle, then 100 s of "voice.*", then money."""
    world = World(tariff=FakeTariff(VOICE_BUNDLES))
    world.add(account("A", PaymentMode.PREPAID), prepaid=5 * EUR)
    out = _charge(world, "A", rated("r1", 200))
    row = out.receipt
    assert row is not None and out.result is Result.CHARGED
    # 200 s - 60 (national) - 100 (voice.*) = 40 s at 0.001 EUR/s = 0.04 EUR.
    assert (row.bundle_units, row.amount) == (160, 40_000)
    state = world.states["A"]
    assert state.prepaid == 5 * EUR - 40_000
    assert state.bundle_used == {("2024-06", "national"): 60, ("2024-06", "any-voice"): 100}
    assert state.usage[("2024-06", "voice.national")] == (1, 200, 160, 40_000, 0)
    world.check_books()


def test_fully_covered_record_posts_no_entry() -> None:
    """A call the bundle covers whole charges no money and posts no entry, but is counted."""
    world = World(tariff=FakeTariff(VOICE_BUNDLES))
    world.add(account("A", PaymentMode.PREPAID))
    out = _charge(world, "A", rated("r1", 30))
    assert out.result is Result.CHARGED and out.effects.entries == ()
    assert world.states["A"].usage[("2024-06", "voice.national")] == (1, 30, 30, 0, 0)


def test_duplicate_and_conflict() -> None:
    """The same record twice is charged once; the same id with other content names the field."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    _charge(world, "A", rated("r1", 100))
    again = _charge(world, "A", rated("r1", 100))
    assert again.result is Result.DUPLICATE and again.effects.entries == ()
    assert again.receipt is not None and again.receipt.amount == 100_000
    changed = _charge(world, "A", rated("r1", 120))
    assert changed.result is Result.EXISTS_WITH_DIFFERENT_AMOUNT
    assert world.states["A"].prepaid == EUR - 100_000
    world.check_books()


def test_prepaid_offline_shortfall_goes_to_debt_by_default() -> None:
    """0.30 EUR prepaid, a 0.50 EUR offline call: 0.30 from prepaid, 0.20 to debt, reminded."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=300_000)
    out = _charge(world, "A", rated("r1", 500))
    assert out.result is Result.CHARGED_TO_DEBT
    state = world.states["A"]
    assert (state.prepaid, state.debt) == (0, -200_000)
    assert NotificationKind.DEBT_POSTED in {n.kind for n in out.effects.notifications}
    # A top-up of 1 EUR repays the 0.20 debt first: 0.80 lands on prepaid.
    up = world.apply(
        top_up(
            request_id="t1",
            state=state,
            amount=EUR,
            currency="EUR",
            at_s=T0,
            existing=None,
            config=world.config,
        )
    )
    assert up.receipt is not None and (up.receipt.to_debt, up.receipt.to_prepaid) == (
        200_000,
        800_000,
    )
    world.check_books()


def test_prepaid_online_and_reject_policy_refuse_without_effects() -> None:
    """Online charges never go below zero; the reject policy refuses offline records."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=100_000)
    online = _charge(world, "A", rated("r1", 500), offline=False)
    assert online.result is Result.INSUFFICIENT_BALANCE and online.effects.accounts == ()
    world.config = ChargingConfig(offline_policy=OfflinePolicy.REJECT)
    rejected = _charge(world, "A", rated("r1", 500))
    assert rejected.result is Result.REJECTED_OFFLINE
    assert "r1" not in world.marks  # a refusal is not marked: a retry after a top-up may succeed


def test_postpaid_over_limit_is_posted_flagged_and_can_block() -> None:
    """Postpaid beyond the limit: offline still posted (over_limit), blocked by config."""
    world = World(config=ChargingConfig(block_over_limit=True))
    world.add(account("B", PaymentMode.POSTPAID, limit=EUR))
    first = _charge(world, "B", rated("r1", 950))  # 0.95 of 1.00: the 90 % reminder
    assert first.result is Result.CHARGED
    assert [n.subject for n in first.effects.notifications] == ["90"]
    second = _charge(world, "B", rated("r2", 100))  # 1.05 owed
    assert second.result is Result.CHARGED_OVER_LIMIT
    kinds = [n.kind for n in second.effects.notifications]
    assert kinds == [NotificationKind.CREDIT_LIMIT, NotificationKind.ACCOUNT_BLOCKED]
    state = world.states["B"]
    assert state.unbilled == -1_050_000 and state.account.status is AccountStatus.BLOCKED
    online = _charge(world, "B", rated("r3", 1), offline=False)
    assert online.result is Result.ACCOUNT_BLOCKED
    world.check_books()


def test_blocked_again_after_an_unblock_is_told_again() -> None:
    """Unblocked by an operator and over the limit again in the same cycle, the account is
    blocked again with a second notice (its own id), not silently."""
    from billing.account_status import change_status

    world = World(config=ChargingConfig(block_over_limit=True))
    world.add(account("B", PaymentMode.POSTPAID, limit=EUR))
    first = _charge(world, "B", rated("r1", 1100))
    world.apply(
        change_status(
            request_id="u1", state=world.states["B"], status=AccountStatus.ACTIVE, reason="paid",
            at_s=T0, existing=None, config=world.config,
        )
    )  # fmt: skip
    assert world.states["B"].account.status is AccountStatus.ACTIVE
    second = _charge(world, "B", rated("r2", 10))
    assert world.states["B"].account.status is AccountStatus.BLOCKED
    blocks = [
        n.notification_id
        for out in (first, second)
        for n in out.effects.notifications
        if n.kind is NotificationKind.ACCOUNT_BLOCKED
    ]
    assert len(blocks) == 2 and len(set(blocks)) == 2


def test_hybrid_uses_prepaid_then_credit() -> None:
    """Hybrid with 0.20 prepaid and a 1.00 limit: a 0.50 call takes 0.20 + 0.30 unbilled."""
    world = World()
    world.add(account("H", PaymentMode.HYBRID, limit=EUR), prepaid=200_000)
    out = _charge(world, "H", rated("r1", 500))
    assert out.receipt is not None
    assert (out.receipt.prepaid, out.receipt.unbilled) == (200_000, 300_000)
    online = _charge(world, "H", rated("r2", 800), offline=False)  # 0.80 > 0.70 left
    assert online.result is Result.INSUFFICIENT_BALANCE
    assert world.states["H"].usage[("2024-06", "voice.national")][4] == 300_000
    world.check_books()


def test_top_up_of_postpaid_goes_to_credit() -> None:
    """A postpaid top-up is credit against the next invoice."""
    world = World()
    world.add(account("B", PaymentMode.POSTPAID), prepaid=2 * EUR)
    state = world.states["B"]
    assert (state.prepaid, state.credit) == (0, 2 * EUR)
    world.check_books()


def test_batch_is_pure_and_equals_single_charges() -> None:
    """charge_batch leaves its input states untouched and gives the same books as one by one."""
    records = [rated(f"r{i}", 10 * i + 1, msisdn="491" if i % 2 else "492") for i in range(20)]
    records.append(records[3])  # an in-batch duplicate
    batch_world = World(tariff=FakeTariff(VOICE_BUNDLES))
    batch_world.add(account("A", PaymentMode.PREPAID, msisdn="491"), prepaid=EUR)
    batch_world.add(account("B", PaymentMode.POSTPAID, msisdn="492"))
    before = {k: repr(v) for k, v in batch_world.states.items()}
    out = charge_batch(
        records,
        accounts=batch_world.states,
        directory={"491": "A", "492": "B"},
        marks=batch_world.marks,
        tariff=batch_world.tariff,
        config=batch_world.config,
        at_s=T0,
    )
    assert {k: repr(v) for k, v in batch_world.states.items()} == before
    assert out.receipt is not None and out.receipt[-1].result is Result.DUPLICATE
    batch_world.apply(out)
    batch_world.check_books()
    single = World(tariff=FakeTariff(VOICE_BUNDLES))
    single.add(account("A", PaymentMode.PREPAID, msisdn="491"), prepaid=EUR)
    single.add(account("B", PaymentMode.POSTPAID, msisdn="492"))
    for r in records:
        _charge(single, "A" if r.record.served_msisdn == "491" else "B", r)
    assert single.ledger.balances == batch_world.ledger.balances


def test_unknown_closed_and_currency() -> None:
    """Unknown msisdn, closed accounts and foreign currencies are refused with their own result."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    out = charge_batch(
        [rated("r1", 1, msisdn="999")],
        accounts=world.states,
        directory={},
        marks=world.marks,
        tariff=world.tariff,
        config=world.config,
        at_s=T0,
    )
    assert out.receipt is not None and out.receipt[0].result is Result.UNKNOWN_ACCOUNT
    usd = replace(rated("r2", 1), currency="USD")
    assert _charge(world, "A", usd).result is Result.CURRENCY_MISMATCH
    state = world.states["A"]
    state_closed = state.copy()
    state_closed.account = replace(state.account, status=AccountStatus.CLOSED)
    world.states["A"] = state_closed
    assert _charge(world, "A", rated("r3", 1)).result is Result.ACCOUNT_CLOSED
    assert state_closed.balance(Book.PREPAID) == EUR
