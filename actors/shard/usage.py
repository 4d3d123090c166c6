"""Usage on an account shard: batches of rated records, sponsor forwards, direct debits."""

from __future__ import annotations

from collections.abc import Iterable

from actors.shard import ops
from actors.shard.codec import decode_value, encode_value
from actors.shard.column_usage import ChargeColumnsAnswer, charge_columns
from actors.shard.core import ShardCore
from actors.shard.keys import (
    OUTBOX_PREFIX,
    REFUSED_PREFIX,
    SPONSOR_AMOUNT_PREFIX,
    answer_key,
    prefixed,
)
from actors.shard.ops import Applied
from actors.shard.outbox import Forward
from actors.shard.risk import assess_batch
from actors.shard.work import AccountView, MarkView, Work, without_rated
from actors.store.codec import decode_u64, encode_u64
from actors.store.storage import Batch
from billing.accounts import CHARGED_RESULTS, AccountState, Effects, Outcome, Result
from billing.charging.batch import Charge, charge, charge_batch
from billing.invariant import invariant
from billing.rated import RatedRecord
from billing.sponsor import SponsoredUsage, charge_sponsored, resolve_sponsor

__all__ = ["ChargeBatchAnswer", "ShardUsage", "refused_key"]


def refused_key(usage: SponsoredUsage) -> bytes:
    """The row of a refused sponsor charge (``x/<forward id>``): the cursor of a page."""
    return prefixed(REFUSED_PREFIX, Forward.of(usage).forward_id)


class ChargeBatchAnswer(list[Charge]):
    """The answer of :class:`~actors.shard.ops.ChargeBatch`: a list with one row per record,
    in order (``row.result`` is the per-record result), ``forwards``, the sponsor
    charges for other shards this batch stored in the outbox, for the host to deliver,
    and ``sponsor_amounts``: per record id of a sponsored line (charged now or replayed),
    what its sponsor is charged, the money the record's result reports."""

    def __init__(
        self,
        rows: Iterable[Charge],
        forwards: list[Forward],
        sponsor_amounts: dict[str, int] | None = None,
    ) -> None:
        super().__init__(rows)
        self.forwards = forwards
        self.sponsor_amounts = sponsor_amounts or {}

    @property
    def rows(self) -> list[Charge]:
        return list(self)


def _sponsor_prices(effects: Effects, into: dict[str, int]) -> None:
    """The sponsor prices an outcome decided, by record id: its forwards (sponsors on
    other shards, or refused here) and its sponsor lines charged on this shard."""
    for usage in effects.forwards:
        into[usage.rated.record.record_id] = usage.amount
    for row in effects.charges:
        if row.sponsor_of is not None:
            into[row.record_id] = row.amount


def _refusal(rated: RatedRecord, account_id: str, result: Result, at_s: int) -> Charge:
    record = rated.record
    return Charge(
        record.record_id, "usage:" + record.record_id, account_id, result, "",
        record.service.value, rated.usage_class, rated.units, 0, 0, 0, 0, 0, rated.currency, at_s,
    )  # fmt: skip


