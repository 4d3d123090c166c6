"""The one table of RPCs: every ``petribill.v1`` method, what serves it, and who may call it.

Each :class:`Rpc` row names its method (``Service.Method``; the request and
response types and whether it streams come from the proto descriptors), the
roles that may call it, and what serves it:

- an RPC on one account shard is described by the row alone: ``op`` builds the
  engine operation from the request (``actors.shard.ops``), ``answer`` builds
  the response from the engine's answer; the account is the request field
  ``account``. An answer of ``None`` is NOT_FOUND; a write's refusal becomes
  its status (``cluster.backend.status``);
- anything else has a ``handler`` (``cluster.backend.accounts``, ``usage``,
  ``charging``, ``billing``, ``admin``): an async function of the cluster, the
  request and the time left (an async iterator for a server stream).

The gateway builds its servicers from this table (``cluster.gateway.servicers``),
checks each caller's role against ``roles`` and binds a ``selfcare`` token to
the request's ``account``; ``records`` names the repeated field the gateway's
admission counts (a repeated field's items, or the rows of an Arrow IPC
``bytes`` field); ``stream`` the admission class of a long-lived stream. The
SDK needs no table: its methods come from the same descriptors
(``cluster.client``). Adding an RPC is its ``.proto`` message and method, a row
here, and the engine operation it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from petribill.v1 import (
    accounts_pb2,
    admin_pb2,
    billing_pb2,
    charging_pb2,
    notifications_pb2,
    tariffs_pb2,
    usage_pb2,
)

from actors.op import Op
from actors.shard import ops
from actors.shard.ops import Applied
from billing.accounts import AccountState, AccountStatus
from cluster.api.errors import BackendError
from cluster.backend import (
    accounts,
    admin,
    billing,
    charging,
    inspect,
    settlement,
    sponsors,
    usage,
    usage_columns,
)
from cluster.backend.context import Cluster
from cluster.backend.convert import account_to_proto, balance_to_proto
from cluster.backend.status import raise_for
from cluster.security.roles import Role
from cluster.wire import WireError, payment_mode_from_proto

__all__ = ["PACKAGE", "RPCS", "SERVICES", "Rpc", "rpc_named"]

PACKAGE: Final = "petribill.v1"
#: The proto modules whose services the table covers.
PROTO_MODULES: Final = (
    usage_pb2,
    charging_pb2,
    accounts_pb2,
    billing_pb2,
    tariffs_pb2,
    notifications_pb2,
    admin_pb2,
)


@dataclass(frozen=True, kw_only=True)  # no slots: the descriptor is cached on the row
class Rpc:
    """One RPC of ``petribill.v1``; see the module docstring."""

    name: str
    roles: frozenset[Role]
    handler: Callable[..., Any] | None = None
    op: Callable[[Cluster, Any], Op[Any]] | None = None
    answer: Callable[[Cluster, Any, Any], Message] | None = None
    account: str | None = None
    records: str | None = None
    stream: str | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.op is None):
            raise ValueError(f"{self.name}: give a handler, or an op (with an answer)")
        if self.op is not None and (self.answer is None or self.account is None):
            raise ValueError(f"{self.name}: an op row needs its answer and account field")

    @cached_property  # asked on every call by the gateway's guard
    def audited(self) -> bool:
        """Whether the gateways write this RPC's calls to the audit log: every write (its
        request carries an idempotency key, ``request_id``: top-ups, payments, charging,
        plan and mode changes, bill runs, tariffs, drains, backups) and every
        operator-only RPC. Usage submission is not: each record's own trail is its id."""
        fields = self.descriptor.input_type.fields_by_name
        return "request_id" in fields or self.roles <= {Role.OPERATOR}

    @property
    def service(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def method(self) -> str:
        return self.name.split(".", 1)[1]

    @cached_property
    def descriptor(self) -> MethodDescriptor:
        pool = descriptor_pool.Default()
        found: MethodDescriptor = pool.FindMethodByName(f"{PACKAGE}.{self.name}")
        return found

    @property
    def request_type(self) -> type[Message]:
        found: type[Message] = GetMessageClass(self.descriptor.input_type)
        return found

    @property
    def response_type(self) -> type[Message]:
        found: type[Message] = GetMessageClass(self.descriptor.output_type)
        return found

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)

    async def call(self, cluster: Cluster, request: Any, timeout_s: float) -> Any:
        """Serve a unary call: the handler's answer, or the row's op on its account."""
        if self.handler is not None:
            return await self.handler(cluster, request, timeout_s)
        assert self.op is not None and self.answer is not None and self.account is not None
        account_id = getattr(request, self.account)
        cluster.check_account_id(account_id)
        try:
            op = self.op(cluster, request)
        except WireError as exc:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        out = await cluster.on_shard(account_id, op, timeout_s=timeout_s)
        if out is None:
            raise BackendError(grpc.StatusCode.NOT_FOUND, f"account {account_id} not found")
        if isinstance(out, Applied):
            raise_for(out.result.value, f"account {account_id}", getattr(request, "request_id", ""))
        return self.answer(cluster, request, out)


