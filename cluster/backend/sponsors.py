"""AccountService's sponsor rules: add (checked against the sponsor's account), list, end.

A rule lives on the subscriber's account (``billing.sponsor_rules``), on its
shard, where every record of the account is charged and its sponsor decided.
Adding one first reads the sponsor's account on its own shard: it must exist
and keep the subscriber's currency, or no charge could ever reach it. A
sponsor closed later is not checked again: its charges are then refused on
its shard and kept as ``sponsor_refused`` rejects until reprocessed. Listing
and ending are single-shard rows of the RPC table (``cluster.backend.rpcs``),
answered by :func:`rules_answer` and :func:`rule_answer`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import grpc
from petribill.v1 import accounts_pb2

from actors.router import deadline_after
from actors.router import time_left as _left
from actors.shard import ops
from billing.accounts import AccountState, Result, SponsorRule
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import sponsor_rule_to_proto
from cluster.backend.status import raise_for

__all__ = ["RULE_ID_CHARS_MAX", "add_sponsor_rule", "rule_answer", "rules_answer"]

RULE_ID_CHARS_MAX: Final = 64


def _invalid(message: str) -> BackendError:
    return BackendError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _rule(cluster: Cluster, request: accounts_pb2.AddSponsorRuleRequest) -> SponsorRule:
    """The rule the request asks for, its fields checked (INVALID_ARGUMENT naming one)."""
    rule_id = request.rule_id or request.request_id
    if not rule_id or len(rule_id) > RULE_ID_CHARS_MAX or "\x00" in rule_id:
        raise _invalid(f"rule_id: 1-{RULE_ID_CHARS_MAX} characters, got {rule_id!r}")
    if request.sponsor_account_id == request.account_id:
        raise _invalid("sponsor_account_id: an account cannot sponsor itself")
    cluster.check_account_id(request.sponsor_account_id)
    rate_id = request.rate_id or None
    if rate_id is not None and rate_id not in cluster.catalogue.price_keys:
        raise _invalid(f"rate_id: the catalogue has no rate {rate_id!r}")
    if any(not pattern for pattern in request.usage_classes):
        raise _invalid("usage_classes: an empty pattern")
    start_s = cluster.now_s(request.start_s)
    end_s = request.end_s or None
    if request.start_s < 0 or (end_s is not None and end_s <= start_s):
        raise _invalid(f"end_s {request.end_s} must be 0 or after start_s {start_s}")
    return SponsorRule(
        rule_id=rule_id,
        sponsor_account_id=request.sponsor_account_id,
        msisdn=cluster.msisdn(request.msisdn, "msisdn") if request.msisdn else None,
        usage_classes=tuple(request.usage_classes),
        rating_group=request.rating_group if request.HasField("rating_group") else None,
        content_provider=request.content_provider or None,
        price_key=rate_id,
        start_s=start_s,
        end_s=end_s,
    )


def _check_sponsor(subscriber: AccountState, sponsor: AccountState, rule: SponsorRule) -> None:
    if rule.msisdn is not None and rule.msisdn not in subscriber.account.msisdns:
        raise _invalid(f"msisdn: {rule.msisdn} is not a number of {subscriber.account_id}")
    if sponsor.account.currency != subscriber.account.currency:
        raise _invalid(
            f"sponsor_account_id: {sponsor.account_id} keeps {sponsor.account.currency}, "
            f"{subscriber.account_id} {subscriber.account.currency}"
        )


async def add_sponsor_rule(
    cluster: Cluster, request: accounts_pb2.AddSponsorRuleRequest, timeout_s: float
) -> accounts_pb2.SponsorRule:
    deadline = deadline_after(timeout_s)
    account_id = request.account_id
    cluster.check_account_id(account_id)
    rule = _rule(cluster, request)
    subscriber, sponsor = await asyncio.gather(
        cluster.state(account_id, timeout_s=_left(deadline)),
        cluster.on_shard(
            rule.sponsor_account_id,
            ops.GetAccount(account_id=rule.sponsor_account_id),
            timeout_s=_left(deadline),
        ),
    )
    if sponsor is None:
        raise BackendError(
            grpc.StatusCode.NOT_FOUND,
            f"sponsor_account_id: account {rule.sponsor_account_id} not found",
        )
    _check_sponsor(subscriber, sponsor, rule)
    out = await cluster.on_shard(
        account_id,
        ops.AddSponsorRule(
            request_id=request.request_id,
            account_id=account_id,
            rule=rule,
            at_from_clock=request.start_s == 0,
        ),
        timeout_s=_left(deadline),
    )
    detail = f"rule_id {rule.rule_id!r}" if out.result is Result.SPONSOR_RULE_EXISTS else ""
    raise_for(out.result.value, f"account {account_id}", request.request_id, detail)
    assert out.receipt is not None  # created or replayed: the rule as stored
    return sponsor_rule_to_proto(account_id, out.receipt)


def rules_answer(cluster: Cluster, request: Any, out: AccountState) -> Any:
    """ListSponsorRules: the account's rules in the order they are tried."""
    return accounts_pb2.ListSponsorRulesResponse(
        rules=[sponsor_rule_to_proto(out.account_id, r) for r in out.account.sponsor_rules]
    )


def rule_answer(cluster: Cluster, request: Any, out: Any) -> Any:
    """EndSponsorRule: the rule as the request left it."""
    return sponsor_rule_to_proto(request.account_id, out.receipt)
