"""The bulk path's pipeline: directory, rating, claims and charging of distinct rows, as columns.

:func:`settle_rows` is :func:`actors.partition.settle.settle` for rows of a
``billing.columns.USAGE_SCHEMA`` batch, with the same outcomes per record:

1. the directory is asked once per distinct number (``actors.partition.lookup``):
   an unknown number or a time without a subscription is a reject;
2. the other rows are rated in one ``billing.column_rating.rate_columns`` call,
   which equals the scalar rater row for row; its rejects are rejects here;
3. every rated row's id is claimed on the partition the id's hash names, one
   column batch per owner, concurrently (``actors.partition.claim_columns``);
4. the claimed rows are charged on the shard of the account holding each id,
   one ``ChargeColumns`` per shard, concurrently; a plain charge is taken from
   the answer columns for all its rows at once, anything else (a replay, a
   refusal, a sponsored line) goes through the per-record mapping
   (``results.shard_outcome``).

Rows are never turned into Python objects here, except the few that take a
per-record branch. Nothing here writes but the claims; the caller stages
rejects and counters and commits (:mod:`actors.partition.bulk`).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from actors.partition.claim_columns import CONFLICT, claim_batch
from actors.partition.lookup import look_up
from actors.partition.outcomes import Outcomes
from actors.partition.results import (
    RecordResult,
    RecordStatus,
    conflict_of,
    rejected_id,
    shard_outcome,
)
from actors.routing import partition_id, shard_of
from actors.shard.column_usage import RESULTS
from actors.shard.ops import ChargeColumns
from billing.accounts import Result
from billing.column_rating import rate_columns
from billing.columns import TIERS_FIELD
from billing.invariant import invariant
from billing.rated import RejectReason

if TYPE_CHECKING:
    from actors.partition.engine import RatingPartition

__all__ = ["BulkReach", "settle_rows"]

_CHARGED_CODE = RESULTS.index(Result.CHARGED)


class BulkReach(Protocol):
    """How a bulk batch reaches other units (``actors.partition.ops.Reach``)."""

    def claim_columns(self, batches: dict[str, pa.RecordBatch]) -> dict[str, Any]:
        """Per owner partition, its claim answers, or the exception it raised."""
        ...

    def charge_columns(self, calls: dict[str, ChargeColumns]) -> dict[str, Any]:
        """Per shard, its ``ChargeColumnsAnswer``, or the exception it raised."""
        ...


class _Answer(NamedTuple):
    """One row of a shard's answer columns, as ``results.ShardResult`` reads it."""

    record_id: str
    result: Result
    account_id: str
    amount: int
    bundle_units: int
    sponsored_by: str | None
    replay_of: Result | None


def settle_rows(
    partition: RatingPartition,
    usage: pa.RecordBatch,
    place: NDArray[np.int64],
    out: Outcomes,
    reach: BulkReach,
    at_s: int,
) -> None:
    """Settle every row of ``usage`` (distinct ids): the outcome of row ``k`` goes to item
    ``place[k]`` of ``out``."""
    if usage.num_rows == 0:
        return
    ids = usage.column("record_id")
    t_s = usage.column("record_opening_time_s").to_numpy()
    who = look_up(partition.directory, usage.column("served_msisdn"), t_s)
    unknown = who.account < 0
    no_plan = ~unknown & (who.plan < 0)
    for k in np.flatnonzero(unknown | no_plan).tolist():
        number = who.msisdns[who.msisdn[k]]
        if unknown[k]:
            detail = f"msisdn {number} is not in the directory of {partition.unit_id}"
            detail += partition.misrouted(number)
            reason = RejectReason.UNKNOWN_ACCOUNT
        else:
            detail = f"no subscription of {number} active at {t_s[k]}"
            reason = RejectReason.NO_PLAN
        out.put(int(place[k]), rejected_id(ids[k].as_py(), reason, detail))
    to_rate = np.flatnonzero(~unknown & ~no_plan)
    if len(to_rate) == 0:
        return
    part = usage if len(to_rate) == usage.num_rows else usage.take(pa.array(to_rate))
    rated = rate_columns(part, partition.catalogue, who.plan_column(to_rate)).batch
    if TIERS_FIELD.name in rated.schema.names:
        # Charging reprices each record's tiers from its price key and never reads these
        # (billing.columns); converting the list column costs more than repricing.
        rated = rated.drop_columns([TIERS_FIELD.name])
    reasons = rated.column("reject_reason")
    failed = reasons.is_valid().to_numpy(zero_copy_only=False)
    if failed.any():
        details = rated.column("reject_detail")
        for k in np.flatnonzero(failed).tolist():
            reason = RejectReason(reasons[k].as_py())
            item = int(place[to_rate[k]])
            out.put(
                item, rejected_id(part.column("record_id")[k].as_py(), reason, details[k].as_py())
            )
        ok = np.flatnonzero(~failed)
        part, rated = part.take(pa.array(ok)), rated.take(pa.array(ok))
        to_rate = to_rate[ok]
    accounts = pa.DictionaryArray.from_arrays(
        pa.array(who.account[to_rate]), pa.array(who.accounts, pa.string())
    )
    _claim_and_charge(partition, part, rated, accounts, place[to_rate], out, reach, at_s)


