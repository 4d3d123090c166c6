"""Account operations on a shard: lifecycle, plan changes, top-ups, mode switches, online
sessions, refunds. Each takes its operation (``actors.shard.ops``) and is one synced batch.
Reservation expiry is a duty of the shard's owner (``actors.shard.duties``)."""

from __future__ import annotations

from actors.shard import ops
from actors.shard.core import ShardCore
from actors.shard.ops import Applied
from actors.shard.risk import encode_risk, load_risk, risk_key
from actors.shard.work import Work
from billing.account_status import change_status
from billing.accounts import (
    Account,
    AccountStatus,
    Outcome,
    Result,
    SponsorRule,
    create_account,
    move_number,
    set_credit_limit,
)
from billing.billrun.run import billing_account, interim_invoice
from billing.charging.batch import TopUp, top_up
from billing.cycle import cycle_containing
from billing.fraud import unblock
from billing.ocs.session import (
    BalanceView,
    Grant,
    Refund,
    balance_check,
    refund,
    session_initial,
    session_terminate,
    session_update,
)
from billing.plan_change import change_plan
from billing.sponsor_rules import add_sponsor_rule, end_sponsor_rule
from billing.switching import Switch, switch_mode

__all__ = ["ShardAccounts"]


class ShardAccounts:
    """Single-account operations, each one synced batch."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    # -- accounts ----------------------------------------------------------------------

    def create_account(self, op: ops.CreateAccount) -> Applied[Account]:
        """Create ``op.account`` (idempotent by ``request_id``; the account id must be new)."""
        work = Work(self.core)
        out = _create(work, op)
        work.commit()
        return Applied(out, work.state(op.account.account_id))

    def create_accounts(self, op: ops.CreateAccounts) -> list[Result]:
        """Every create of ``op`` as :meth:`create_account` would, in one commit."""
        work = Work(self.core)
        results = [_create(work, create).result for create in op.creates]
        work.commit()
        return results

    def set_credit_limit(self, op: ops.SetCreditLimit) -> Applied[Account]:
        return self.core.single(
            op.account_id,
            lambda work, state: set_credit_limit(
                request_id=op.request_id,
                state=state,
                credit_limit=op.credit_limit,
                existing=work.mark(op.request_id),
            ),
        )

    def move_number(self, op: ops.MoveNumber) -> Applied[Account]:
        return self.core.single(
            op.account_id,
            lambda work, state: move_number(
                request_id=op.request_id,
                state=state,
                msisdn=op.msisdn,
                gained=op.gained,
                existing=work.mark(op.request_id),
            ),
        )

    def set_status(self, op: ops.SetStatus) -> Applied[Account]:
        """Block, unblock or close (``billing.account_status``); an unblock also clears
        the fraud rules' block of the account's risk state, in the same batch."""
        core = self.core
        work = Work(core)
        state = work.state(op.account_id)
        if state is None:
            return Applied(Outcome(result=Result.UNKNOWN_ACCOUNT), None)
        out = change_status(
            request_id=op.request_id, state=state, status=op.status, reason=op.reason,
            at_s=op.at_s, existing=work.mark(op.request_id), config=core.charging,
        )  # fmt: skip
        work.apply(out.effects, op.account_id)
        if out.effects.accounts and op.status is AccountStatus.ACTIVE:
            self._clear_fraud_block(work, op.account_id)
        work.commit()
        return Applied(out, work.state(op.account_id))

    def _clear_fraud_block(self, work: Work, account_id: str) -> None:
        """An operator's unblock also ends a fraud rule's block (``billing.fraud.unblock``)."""
        row = work.rows[account_id]
        risk = row.risk if row.risk is not None else load_risk(self.core, account_id)
        if risk.blocked:
            row.risk = unblock(risk)
            work.batch.put_data(risk_key(account_id), encode_risk(row.risk, work.pack))

    def add_sponsor_rule(self, op: ops.AddSponsorRule) -> Applied[SponsorRule]:
        return self.core.single(
            op.account_id,
            lambda work, state: add_sponsor_rule(
                request_id=op.request_id, state=state, rule=op.rule,
                existing=work.mark(op.request_id), at_from_clock=op.at_from_clock,
            ),
        )  # fmt: skip

    def end_sponsor_rule(self, op: ops.EndSponsorRule) -> Applied[SponsorRule]:
        return self.core.single(
            op.account_id,
            lambda work, state: end_sponsor_rule(
                request_id=op.request_id, state=state, rule_id=op.rule_id, end_s=op.end_s,
                existing=work.mark(op.request_id), at_from_clock=op.at_from_clock,
            ),
        )  # fmt: skip

    def change_plan(self, op: ops.ChangePlan) -> Applied[Account]:
        """Move the account to ``plan_id`` from ``at_s`` on (``billing.plan_change``), the
        plan checked against this shard's catalogue; idempotent by ``request_id``."""
        return self.core.single(
            op.account_id,
            lambda work, state: change_plan(
                request_id=op.request_id, state=state, plan_id=op.plan_id, at_s=op.at_s,
                existing=work.mark(op.request_id), catalogue=self.core.catalogue,
                at_from_clock=op.at_from_clock,
            ),
        )  # fmt: skip

    def top_up(self, op: ops.TopUp) -> Applied[TopUp]:
        """Top up ``amount`` in ``currency`` (empty: the account's own)."""
        return self.core.single(
            op.account_id,
            lambda work, state: top_up(
                request_id=op.request_id, state=state, amount=op.amount,
                currency=op.currency or state.account.currency, at_s=op.at_s,
                existing=work.mark(op.request_id), config=self.core.charging,
            ),
        )  # fmt: skip

    def switch_mode(self, op: ops.SwitchMode) -> Applied[Switch]:
        """Switch the payment mode; a switch to prepaid issues its interim invoice in
        the same batch (``billing.billrun.run.interim_invoice``)."""
        core = self.core
        work = Work(core)
        account_id, at_s = op.account_id, op.at_s
        state = work.state(account_id)
        if state is None:
            return Applied(Outcome(result=Result.UNKNOWN_ACCOUNT), None)
        out = switch_mode(
            request_id=op.request_id, state=state, to_mode=op.to_mode, at_s=at_s,
            existing=work.mark(op.request_id), config=core.charging, credit_limit=op.credit_limit,
        )  # fmt: skip
        work.apply(out.effects, account_id)
        switch = out.receipt
        if out.result is Result.SWITCHED and switch is not None and switch.interim is not None:
            new = work.state(account_id)
            assert new is not None  # set just above
            view = billing_account(
                new, cycle=cycle_containing(at_s, core.bill_config.tz), catalogue=core.catalogue
            )
            bill = interim_invoice(
                switch.interim, view, work.billing_state(account_id), config=core.bill_config
            )
            for invoice in bill.invoices:
                work.put_invoice(invoice, (f"switch:{op.request_id}",))
            if bill.state is not None:
                work.put_billing_state(account_id, bill.state)
            work.post(bill.entries, account_id)
            for note in bill.notifications:
                work.put_notification(note)
        work.commit()
        return Applied(out, work.state(account_id))

    # -- online charging ----------------------------------------------------------------

    def session_initial(self, op: ops.SessionInitial) -> Applied[Grant]:
        core = self.core
        return core.single(
            op.account_id,
            lambda work, state: session_initial(
                request_id=op.request_id, state=state, session_id=op.session_id,
                quote=op.quote, requested_units=op.requested_units,
                validity_s=op.validity_s or core.session_validity_s, at_s=op.at_s,
                existing=work.mark(op.request_id), tariff=core.tariff, config=core.charging,
                now_s=op.now_s,
            ),
        )  # fmt: skip

    def session_update(self, op: ops.SessionUpdate) -> Applied[Grant]:
        core = self.core
        return core.single(
            op.account_id,
            lambda work, state: session_update(
                request_id=op.request_id, state=state, session_id=op.session_id,
                used_units=op.used_units, requested_units=op.requested_units, at_s=op.at_s,
                existing=work.mark(op.request_id), tariff=core.tariff, config=core.charging,
                now_s=op.now_s,
            ),
        )  # fmt: skip

    def session_terminate(self, op: ops.SessionTerminate) -> Applied[Grant]:
        core = self.core
        return core.single(
            op.account_id,
            lambda work, state: session_terminate(
                request_id=op.request_id, state=state, session_id=op.session_id,
                used_units=op.used_units, at_s=op.at_s, existing=work.mark(op.request_id),
                tariff=core.tariff, config=core.charging, now_s=op.now_s,
            ),
        )  # fmt: skip

    def refund(self, op: ops.Refund) -> Applied[Refund]:
        core = self.core
        return core.single(
            op.account_id,
            lambda work, state: refund(
                request_id=op.request_id, state=state, amount=op.amount, service=op.service,
                reason_ref=op.reason_ref, at_s=op.at_s, existing=work.mark(op.request_id),
                config=core.charging,
            ),
        )  # fmt: skip

    def balance_check(self, op: ops.BalanceCheck) -> Outcome[BalanceView]:
        """Read-only: balances by book, what can be spent, bundles left for ``quote``."""
        core = self.core
        row = core.load(op.account_id)
        if row is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        return balance_check(
            row.state, at_s=op.at_s, tariff=core.tariff, config=core.charging, quote=op.quote
        )


def _create(work: Work, op: ops.CreateAccount) -> Outcome[Account]:
    """Stage ``op``'s create in ``work`` (not committed)."""
    account_id = op.account.account_id
    out = create_account(
        request_id=op.request_id,
        account=op.account,
        current=work.state(account_id),
        existing=work.mark(op.request_id),
    )
    work.apply(out.effects, account_id)
    return out
