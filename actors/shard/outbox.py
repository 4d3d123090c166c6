"""The outbox of an account shard: sponsor charges owed by accounts on other shards.

A sponsored record is charged in two halves (``billing.sponsor``): the
subscriber's zero-money line here, and the sponsor's money line on the
sponsor's shard. When the sponsor lives elsewhere the second half is a
:class:`Forward`, stored in this shard's outbox (``f/<forward id>``) in the
*same* batch as the subscriber's line, so it exists exactly when the record
was acknowledged. Delivery is at least once:

1. the shard returns new forwards with the batch's answer, and lists any
   unacknowledged ones with ``AccountShard.pending_forwards`` (after a restart);
2. the host routes each to ``shard_of(target_account_id)`` and calls
   ``AccountShard.apply_forwards`` there (one synced batch);
3. once that returned, the host calls ``ack_forwards(ids)`` here, which deletes
   them (one synced batch).

A crash anywhere in between redelivers; the sponsor shard's idempotency mark
``sponsor:<record_id>`` turns a redelivery into a ``duplicate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.routing import shard_of
from billing.sponsor import SponsoredUsage

__all__ = ["Forward", "forward_id", "group_by_shard"]


def forward_id(usage: SponsoredUsage) -> str:
    """The id of a forward: the sponsor line's idempotency key, ``sponsor:<record_id>``."""
    return "sponsor:" + usage.rated.record.record_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """One sponsor charge to deliver to ``target_account_id``'s shard."""

    forward_id: str
    target_account_id: str
    usage: SponsoredUsage

    @staticmethod
    def of(usage: SponsoredUsage) -> Forward:
        return Forward(
            forward_id=forward_id(usage), target_account_id=usage.sponsor_account_id, usage=usage
        )


def group_by_shard(forwards: list[Forward], shards: int) -> dict[str, list[Forward]]:
    """Forwards grouped by the unit id of the shard that must apply them."""
    groups: dict[str, list[Forward]] = {}
    for fwd in forwards:
        groups.setdefault(shard_of(fwd.target_account_id, shards), []).append(fwd)
    return groups
