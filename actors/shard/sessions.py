"""Online-charging session steps on a shard, coalesced: many steps, one synced commit.

A gateway that serves many concurrent sessions sends the steps that meet on one
shard together (``actors.coalesce``): :class:`SessionSteps` runs them in arrival
order on one :class:`~actors.shard.work.Work` and commits once — group commit,
one fsync for the group instead of one per step. Each step is still the step
``billing.ocs.session`` decides, with its own idempotency key (its
``request_id``) and its own stored answer (the :class:`~billing.ocs.session.Grant`
in its mark), so a retry of any step of a group, in a later group or alone,
answers the same money as the first time. A later step of the same group sees the
earlier ones' effects and marks (the work's rows and marks), exactly as if they
had come one by one.

A :class:`SessionStep` carries the request as the gateway read it: the shard
itself prices an INITIAL step's quote (``billing.rating.price_enquiry`` over its
catalogue, the plan being the directory entry's when the caller resolved an
MSISDN, else the account's own) and takes the account's currency for the answer,
so a step needs no read of the account before it (one round trip, not two).

Recovery contract: a group is durable as a whole or not at all (one WriteBatch);
a commit that fails fails every step of the group, and their callers retry with
the same request ids. A step that raises (a bug, not a business outcome) would
otherwise take its group down with it: the group is then run again step by step,
each in its own commit, and only that step answers its exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from actors.op import Env
from actors.shard.ops import ShardOp
from actors.shard.work import Work
from actors.store.storage import STORE_LOST
from billing.accounts import Outcome, Result
from billing.invariant import invariant
from billing.ocs.session import (
    Grant,
    Quote,
    session_initial,
    session_terminate,
    session_update,
)
from billing.rated import RatingFailure
from billing.rating import price_enquiry
from billing.records import Service

if TYPE_CHECKING:
    from actors.shard.core import ShardCore
    from actors.shard.engine import AccountShard

__all__ = ["INITIAL", "TERMINATE", "UPDATE", "SessionStep", "SessionSteps", "StepAnswer"]

INITIAL: Final = "initial"
UPDATE: Final = "update"
TERMINATE: Final = "terminate"
#: Units granted when a step asks for none ("0 lets the server choose").
DEFAULT_UNITS: Final = {
    Service.VOICE: 300,
    Service.SMS: 1,
    Service.DATA: 10 * 1024 * 1024,
    Service.CONTENT: 1,
}
#: The most steps one group commits (a gateway sends at most this many at once).
GROUP_STEPS_MAX: Final = 512


@dataclass(frozen=True, slots=True)
class StepAnswer:
    """One step's answer: the core's result, the stored grant (None when refused), the
    account's currency, and why an INITIAL could not be rated (``rating_failed``)."""

    result: Result
    grant: Grant | None
    currency: str
    rating_failed: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStep(ShardOp[StepAnswer]):
    """One CCR (initial, update, terminate) of ``session_id`` on ``account_id``.

    ``requested_units`` 0 on an INITIAL or UPDATE lets the shard choose (the
    service's default). ``now_s`` is the service's clock the grant's validity runs on.
    For an INITIAL: ``service`` and the rating fields; ``plan_from_entry`` says the
    plan is ``plan_id`` (the directory entry's, possibly none) rather than the
    account's own.
    """

    step: str
    request_id: str
    account_id: str
    session_id: str
    at_s: int
    now_s: int
    requested_units: int = 0
    used_units: int = 0
    service: Service | None = None
    called_number: str | None = None
    rating_group: int | None = None
    content_item_id: str | None = None
    roaming: bool = False
    plan_from_entry: bool = False
    plan_id: str | None = None

    def apply(self, engine: AccountShard, env: Env) -> StepAnswer:
        answer = run_steps(engine.core, (self,))[0]
        invariant(isinstance(answer, StepAnswer), "a lone step raises rather than answers")
        assert isinstance(answer, StepAnswer)  # for mypy; the invariant above always runs
        return answer

    @staticmethod
    def coalesce(steps: Sequence[SessionStep]) -> SessionSteps:
        """The steps of one shard as one operation (``actors.coalesce``)."""
        return SessionSteps(steps=tuple(steps))


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSteps(ShardOp[list["StepAnswer | Exception"]]):
    """Several steps in arrival order, one synced commit; per step its answer (or, for
    a step that raised, its exception)."""

    steps: tuple[SessionStep, ...]

    def apply(self, engine: AccountShard, env: Env) -> list[StepAnswer | Exception]:
        return run_steps(engine.core, self.steps)