# -- role sets ------------------------------------------------------------------------------

_R = Role
_ACCOUNT_READERS: Final = frozenset({_R.CRM, _R.BILLING, _R.SELFCARE})
_CRM: Final = frozenset({_R.CRM})
_CHARGING: Final = frozenset({_R.CHARGING})
_BILLING: Final = frozenset({_R.BILLING})
_OPERATOR: Final = frozenset({_R.OPERATOR})
_MEDIATION: Final = frozenset({_R.MEDIATION})


# -- answers of the one-shard rows -------------------------------------------------------------


def _state(out: AccountState | Applied[Any]) -> AccountState:
    """The account after a write, or as read (a refusal was raised before)."""
    state = out.state if isinstance(out, Applied) else out
    assert state is not None
    return state


def _account(cluster: Cluster, _request: Any, out: Any) -> Message:
    return account_to_proto(_state(out), cluster.catalogue, cluster.now_s())


def _balance(cluster: Cluster, _request: Any, out: Any) -> Message:
    return balance_to_proto(_state(out), cluster.catalogue, cluster.now_s())


def _set_status(
    cluster: Cluster, request: accounts_pb2.AccountStatusRequest, status: AccountStatus
) -> ops.SetStatus:
    return ops.SetStatus(
        request_id=request.request_id,
        account_id=request.account_id,
        status=status,
        reason=request.reason,
        at_s=cluster.now_s(request.at_s),
    )


def _credit_limit(request: accounts_pb2.SetCreditLimitRequest) -> int | None:
    # An absent limit means unlimited (postpaid without a cap).
    return request.credit_limit.micros if request.HasField("credit_limit") else None