class ShardUsage:
    """Charging usage: the hot path (one synced batch per call)."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    # -- usage -------------------------------------------------------------------------

    def charge_batch(self, op: ops.ChargeBatch) -> ChargeBatchAnswer:
        """Charge rated records to their accounts (``(account_id, rated)`` pairs, the
        subscriber's account as the partition's directory resolved it): one commit."""
        items, at_s, offline = op.items, op.at_s, op.offline
        rows: list[Charge | None] = [None] * len(items)
        # Runs of records whose msisdns map to one account each (the core's directory):
        # a new run starts where an msisdn maps to another account than earlier in the run.
        segments: list[tuple[list[int], dict[str, str]]] = []
        indices: list[int] = []
        directory: dict[str, str] = {}
        for index, (account_id, rated) in enumerate(items):
            record = rated.record
            record_id = record.record_id
            if not record_id or "\x00" in record_id:
                rows[index] = _refusal(rated, account_id, Result.INVALID_ARGUMENT, at_s)
                continue
            msisdn = record.served_msisdn
            if directory.setdefault(msisdn, account_id) != account_id:
                segments.append((indices, directory))
                indices, directory = [], {msisdn: account_id}
            indices.append(index)
        if indices:
            segments.append((indices, directory))
        work = Work(self.core, track_marks=len(segments) > 1)
        # Every record's idempotency mark with one multi-get (issue #13, item 4).
        work.prefetch_marks([items[i][1].record.record_id for run, _ in segments for i in run])
        view, marks = AccountView(work), MarkView(work)
        decided: list[Effects] = []
        for indices, directory in segments:
            out = charge_batch(
                [items[i][1] for i in indices],
                accounts=view,
                directory=directory,
                marks=marks,
                tariff=self.core.tariff,
                config=self.core.charging,
                at_s=at_s,
                offline=offline,
            )
            work.apply(out.effects, None)
            decided.append(out.effects)
            for i, row in zip(indices, out.receipt or (), strict=True):
                rows[i] = row if row.rated is None else without_rated(row)
        assess_batch(self.core, work, items, rows)  # fraud rules, in the same batch (shard_risk)
        amounts = self._sponsor_amounts(work, rows, decided)  # type: ignore[arg-type]
        work.commit()
        invariant(None not in rows, "one row per record")
        return ChargeBatchAnswer(rows, work.forwards, amounts)  # type: ignore[arg-type]

    def _sponsor_amounts(
        self, work: Work, rows: list[Charge], decided: list[Effects]
    ) -> dict[str, int]:
        """What the sponsor of each sponsored line of ``rows`` is charged: for a line
        charged now the price this batch decided (``decided``: the batch's outcomes),
        staged under ``s/<record_id>`` in the same batch; for a replayed one the price
        stored then (none for a line stored before prices were kept: it answers 0, as it
        did then)."""
        sponsored = [row for row in rows if row.sponsored_by is not None]
        if not sponsored:
            return {}  # the common batch: one pass over its rows
        priced: dict[str, int] = {}
        for effects in decided:
            _sponsor_prices(effects, priced)
        found: dict[str, int] = {}
        for row in sponsored:
            record_id = row.record_id
            if row.result is Result.SPONSORED:
                amount = priced.get(record_id)
                if amount is None:  # the sponsor's half was found charged on this shard
                    mark = work.mark("sponsor:" + record_id)
                    invariant(mark is not None, f"sponsored {record_id} without its price")
                    assert mark is not None  # for mypy; the invariant above always runs
                    amount = mark.result.amount
                work.batch.put_data(prefixed(SPONSOR_AMOUNT_PREFIX, record_id), encode_u64(amount))
                found[record_id] = amount
            elif record_id not in found:
                raw = self.core.store.get_data(prefixed(SPONSOR_AMOUNT_PREFIX, record_id))
                if raw is not None:
                    found[record_id] = decode_u64(raw)
        return found

    def charge_columns(self, op: ops.ChargeColumns) -> ChargeColumnsAnswer:
        """The rows of a bulk batch, as columns (the seam: ``actors.shard.column_usage``)."""
        return charge_columns(self, op)

    def apply_forwards(self, op: ops.ApplyForwards) -> list[tuple[str, Result]]:
        """Apply sponsor charges forwarded by other shards (idempotent by forward id).

        A forward this shard cannot apply (unknown or closed sponsor, currency
        mismatch) is kept under ``x/`` with its result for revenue assurance
        (``refused_forwards``), so acknowledging it upstream loses nothing.
        """
        work = Work(self.core, track_marks=True)
        results = [(f.forward_id, self._apply_forward(work, f, op.at_s)) for f in op.forwards]
        work.commit()
        return results

    def _apply_forward(self, work: Work, forward: Forward, at_s: int) -> Result:
        """Stage one sponsor charge; a refusal is kept under ``x/``, a success clears it."""
        usage = forward.usage
        state = work.state(usage.sponsor_account_id)
        if state is None:
            result = Result.UNKNOWN_ACCOUNT
        else:
            out = charge_sponsored(
                state, usage, marks=MarkView(work), tariff=self.core.tariff,
                config=self.core.charging, at_s=at_s,
            )  # fmt: skip
            work.apply(out.effects, usage.sponsor_account_id)
            result = out.result
        key = refused_key(usage)
        if result in CHARGED_RESULTS or result is Result.DUPLICATE:
            if self.core.store.get(key) is not None:
                work.batch.delete(key)
        else:
            work.batch.put(key, encode_value((usage, result)))
        return result

    def retry_refused_forwards(self, op: ops.RetryRefusedForwards) -> list[tuple[str, Result]]:
        """Apply refused sponsor charges again (say, once the sponsor's account exists):
        those named by the subscriber's ``record_ids``, or all (None). One commit; a
        charged one leaves the ``x/`` store. Returns ``(record_id, result)`` per retry."""
        wanted = None if op.record_ids is None else set(op.record_ids)
        todo = [
            Forward.of(usage)
            for usage, _ in self.refused_forwards(ops.RefusedForwards(limit=100_000))
            if wanted is None or usage.rated.record.record_id in wanted
        ]
        if not todo:
            return []
        work = Work(self.core, track_marks=True)
        results = [
            (f.usage.rated.record.record_id, self._apply_forward(work, f, op.at_s)) for f in todo
        ]
        work.commit()
        return results

    def pending_forwards(self, op: ops.PendingForwards) -> list[Forward]:
        """Forwards stored in the outbox and not yet acknowledged, oldest id first."""
        return [
            Forward.of(decode_value(raw))
            for _, raw in self.core.store.scan_prefix(OUTBOX_PREFIX, limit=op.limit)
        ]

    def ack_forwards(self, op: ops.AckForwards) -> int:
        """Delete delivered forwards from the outbox (one commit); returns how many."""
        batch = Batch()
        count = 0
        for forward_id in op.forward_ids:
            key = prefixed(OUTBOX_PREFIX, forward_id)
            if self.core.store.get(key) is not None:
                batch.delete(key)
                count += 1
        if count:
            self.core.store.commit(batch)
        return count

    def count_refused(self, op: ops.CountRefusedForwards) -> int:
        """How many refused sponsor charges this shard keeps."""
        return sum(1 for _ in self.core.store.scan_prefix(REFUSED_PREFIX))

    def refused_forwards(self, op: ops.RefusedForwards) -> list[tuple[SponsoredUsage, Result]]:
        """Forwards received here that could not be charged, with their result."""
        start = REFUSED_PREFIX if op.after is None else op.after + b"\x00"
        out: list[tuple[SponsoredUsage, Result]] = []
        for key, raw in self.core.store.scan(start, limit=op.limit):
            if not key.startswith(REFUSED_PREFIX):
                break
            usage, result = decode_value(raw)
            out.append((usage, Result(result)))
        return out

    def direct_debit(self, op: ops.DirectDebit) -> Applied[ops.Debit]:
        """An immediate online event (content purchase, one-shot): never below the
        balance or over the limit; idempotent by ``record_id``. The answer's balance is
        stored beside the charge (``e/<record_id>``, same batch), so a retry gets the
        first answer back, not the balance of the moment."""
        core, rated, at_s = self.core, op.rated, op.at_s
        work = Work(core)
        state = work.state(op.account_id)
        if state is None:
            return Applied(Outcome(result=Result.UNKNOWN_ACCOUNT), None)
        others: dict[str, AccountState] = {}
        sponsorship = resolve_sponsor(state.account, rated, core.tariff)
        if sponsorship is not None:
            sponsor = work.state(sponsorship.sponsor_account_id)
            if sponsor is not None:
                others[sponsorship.sponsor_account_id] = sponsor
        out = charge(
            state, rated, marks=MarkView(work), tariff=core.tariff, config=core.charging,
            at_s=at_s, offline=False, others=others,
        )  # fmt: skip
        work.apply(out.effects, op.account_id)
        after = work.state(op.account_id)
        assert after is not None  # it existed above
        balance = after.prepaid
        key = answer_key(rated.record.record_id)
        if key is not None and out.effects.accounts:
            work.batch.put(key, encode_value(balance))  # charged now: its answer with it
        elif key is not None and out.result is Result.DUPLICATE:
            stored = core.store.get(key)
            if stored is not None:  # absent for a debit stored before answers were kept
                balance = decode_value(stored)
        work.commit()
        row = out.receipt
        debit = None if row is None else ops.Debit(charge=row, balance_after=balance)
        return Applied(
            Outcome(result=out.result, receipt=debit, effects=out.effects),
            work.state(op.account_id),
        )
