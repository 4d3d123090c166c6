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

from actors.partition.claims import Claim, ClaimOutcome
from actors.partition.directory import Directory
from actors.partition.results import (
    RATED,
    Reach,
    RecordResult,
    RecordStatus,
    Settled,
    conflict,
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
    reach: Reach,
    claim_owner: Callable[[str], str],
    directory: Directory,
    catalogue: Catalogue,
    shards: int,
    shard_memo: dict[str, str],
    unit_id: str,
    misrouted: Callable[[str], str],
) -> list[Settled]:
    """Directory, rating, claims and charging of distinct records; one outcome per record.

    Every rated record's id is claimed on the partition that owns it
    (``claim_owner``; :mod:`actors.partition.claims`) before anything is charged;
    a claimed id charges the account it was first claimed for. ``shard_memo``
    caches ``shard_of(account_id, shards)`` across calls (cleared past a million
    entries); ``misrouted(msisdn)`` explains an unknown msisdn that belongs to
    another partition.
    """
    out: list[Settled | None] = [None] * len(records)
    get_entry = directory.get
    plans: dict[str, str] = {}
    to_rate: list[UsageRecord] = []
    rate_index: list[int] = []
    accounts: list[str] = []
    for i, record in enumerate(records):
        entry = get_entry(record.served_msisdn)
        if entry is not None and entry.earlier:  # the number moved: its holder at the time
            entry = entry.at(record.record_opening_time_s)
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
    rated_ok: list[tuple[int, str, RatedRecord]] = []
    for i, account_id, outcome in zip(rate_index, accounts, outcomes, strict=True):
        if isinstance(outcome, RatingFailure):
            out[i] = rejected(outcome.record, outcome.reason, outcome.detail)
        else:
            rated_ok.append((i, account_id, outcome))
    groups: dict[str, tuple[list[tuple[str, RatedRecord]], list[int]]] = {}
    memo = shard_memo
    if len(memo) > 1_000_000:
        memo.clear()
    for i, account_id, rated in _claimed(rated_ok, reach, claim_owner, out):
        shard = memo.get(account_id)
        if shard is None:
            shard = memo[account_id] = shard_of(account_id, shards)
        group = groups.get(shard)
        if group is None:
            group = groups[shard] = ([], [])
        group[0].append((account_id, rated))
        group[1].append(i)
    for shard, (items, indices) in groups.items():
        try:
            answers = reach.charge(shard, items)
        except Exception as exc:  # any failure to answer: retryable, nothing acknowledged
            detail = f"{shard}: {type(exc).__name__}: {exc}"
            for i in indices:
                result = RecordResult(
                    records[i].record_id, RecordStatus.UNAVAILABLE, "shard_unavailable", detail
                )
                out[i] = (result, None, None, None)
            continue
        invariant(len(answers) == len(items), f"{shard} answered {len(answers)}/{len(items)}")
        # What the sponsors of sponsored records are charged (actors.shard.usage).
        sponsor_amounts: dict[str, int] = getattr(answers, "sponsor_amounts", None) or {}
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
                        False,
                    ),
                )
                out[i] = (result, rated_kind, None, None)
            else:
                out[i] = from_shard(rated, answer, sponsor_amounts.get(record_id, 0))
    return out  # type: ignore[return-value]


def _claimed(
    rated: list[tuple[int, str, RatedRecord]],
    reach: Reach,
    claim_owner: Callable[[str], str],
    out: list[Settled | None],
) -> list[tuple[int, str, RatedRecord]]:
    """Claim every record's id on its owner partition; the records to charge, each with
    the account that holds its id. A conflicting id is refused here (``out``), and the
    records of an owner that did not answer are left ``unavailable`` (retryable)."""
    groups: dict[str, list[int]] = {}
    for n, (_, _, rated_record) in enumerate(rated):
        groups.setdefault(claim_owner(rated_record.record.record_id), []).append(n)
    claims = {
        owner: [
            Claim(rated[n][2].record.record_id, rated[n][2].record.content_key(), rated[n][1])
            for n in members
        ]
        for owner, members in groups.items()
    }
    answers = reach.claim(claims)
    ready: list[tuple[int, str, RatedRecord]] = []
    for owner, members in groups.items():
        found = answers.get(owner)
        if not isinstance(found, list):
            detail = f"claims on {owner}: {type(found).__name__}: {found}"
            for n in members:
                i, _, rated_record = rated[n]
                result = RecordResult(
                    rated_record.record.record_id,
                    RecordStatus.UNAVAILABLE,
                    "claim_unavailable",
                    detail,
                )
                out[i] = (result, None, None, None)
            continue
        invariant(len(found) == len(members), f"{owner} answered {len(found)} claims")
        for n, claimed in zip(members, found, strict=True):
            i, _, rated_record = rated[n]
            if claimed.outcome is ClaimOutcome.CONFLICT:
                out[i] = conflict(rated_record, claimed.field, claimed.account_id)
            else:
                ready.append((i, claimed.account_id, rated_record))
    ready.sort(key=lambda item: item[0])
    return ready
