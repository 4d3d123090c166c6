"""What a partition answers per record, and how a shard's answer maps onto it.

:class:`RecordStatus` and :class:`RecordResult` are the partition's per-record
outcome (the first six statuses are ``RecordStatus`` of usage.proto).
:data:`Settled` is a record's outcome inside a call: its result, what it counts
as (:data:`RATED`, :data:`REJECTED`, :data:`DUPLICATES`, or ``None`` for a
retryable result that is not counted), the reject-store kind and reason code to
store it under. :func:`from_shard` maps an account shard's per-record answer
(:class:`ShardResult`, a ``billing.charging.batch.Charge``) onto it; :class:`Tally`
adds up the counter deltas of one call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, Protocol

from actors.partition.claims import Claim
from actors.partition.rejects import RejectEntry, RejectKind
from billing.accounts import Result
from billing.invariant import invariant
from billing.preprocess import Reconciliation
from billing.rated import RatedRecord, RejectReason
from billing.readers import Reject
from billing.records import UsageRecord

__all__ = [
    "DUPLICATES",
    "RATED",
    "REJECTED",
    "RETRYABLE",
    "ChargeFn",
    "ChargeOnly",
    "Reach",
    "RecordResult",
    "RecordStatus",
    "Settled",
    "ShardResult",
    "Tally",
    "apply_row",
    "conflict",
    "conflict_of",
    "from_shard",
    "reader_reject",
    "reject_entry",
    "rejected",
    "rejected_id",
    "shard_outcome",
]


class RecordStatus(enum.StrEnum):
    """Per-record outcome; the first six are ``RecordStatus`` of usage.proto."""

    CHARGED = "charged"  # also sponsored usage (charged_account_id is the sponsor)
    DUPLICATE = "duplicate"
    EXISTS_WITH_DIFFERENT_CONTENT = "exists_with_different_content"  # reason: the field
    REJECTED = "rejected"  # stored in the reject store with reason
    CHARGED_AS_DEBT = "charged_as_debt"
    CHARGED_OVER_LIMIT = "charged_over_limit"
    UNAVAILABLE = "unavailable"  # retry: the shard did not answer (gRPC UNAVAILABLE)
    RESOURCE_EXHAUSTED = "resource_exhausted"  # retry later: the reject store is full
    NOT_FOUND = "not_found"  # reprocess only: no such record in the reject store


RETRYABLE: Final = frozenset({RecordStatus.UNAVAILABLE, RecordStatus.RESOURCE_EXHAUSTED})

_CHARGED: Final = {
    Result.CHARGED: RecordStatus.CHARGED,
    Result.SPONSORED: RecordStatus.CHARGED,
    Result.CHARGED_TO_DEBT: RecordStatus.CHARGED_AS_DEBT,
    Result.CHARGED_OVER_LIMIT: RecordStatus.CHARGED_OVER_LIMIT,
}
_CONFLICT_PREFIX: Final = "exists_with_different_"


class RecordResult(NamedTuple):
    """What happened to one submitted item. A NamedTuple rather than a frozen
    dataclass because one is built per record on the hot path (~10x cheaper).

    ``amount`` is micro-units charged to ``charged_account_id`` (0 when a
    bundle covered it); for sponsored usage that account is the sponsor and the
    amount is the sponsor's price for the record, as the subscriber's shard
    decided it (the subscriber's own line is zero-money). ``billed_units`` are
    the rated units after increments. ``replay``: this is a repeat of a record
    charged before, answered with its stored result (status and amount as first
    decided); nothing was charged again.
    """

    record_id: str
    status: RecordStatus
    reason: str = ""
    detail: str = ""
    amount: int = 0
    charged_account_id: str = ""
    billed_units: int = 0
    bundle_units: int = 0
    replay: bool = False

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


class ShardResult(Protocol):
    """What the partition reads of a shard's per-record answer (``charging.batch.Charge``)."""

    @property
    def record_id(self) -> str: ...
    @property
    def result(self) -> Result: ...
    @property
    def account_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def bundle_units(self) -> int: ...


ChargeFn = Callable[[str, list[tuple[str, RatedRecord]]], Sequence[ShardResult]]
"""``charge(shard_unit_id, [(account_id, rated), ...])`` -> one answer per item, in order,
returned only after the shard's synced commit; raises if the shard cannot answer."""


class Reach(Protocol):
    """How a partition's batch reaches other units (``actors.partition.ops.Reach``)."""

    def charge(self, shard: str, items: list[tuple[str, RatedRecord]]) -> Sequence[ShardResult]:
        """See :data:`ChargeFn`."""
        ...

    def claim(self, claims: dict[str, list[Claim]]) -> dict[str, Any]:
        """Claim record ids on the partitions that own them: per partition, its answers
        (``list[Claimed]``) or the exception it raised."""
        ...


class ChargeOnly:
    """A :class:`Reach` from a charge function alone, for a partition that owns the claims of
    every id it sees (one partition, as in tests); a claim elsewhere is a bug."""

    __slots__ = ("charge",)

    def __init__(self, charge: ChargeFn) -> None:
        self.charge = charge

    def claim(self, claims: dict[str, list[Claim]]) -> dict[str, Any]:
        raise AssertionError(f"claims on other partitions without a host: {sorted(claims)}")


# What a settled record counts as (None: retryable, not counted).
RATED, REJECTED, DUPLICATES = 1, 2, 3
Settled = tuple[RecordResult, int | None, RejectKind | None, str | None]


class Tally:
    """Counter deltas of one call, per source (``None``: totals only)."""

    __slots__ = ("by_source",)

    def __init__(self) -> None:
        self.by_source: dict[str | None, list[int]] = {}

    def add(self, source_id: str | None, kind: int, received: int = 1, step: int = 1) -> None:
        row = self.by_source.get(source_id)
        if row is None:
            row = self.by_source[source_id] = [0, 0, 0, 0]
        row[0] += received
        row[kind] += step


def apply_row(counts: Reconciliation, row: list[int]) -> Reconciliation:
    return counts.add(received=row[0], rated=row[1], rejected=row[2], duplicates=row[3])


def reader_reject(reject: Reject) -> Settled:
    """A line a file reader could not read: rejected and stored as ``malformed``."""
    record_id = reject.record_id or f"{reject.source_file}:{reject.line}"
    result = RecordResult(record_id, RecordStatus.REJECTED, reject.reason.value, reject.message)
    return result, REJECTED, RejectKind.LINE, reject.code.value


def rejected(record: UsageRecord, reason: RejectReason, detail: str) -> Settled:
    return rejected_id(record.record_id, reason, detail)


def rejected_id(record_id: str, reason: RejectReason, detail: str) -> Settled:
    """:func:`rejected` of the record with id ``record_id`` (the bulk path's)."""
    result = RecordResult(record_id, RecordStatus.REJECTED, reason.value, detail)
    return result, REJECTED, RejectKind.RECORD, None


def conflict(rated: RatedRecord, field: str, account_id: str) -> Settled:
    """A record whose id was used before with other content (``field`` differs)."""
    return conflict_of(rated.record.record_id, rated.billed_units, field, account_id)


def conflict_of(record_id: str, billed_units: int, field: str, account_id: str) -> Settled:
    """:func:`conflict` from the two values of the rated record it reads (the bulk path's)."""
    detail = f"record_id already used with a different {field}"
    result = RecordResult(
        record_id,
        RecordStatus.EXISTS_WITH_DIFFERENT_CONTENT,
        field,
        detail,
        0,
        account_id,
        billed_units,
    )
    return result, REJECTED, RejectKind.CONFLICT, field


def from_shard(rated: RatedRecord, answer: ShardResult, sponsor_amount: int = 0) -> Settled:
    """The outcome of ``rated`` from its shard's ``answer``; ``sponsor_amount`` is what the
    sponsor of a sponsored line is charged (the shard's ``sponsor_amounts``)."""
    return shard_outcome(rated.record.record_id, rated.billed_units, answer, sponsor_amount)


def shard_outcome(
    record_id: str, billed_units: int, answer: ShardResult, sponsor_amount: int = 0
) -> Settled:
    """:func:`from_shard` from the two values of the rated record it reads (the bulk path's,
    whose rated records are columns)."""
    invariant(answer.record_id == record_id, f"shard answered {answer.record_id} for {record_id}")
    code = answer.result
    status = _CHARGED.get(code)
    replay = code is Result.DUPLICATE
    if replay:
        # A repeat answers the stored result, as first decided, flagged as a replay.
        first = getattr(answer, "replay_of", None)
        status = _CHARGED.get(first, RecordStatus.DUPLICATE) if first else RecordStatus.DUPLICATE
    if status is not None:
        sponsor = getattr(answer, "sponsored_by", None)
        result = RecordResult(
            record_id,
            status,
            "",
            f"sponsored by {sponsor}" if sponsor else "",
            sponsor_amount if sponsor else answer.amount,
            sponsor or answer.account_id,
            billed_units,
            answer.bundle_units,
            replay,
        )
        return result, DUPLICATES if replay else RATED, None, None
    if code.value.startswith(_CONFLICT_PREFIX):
        field = code.value.removeprefix(_CONFLICT_PREFIX)
        return conflict_of(record_id, billed_units, field, answer.account_id)
    detail = f"{answer.account_id or 'shard'} refused: {code.value}"
    result = RecordResult(
        record_id,
        RecordStatus.REJECTED,
        code.value,
        detail,
        0,
        answer.account_id,
        billed_units,
    )
    return result, REJECTED, RejectKind.RECORD, None


def reject_entry(
    kind: RejectKind,
    item: UsageRecord | Reject | None,
    result: RecordResult,
    code: str | None,
    at_s: int,
    source_id: str | None,
) -> RejectEntry:
    if isinstance(item, Reject):
        return RejectEntry(
            kind=kind,
            record_id=item.record_id,
            reason=result.reason,
            detail=result.detail,
            at_s=at_s,
            code=code,
            source_file=item.source_file,
            source_line=item.line,
            source_id=source_id,
            raw=item.raw,
        )
    invariant(item is not None, "a record reject needs its record")
    assert item is not None
    return RejectEntry(
        kind=kind,
        record_id=item.record_id,
        reason=result.reason if kind is RejectKind.RECORD else result.status.value,
        detail=result.detail,
        at_s=at_s,
        record=item,
        code=code,
        source_file=item.source_file,
        source_line=item.source_line,
        source_id=source_id,
    )
