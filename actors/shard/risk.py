"""Fraud and risk rules on an account shard's charging path (``billing.fraud`` at the shard).

After :meth:`~actors.shard.usage.ShardUsage.charge_batch` has decided its rows,
:func:`assess_batch` applies every record the batch newly charged (charged,
charged to debt, charged over the limit, sponsored; not duplicates, not
refusals) to its account's :class:`~billing.fraud.RiskState` with
:func:`billing.fraud.evaluate`, in record order, and stages in the same
:class:`~actors.shard.work.Work`, hence in the same WriteBatch as the charges
and their marks:

- each risk state that changed, under ``k/<account>`` (:func:`encode_risk`);
- the notification of :func:`billing.fraud.notification_of`, stored like any
  reminder of the batch: for an ``alert``, ``fraud_alert`` (subject
  ``<rule>:<record_id>``) for the risk desk; for a ``block``,
  ``account_blocked`` (subject ``fraud:<rule>``) and the account's status set
  to ``blocked`` if it was active.

A shard without a fraud configuration (``ShardCore.fraud`` is ``None``, the
default) evaluates nothing and writes no ``k/`` key.

The decoded risk state rides on the account's row (``AccountRow.risk``), so
an account in the shard's cache costs no read; like the row, it reaches the
cache only after the batch committed, and a failed commit drops it.

Recovery contract
    Durable: the risk state of an account together with the charges that moved
    it (one atomic batch). Idempotent: a record is evaluated only in the call
    that charges it, i.e. that writes its mark; a resubmitted record is a
    duplicate and is not evaluated again, and a batch replayed after a crash
    finds either its marks and the risk states (all duplicates) or neither.

Every firing is also logged as a ``fraud_alert`` event with its deterministic
``key``. The log line is written before the commit, so a call whose commit
fails and is retried logs the same key again (the notification, stored with
the batch, is there once).

A block takes effect from the next call: records after the blocking one in
the same batch were already decided by ``charge_batch``. For offline records,
the usual case, that is the rule anyway: a blocked account's usage that already
happened is still charged; online charges (OCS, direct debits) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Final

import msgpack
import structlog

from actors.shard.codec import Pack
from actors.shard.keys import RISK_PREFIX, prefixed
from actors.store.codec import CodecError
from billing.accounts import CHARGED_RESULTS, AccountStatus, Result
from billing.charging.batch import Charge
from billing.fraud import Action, FraudAlert, RiskState, evaluate, notification_of
from billing.invariant import InvariantViolation, invariant
from billing.rated import RatedRecord

if TYPE_CHECKING:
    from actors.shard.core import ShardCore
    from actors.shard.work import Work

__all__ = ["assess_batch", "decode_risk", "encode_risk", "load_risk", "risk_key"]

log = structlog.get_logger("petribill.risk")

# The results of a record that this call charged (a repeat is DUPLICATE).
NEWLY_CHARGED: Final = CHARGED_RESULTS | {Result.SPONSORED}
# The stored layout lists RiskState's fields by position (the hot path: one row per
# account per batch); refuse to load if they moved. New fields go at the end, with a
# default, and rows written before them still read.
_FIELDS: Final = (
    "intl_starts_s", "velocity_fired_s", "cycle_id", "cycle_spend", "history", "spike_fired",
    "blocked",
)  # fmt: skip
if tuple(f.name for f in fields(RiskState)) != _FIELDS:  # pragma: no cover - billing.fraud changed
    raise ImportError(f"billing.fraud.RiskState fields changed: {fields(RiskState)}")


def _sorted(values: tuple[int, ...]) -> bool:
    return len(values) < 2 or list(values) == sorted(values)


def _packb(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def risk_key(account_id: str) -> bytes:
    """``k/<account>``: the account's risk state."""
    return prefixed(RISK_PREFIX, account_id)


def encode_risk(state: RiskState, pack: Pack = _packb) -> bytes:
    """``"K" | msgpack array`` of the fields in :data:`_FIELDS` order (~20 bytes)."""
    invariant(_sorted(state.intl_starts_s), "risk starts sorted")
    return b"K" + pack(
        (
            state.intl_starts_s, state.velocity_fired_s, state.cycle_id, state.cycle_spend,
            state.history, state.spike_fired, state.blocked,
        )
    )  # fmt: skip


def decode_risk(data: bytes) -> RiskState:
    """Inverse of :func:`encode_risk`; fields missing at the end take their defaults, a
    row with more fields than this code knows is refused."""
    if data[:1] != b"K":
        raise CodecError(f"not a risk state row: tag {data[:1]!r}")
    values = msgpack.unpackb(data[1:], use_list=False, raw=False)
    if not isinstance(values, tuple) or len(values) > len(_FIELDS):
        raise CodecError(f"risk state row is not an array of <= {len(_FIELDS)} fields")
    state = RiskState(**dict(zip(_FIELDS, values, strict=False)))
    invariant(_sorted(state.intl_starts_s), "risk starts sorted")
    return state


def load_risk(shard: ShardCore, account_id: str) -> RiskState:
    """The committed risk state of ``account_id`` (a fresh one if none is stored)."""
    raw = shard.store.get_data(risk_key(account_id))
    return RiskState() if raw is None else decode_risk(raw)


def assess_batch(
    shard: ShardCore,
    work: Work,
    items: Sequence[tuple[str, RatedRecord]],
    rows: Sequence[Charge | None],
) -> None:
    """Evaluate the records ``work`` newly charged and stage the risk states, the
    block notifications and the blocked statuses in it. Nothing without a config."""
    config = shard.fraud
    if config is None:
        return
    # The state each account had before this batch, from the memo on its row (the
    # committed one, carried by AccountRow.successor) or else from the store.
    before: dict[str, RiskState] = {}
    written = work.rows
    for (_, rated), row in zip(items, rows, strict=True):
        if row is None or row.result not in NEWLY_CHARGED:
            continue
        account_id = row.account_id
        account = written.get(account_id)
        if account is None:  # a charged record wrote its charge row, so its account row
            raise InvariantViolation(f"charged {row.record_id} without a row of {account_id}")
        state = account.risk
        if state is None:
            state = load_risk(shard, account_id)
        if account_id not in before:
            before[account_id] = state
        state, alerts = evaluate(config, state, rated, account_id=account_id, cycle_id=row.cycle_id)
        account.risk = state
        for alert in alerts:
            _act(work, alert, row.cycle_id)
    put, pack = work.batch.put_data, work.pack
    for account_id, old in before.items():
        new = written[account_id].risk
        if new is not None and new != old:
            # Under the k/ prefix: neither metadata nor an account row (put_data's contract).
            put(risk_key(account_id), encode_risk(new, pack))


def _act(work: Work, alert: FraudAlert, cycle_id: str) -> None:
    log.info(
        "fraud_alert",
        key=alert.key,
        rule=alert.rule.value,
        action=alert.action.value,
        account=alert.account_id,
        record=alert.record_id,
        detail=alert.detail,
    )
    work.put_notification(notification_of(alert, cycle_id=cycle_id))
    if alert.action is not Action.BLOCK:
        return
    state = work.state(alert.account_id)
    invariant(state is not None, f"fraud block of unknown account {alert.account_id}")
    assert state is not None  # for mypy; the invariant above always runs
    if state.account.status is AccountStatus.ACTIVE:
        # A closed account stays closed; a blocked one (credit limit) stays blocked.
        blocked = state.copy()
        blocked.account = replace(state.account, status=AccountStatus.BLOCKED)
        work.set_state(blocked)
