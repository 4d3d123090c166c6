"""The gRPC gateway: one stateless grpc.aio server per node, relaying to a :class:`Backend`.

Modules: :mod:`~cluster.gateway.limits` (limits and admission),
:mod:`~cluster.gateway.calls` (deadline, status mapping),
:mod:`~cluster.gateway.validate` (request shape), :mod:`~cluster.gateway.servicers`
(the petribill.v1 services), :mod:`~cluster.gateway.server` (the server with
health checking and reflection), :mod:`~cluster.gateway.actor` (the Ray shell).
"""

from cluster.gateway.actor import GatewayActor, gateway_actor_class
from cluster.gateway.limits import GatewayLimits
from cluster.gateway.server import SERVICE_NAMES, Gateway, GatewayError

__all__ = [
    "SERVICE_NAMES",
    "Gateway",
    "GatewayActor",
    "GatewayError",
    "GatewayLimits",
    "gateway_actor_class",
]
