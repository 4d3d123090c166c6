"""The petribill client SDK: plain Python values in, petribill.v1 answers out, retries built in.

``PetribillClient(["host1:50051", "host2:50051"])`` talks to any of a
cluster's gateways. Every write carries an idempotency key (a ``request_id``
generated when not given, or the records' own ``record_id``), and the client
retries a call with the *same* key when the answer is UNAVAILABLE (a shard
being taken over, or a gateway gone: it then fails over to the next address)
or RESOURCE_EXHAUSTED (back-pressure: it backs off, with jitter). It never
retries any other status — INVALID_ARGUMENT or ALREADY_EXISTS would only fail
again. ``timeout_s`` bounds a whole call, retries included.

Answers are the generated messages (``petribill.v1.*_pb2``); amounts in them
are integer ``micros`` (:func:`cluster.wire.decimal_from_proto` gives a
``Decimal``). Failures raise :class:`PetribillError` with the gRPC status.
"""

from __future__ import annotations

from cluster.client.accounts import AccountCalls
from cluster.client.billing import BillingCalls
from cluster.client.transport import PetribillError, Transport
from cluster.client.usage import UsageCalls

__all__ = ["PetribillClient", "PetribillError", "Transport"]


class PetribillClient(UsageCalls, AccountCalls, BillingCalls):
    """A synchronous client of one petribill cluster, failing over across its gateways.

    ``PetribillClient(addresses, timeout_s=10.0, retries=8)``; see :class:`Transport`
    for every option, and the call groups for the calls.
    """
