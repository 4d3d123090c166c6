"""Fraud and risk rules over rated usage, per account, with bounded state.

Three rules, each configured as data (:class:`FraudConfig`, loadable from a
TOML table with :meth:`FraudConfig.from_mapping`) with an action, ``alert`` or
``block``:

- **velocity**: ``calls`` international calls (usage class matching one of
  ``international_classes``) whose start times span less than ``window_s``
  (last start − first start < ``window_s``) fire the rule. The state keeps
  at most ``calls`` start times (the latest), so it is bounded whatever the
  traffic; it fires at most once per window: not again until a call starts
  ``window_s`` after the last firing.
- **spend spike**: the account's rated spend in the current cycle exceeds
  ``factor`` × the average spend of up to ``trailing_cycles`` previous cycles
  (at least ``min_history`` of them, with a positive average). Strictly above:
  equal to the threshold does not fire. Once per cycle. Spend is the rated
  amount, before bundles: risk looks at value used, not at who pays. Records of
  an earlier cycle than the current one count for velocity only.
- **premium destinations**: a call or SMS whose called number starts with one
  of ``premium_prefixes`` or whose usage class matches ``premium_classes``
  fires on every such record.

A ``block`` sets :attr:`RiskState.blocked`; the ABM refuses further charging
for a blocked account until an operator clears it (:func:`unblock`). The
evaluation is pure: state and record in, new state and alerts out.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction

from billing.notifications import Notification, NotificationKind, make_notification
from billing.rated import RatedRecord
from billing.records import Service

__all__ = [
    "Action",
    "FraudAlert",
    "FraudConfig",
    "FraudConfigError",
    "PremiumRule",
    "RiskState",
    "Rule",
    "SpikeRule",
    "VelocityRule",
    "evaluate",
    "notification_of",
    "unblock",
]


class FraudConfigError(ValueError):
    """Raised by :meth:`FraudConfig.from_mapping` when a rule table is invalid."""


class Action(enum.StrEnum):
    ALERT = "alert"
    BLOCK = "block"


class Rule(enum.StrEnum):
    VELOCITY = "velocity"
    SPEND_SPIKE = "spend_spike"
    PREMIUM = "premium"


def _matches(pattern: str, usage_class: str) -> bool:
    # Same pattern language as tariff bundles: "voice.*" or an exact class.
    if pattern.endswith(".*"):
        return usage_class.startswith(pattern[:-1])
    return pattern == usage_class


@dataclass(frozen=True, slots=True, kw_only=True)
class VelocityRule:
    calls: int = 10
    window_s: int = 600
    international_classes: tuple[str, ...] = ("voice.international",)
    action: Action = Action.ALERT


@dataclass(frozen=True, slots=True, kw_only=True)
class SpikeRule:
    factor: Fraction = Fraction(3)
    trailing_cycles: int = 3
    min_history: int = 1
    action: Action = Action.ALERT


@dataclass(frozen=True, slots=True, kw_only=True)
class PremiumRule:
    premium_prefixes: tuple[str, ...] = ()
    premium_classes: tuple[str, ...] = ("voice.premium", "sms.premium")
    action: Action = Action.BLOCK


@dataclass(frozen=True, slots=True, kw_only=True)
class FraudConfig:
    """Which rules run and how; a rule set to ``None`` is off."""

    velocity: VelocityRule | None = field(default_factory=VelocityRule)
    spend_spike: SpikeRule | None = field(default_factory=SpikeRule)
    premium: PremiumRule | None = field(default_factory=PremiumRule)

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> FraudConfig:
        """Build from a TOML-shaped table ``{"velocity": {...}, ...}``; absent rules are off."""
        unknown = set(table) - {r.value for r in Rule}
        if unknown:
            raise FraudConfigError(f"unknown fraud rules: {sorted(unknown)}")
        try:
            return cls(
                velocity=_velocity(table.get("velocity")),
                spend_spike=_spike(table.get("spend_spike")),
                premium=_premium(table.get("premium")),
            )
        except FraudConfigError:
            raise  # names its key already
        except (TypeError, ValueError, KeyError) as exc:
            raise FraudConfigError(f"invalid fraud rule: {exc}") from exc


def _table(raw: object, name: str) -> dict[str, object] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise FraudConfigError(f"{name}: expected a table")
    return dict(raw)


def _int(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FraudConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _ratio(value: object, name: str) -> Fraction:
    """A positive ratio: 3, 2.5 or "5/2" (a Fraction as it is)."""
    wrong = f'{name}: must be a number or a fraction such as "5/2"'
    if isinstance(value, Fraction):
        ratio = value
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FraudConfigError(wrong)
    else:
        try:
            ratio = Fraction(str(value))
        except (ValueError, ZeroDivisionError):
            raise FraudConfigError(wrong) from None
    if ratio <= 0:
        raise FraudConfigError(f"{name}: must be > 0")
    return ratio


def _strs(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise FraudConfigError(f"{name}: expected a list of strings")
    return tuple(str(v) for v in value)


def _velocity(raw: object) -> VelocityRule | None:
    t = _table(raw, "velocity")
    if t is None:
        return None
    d = VelocityRule()
    return VelocityRule(
        calls=_int(t.get("calls", d.calls), "velocity.calls", 1),
        window_s=_int(t.get("window_s", d.window_s), "velocity.window_s", 1),
        international_classes=_strs(
            t.get("international_classes", list(d.international_classes)),
            "velocity.international_classes",
        ),
        action=Action(str(t.get("action", d.action))),
    )


def _spike(raw: object) -> SpikeRule | None:
    t = _table(raw, "spend_spike")
    if t is None:
        return None
    d = SpikeRule()
    factor = _ratio(t.get("factor", d.factor), "spend_spike.factor")
    trailing = _int(t.get("trailing_cycles", d.trailing_cycles), "spend_spike.trailing_cycles", 1)
    minimum = _int(t.get("min_history", d.min_history), "spend_spike.min_history", 1)
    if minimum > trailing:
        raise FraudConfigError(f"spend_spike.min_history: must be <= trailing_cycles ({trailing})")
    return SpikeRule(
        factor=factor,
        trailing_cycles=trailing,
        min_history=minimum,
        action=Action(str(t.get("action", d.action))),
    )


def _premium(raw: object) -> PremiumRule | None:
    t = _table(raw, "premium")
    if t is None:
        return None
    d = PremiumRule()
    return PremiumRule(
        premium_prefixes=_strs(t.get("premium_prefixes", []), "premium.premium_prefixes"),
        premium_classes=_strs(
            t.get("premium_classes", list(d.premium_classes)), "premium.premium_classes"
        ),
        action=Action(str(t.get("action", d.action))),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskState:
    """Per-account risk state; every field is bounded by the configuration."""

    intl_starts_s: tuple[int, ...] = ()  # sorted, at most velocity.calls of them
    velocity_fired_s: int | None = None
    cycle_id: str | None = None
    cycle_spend: int = 0
    history: tuple[int, ...] = ()  # spends of previous cycles, oldest first
    spike_fired: bool = False
    blocked: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FraudAlert:
    """A rule that fired for an account; ``key`` makes its notification once per firing."""

    rule: Rule
    action: Action
    account_id: str
    at_s: int
    record_id: str
    detail: str
    key: str


def evaluate(
    config: FraudConfig,
    state: RiskState,
    rated: RatedRecord,
    *,
    account_id: str,
    cycle_id: str,
) -> tuple[RiskState, tuple[FraudAlert, ...]]:
    """Apply one rated record of ``account_id`` (in cycle ``cycle_id``) to its risk state."""
    alerts: list[FraudAlert] = []
    record = rated.record
    at_s = record.record_opening_time_s

    def fire(rule: Rule, action: Action, detail: str, key: str) -> None:
        alerts.append(
            FraudAlert(
                rule=rule,
                action=action,
                account_id=account_id,
                at_s=at_s,
                record_id=record.record_id,
                detail=detail,
                key=f"fraud:{rule.value}:{account_id}:{key}",
            )
        )

    velocity = config.velocity
    if velocity is not None and any(
        _matches(p, rated.usage_class) for p in velocity.international_classes
    ):
        starts = list(state.intl_starts_s)
        bisect.insort(starts, at_s)
        starts = starts[-velocity.calls :]
        fired_s = state.velocity_fired_s
        span_ok = len(starts) == velocity.calls and starts[-1] - starts[0] < velocity.window_s
        if span_ok and (fired_s is None or at_s >= fired_s + velocity.window_s):
            fire(
                Rule.VELOCITY,
                velocity.action,
                f"{velocity.calls} international calls within {velocity.window_s} s",
                str(at_s),
            )
            fired_s = at_s
        state = replace(state, intl_starts_s=tuple(starts), velocity_fired_s=fired_s)

    spike = config.spend_spike
    if state.cycle_id != cycle_id and (state.cycle_id is None or cycle_id > state.cycle_id):
        # A new cycle: the finished one joins the trailing history.
        history = state.history
        if state.cycle_id is not None:
            keep = spike.trailing_cycles if spike is not None else 0
            history = (*history, state.cycle_spend)[-keep:] if keep else ()
        state = replace(state, cycle_id=cycle_id, cycle_spend=0, history=history, spike_fired=False)
    if state.cycle_id == cycle_id:
        state = replace(state, cycle_spend=state.cycle_spend + rated.amount)
        if spike is not None and not state.spike_fired:
            past = state.history[-spike.trailing_cycles :]
            if len(past) >= spike.min_history and sum(past) > 0:
                # spend > factor × sum/len, in integers: spend·len·den > num·sum.
                factor = spike.factor
                if state.cycle_spend * len(past) * factor.denominator > factor.numerator * sum(
                    past
                ):
                    fire(
                        Rule.SPEND_SPIKE,
                        spike.action,
                        f"cycle spend {state.cycle_spend} > {factor} × average of "
                        f"{len(past)} cycles",
                        cycle_id,
                    )
                    state = replace(state, spike_fired=True)

    premium = config.premium
    if premium is not None and record.service in (Service.VOICE, Service.SMS):
        number = record.called_number or ""
        if any(number.startswith(p) for p in premium.premium_prefixes) or any(
            _matches(p, rated.usage_class) for p in premium.premium_classes
        ):
            fire(Rule.PREMIUM, premium.action, f"premium destination {number}", record.record_id)

    if any(alert.action is Action.BLOCK for alert in alerts):
        state = replace(state, blocked=True)
    return state, tuple(alerts)


def notification_of(alert: FraudAlert, *, cycle_id: str) -> Notification:
    """The notification of ``alert``: a block is ``account_blocked`` (subject
    ``fraud:<rule>``, once per rule and cycle); an alert is ``fraud_alert`` for the
    operator's risk desk (subject ``<rule>:<record_id>``: one per firing, and a
    firing is once per record, velocity at most once per window)."""
    if alert.action is Action.BLOCK:
        kind, subject = NotificationKind.ACCOUNT_BLOCKED, f"fraud:{alert.rule.value}"
    else:
        kind, subject = NotificationKind.FRAUD_ALERT, f"{alert.rule.value}:{alert.record_id}"
    return make_notification(
        kind,
        account_id=alert.account_id,
        at_s=alert.at_s,
        cycle_id=cycle_id,
        subject=subject,
        data={"record_id": alert.record_id, "detail": alert.detail},
    )


def unblock(state: RiskState) -> RiskState:
    """An operator's decision to let a blocked account charge again."""
    return replace(state, blocked=False)
