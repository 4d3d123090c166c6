"""AccountService handlers that touch more than one unit, or page: create, plan change, usage.

``CreateAccount`` writes the account on its shard, then the directory entry
of each MSISDN on that MSISDN's partition (concurrently), each idempotent by
its own id derived from the request id (``<request_id>/dir/<msisdn>``), so a
retried create finishes whatever a broken one left undone
(docs/architecture.md, "The subscriber directory lives in the partitions").
``ChangePlan`` goes the same way: the shard, then each MSISDN's directory entry
(``<request_id>/plan/<msisdn>``). The single-shard RPCs of the service are
rows of the table alone (``cluster.backend.rpcs``).
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from petribill.v1 import accounts_pb2

from actors.partition.directory import DirectoryAnswer
from actors.partition.ops import ChangeSubscriberPlan, PutSubscriber, ReleaseNumber
from actors.partition.ops import MoveNumber as MoveNumberInDirectory
from actors.router import deadline_after
from actors.router import time_left as _left
from actors.shard import ops
from billing.accounts import Account, AccountStatus, Result, Subscription
from billing.invariant import InvariantViolation
from billing.plan_change import new_subscription
from billing.tariffs.model import PaymentMode
from cluster.api.errors import BackendError
from cluster.backend.context import Cluster
from cluster.backend.convert import account_to_proto, usage_line_to_proto
from cluster.backend.status import CONFLICT_PREFIX, raise_for
from cluster.wire import WireError, payment_mode_from_proto

__all__ = [
    "change_plan",
    "create_account",
    "directory_request_id",
    "list_usage",
    "move_number",
    "plan_request_id",
]

log = structlog.get_logger("petribill.backend")

_USAGE_LIMIT_DEFAULT = 50
_USAGE_LIMIT_MAX = 1000


def directory_request_id(request_id: str, msisdn: str) -> str:
    """The idempotency key of one MSISDN's directory write within a CreateAccount."""
    return f"{request_id}/dir/{msisdn}"


def plan_request_id(request_id: str, msisdn: str) -> str:
    """The idempotency key of one MSISDN's directory write within a ChangePlan."""
    return f"{request_id}/plan/{msisdn}"


def _new_account(cluster: Cluster, request: accounts_pb2.CreateAccountRequest) -> Account:
    cluster.check_account_id(request.account_id)
    plan_id = cluster.plan_or_default(request.plan_id)
    currency = cluster.check_currency(request.currency or cluster.catalogue.currency)
    if request.payment_mode:
        try:
            mode = payment_mode_from_proto(request.payment_mode)
        except WireError as exc:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    else:
        version = cluster.catalogue.plan_version(plan_id, cluster.now_s(request.start_s))
        mode = version.payment_mode if version is not None else PaymentMode.PREPAID
    limit = None
    if request.HasField("credit_limit"):
        limit = request.credit_limit.micros
        if limit < 0:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, "credit_limit: must be >= 0")
    msisdns = tuple(
        dict.fromkeys(cluster.msisdn(m, f"msisdns[{i}]") for i, m in enumerate(request.msisdns))
    )
    return Account(
        account_id=request.account_id,
        currency=currency,
        payment_mode=mode,
        credit_limit=limit,
        subscriptions=(Subscription(plan_id=plan_id, start_s=max(request.start_s, 0)),),
        msisdns=msisdns,
        created_at_s=cluster.now_s(),
    )


async def create_account(
    cluster: Cluster, request: accounts_pb2.CreateAccountRequest, timeout_s: float
) -> accounts_pb2.Account:
    """The directory first, the authority on numbers: each MSISDN's entry on its partition,
    refused if another account holds the number. Then the account on its shard. If the
    shard refuses, the entries this request created are released again, so a refused
    create leaves nothing behind; a retry with the same request_id finishes a broken one."""
    deadline = deadline_after(timeout_s)
    account = _new_account(cluster, request)
    rid = request.request_id
    answers = await asyncio.gather(
        *(
            cluster.run(
                cluster.router.partition(msisdn),
                PutSubscriber(
                    request_id=directory_request_id(rid, msisdn),
                    msisdn=msisdn,
                    account_id=account.account_id,
                    subscriptions=list(account.subscriptions),
                    sponsor_rules=list(account.sponsor_rules),
                ),
                timeout_s=_left(deadline),
            )
            for msisdn in account.msisdns
        )
    )
    try:
        for msisdn, answer in zip(account.msisdns, answers, strict=True):
            _check_directory(answer, msisdn, rid)
        out = await cluster.on_shard(
            account.account_id,
            ops.CreateAccount(request_id=rid, account=account),
            timeout_s=_left(deadline),
        )
        raise_for(out.result.value, f"account {account.account_id}", rid)
    except BackendError as refused:
        if refused.code is not grpc.StatusCode.UNAVAILABLE:  # known refused: undo our entries
            await _release(cluster, account, rid, deadline)
        raise
    assert out.state is not None  # created or replayed: the account exists
    return account_to_proto(out.state, cluster.catalogue, cluster.now_s())


