"""Fast paths to fill a running Ray cluster for tests and benchmarks: many accounts at once.

Creating ten thousand accounts one RPC each takes minutes on a small machine; here
each shard's accounts go straight to the host that owns it, hundreds a call and a
commit (a fast path for test data, not an API: no directory entries are written,
so these accounts get no usage by MSISDN).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import ray

from actors.remote import NAMESPACE, host_name
from actors.routing import shard_of
from actors.shard import ops
from billing.accounts import Account, PaymentMode, Result, Subscription

__all__ = ["create_accounts"]

_PER_CALL = 500  # accounts per call, one commit: ~50 ms of a shard's time


def create_accounts(
    coordinator: Any,
    account_ids: Sequence[str],
    *,
    shards: int,
    plan_id: str,
    mode: PaymentMode = PaymentMode.POSTPAID,
) -> None:
    """Create ``account_ids`` (on ``plan_id`` since 0, in ``mode``) on their shards' hosts,
    by the coordinator's routes, in bulk (:class:`~actors.shard.ops.CreateAccounts`);
    idempotent by their request ids."""
    routes = ray.get(coordinator.routes.remote(), timeout=30)
    by_shard: dict[str, list[str]] = defaultdict(list)
    for account_id in account_ids:
        by_shard[shard_of(account_id, shards)].append(account_id)
    refs = []
    for unit, ids in sorted(by_shard.items()):
        node, epoch = routes[unit]
        host = ray.get_actor(host_name(node), namespace=NAMESPACE)
        for start in range(0, len(ids), _PER_CALL):
            creates = [
                ops.CreateAccount(
                    request_id=f"seed-{account_id}",
                    account=Account(
                        account_id=account_id,
                        currency="EUR",
                        payment_mode=mode,
                        subscriptions=(Subscription(plan_id=plan_id, start_s=0),),
                    ),
                )
                for account_id in ids[start : start + _PER_CALL]
            ]
            refs.append(host.run.remote(unit, epoch, ops.CreateAccounts(creates=creates)))
    for results in ray.get(refs, timeout=300):
        refused = {r for r in results if r not in (Result.CREATED, Result.DUPLICATE)}
        if refused:
            raise AssertionError(f"accounts not created: {refused}")