def _owners(partition: RatingPartition, ids: pa.Array) -> NDArray[np.int64]:
    """The index of the partition owning each id's claim (``routing.partition_of_record``)."""
    partitions = partition.config.partitions
    if partitions is None:
        return np.full(len(ids), -1, np.int64)
    crc = zlib.crc32
    return np.fromiter((crc(r.encode()) % partitions for r in ids.to_pylist()), np.int64, len(ids))


def _claim_and_charge(
    partition: RatingPartition,
    usage: pa.RecordBatch,
    rated: pa.RecordBatch,
    accounts: pa.DictionaryArray,
    items: NDArray[np.int64],
    out: Outcomes,
    reach: BulkReach,
    at_s: int,
) -> None:
    """Claims of the rated rows, then one charge per shard (module docstring, 3. and 4.)."""
    claims = claim_batch(usage, pc.cast(accounts, pa.string()))
    owner = _owners(partition, usage.column("record_id"))
    groups: dict[str, NDArray[np.intp]] = {}
    for code in np.unique(owner).tolist():
        unit = partition.unit_id if code < 0 else partition_id(code)
        groups[unit] = np.flatnonzero(owner == code)
    batches = {
        unit: claims if len(rows) == claims.num_rows else claims.take(pa.array(rows))
        for unit, rows in groups.items()
    }
    local = batches.pop(partition.unit_id, None)
    answers = reach.claim_columns(batches) if batches else {}
    if local is not None:
        try:
            answers[partition.unit_id] = partition.claim_columns(local)
        except Exception as exc:  # as a claim on another partition that did not answer
            answers[partition.unit_id] = exc
    billed = rated.column("billed_units").to_numpy()
    holder: list[Any] = [None] * usage.num_rows
    ready = np.zeros(usage.num_rows, np.bool_)
    ids = usage.column("record_id")
    for unit, rows in groups.items():
        found = answers.get(unit)
        if not isinstance(found, pa.RecordBatch):
            detail = f"claims on {unit}: {type(found).__name__}: {found}"
            for k in rows.tolist():
                result = RecordResult(
                    ids[k].as_py(), RecordStatus.UNAVAILABLE, "claim_unavailable", detail
                )
                out.put(int(items[k]), (result, None, None, None))
            continue
        invariant(found.num_rows == len(rows), f"{unit} answered {found.num_rows} claims")
        outcome = found.column("outcome").to_numpy()
        held_by = found.column("holder").to_pylist()
        differ = found.column("field")
        for n, k in enumerate(rows.tolist()):
            if outcome[n] == CONFLICT:
                settled = conflict_of(ids[k].as_py(), int(billed[k]), differ[n].as_py(), held_by[n])
                out.put(int(items[k]), settled)
            else:
                holder[k] = held_by[n]
                ready[k] = True
    _charge(partition, usage, rated, holder, ready, items, out, reach, at_s)


