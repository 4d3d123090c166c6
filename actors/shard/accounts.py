"""Account operations on a shard: lifecycle, plan changes, top-ups, mode switches, online
sessions, refunds."""

from __future__ import annotations

from actors.shard.base import ShardBase
from actors.shard.codec import key_after
from actors.shard.work import RESERVATION_PREFIX, Work, prefix_end
from actors.store.codec import decode_u64
from billing.accounts import (
    Account,
    AccountStatus,
    Outcome,
    Result,
    create_account,
    set_credit_limit,
    set_status,
)
from billing.billrun.run import billing_account, interim_invoice
from billing.charging.batch import TopUp, top_up
from billing.cycle import cycle_containing
from billing.ocs.session import (
    BalanceView,
    Grant,
    Quote,
    Refund,
    balance_check,
    expire,
    refund,
    session_initial,
    session_terminate,
    session_update,
)
from billing.plan_change import change_plan
from billing.switching import KEEP_LIMIT, Switch, switch_mode
from billing.tariffs.model import PaymentMode

__all__ = ["ShardAccounts"]


class ShardAccounts(ShardBase):
    """Single-account operations, each one synced batch."""

    # -- accounts ----------------------------------------------------------------------

    def create_account(self, *, request_id: str, account: Account) -> Outcome[Account]:
        """Create ``account`` (idempotent by ``request_id``; the account id must be new)."""
        work = Work(self)
        out = create_account(
            request_id=request_id,
            account=account,
            current=work.state(account.account_id),
            existing=work.mark(request_id),
        )
        work.apply(out.effects, account.account_id)
        work.commit()
        return out

    def set_credit_limit(
        self, *, request_id: str, account_id: str, credit_limit: int | None
    ) -> Outcome[Account]:
        return self._single(
            account_id,
            lambda work, state: set_credit_limit(
                request_id=request_id,
                state=state,
                credit_limit=credit_limit,
                existing=work.mark(request_id),
            ),
        )

    def set_status(
        self, *, request_id: str, account_id: str, status: AccountStatus
    ) -> Outcome[Account]:
        return self._single(
            account_id,
            lambda work, state: set_status(
                request_id=request_id, state=state, status=status, existing=work.mark(request_id)
            ),
        )

    def change_plan(
        self,
        *,
        request_id: str,
        account_id: str,
        plan_id: str,
        at_s: int,
        at_from_clock: bool = False,
    ) -> Outcome[Account]:
        """Move the account to ``plan_id`` from ``at_s`` on (``billing.plan_change``), the
        plan checked against this shard's catalogue; idempotent by ``request_id``."""
        return self._single(
            account_id,
            lambda work, state: change_plan(
                request_id=request_id, state=state, plan_id=plan_id, at_s=at_s,
                existing=work.mark(request_id), catalogue=self.catalogue,
                at_from_clock=at_from_clock,
            ),
        )  # fmt: skip

    def top_up(
        self, *, request_id: str, account_id: str, amount: int, currency: str, at_s: int
    ) -> Outcome[TopUp]:
        return self._single(
            account_id,
            lambda work, state: top_up(
                request_id=request_id, state=state, amount=amount, currency=currency,
                at_s=at_s, existing=work.mark(request_id), config=self.charging,
            ),
        )  # fmt: skip

    def switch_mode(
        self,
        *,
        request_id: str,
        account_id: str,
        to_mode: PaymentMode,
        at_s: int,
        credit_limit: int | None = KEEP_LIMIT,
    ) -> Outcome[Switch]:
        """Switch the payment mode; a switch to prepaid issues its interim invoice in
        the same batch (``billing.billrun.run.interim_invoice``)."""
        work = Work(self)
        state = work.state(account_id)
        if state is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        out = switch_mode(
            request_id=request_id, state=state, to_mode=to_mode, at_s=at_s,
            existing=work.mark(request_id), config=self.charging, credit_limit=credit_limit,
        )  # fmt: skip
        work.apply(out.effects, account_id)
        switch = out.receipt
        if out.result is Result.SWITCHED and switch is not None and switch.interim is not None:
            new = work.state(account_id)
            assert new is not None  # set just above
            view = billing_account(
                new, cycle=cycle_containing(at_s, self.billing.tz), catalogue=self.catalogue
            )
            bill = interim_invoice(
                switch.interim, view, work.billing_state(account_id), config=self.billing
            )
            for invoice in bill.invoices:
                work.put_invoice(invoice, (f"switch:{request_id}",))
            if bill.state is not None:
                work.put_billing_state(account_id, bill.state)
            work.post(bill.entries, account_id)
            for note in bill.notifications:
                work.put_notification(note)
        work.commit()
        return out

    # -- online charging ----------------------------------------------------------------

    def session_initial(
        self, *, request_id: str, account_id: str, session_id: str, quote: Quote,
        requested_units: int, validity_s: int, at_s: int,
    ) -> Outcome[Grant]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: session_initial(
                request_id=request_id, state=state, session_id=session_id, quote=quote,
                requested_units=requested_units, validity_s=validity_s, at_s=at_s,
                existing=work.mark(request_id), tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def session_update(
        self, *, request_id: str, account_id: str, session_id: str, used_units: int,
        requested_units: int, at_s: int,
    ) -> Outcome[Grant]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: session_update(
                request_id=request_id, state=state, session_id=session_id,
                used_units=used_units, requested_units=requested_units, at_s=at_s,
                existing=work.mark(request_id), tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def session_terminate(
        self, *, request_id: str, account_id: str, session_id: str, used_units: int, at_s: int
    ) -> Outcome[Grant]:
        return self._single(
            account_id,
            lambda work, state: session_terminate(
                request_id=request_id, state=state, session_id=session_id,
                used_units=used_units, at_s=at_s, existing=work.mark(request_id),
                tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def expire_reservations(self, at_s: int) -> dict[str, tuple[str, ...]]:
        """Release every reservation whose validity ended by ``at_s``, exactly once
        (one commit per chunk of accounts); returns the sessions expired per account."""
        expired: dict[str, tuple[str, ...]] = {}
        start = RESERVATION_PREFIX
        end = prefix_end(RESERVATION_PREFIX)
        while True:
            chunk = list(self.store.scan(start, end, limit=self.chunk_accounts))
            if not chunk:
                return expired
            start = key_after(chunk[-1][0])
            work = Work(self)
            for key, raw in chunk:
                if decode_u64(raw) > at_s:
                    continue
                account_id = key[len(RESERVATION_PREFIX) :].decode()
                state = work.state(account_id)
                if state is None:
                    continue
                out = expire(state, at_s=at_s)
                work.apply(out.effects, account_id)
                if out.receipt:
                    expired[account_id] = out.receipt
            work.commit()

    def refund(
        self, *, request_id: str, account_id: str, amount: int, service: str, reason_ref: str,
        at_s: int,
    ) -> Outcome[Refund]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: refund(
                request_id=request_id, state=state, amount=amount, service=service,
                reason_ref=reason_ref, at_s=at_s, existing=work.mark(request_id),
                config=self.charging,
            ),
        )  # fmt: skip

    def balance_check(
        self, account_id: str, *, at_s: int, quote: Quote | None = None
    ) -> Outcome[BalanceView]:
        """Read-only: balances by book, what can be spent, bundles left for ``quote``."""
        row = self._load(account_id)
        if row is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        return balance_check(
            row.state, at_s=at_s, tariff=self.tariff, config=self.charging, quote=quote
        )

    def balance(self, account_id: str, *, at_s: int) -> BalanceView | None:
        return self.balance_check(account_id, at_s=at_s).receipt
