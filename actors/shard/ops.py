"""The operations of an account shard: the closed set a caller may ask of one.

Each is a frozen value (see :mod:`actors.op`); ``apply`` names the engine
method that runs it, which takes the operation itself. Writes are idempotent
by their ``request_id`` (usage by each ``record_id``); reads marked ``read``
see committed state only and run beside writes. A single-account write answers
:class:`Applied`: the core's outcome and the account's state after the call,
so a caller never reads the account again to answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from actors.op import Env, Op, R
from actors.shard.outbox import Forward
from billing.accounts import Account, AccountState, AccountStatus, Outcome, Result, SponsorRule
from billing.billrun.run import ExtraCharge
from billing.charging.batch import Charge
from billing.invoice import Invoice
from billing.notifications import Notification
from billing.ocs.session import BalanceView, Grant, Quote
from billing.ocs.session import Refund as RefundReceipt
from billing.rated import RatedRecord
from billing.settlement import ProviderSettlement
from billing.sponsor import SponsoredUsage
from billing.switching import KEEP_LIMIT, Switch
from billing.tariffs.model import PaymentMode
from billing.writeoff import WriteoffOutcome

if TYPE_CHECKING:
    from actors.shard.audit import AuditProgress, AuditReport
    from actors.shard.billing import BillRunReport
    from actors.shard.column_usage import ChargeColumnsAnswer
    from actors.shard.duties import DutyStep, ShardInspection
    from actors.shard.engine import AccountShard
    from actors.shard.usage import ChargeBatchAnswer
    from billing.charging.batch import TopUp as TopUpReceipt

T = TypeVar("T")

__all__ = [
    "AckForwards",
    "AddSponsorRule",
    "AgeInvoices",
    "Applied",
    "ApplyForwards",
    "ApplyPayment",
    "Audit",
    "AuditStep",
    "BalanceCheck",
    "BillRun",
    "ChangePlan",
    "ChargeBatch",
    "ChargeColumns",
    "CountRefusedForwards",
    "CreateAccount",
    "CreateAccounts",
    "Debit",
    "DirectDebit",
    "EndSponsorRule",
    "ExpireReservations",
    "GetAccount",
    "GetInvoice",
    "InspectShard",
    "ListInvoices",
    "ListNotifications",
    "MissingAccounts",
    "MoveNumber",
    "NotificationsSince",
    "PendingForwards",
    "Refund",
    "RefusedForwards",
    "RetryRefusedForwards",
    "ReversePayment",
    "RunDuties",
    "SessionInitial",
    "SessionTerminate",
    "SessionUpdate",
    "SetCreditLimit",
    "SetStatus",
    "SettlementReport",
    "ShardOp",
    "SwitchMode",
    "TopUp",
    "UsagePage",
]


@dataclass(frozen=True, slots=True)
class Applied(Generic[T]):
    """A single-account write's answer: the core's outcome and the account after it
    (``None`` when there is no such account)."""

    outcome: Outcome[T]
    state: AccountState | None

    @property
    def result(self) -> Result:
        return self.outcome.result

    @property
    def receipt(self) -> T | None:
        return self.outcome.receipt


class ShardOp(Op[R]):
    """An operation of an account shard."""

    __slots__ = ()
    kind: ClassVar[str] = "account"

    def apply(self, engine: AccountShard, env: Env) -> R:
        raise NotImplementedError


# -- queries of committed state (run beside writes) ------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetAccount(ShardOp["AccountState | None"]):
    """The account's committed state (its history is empty: see :class:`UsagePage`)."""

    account_id: str
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> AccountState | None:
        return engine.queries.get_account(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsagePage(ShardOp[tuple[list[Charge], int]]):
    """Up to ``limit`` usage lines before ledger row ``before_seq`` (None: the newest),
    newest first, and the row to continue before (0: none older). It reads at most
    ``rows_max`` ledger rows, so a page can be short (even empty) with more to come."""

    account_id: str
    limit: int = 50
    before_seq: int | None = None
    rows_max: int = 10_000
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> tuple[list[Charge], int]:
        return engine.queries.usage_page(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListInvoices(ShardOp[list[Invoice]]):
    account_id: str
    open_only: bool = False
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> list[Invoice]:
        return engine.queries.list_invoices(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class GetInvoice(ShardOp["Invoice | None"]):
    invoice_id: str
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> Invoice | None:
        return engine.queries.get_invoice(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListNotifications(ShardOp[list[Notification]]):
    """The account's newest ``limit`` notifications, oldest of them first."""

    account_id: str
    limit: int = 50
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> list[Notification]:
        return engine.queries.list_notifications(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationsSince(ShardOp[list[tuple[int, Notification]]]):
    """Notifications stored after shard sequence ``seq`` (the server stream's poll)."""

    seq: int
    limit: int = 1000
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> list[tuple[int, Notification]]:
        return engine.queries.notifications_since(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementReport(ShardOp[tuple[ProviderSettlement, ...]]):
    cycle_id: str
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> tuple[ProviderSettlement, ...]:
        return engine.queries.settlement_report(self)


# -- reads under the lock ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceCheck(ShardOp[Outcome[BalanceView]]):
    """Balances by book, what can be spent, bundles left for ``quote``."""

    account_id: str
    at_s: int
    quote: Quote | None = None

    def apply(self, engine: AccountShard, env: Env) -> Outcome[BalanceView]:
        return engine.accounts.balance_check(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit(ShardOp["AuditReport"]):
    """Replay every account's stored ledger against its stored state, in one call
    (long on a large shard: a cluster audits in :class:`AuditStep` s)."""

    def apply(self, engine: AccountShard, env: Env) -> AuditReport:
        return engine.audit.audit(self)


# One audit step reads at most this many rows, for at most this long (~50 ms: the
# unit's writes wait at most that for it; measured in docs/operations-notes.md).
AUDIT_STEP_ROWS_MAX = 5_000
AUDIT_STEP_BUDGET_S = 0.05
# Accounts one step of a bill run in steps bills (BillRun.accounts_max): one commit,
# ~15-30 ms here (docs/operations-notes.md).
BILL_RUN_STEP_ACCOUNTS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditStep(ShardOp["AuditProgress"]):
    """One bounded step of :class:`Audit`, resuming ``progress`` (None: from the start):
    it stops after ``rows_max`` rows or ``budget_s`` seconds, whichever comes first.
    Ask again with the answer until it is ``done``; its ``report`` is then the audit's."""

    progress: AuditProgress | None = None
    rows_max: int = AUDIT_STEP_ROWS_MAX
    budget_s: float = AUDIT_STEP_BUDGET_S

    def apply(self, engine: AccountShard, env: Env) -> AuditProgress:
        return engine.audit.audit_step(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class MissingAccounts(ShardOp[tuple[str, ...]]):
    """Those of ``account_ids`` this shard has no account for (``reconcile`` asks with
    the accounts the directories route here: a missing one is data lost or emptied)."""

    account_ids: tuple[str, ...]
    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> tuple[str, ...]:
        return engine.queries.missing_accounts(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingForwards(ShardOp[list[Forward]]):
    limit: int = 1000

    def apply(self, engine: AccountShard, env: Env) -> list[Forward]:
        return engine.usage.pending_forwards(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CountRefusedForwards(ShardOp[int]):
    """How many refused sponsor charges the shard keeps (a scan of ``x/``)."""

    read: ClassVar[bool] = True

    def apply(self, engine: AccountShard, env: Env) -> int:
        return engine.usage.count_refused(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedForwards(ShardOp[list[tuple[SponsoredUsage, Result]]]):
    """Sponsor charges received here and refused, in store order, after the row key
    ``after`` (:func:`actors.shard.usage.refused_key` of a page's last one)."""

    limit: int = 1000
    after: bytes | None = None

    def apply(self, engine: AccountShard, env: Env) -> list[tuple[SponsoredUsage, Result]]:
        return engine.usage.refused_forwards(self)


# -- accounts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccount(ShardOp[Applied[Account]]):
    request_id: str
    account: Account

    def apply(self, engine: AccountShard, env: Env) -> Applied[Account]:
        return engine.accounts.create_account(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccounts(ShardOp[list[Result]]):
    """Many :class:`CreateAccount` s in one commit (a bulk load: a migration from another
    system, test data); each is idempotent by its own ``request_id``. One result each."""

    creates: Sequence[CreateAccount]

    def apply(self, engine: AccountShard, env: Env) -> list[Result]:
        return engine.accounts.create_accounts(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetCreditLimit(ShardOp[Applied[Account]]):
    """``credit_limit`` None: unlimited (postpaid without a cap)."""

    request_id: str
    account_id: str
    credit_limit: int | None

    def apply(self, engine: AccountShard, env: Env) -> Applied[Account]:
        return engine.accounts.set_credit_limit(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetStatus(ShardOp[Applied[Account]]):
    """Block, unblock or close (``billing.account_status``), with a reason, at ``at_s``."""

    request_id: str
    account_id: str
    status: AccountStatus
    reason: str = ""
    at_s: int = 0

    def apply(self, engine: AccountShard, env: Env) -> Applied[Account]:
        return engine.accounts.set_status(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveNumber(ShardOp[Applied[Account]]):
    """Keep the account's own list of numbers in step with a number move: ``gained``
    adds ``msisdn``, else takes it off (the directory is the authority)."""

    request_id: str
    account_id: str
    msisdn: str
    gained: bool

    def apply(self, engine: AccountShard, env: Env) -> Applied[Account]:
        return engine.accounts.move_number(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddSponsorRule(ShardOp[Applied[SponsorRule]]):
    """Append ``rule`` to the account's sponsor rules (``billing.sponsor_rules``);
    ``at_from_clock``: its ``start_s`` is the service's now."""

    request_id: str
    account_id: str
    rule: SponsorRule
    at_from_clock: bool = False

    def apply(self, engine: AccountShard, env: Env) -> Applied[SponsorRule]:
        return engine.accounts.add_sponsor_rule(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndSponsorRule(ShardOp[Applied[SponsorRule]]):
    """End the account's rule ``rule_id`` at ``end_s``; ``at_from_clock``: end_s is now."""

    request_id: str
    account_id: str
    rule_id: str
    end_s: int
    at_from_clock: bool = False

    def apply(self, engine: AccountShard, env: Env) -> Applied[SponsorRule]:
        return engine.accounts.end_sponsor_rule(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangePlan(ShardOp[Applied[Account]]):
    """Move to ``plan_id`` from ``at_s``; ``at_from_clock``: at_s is the service's now."""

    request_id: str
    account_id: str
    plan_id: str
    at_s: int
    at_from_clock: bool = False

    def apply(self, engine: AccountShard, env: Env) -> Applied[Account]:
        return engine.accounts.change_plan(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopUp(ShardOp["Applied[TopUpReceipt]"]):
    """Money onto the account; ``currency`` empty: the account's own."""

    request_id: str
    account_id: str
    amount: int
    currency: str
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> Applied[TopUpReceipt]:
        return engine.accounts.top_up(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchMode(ShardOp[Applied[Switch]]):
    """A switch to prepaid issues its interim invoice in the same batch."""

    request_id: str
    account_id: str
    to_mode: PaymentMode
    at_s: int
    credit_limit: int | Any | None = KEEP_LIMIT

    def apply(self, engine: AccountShard, env: Env) -> Applied[Switch]:
        return engine.accounts.switch_mode(self)


# -- online charging ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInitial(ShardOp[Applied[Grant]]):
    """``validity_s`` 0: the shard's configured Validity-Time. ``now_s`` is the service's
    clock the grant's validity runs on (None: the event time ``at_s``)."""

    request_id: str
    account_id: str
    session_id: str
    quote: Quote
    requested_units: int
    at_s: int
    validity_s: int = 0
    now_s: int | None = None

    def apply(self, engine: AccountShard, env: Env) -> Applied[Grant]:
        return engine.accounts.session_initial(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionUpdate(ShardOp[Applied[Grant]]):
    request_id: str
    account_id: str
    session_id: str
    used_units: int
    requested_units: int
    at_s: int
    now_s: int | None = None

    def apply(self, engine: AccountShard, env: Env) -> Applied[Grant]:
        return engine.accounts.session_update(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTerminate(ShardOp[Applied[Grant]]):
    request_id: str
    account_id: str
    session_id: str
    used_units: int
    at_s: int
    now_s: int | None = None

    def apply(self, engine: AccountShard, env: Env) -> Applied[Grant]:
        return engine.accounts.session_terminate(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund(ShardOp[Applied[RefundReceipt]]):
    request_id: str
    account_id: str
    amount: int
    service: str
    reason_ref: str
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> Applied[RefundReceipt]:
        return engine.accounts.refund(self)


@dataclass(frozen=True, slots=True)
class Debit:
    """A direct debit's answer: the charge row and the prepaid balance right after it,
    both as first decided (a retry gets them back unchanged)."""

    charge: Charge
    balance_after: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectDebit(ShardOp[Applied[Debit]]):
    """An immediate online event, idempotent by the rated record's ``record_id``."""

    account_id: str
    rated: RatedRecord
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> Applied[Debit]:
        return engine.usage.direct_debit(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireReservations(ShardOp[dict[str, tuple[str, ...]]]):
    """Release every reservation whose validity ended by ``at_s``, exactly once."""

    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> dict[str, tuple[str, ...]]:
        return engine.duties.expire_reservations(self)


# -- usage ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeBatch(ShardOp["ChargeBatchAnswer"]):
    """Charge rated records, ``(account_id, rated)`` pairs, in one commit; the host
    delivers the answer's sponsor ``forwards`` to their shards."""

    items: Sequence[tuple[str, RatedRecord]]
    at_s: int
    offline: bool = True

    def apply(self, engine: AccountShard, env: Env) -> ChargeBatchAnswer:
        return engine.usage.charge_batch(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeColumns(ShardOp["ChargeColumnsAnswer"]):
    """Charge the rows of a bulk batch in one commit: ``usage`` (``billing.columns.USAGE_SCHEMA``)
    and ``rated`` (the column rater's ``RATED_SCHEMA`` rows, each rated) row for row, each
    charged to ``accounts`` (a string column); the answer is columns
    (``actors.shard.column_usage``), and the host delivers its sponsor ``forwards``."""

    usage: pa.RecordBatch
    rated: pa.RecordBatch
    accounts: pa.Array
    at_s: int
    offline: bool = True

    def apply(self, engine: AccountShard, env: Env) -> ChargeColumnsAnswer:
        return engine.usage.charge_columns(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyForwards(ShardOp[list[tuple[str, Result]]]):
    """Sponsor charges forwarded by other shards (idempotent by forward id)."""

    forwards: Sequence[Forward]
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> list[tuple[str, Result]]:
        return engine.usage.apply_forwards(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AckForwards(ShardOp[int]):
    forward_ids: Sequence[str]

    def apply(self, engine: AccountShard, env: Env) -> int:
        return engine.usage.ack_forwards(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRefusedForwards(ShardOp[list[tuple[str, Result]]]):
    """Refused sponsor charges again: those of ``record_ids`` (None: all)."""

    record_ids: Sequence[str] | None
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> list[tuple[str, Result]]:
        return engine.usage.retry_refused_forwards(self)


# -- billing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRun(ShardOp["BillRunReport"]):
    """Bill ``cycle_id`` for ``account_ids`` (None: every account of the shard), from the
    one after account ``after`` (None: from the first). With ``accounts_max`` (0: no
    bound) it bills at most that many, in one commit, and answers where to resume
    (``resume_after``): a bill run over a large shard is then a series of short calls."""

    cycle_id: str
    at_s: int
    account_ids: Sequence[str] | None = None
    extras: Mapping[str, Sequence[ExtraCharge]] | None = None
    after: str | None = None
    accounts_max: int = 0

    def apply(self, engine: AccountShard, env: Env) -> BillRunReport:
        return engine.billing.bill_run(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyPayment(ShardOp["WriteoffOutcome | Result"]):
    request_id: str
    account_id: str
    amount: int
    currency: str
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> WriteoffOutcome | Result:
        return engine.billing.apply_payment(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReversePayment(ShardOp["WriteoffOutcome | Result"]):
    request_id: str
    account_id: str
    payment_id: str
    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> WriteoffOutcome | Result:
        return engine.billing.reverse_payment(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgeInvoices(ShardOp[int]):
    """Mark open invoices due by ``at_s`` overdue, one notice each."""

    at_s: int

    def apply(self, engine: AccountShard, env: Env) -> int:
        return engine.duties.age_invoices(self)


# -- time-driven duties and the inspection (actors.shard.duties) --------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDuties(ShardOp["DutyStep"]):
    """One bounded step of the shard's duties at ``now_s`` (its owner's clock): expire the
    due reservations among the next ``accounts_max`` accounts holding any, age up to
    ``invoices_max`` invoices due; the answer says whether more is left."""

    now_s: int
    accounts_max: int = 200
    invoices_max: int = 200

    def apply(self, engine: AccountShard, env: Env) -> DutyStep:
        return engine.duties.run_duties(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectShard(ShardOp["ShardInspection"]):
    """What the duties should have done by ``now_s`` and did not (a reservation held
    ``late_s`` past its validity, an invoice open ``late_s`` past due, an overdue
    invoice without reminder, a session open over ``session_age_max_s``)."""

    now_s: int
    late_s: int = 60
    session_age_max_s: int = 86_400

    def apply(self, engine: AccountShard, env: Env) -> ShardInspection:
        return engine.duties.inspect(self)
