"""The backend a gateway serves from: the table's RPCs run against one :class:`Cluster`.

Routing (``actors.router``): account operations go to the account shard
``shard_of(account_id)``; usage and directory operations to the rating
partition ``partition_of(msisdn)``; fan-out operations (bill runs,
reconciliation, rejects, notification streams) to every unit concurrently.
A stale route or a dead host is retried within the call's time, then answered
``UNAVAILABLE`` (the client retries with the same ids).

Recovery contract: the backend holds nothing durable, only a cache of routes
and actor handles, rebuilt on demand; every write it forwards is idempotent
by its request or record id, so a call cut short (cancelled, timed out) is
safely retried by the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message

from cluster.backend.context import Cluster
from cluster.backend.rpcs import Rpc

__all__ = ["Backend"]


class Backend:
    """Serves the RPCs of the table (``cluster.backend.rpcs``) from ``cluster``."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def call(self, rpc: Rpc, request: Any, timeout_s: float) -> Message:
        """A unary call (or one batch of a usage stream)."""
        answer: Message = await rpc.call(self.cluster, request, timeout_s)
        return answer

    def stream(self, rpc: Rpc, request: Any, timeout_s: float | None) -> AsyncIterator[Message]:
        """A server stream; ``timeout_s`` None when the client set no deadline."""
        assert rpc.handler is not None and rpc.server_streaming
        items: AsyncIterator[Message] = rpc.handler(self.cluster, request, timeout_s)
        return items

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Backend:
        """The backend of a gateway in a Ray cluster, from the plain settings every actor
        is built from (``deploy.runtime.settings_of``); ``functools.partial(
        Backend.from_settings, settings)`` is a picklable factory."""
        from actors.clock import clock_from_settings
        from actors.remote import RayTransport
        from actors.router import UnitRouter
        from cluster.backend.reads import local_reads

        transport = RayTransport()
        router = UnitRouter(
            transport,
            shards=int(settings["shards"]),
            partitions=int(settings["partitions"]),
            hosts_per_node=int(settings.get("hosts_per_node", 1)),
        )

        async def find_node() -> str | None:
            """This gateway's node name: the status entry of the Ray node it runs on."""
            import ray

            here = ray.get_runtime_context().get_node_id()
            status = await transport.coordinator_call("status", timeout_s=10.0)
            names = [n["node"] for n in status.get("nodes", []) if n["ray_node_id"] == here]
            return names[0] if names else None

        return cls(
            Cluster(
                router,
                tariffs_dir=settings["tariffs_dir"],
                data_dir=settings.get("data_dir"),
                backup_root=settings.get("backup_root"),
                tariffs_root=settings.get("tariffs_root"),
                clock=clock_from_settings(settings),
                reads=local_reads(settings, transport, find_node),
            )
        )
