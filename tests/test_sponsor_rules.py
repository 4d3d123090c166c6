"""Sponsor rules added and ended by request: validity, per-subscriber rules, idempotency."""

from __future__ import annotations

from dataclasses import replace

from test_accounts import EUR, T0, FakeTariff, World, account, rated
from test_charging import _charge

from billing.accounts import AccountStatus, PaymentMode, Result, SponsorRule
from billing.records import Service
from billing.sponsor import resolve_sponsor
from billing.sponsor_rules import SPONSOR_RULES_MAX, add_sponsor_rule, end_sponsor_rule

HOUR = 3600


def world_with_two_numbers() -> World:
    world = World()
    subscriber = replace(account("A", PaymentMode.PREPAID), msisdns=("491", "492"))
    world.add(subscriber, prepaid=EUR)
    world.add(account("E", PaymentMode.POSTPAID, msisdn="000"))
    return world


def add(world: World, rule: SponsorRule, rid: str = "add-1", **kw: bool) -> Result:
    out = add_sponsor_rule(
        request_id=rid, state=world.states["A"], rule=rule, existing=world.marks.get(rid), **kw
    )
    world.apply(out)
    return out.result


def test_a_rule_covers_records_that_start_in_its_validity() -> None:
    """Effective from start_s and until end_s: a record's start time decides, not its arrival;
    ending the rule later leaves records already charged as they were."""
    world = world_with_two_numbers()
    rule = SponsorRule(rule_id="video", sponsor_account_id="E", rating_group=20, start_s=T0)
    assert add(world, rule) is Result.CREATED
    early = rated("r0", 100, service=Service.DATA, rating_group=20, at_s=T0 - 1)
    inside = rated("r1", 100, service=Service.DATA, rating_group=20, at_s=T0 + HOUR)
    assert _charge(world, "A", early).result is Result.CHARGED
    assert _charge(world, "A", inside).result is Result.SPONSORED
    ended = end_sponsor_rule(
        request_id="end-1", state=world.states["A"], rule_id="video", end_s=T0 + 2 * HOUR,
        existing=None,
    )  # fmt: skip
    world.apply(ended)
    assert ended.receipt == replace(rule, end_s=T0 + 2 * HOUR)
    after = rated("r2", 100, service=Service.DATA, rating_group=20, at_s=T0 + 2 * HOUR)
    assert _charge(world, "A", after).result is Result.CHARGED
    assert world.states["E"].unbilled == -100  # r1 only, at the rated amount
    world.check_books()


def test_a_rule_for_one_subscriber_number_leaves_the_others_alone() -> None:
    """A rule naming msisdn 492 sponsors that number's usage only, at the rule's rate."""
    world = world_with_two_numbers()
    rule = SponsorRule(rule_id="kid", sponsor_account_id="E", msisdn="492", price_key="sponsor")
    assert add(world, rule) is Result.CREATED
    state = world.states["A"]
    tariff = FakeTariff()
    assert resolve_sponsor(state.account, rated("x", 5, msisdn="491"), tariff) is None
    found = resolve_sponsor(state.account, rated("y", 5, msisdn="492"), tariff)
    assert found is not None and (found.sponsor_account_id, found.amount) == ("E", 10_000)


def test_rules_are_tried_in_the_order_added() -> None:
    """The first rule that covers a record decides its sponsor."""
    world = world_with_two_numbers()
    add(world, SponsorRule(rule_id="all", sponsor_account_id="E"), "a1")
    add(world, SponsorRule(rule_id="other", sponsor_account_id="F"), "a2")
    found = resolve_sponsor(world.states["A"].account, rated("x", 5), FakeTariff())
    assert found is not None and found.sponsor_account_id == "E"