RPCS: Final[tuple[Rpc, ...]] = (
    # --- UsageService ------------------------------------------------------------------------
    Rpc(
        name="UsageService.SubmitUsage",
        roles=_MEDIATION,
        handler=usage.submit_usage,
        records="records",
    ),
    # Each batch of the stream is served as a SubmitUsage (cluster.gateway.servicers).
    Rpc(
        name="UsageService.StreamUsage",
        roles=_MEDIATION,
        handler=usage.submit_usage,
        records="records",
        stream="usage_streams",
    ),
    Rpc(
        name="UsageService.StoreUnreadable",
        roles=_MEDIATION,
        handler=usage.store_unreadable,
        records="lines",
    ),
    # The bulk path: the records as Arrow columns (the gateway counts the stream's rows).
    Rpc(
        name="UsageService.SubmitUsageColumns",
        roles=_MEDIATION,
        handler=usage_columns.submit_usage_columns,
        records="records",
    ),
    # --- ChargingService ---------------------------------------------------------------------
    Rpc(
        name="ChargingService.ChargeSession",
        roles=_CHARGING,
        handler=charging.charge_session,
        account="account_id",
    ),
    Rpc(
        name="ChargingService.DirectDebit",
        roles=_CHARGING,
        handler=charging.direct_debit,
        account="account_id",
    ),
    Rpc(
        name="ChargingService.Refund",
        roles=_CHARGING | _CRM,
        handler=charging.refund,
        account="account_id",
    ),
    Rpc(
        name="ChargingService.PriceEnquiry",
        roles=_CHARGING | _ACCOUNT_READERS,
        handler=charging.price_enquiry,
        account="account_id",
    ),
    Rpc(
        name="ChargingService.BalanceCheck",
        roles=_CHARGING | _ACCOUNT_READERS,
        handler=charging.balance_check,
        account="account_id",
    ),
    # --- AccountService ----------------------------------------------------------------------
    Rpc(
        name="AccountService.CreateAccount",
        roles=_CRM,
        handler=accounts.create_account,
    ),
    Rpc(
        name="AccountService.GetAccount",
        roles=_ACCOUNT_READERS,
        account="account_id",
        op=lambda c, r: ops.GetAccount(account_id=r.account_id),
        answer=_account,
    ),
    Rpc(
        name="AccountService.GetBalance",
        roles=_ACCOUNT_READERS | _CHARGING,
        account="account_id",
        op=lambda c, r: ops.GetAccount(account_id=r.account_id),
        answer=_balance,
    ),
    Rpc(
        name="AccountService.TopUp",
        roles=_CRM,
        account="account_id",
        op=lambda c, r: ops.TopUp(
            request_id=r.request_id,
            account_id=r.account_id,
            amount=r.amount.micros,
            currency=r.amount.currency,
            at_s=c.now_s(r.at_s),
        ),
        answer=_balance,
    ),
    Rpc(
        name="AccountService.SwitchPaymentMode",
        roles=_CRM,
        account="account_id",
        op=lambda c, r: ops.SwitchMode(
            request_id=r.request_id,
            account_id=r.account_id,
            to_mode=payment_mode_from_proto(r.payment_mode),
            at_s=c.now_s(r.at_s),
        ),
        answer=_account,
    ),
    Rpc(
        name="AccountService.SetCreditLimit",
        roles=_CRM,
        account="account_id",
        op=lambda c, r: ops.SetCreditLimit(
            request_id=r.request_id, account_id=r.account_id, credit_limit=_credit_limit(r)
        ),
        answer=_account,
    ),
    Rpc(
        name="AccountService.ChangePlan",
        roles=_CRM,
        handler=accounts.change_plan,
        account="account_id",
    ),
    Rpc(
        name="AccountService.MoveNumber",
        roles=_CRM,
        handler=accounts.move_number,
        account="account_id",
    ),
    Rpc(
        name="AccountService.ListUsage",
        roles=_ACCOUNT_READERS,
        handler=accounts.list_usage,
        account="account_id",
    ),
    # Account status is the operator's: the risk desk blocks and unblocks, and closing
    # is final (billing.account_status); CRM and self-care see the status, not set it.
    Rpc(
        name="AccountService.BlockAccount",
        roles=_OPERATOR,
        account="account_id",
        op=lambda c, r: _set_status(c, r, AccountStatus.BLOCKED),
        answer=_account,
    ),
    Rpc(
        name="AccountService.UnblockAccount",
        roles=_OPERATOR,
        account="account_id",
        op=lambda c, r: _set_status(c, r, AccountStatus.ACTIVE),
        answer=_account,
    ),
    Rpc(
        name="AccountService.CloseAccount",
        roles=_OPERATOR,
        account="account_id",
        op=lambda c, r: _set_status(c, r, AccountStatus.CLOSED),
        answer=_account,
    ),
    # Sponsor rules are a change of the subscriber's contract: CRM's, like creating it.
    Rpc(
        name="AccountService.AddSponsorRule",
        roles=_CRM,
        handler=sponsors.add_sponsor_rule,
        account="account_id",
    ),
    Rpc(
        name="AccountService.ListSponsorRules",
        roles=_ACCOUNT_READERS,
        account="account_id",
        op=lambda c, r: ops.GetAccount(account_id=r.account_id),
        answer=sponsors.rules_answer,
    ),
    Rpc(
        name="AccountService.EndSponsorRule",
        roles=_CRM,
        account="account_id",
        op=lambda c, r: ops.EndSponsorRule(
            request_id=r.request_id,
            account_id=r.account_id,
            rule_id=r.rule_id,
            end_s=c.now_s(r.end_s),
            at_from_clock=r.end_s == 0,
        ),
        answer=sponsors.rule_answer,
    ),
    # --- BillingService ----------------------------------------------------------------------
    Rpc(
        name="BillingService.RunBilling",
        roles=_BILLING,
        handler=billing.run_billing,
        stream="bill_runs",
    ),
    Rpc(
        name="BillingService.ListInvoices",
        roles=_ACCOUNT_READERS,
        handler=billing.list_invoices,
        account="account_id",
    ),
    Rpc(
        name="BillingService.GetInvoice",
        roles=_ACCOUNT_READERS,
        handler=billing.get_invoice,
        account="account_id",
    ),
    Rpc(
        name="BillingService.ApplyPayment",
        roles=_BILLING,
        handler=billing.apply_payment,
        account="account_id",
    ),
    Rpc(
        name="BillingService.ReversePayment",
        roles=_BILLING,
        handler=billing.reverse_payment,
        account="account_id",
    ),
    # What providers are owed: the billing desk pays them, operators reconcile.
    Rpc(
        name="BillingService.GetSettlement",
        roles=_BILLING | _OPERATOR,
        handler=settlement.get_settlement,
    ),
    # --- TariffService -----------------------------------------------------------------------
    Rpc(name="TariffService.LoadTariffs", roles=_OPERATOR, handler=admin.load_tariffs),
    Rpc(name="TariffService.GetTariffs", roles=frozenset(Role), handler=admin.get_tariffs),
    Rpc(
        name="TariffService.PriceEnquiry",
        roles=_CHARGING | _ACCOUNT_READERS,
        handler=charging.price_enquiry,
        account="account_id",
    ),
    # --- NotificationService -----------------------------------------------------------------
    Rpc(
        name="NotificationService.Subscribe",
        roles=_CRM | _BILLING | _OPERATOR | {Role.SELFCARE},
        handler=billing.subscribe,
        account="account_ids",
        stream="subscriptions",
    ),
    Rpc(
        name="NotificationService.ListNotifications",
        roles=_ACCOUNT_READERS,
        handler=billing.list_notifications,
        account="account_id",
    ),
    # --- AdminService ------------------------------------------------------------------------
    Rpc(name="AdminService.ClusterStatus", roles=_OPERATOR, handler=admin.cluster_status),
    Rpc(name="AdminService.Drain", roles=_OPERATOR, handler=admin.drain),
    Rpc(name="AdminService.Rebalance", roles=_OPERATOR, handler=admin.rebalance),
    Rpc(name="AdminService.Reconcile", roles=_OPERATOR, handler=admin.reconcile),
    Rpc(name="AdminService.ListRejects", roles=_OPERATOR, handler=admin.list_rejects),
    Rpc(name="AdminService.ReprocessRejects", roles=_OPERATOR, handler=admin.reprocess_rejects),
    Rpc(name="AdminService.Backup", roles=_OPERATOR, handler=admin.backup),
    Rpc(name="AdminService.RestoreUnits", roles=_OPERATOR, handler=admin.restore_units),
    Rpc(name="AdminService.Inspect", roles=_OPERATOR, handler=inspect.inspect),
)

_BY_NAME: Final[Mapping[str, Rpc]] = {rpc.name: rpc for rpc in RPCS}

#: Every service of the package, by name, with its methods in proto order.
SERVICES: Final[Mapping[str, tuple[str, ...]]] = {
    service.name: tuple(method.name for method in service.methods)
    for module in PROTO_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
}


def rpc_named(name: str) -> Rpc:
    """The row of ``Service.Method``; KeyError for a method the table lacks."""
    return _BY_NAME[name]


def _check_complete() -> None:
    """Every method of every service has exactly one row, and every row a method."""
    wanted = {f"{s}.{m}" for s, methods in SERVICES.items() for m in methods}
    missing = sorted(wanted - set(_BY_NAME))
    extra = sorted(set(_BY_NAME) - wanted)
    if missing or extra or len(_BY_NAME) != len(RPCS):
        raise RuntimeError(
            f"RPC table out of step with the protos: missing {missing}, extra {extra}"
        )


_check_complete()

Handler = Callable[[Cluster, Any, float], Awaitable[Any]]
