"""Content settlement: provider shares posted once, reported per provider, reconciled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from billing.ledger import Ledger, op_key
from billing.rated import RatedRecord
from billing.rating import provider_share
from billing.records import Service, UsageRecord
from billing.settlement import (
    CONTENT_REVENUE,
    content_share_entry,
    merge,
    provider_key,
    reconcile,
    settlement_report,
    with_rounding,
)


def purchase(
    n: int, item: str, amount: int, share: int, provider: str | None = "acme", currency: str = "EUR"
) -> RatedRecord:
    record = UsageRecord(
        record_id=f"c:{n}",
        service=Service.CONTENT,
        served_msisdn="491",
        record_opening_time_s=n,
        content_item_id=item,
    )
    return RatedRecord(
        record=record,
        plan_id="p",
        plan_version="1",
        currency=currency,
        amount=amount,
        units=1,
        billed_units=1,
        connect_fee=0,
        tiers=(),
        rate_ids=(),
        rounding="half_up",
        usage_class="content",
        price_key="k",
        content_provider=provider,
        provider_share=share,
    )


def test_share_entry_moves_revenue_to_provider() -> None:
    """A 2.99 purchase with a 2.09 share moves 2.09 from content revenue to the provider."""
    entry = content_share_entry(
        purchase(1, "song", 2_990_000, 2_093_000), at_s=5, cycle_id="2026-11"
    )
    assert entry is not None
    assert entry.ref == "content_share:c:1" and entry.cycle_id == "2026-11"
    assert entry.amount_for(CONTENT_REVENUE) == -2_093_000
    assert entry.amount_for(op_key("provider/acme")) == 2_093_000


def test_no_provider_or_no_share_posts_nothing() -> None:
    """Operator-owned content and zero shares need no entry."""
    assert content_share_entry(purchase(1, "x", 100, 0), at_s=1, cycle_id="c") is None
    assert (
        content_share_entry(purchase(1, "x", 100, 50, provider=None), at_s=1, cycle_id="c") is None
    )


def test_report_per_provider_and_item() -> None:
    """The report groups by provider then item: count, gross, shares; sorted by name."""
    rated = [
        purchase(1, "song", 1_000_000, 700_000),
        purchase(2, "song", 1_000_000, 700_000),
        purchase(3, "game", 4_990_000, 3_493_000),
        purchase(4, "vid", 2_000_000, 1_000_000, provider="beta"),
        purchase(5, "own", 500_000, 0, provider=None),
    ]
    acme, beta = settlement_report(rated, cycle_id="2026-11")
    assert (acme.provider, acme.count, acme.gross, acme.provider_share) == (
        "acme",
        3,
        6_990_000,
        4_893_000,
    )
    assert acme.operator_share == 2_097_000
    assert [(i.item_id, i.count, i.gross, i.operator_share) for i in acme.items] == [
        ("game", 1, 4_990_000, 1_497_000),
        ("song", 2, 2_000_000, 600_000),
    ]
    assert (beta.provider, beta.provider_share) == ("beta", 1_000_000)


def test_reconcile_finds_a_missing_share() -> None:
    """A purchase whose share entry was never posted shows as a difference."""
    rated = [purchase(1, "a", 100, 60), purchase(2, "a", 100, 60)]
    entries = [e for r in rated[:1] if (e := content_share_entry(r, at_s=1, cycle_id="c"))]
    report = settlement_report(rated, cycle_id="c")
    assert reconcile(report, entries) == {("acme", "EUR"): 60}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["p1", "p2", "p3"]),
            st.sampled_from(["i1", "i2"]),
            st.integers(0, 10**8),
            st.integers(0, 100),
        ),
        max_size=40,
    )
)
def test_report_reconciles_with_ledger(rows: list[tuple[str, str, int, int]]) -> None:
    """Report totals equal the ledger's provider balances and item lines add up, exactly."""
    rated = [
        purchase(n, item, amount, amount * pct // 100, provider=p)
        for n, (p, item, amount, pct) in enumerate(rows)
    ]
    ledger = Ledger(e for r in rated if (e := content_share_entry(r, at_s=1, cycle_id="c")))
    report = settlement_report(rated, cycle_id="c")
    assert reconcile(report, ledger.entries) == {}
    for line in report:
        assert ledger.balance(provider_key(line.provider)) == line.provider_share
        assert sum(i.gross for i in line.items) == line.gross
        assert line.provider_share + line.operator_share == line.gross
    assert sum(line.gross for line in report) == sum(r.amount for r in rated)
    assert ledger.total() == 0


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["p1", "p2"]),
            st.sampled_from(["i1", "i2"]),
            st.integers(0, 10**8),
            st.integers(1, 999_999),
        ),
        max_size=40,
    )
)
def test_merged_shard_reports_equal_one_report_of_all(
    rows: list[tuple[int, str, str, int, int]],
) -> None:
    """Reports made per shard and merged equal the report of all purchases at once."""
    by_shard: dict[int, list[RatedRecord]] = {}
    every = []
    for n, (shard, p, item, amount, ppm) in enumerate(rows):
        bought = purchase(n, item, amount, provider_share(amount, ppm), provider=p)
        by_shard.setdefault(shard, []).append(bought)
        every.append(bought)
    merged = merge(settlement_report(r, cycle_id="c") for r in by_shard.values())
    assert merged == settlement_report(every, cycle_id="c")


@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=30), st.integers(0, 1_000_000))
def test_rounding_is_what_rounding_each_share_down_kept(prices: list[int], ppm: int) -> None:
    """Share owed plus rounding is the share of the whole revenue rounded once, and the
    rounding is below one micro-unit per purchase."""
    bought = [purchase(n, "i", p, provider_share(p, ppm)) for n, p in enumerate(prices)]
    (line,) = with_rounding(settlement_report(bought, cycle_id="c"), {"i": ppm}.get)
    (item,) = line.items
    assert line.rounding == item.rounding
    assert item.provider_share + item.rounding == sum(prices) * ppm // 1_000_000
    assert 0 <= item.rounding < item.count


def test_rounding_of_three_thirds() -> None:
    """Three purchases of 0.33 at 33.3333 %: each owes 0.109999, together 0.329997; one
    rounding of 0.99 would owe 0.329999, so the rounding is 0.000002."""
    bought = [purchase(n, "tone", 330_000, provider_share(330_000, 333_333)) for n in range(3)]
    (line,) = with_rounding(settlement_report(bought, cycle_id="c"), {"tone": 333_333}.get)
    assert (line.provider_share, line.rounding) == (329_997, 2)
    (unknown,) = with_rounding(settlement_report(bought, cycle_id="c"), {}.get)
    assert unknown.rounding == 0
