"""Bill runs and payments on an account shard (one commit per chunk of accounts); invoice
ageing is a duty of the shard's owner (``actors.shard.duties``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from actors.shard import ops
from actors.shard.core import ShardCore
from actors.shard.keys import ACCOUNT_PREFIX, account_key, key_after, prefix_end
from actors.shard.work import Work
from billing.accounts import Result
from billing.billrun.run import BillResult, bill_run, billing_account, invoice_id_for
from billing.cycle import monthly_cycle
from billing.limits import over_balance_limit
from billing.writeoff import Payment, WriteoffOutcome, apply_payment, reverse_payment

__all__ = ["BillRunReport", "ShardBilling"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRunReport:
    """What one :class:`~actors.shard.ops.BillRun` did. ``refused`` is set (and nothing
    was done) when the cycle has not ended at ``at_s``. ``resume_after`` is set when a run
    bounded by ``accounts_max`` left accounts to bill: the next step starts after it."""

    cycle_id: str
    accounts: int = 0
    results: Mapping[str, int] = field(default_factory=dict)
    invoiced: int = 0
    entries: int = 0
    commits: int = 0
    refused: str | None = None
    resume_after: str | None = None

    def plus(self, step: BillRunReport) -> BillRunReport:
        """This report and the next ``step``'s, summed (``resume_after`` is the step's)."""
        results = dict(self.results)
        for result, count in step.results.items():
            results[result] = results.get(result, 0) + count
        return BillRunReport(
            cycle_id=self.cycle_id,
            accounts=self.accounts + step.accounts,
            results=results,
            invoiced=self.invoiced + step.invoiced,
            entries=self.entries + step.entries,
            commits=self.commits + step.commits,
            refused=self.refused or step.refused,
            resume_after=step.resume_after,
        )


class ShardBilling:
    """The bill run and the payment side of receivables."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    # -- billing -----------------------------------------------------------------------

    def _account_chunks(
        self, account_ids: Sequence[str] | None, after: str | None, accounts_max: int
    ) -> Iterator[list[str]]:
        size = accounts_max or self.core.chunk_accounts
        if account_ids is not None:
            if after is not None:
                account_ids = account_ids[list(account_ids).index(after) + 1 :]
            for i in range(0, len(account_ids), size):
                yield list(account_ids[i : i + size])
            return
        start = ACCOUNT_PREFIX if after is None else key_after(account_key(after))
        end = prefix_end(ACCOUNT_PREFIX)
        while True:
            keys = [key for key, _ in self.core.store.scan(start, end, limit=size)]
            if not keys:
                return
            start = key_after(keys[-1])
            yield [key[len(ACCOUNT_PREFIX) :].decode() for key in keys]

    def bill_run(self, op: ops.BillRun) -> BillRunReport:
        """Bill ``cycle_id`` for the given accounts (default: all of the shard, read by
        key prefix in chunks, one commit per chunk), from the one after ``op.after``; with
        ``op.accounts_max``, one chunk of at most that many. Idempotent per (account, cycle)."""
        cycle_id, at_s, account_ids, extras = op.cycle_id, op.at_s, op.account_ids, op.extras
        year, month = (int(part) for part in cycle_id.split("-"))
        cycle = monthly_cycle(year, month, self.core.bill_config.tz)
        if at_s < cycle.end_s:
            return BillRunReport(cycle_id=cycle_id, refused="cycle_not_ended")
        results: dict[str, int] = {}
        accounts = invoiced = entries = commits = 0
        resume_after = last = None
        for chunk in self._account_chunks(account_ids, op.after, op.accounts_max):
            if op.accounts_max and commits:
                resume_after = last  # more to bill: the next step starts after it
                break
            last = chunk[-1]
            work = Work(self.core)
            items = []
            for account_id in chunk:
                state = work.state(account_id)
                if state is None:
                    results["unknown_account"] = results.get("unknown_account", 0) + 1
                    continue
                view = billing_account(
                    state,
                    cycle=cycle,
                    catalogue=self.core.catalogue,
                    extras=tuple((extras or {}).get(account_id, ())),
                )
                stored = work.invoice(account_id, invoice_id_for(account_id, cycle_id))
                items.append(
                    (view, work.billing_state(account_id), None if stored is None else stored[0])
                )
            outcomes, summary = bill_run(items, cycle, at_s=at_s, config=self.core.bill_config)
            for out in outcomes:
                if out.result is BillResult.REPLAYED:
                    continue
                for invoice in out.invoices:
                    work.put_invoice(invoice)
                if out.state is not None:
                    work.put_billing_state(out.account_id, out.state)
                work.post(out.entries, out.account_id)
                for note in out.notifications:
                    work.put_notification(note)
            work.commit()
            commits += 1
            accounts += summary.accounts
            invoiced += summary.invoiced
            entries += summary.entries
            for result, count in summary.results.items():
                results[result.value] = results.get(result.value, 0) + count
        return BillRunReport(
            cycle_id=cycle_id,
            accounts=accounts,
            results=results,
            invoiced=invoiced,
            entries=entries,
            commits=commits,
            resume_after=resume_after,
        )

    def apply_payment(self, op: ops.ApplyPayment) -> WriteoffOutcome | Result:
        """Pay ``account_id``'s open invoices oldest first (excess to credit), in ``currency``
        (empty: the account's own). Returns
        ``Result.UNKNOWN_ACCOUNT`` / ``CURRENCY_MISMATCH`` when it cannot apply."""
        account_id = op.account_id
        work = Work(self.core)
        state = work.state(account_id)
        if state is None:
            return Result.UNKNOWN_ACCOUNT
        existing = work.mark(op.request_id)
        currency = op.currency or state.account.currency
        if existing is None and currency != state.account.currency:
            return Result.CURRENCY_MISMATCH
        # The excess of a payment becomes credit: the book may not pass the bound.
        if existing is None and over_balance_limit(state.credit + op.amount):
            return Result.BALANCE_LIMIT
        out = apply_payment(
            request_id=op.request_id, account_id=account_id, amount=op.amount,
            currency=currency, at_s=op.at_s, invoices=work.invoices_of(account_id),
            existing=existing,
        )  # fmt: skip
        work.apply_writeoff(out, account_id)
        work.commit()
        return out

    def reverse_payment(self, op: ops.ReversePayment) -> WriteoffOutcome | Result:
        """Undo payment ``payment_id`` exactly (idempotent by ``request_id``)."""
        request_id, account_id, payment_id, at_s = (
            op.request_id,
            op.account_id,
            op.payment_id,
            op.at_s,
        )
        work = Work(self.core)
        state = work.state(account_id)
        if state is None:
            return Result.UNKNOWN_ACCOUNT
        payment_mark = work.mark(payment_id)
        if payment_mark is not None and not isinstance(payment_mark.result, Payment):
            payment_mark = None  # the id names another kind of operation
        out = reverse_payment(
            request_id=request_id, account_id=account_id, payment_id=payment_id, at_s=at_s,
            payment_mark=payment_mark, invoices=work.invoices_of(account_id),
            credit_balance=state.credit, existing=work.mark(request_id),
        )  # fmt: skip
        work.apply_writeoff(out, account_id)
        work.commit()
        return out