async def _release(cluster: Cluster, account: Account, rid: str, deadline: float) -> None:
    """Undo the directory entries this CreateAccount created (and only those)."""
    await asyncio.gather(
        *(
            cluster.run(
                cluster.router.partition(msisdn),
                ReleaseNumber(
                    put_request_id=directory_request_id(rid, msisdn),
                    msisdn=msisdn,
                    account_id=account.account_id,
                ),
                timeout_s=_left(deadline),
            )
            for msisdn in account.msisdns
        )
    )


async def move_number(
    cluster: Cluster, request: accounts_pb2.MoveNumberRequest, timeout_s: float
) -> accounts_pb2.Account:
    """The directory first (the authority: who holds the number, from when), then the two
    accounts' own lists of numbers, each write idempotent by an id derived from the
    request's, so a retry finishes what a broken call left undone."""
    deadline = deadline_after(timeout_s)
    rid = request.request_id
    msisdn = cluster.msisdn(request.msisdn, "msisdn")
    to_account = request.account_id
    target = await cluster.state(to_account, timeout_s=_left(deadline))
    if target.account.status is AccountStatus.CLOSED:
        raise BackendError(grpc.StatusCode.FAILED_PRECONDITION, f"account {to_account} is closed")
    entry = await cluster.subscriber(msisdn, timeout_s=_left(deadline))
    if entry is None:
        raise BackendError(grpc.StatusCode.NOT_FOUND, f"msisdn {msisdn} is not in the directory")
    at_s = cluster.now_s(request.at_s)
    # The holder just before the move: the current one, or, on a retry after the move,
    # the one the move took it from.
    from_account = request.from_account_id or entry.at(at_s - 1).account_id
    answer = await cluster.run(
        cluster.router.partition(msisdn),
        MoveNumberInDirectory(
            request_id=f"{rid}/move",
            msisdn=msisdn,
            from_account=from_account,
            to_account=to_account,
            subscriptions=list(target.account.subscriptions),
            sponsor_rules=list(target.account.sponsor_rules),
            at_s=at_s,
            at_from_clock=request.at_s <= 0,
        ),
        timeout_s=_left(deadline),
    )
    _check_directory(answer, msisdn, rid)
    await cluster.on_shard(
        from_account,
        ops.MoveNumber(
            request_id=f"{rid}/from", account_id=from_account, msisdn=msisdn, gained=False
        ),
        timeout_s=_left(deadline),
    )
    out = await cluster.on_shard(
        to_account,
        ops.MoveNumber(request_id=f"{rid}/to", account_id=to_account, msisdn=msisdn, gained=True),
        timeout_s=_left(deadline),
    )
    raise_for(out.result.value, f"account {to_account}", rid)
    assert out.state is not None
    return account_to_proto(out.state, cluster.catalogue, cluster.now_s())