def _charge(
    partition: RatingPartition,
    usage: pa.RecordBatch,
    rated: pa.RecordBatch,
    holder: list[Any],
    ready: NDArray[np.bool_],
    items: NDArray[np.int64],
    out: Outcomes,
    reach: BulkReach,
    at_s: int,
) -> None:
    """One ``ChargeColumns`` per shard of the holders' accounts; their answers into ``out``."""
    rows = np.flatnonzero(ready)
    if len(rows) == 0:
        return
    memo = partition.shard_memo
    if len(memo) > 1_000_000:
        memo.clear()
    shards = partition.config.shards
    shard_names: list[str] = []
    for account_id in (holder[k] for k in rows.tolist()):
        shard = memo.get(account_id)
        if shard is None:
            shard = memo[account_id] = shard_of(account_id, shards)
        shard_names.append(shard)
    names = np.array(shard_names)
    calls: dict[str, ChargeColumns] = {}
    members: dict[str, NDArray[np.intp]] = {}
    for shard in dict.fromkeys(shard_names):  # in order of first appearance, as ``settle``
        group = rows[names == shard]
        picked = pa.array(group)
        whole = len(group) == usage.num_rows
        calls[shard] = ChargeColumns(
            usage=usage if whole else usage.take(picked),
            rated=rated if whole else rated.take(picked),
            accounts=pa.array([holder[k] for k in group.tolist()], pa.string()),
            at_s=at_s,
        )
        members[shard] = group
    answers = reach.charge_columns(calls)
    billed = rated.column("billed_units").to_numpy()
    for shard, group in members.items():
        answer = answers.get(shard)
        batch = getattr(answer, "batch", None)
        if not isinstance(batch, pa.RecordBatch):
            detail = f"{shard}: {type(answer).__name__}: {answer}"
            for k in group.tolist():
                result = RecordResult(
                    usage.column("record_id")[k].as_py(),
                    RecordStatus.UNAVAILABLE,
                    "shard_unavailable",
                    detail,
                )
                out.put(int(items[k]), (result, None, None, None))
            continue
        _answered(calls[shard], batch, group, billed, items, out)


def _answered(
    call: ChargeColumns,
    answer: pa.RecordBatch,
    group: NDArray[np.intp],
    billed: NDArray[np.int64],
    items: NDArray[np.int64],
    out: Outcomes,
) -> None:
    """A shard's answer columns onto the outcomes of its rows (as ``settle`` maps them)."""
    invariant(answer.num_rows == len(group), f"shard answered {answer.num_rows}/{len(group)}")
    ids = call.usage.column("record_id")
    invariant(
        pc.all(pc.equal(answer.column("record_id"), ids)).as_py() is not False,
        "shard answered other record ids",
    )
    result = answer.column("result").indices.to_numpy()
    sponsored = answer.column("sponsored_by").is_valid().to_numpy(zero_copy_only=False)
    plain = (result == _CHARGED_CODE) & ~sponsored
    accounts = answer.column("account_id")
    if plain.any():
        at = np.flatnonzero(plain)
        names = accounts.dictionary.to_pylist()
        codes = out.account_codes(names)[accounts.indices.to_numpy()[at]]
        out.charged(
            items[group[at]],
            answer.column("amount").to_numpy()[at],
            codes,
            billed[group[at]],
            answer.column("bundle_units").to_numpy()[at],
        )
    if plain.all():
        return
    for n in np.flatnonzero(~plain).tolist():
        row = {name: answer.column(name)[n].as_py() for name in answer.schema.names}
        replay_of = row["replay_of"]
        stub = _Answer(
            row["record_id"],
            Result(row["result"]),
            row["account_id"],
            row["amount"],
            row["bundle_units"],
            row["sponsored_by"],
            None if replay_of is None else Result(replay_of),
        )
        k = int(group[n])
        out.put(
            int(items[k]),
            shard_outcome(stub.record_id, int(billed[k]), stub, row["sponsor_amount"]),
        )