def run_steps(core: ShardCore, steps: Sequence[SessionStep]) -> list[StepAnswer | Exception]:
    """``steps`` on one work and one commit; step by step if one of them raises."""
    if len(steps) > GROUP_STEPS_MAX:
        raise ValueError(f"{len(steps)} session steps in one group (at most {GROUP_STEPS_MAX})")
    work = Work(core)
    try:
        answers: list[StepAnswer | Exception] = [_step(core, work, s) for s in steps]
    except STORE_LOST:
        raise
    except Exception:
        if len(steps) == 1:
            raise
        return [_alone(core, step) for step in steps]  # isolate the step that raised
    work.commit()
    return answers


def _alone(core: ShardCore, step: SessionStep) -> StepAnswer | Exception:
    work = Work(core)
    try:
        answer = _step(core, work, step)
    except STORE_LOST:
        raise
    except Exception as exc:  # this step's own failure, answered to its caller only
        return exc
    work.commit()
    return answer


def _step(core: ShardCore, work: Work, step: SessionStep) -> StepAnswer:
    """Decide one step on the work (its effects staged, not yet committed)."""
    state = work.state(step.account_id)
    if state is None:
        return StepAnswer(Result.UNKNOWN_ACCOUNT, None, "")
    currency = state.account.currency
    existing = work.mark(step.request_id)
    if step.step == INITIAL:
        quote = _quote(core, step, state.account.plan_at(step.at_s))
        if isinstance(quote, str):
            return StepAnswer(Result.INVALID_ARGUMENT, None, currency, rating_failed=quote)
        requested = step.requested_units or DEFAULT_UNITS[_service_of(step)]
        out = session_initial(
            request_id=step.request_id, state=state, session_id=step.session_id, quote=quote,
            requested_units=requested, validity_s=core.session_validity_s, at_s=step.at_s,
            existing=existing, tariff=core.tariff, config=core.charging, now_s=step.now_s,
        )  # fmt: skip
    elif step.step == UPDATE:
        requested = step.requested_units
        before = state.reservations.get(step.session_id)
        if not requested and before is not None:
            requested = DEFAULT_UNITS.get(Service(before.quote.service), 1)
        out = session_update(
            request_id=step.request_id, state=state, session_id=step.session_id,
            used_units=step.used_units, requested_units=requested, at_s=step.at_s,
            existing=existing, tariff=core.tariff, config=core.charging, now_s=step.now_s,
        )  # fmt: skip
    elif step.step == TERMINATE:
        out = session_terminate(
            request_id=step.request_id, state=state, session_id=step.session_id,
            used_units=step.used_units, at_s=step.at_s, existing=existing,
            tariff=core.tariff, config=core.charging, now_s=step.now_s,
        )  # fmt: skip
    else:
        raise ValueError(f"session step {step.step!r}")
    work.apply(out.effects, step.account_id)
    return _answer(out, currency)


def _answer(out: Outcome[Grant], currency: str) -> StepAnswer:
    return StepAnswer(out.result, out.receipt, currency)


def _service_of(step: SessionStep) -> Service:
    if step.service is None:
        raise ValueError("an initial session step names its service")
    return step.service


def _quote(core: ShardCore, step: SessionStep, account_plan: str | None) -> Quote | str:
    """The session's quote from rating a prototype record, or why it cannot be rated."""
    plan_id = step.plan_id if step.plan_from_entry else account_plan
    catalogue = core.catalogue
    if plan_id is None:
        return "no plan"
    if catalogue is None:
        return "no catalogue"
    rated = price_enquiry(
        catalogue, plan_id=plan_id, service=_service_of(step),
        units=step.requested_units or DEFAULT_UNITS[_service_of(step)], at_s=step.at_s,
        called_number=step.called_number, rating_group=step.rating_group,
        content_item_id=step.content_item_id, roaming=step.roaming,
    )  # fmt: skip
    if isinstance(rated, RatingFailure):
        return f"{rated.reason}: {rated.detail}"
    return Quote(
        service=_service_of(step).value, usage_class=rated.usage_class,
        price_key=rated.price_key, plan_id=rated.plan_id, plan_version=rated.plan_version,
    )  # fmt: skip
