"""The petribill client SDK: plain Python values in, petribill.v1 answers out, retries built in.

``PetribillClient(["host1:50051", "host2:50051"])`` talks to any of a
cluster's gateways. It has one method per RPC of ``petribill.v1``, named after
it in snake case (``AccountService.TopUp`` is ``top_up``), made from the proto
descriptors: a method takes the request message, or its fields positionally in
``.proto`` order or by name, with money as decimal strings or
:class:`~billing.money.Money`, records as :class:`~billing.records.UsageRecord`
or dicts, and enums by short name (``cluster.client.requests``). Unary
methods answer the response message; server streams yield theirs.

Every write carries an idempotency key (a ``request_id`` generated when not
given, or the records' own ``record_id``), and the client retries a call with
the *same* key when the answer is UNAVAILABLE (a shard being taken over, or a
gateway gone: it then fails over to the next address) or RESOURCE_EXHAUSTED
(back-pressure: it backs off, with jitter). It never retries any other status —
INVALID_ARGUMENT or ALREADY_EXISTS would only fail again. ``timeout_s`` bounds a
whole call, retries included.

Amounts in answers are integer ``micros`` (:func:`cluster.wire.decimal_from_proto`
gives a ``Decimal``). Failures raise :class:`PetribillError` with the gRPC status.
A few calls do more than one RPC's worth and are written here: :meth:`iter_usage`
(pages), :meth:`stream_usage` (pipelined batches), :meth:`notifications`
(resubscribes, skipping repeats), :meth:`submit_usage_columns` and
:meth:`stream_usage_columns` (the bulk path: a ``pyarrow.Table`` or a dict of
columns in, a ``pyarrow.Table`` of results out; ``cluster.client.bulk``).
"""

from __future__ import annotations

from cluster.client.bulk import BulkCalls
from cluster.client.calls import install_rpc_methods
from cluster.client.transport import PetribillError, Transport

__all__ = ["PetribillClient", "PetribillError", "Transport"]


class PetribillClient(BulkCalls):
    """A synchronous client of one petribill cluster, failing over across its gateways.

    ``PetribillClient(addresses, timeout_s=10.0, retries=8)``; see :class:`Transport`
    for every option. Its RPC methods are listed by ``help(PetribillClient)``.
    """


install_rpc_methods(PetribillClient)