async def change_plan(
    cluster: Cluster, request: accounts_pb2.ChangePlanRequest, timeout_s: float
) -> accounts_pb2.Account:
    """The account's shard first (``billing.plan_change``), then the directory entry of
    each of its MSISDNs on that MSISDN's partition, so records from the change on are
    rated with the new plan. Each write is idempotent by its own id (the directory's
    ``<request_id>/plan/<msisdn>``, at the time the shard stored), so a retry finishes
    whatever a broken call left undone."""
    deadline = deadline_after(timeout_s)
    account_id = request.account_id
    cluster.check_account_id(account_id)
    rid = request.request_id
    out = await cluster.on_shard(
        account_id,
        ops.ChangePlan(
            request_id=rid,
            account_id=account_id,
            plan_id=request.plan_id,
            at_s=cluster.now_s(request.at_s),
            at_from_clock=request.at_s <= 0,
        ),
        timeout_s=_left(deadline),
    )
    raise_for(
        out.result.value,
        f"account {account_id}",
        rid,
        _plan_refusal(cluster, out.result, request.plan_id, out.receipt),
    )
    changed = out.receipt
    assert changed is not None  # a plan change answers the account it changed
    opened = new_subscription(changed)
    if opened is None:
        raise InvariantViolation(f"account {account_id}: changed, yet without a plan")
    answers = await asyncio.gather(
        *(
            cluster.run(
                cluster.router.partition(msisdn),
                ChangeSubscriberPlan(
                    request_id=plan_request_id(rid, msisdn),
                    msisdn=msisdn,
                    plan_id=opened.plan_id,
                    start_s=opened.start_s,
                    account_id=account_id,
                ),
                timeout_s=_left(deadline),
            )
            for msisdn in changed.msisdns
        )
    )
    for msisdn, answer in zip(changed.msisdns, answers, strict=True):
        if answer.result is Result.UNKNOWN_ACCOUNT and answer.entry is not None:
            # The number moved to another account since: its plan is not ours to change.
            log.info("plan_change_skips_moved_msisdn", msisdn=msisdn, detail=answer.detail)
            continue
        if answer.result is Result.UNKNOWN_ACCOUNT:
            raise BackendError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"msisdn {msisdn} of account {account_id} is not in the directory: retry "
                f"its CreateAccount, then this ChangePlan with the same request_id",
            )
        _check_directory(answer, msisdn, rid)
    assert out.state is not None
    return account_to_proto(out.state, cluster.catalogue, cluster.now_s())


def _plan_refusal(cluster: Cluster, result: Result, plan_id: str, current: Account | None) -> str:
    """The detail of a refused plan change: what the catalogue or the account has."""
    if result is Result.UNKNOWN_PLAN:
        known = ", ".join(sorted(cluster.catalogue.plans)) or "none"
        return f"plan_id {plan_id!r}: no version at that time (the catalogue has: {known})"
    latest = new_subscription(current) if current is not None else None
    if latest is None:
        return ""
    if result is Result.BEFORE_PLAN_START:
        return f"at_s must be after {latest.start_s}, when plan {latest.plan_id} started"
    if result is Result.SAME_PLAN:
        return f"the account is on plan {latest.plan_id} since {latest.start_s}"
    return ""


async def list_usage(
    cluster: Cluster, request: accounts_pb2.ListUsageRequest, timeout_s: float
) -> accounts_pb2.ListUsageResponse:
    deadline = deadline_after(timeout_s)
    cluster.check_account_id(request.account_id)
    limit = min(request.limit or _USAGE_LIMIT_DEFAULT, _USAGE_LIMIT_MAX)
    before = None
    if request.page_token:
        if not request.page_token.isdigit() or int(request.page_token) <= 0:
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_token: {request.page_token!r} is not a token this service gave",
            )
        before = int(request.page_token)
    lines, next_before = await cluster.on_shard(
        request.account_id,
        ops.UsagePage(account_id=request.account_id, limit=limit, before_seq=before),
        timeout_s=_left(deadline),
    )
    if not lines:  # no usage, or no account: tell NOT_FOUND apart
        await cluster.state(request.account_id, timeout_s=_left(deadline))
    return accounts_pb2.ListUsageResponse(
        lines=[usage_line_to_proto(x) for x in lines],
        next_page_token=str(next_before) if next_before else "",
    )


def _check_directory(answer: DirectoryAnswer, msisdn: str, request_id: str) -> None:
    result = answer.result
    if result in (Result.CREATED, Result.UPDATED, Result.DUPLICATE):
        return
    if result.value.startswith(CONFLICT_PREFIX) and answer.field:
        raise BackendError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"request_id {request_id} reused with a different {answer.field} (msisdn {msisdn})",
        )
    raise_for(result.value, f"msisdn {msisdn}", request_id, answer.detail)
    raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"msisdn {msisdn}: {result.value}")
