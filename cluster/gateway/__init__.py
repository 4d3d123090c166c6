"""The gRPC gateway: one stateless grpc.aio server per node, relaying to the backend.

Modules: :mod:`~cluster.gateway.limits` (limits and admission),
:mod:`~cluster.gateway.calls` (deadline, status mapping),
:mod:`~cluster.gateway.validate` (request shape), :mod:`~cluster.gateway.servicers`
(the petribill.v1 services), :mod:`~cluster.gateway.server` (the server with
health checking and reflection), :mod:`~cluster.gateway.actor` (the Ray shell),
:mod:`~cluster.gateway.names` (how gateways are found).
"""