def test_refusals_write_nothing() -> None:
    """Self-sponsoring, a foreign number, an empty validity, a taken rule id, a closed
    account and a full rule list are refused, with no effects."""
    world = world_with_two_numbers()
    add(world, SponsorRule(rule_id="taken", sponsor_account_id="E"), "a0")
    invalid = Result.INVALID_ARGUMENT
    cases = [
        (SponsorRule(rule_id="r", sponsor_account_id="A"), invalid),
        (SponsorRule(rule_id="r", sponsor_account_id="E", msisdn="499"), invalid),
        (SponsorRule(rule_id="r", sponsor_account_id="E", start_s=9, end_s=9), invalid),
        (SponsorRule(rule_id="", sponsor_account_id="E"), invalid),
        (SponsorRule(rule_id="taken", sponsor_account_id="E"), Result.SPONSOR_RULE_EXISTS),
    ]
    state = world.states["A"]
    for rule, result in cases:
        out = add_sponsor_rule(request_id="x", state=state, rule=rule, existing=None)
        assert (out.result, out.effects.accounts, out.effects.explicit_marks) == (result, (), ())
    closed = state.copy()
    closed.account = replace(state.account, status=AccountStatus.CLOSED)
    rule = SponsorRule(rule_id="new", sponsor_account_id="E")
    out = add_sponsor_rule(request_id="x", state=closed, rule=rule, existing=None)
    assert out.result is Result.ACCOUNT_CLOSED
    full = state.copy()
    many = tuple(SponsorRule(rule_id=f"r{i}", sponsor_account_id="E") for i in range(64))
    assert len(many) == SPONSOR_RULES_MAX
    full.account = replace(state.account, sponsor_rules=many)
    out = add_sponsor_rule(request_id="x", state=full, rule=rule, existing=None)
    assert out.result is Result.SPONSOR_RULES_FULL
    unknown = end_sponsor_rule(request_id="e", state=state, rule_id="nope", end_s=T0, existing=None)
    assert unknown.result is Result.UNKNOWN_SPONSOR_RULE and unknown.effects.accounts == ()


def test_retries_replay_and_other_fields_conflict() -> None:
    """A retry replays the stored rule; without a time (the service's clock) a retry at a
    later clock still replays; another rule under the id conflicts on its content."""
    world = world_with_two_numbers()
    rule = SponsorRule(rule_id="v", sponsor_account_id="E", rating_group=20, start_s=T0)
    assert add(world, rule, "a", at_from_clock=True) is Result.CREATED
    later = replace(rule, start_s=T0 + HOUR)  # the clock moved on
    again = add_sponsor_rule(
        request_id="a", state=world.states["A"], rule=later, existing=world.marks["a"],
        at_from_clock=True,
    )  # fmt: skip
    assert again.result is Result.DUPLICATE and again.receipt == rule
    other = add_sponsor_rule(
        request_id="a", state=world.states["A"], rule=replace(rule, rating_group=21),
        existing=world.marks["a"], at_from_clock=True,
    )  # fmt: skip
    assert other.result is Result.EXISTS_WITH_DIFFERENT_CONTENT
    timed = add_sponsor_rule(
        request_id="a", state=world.states["A"], rule=later, existing=world.marks["a"]
    )
    assert timed.result is Result.EXISTS_WITH_DIFFERENT_TIME


def test_ending_never_extends_and_ending_before_the_start_cancels() -> None:
    """A rule ending earlier keeps its end; ended at or before its start it never applies."""
    world = world_with_two_numbers()
    add(world, SponsorRule(rule_id="v", sponsor_account_id="E", start_s=T0, end_s=T0 + HOUR))
    out = end_sponsor_rule(
        request_id="e1", state=world.states["A"], rule_id="v", end_s=T0 + 5 * HOUR, existing=None
    )
    assert out.result is Result.UPDATED and out.receipt.end_s == T0 + HOUR
    assert out.effects.accounts == ()  # nothing changed, the request is still marked
    world.apply(out)
    out = end_sponsor_rule(
        request_id="e2", state=world.states["A"], rule_id="v", end_s=T0 - HOUR, existing=None
    )
    world.apply(out)
    (rule,) = world.states["A"].account.sponsor_rules
    assert (rule.start_s, rule.end_s) == (T0, T0)
    assert not any(rule.valid_at(t) for t in (T0 - 1, T0, T0 + 1))
