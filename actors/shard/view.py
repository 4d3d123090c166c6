"""A read-only account shard: the shard's queries over a view of its database.

A gateway that has a copy of an account shard in its own node's folder answers
the single-account queries from it (``actors.reader``): a :class:`ShardView` runs
the very operations a host would (``op.apply(engine, env)``), with the very query
code (:class:`~actors.shard.queries.ShardQueries`), over a
:class:`~actors.store.secondary.SecondaryStore` instead of the owner's store. It
has no other part, so an operation that is not a query cannot run on it.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

from actors.shard import ops
from actors.shard.engine import NO_ENV
from actors.shard.queries import ShardQueries
from actors.store.secondary import SecondaryStore

__all__ = ["LOCAL_READS", "ShardView"]

R = TypeVar("R")

#: The operations a view answers: the queries of one account (or one invoice), each a
#: ``read`` operation of committed state that reads only ``queries``.
LOCAL_READS: Final[tuple[type[ops.ShardOp[Any]], ...]] = (
    ops.GetAccount,
    ops.UsagePage,
    ops.ListInvoices,
    ops.GetInvoice,
    ops.ListNotifications,
)


class ShardView:
    """The queries of one account shard over a read-only view of its database."""

    def __init__(self, store: SecondaryStore) -> None:
        self.store = store
        self.queries = ShardQueries(self)

    def run(self, op: ops.ShardOp[R]) -> R:
        """Answer one of :data:`LOCAL_READS` from the view as it stands."""
        if not isinstance(op, LOCAL_READS):
            raise TypeError(f"{op.name} is not a query a read view answers")
        # The ops are typed on AccountShard; a view has the one part their queries use.
        return op.apply(self, NO_ENV)  # type: ignore[arg-type]
