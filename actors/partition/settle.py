"""The rating pipeline of a partition: directory, rating, charging, per-record outcomes.

:func:`settle` takes distinct usage records and settles each: an unknown
msisdn or a missing plan is rejected, the rest are rated in one batch, grouped
by the account shard of their subscriber's account and charged with one
``charge`` call per shard; a shard's answers map onto :data:`Settled`
outcomes (:func:`~actors.partition.results.from_shard`). A shard that raises
leaves its records ``unavailable`` (retryable, not counted). Nothing here
writes: :class:`~actors.partition.engine.RatingPartition` stages and commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from actors.partition.directory import Directory
from actors.partition.results import (
    RATED,
    ChargeFn,
    RecordResult,
    RecordStatus,
    Settled,
    from_shard,
    rejected,
)
from actors.routing import shard_of
from billing.accounts import Result
from billing.invariant import invariant
from billing.rated import RatedRecord, RatingFailure, RejectReason
from billing.rating import Catalogue, rate_batch
from billing.records import UsageRecord

__all__ = ["settle"]


def settle(
    records: Sequence[UsageRecord],
    *,
    charge: ChargeFn,
    directory: Directory,
    catalogue: Catalogue,
    shards: int,
    shard_memo: dict[str, str],
    unit_id: str,
    misrouted: Callable[[str], str],
) -> list[Settled]:
    """Directory, rating and charging of distinct records; one outcome per record.

    ``shard_memo`` caches ``shard_of(account_id, shards)`` across calls (cleared
    past a million entries); ``misrouted(msisdn)`` explains an unknown msisdn
    that belongs to another partition.
    """
    out: list[Settled | None] = [None] * len(records)
    get_entry = directory.get
    plans: dict[str, str] = {}
    to_rate: list[UsageRecord] = []
    rate_index: list[int] = []
    accounts: list[str] = []
    for i, record in enumerate(records):
        entry = get_entry(record.served_msisdn)
        if entry is None:
            where = misrouted(record.served_msisdn)
            detail = f"msisdn {record.served_msisdn} is not in the directory of {unit_id}"
            out[i] = rejected(record, RejectReason.UNKNOWN_ACCOUNT, detail + where)
            continue
        plan = entry.plan_at(record.record_opening_time_s)
        if plan is None:
            detail = f"no subscription of {record.served_msisdn} active at "
            out[i] = rejected(
                record, RejectReason.NO_PLAN, detail + str(record.record_opening_time_s)
            )
            continue
        plans[record.record_id] = plan
        to_rate.append(record)
        rate_index.append(i)
        accounts.append(entry.account_id)
    outcomes = rate_batch(to_rate, catalogue, lambda r: plans[r.record_id])
    groups: dict[str, tuple[list[tuple[str, RatedRecord]], list[int]]] = {}
    memo = shard_memo
    if len(memo) > 1_000_000:
        memo.clear()
    for i, account_id, outcome in zip(rate_index, accounts, outcomes, strict=True):
        if isinstance(outcome, RatingFailure):
            out[i] = rejected(outcome.record, outcome.reason, outcome.detail)
            continue
        shard = memo.get(account_id)
        if shard is None:
            shard = memo[account_id] = shard_of(account_id, shards)
        group = groups.get(shard)
        if group is None:
            group = groups[shard] = ([], [])
        group[0].append((account_id, outcome))
        group[1].append(i)
    for shard, (items, indices) in groups.items():
        try:
            answers = charge(shard, items)
        except Exception as exc:  # any failure to answer: retryable, nothing acknowledged
            detail = f"{shard}: {type(exc).__name__}: {exc}"
            for i in indices:
                result = RecordResult(
                    records[i].record_id, RecordStatus.UNAVAILABLE, "shard_unavailable", detail
                )
                out[i] = (result, None, None, None)
            continue
        invariant(len(answers) == len(items), f"{shard} answered {len(answers)}/{len(items)}")
        charged, rated_kind, status = Result.CHARGED, RATED, RecordStatus.CHARGED
        new_result = tuple.__new__  # RecordResult(...) without its Python-level __new__
        for (_, rated), i, answer in zip(items, indices, answers, strict=True):
            record_id = rated.record.record_id
            # The common case inline (it runs once per record); the rest in from_shard.
            if (
                answer.result is charged
                and answer.record_id == record_id
                and getattr(answer, "sponsored_by", None) is None
            ):
                result = new_result(
                    RecordResult,
                    (
                        record_id,
                        status,
                        "",
                        "",
                        answer.amount,
                        answer.account_id,
                        rated.billed_units,
                        answer.bundle_units,
                    ),
                )
                out[i] = (result, rated_kind, None, None)
            else:
                out[i] = from_shard(rated, answer)
    return out  # type: ignore[return-value]
