"""One SDK method per RPC of ``petribill.v1``, made from the proto descriptors.

``AccountService.TopUp`` becomes ``top_up(*fields, timeout_s=None, **fields)``:
the request is built by :func:`cluster.client.requests.build_request`, sent with
the transport's retries and failover, and the response message returned; a
server stream's method yields its messages (restarted with the same request
after a retryable failure). The one client stream, StreamUsage, is written by
hand (:mod:`cluster.client.streams`). An RPC two services share
(PriceEnquiry) gets one method.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from cluster.client.requests import build_request, positional_fields
from cluster.client.transport import PROTO_MODULES, Transport

__all__ = ["install_rpc_methods", "method_name"]


def method_name(rpc: str) -> str:
    """The SDK method of an RPC: ``TopUp`` -> ``top_up``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def _doc(method: MethodDescriptor) -> str:
    fields = ", ".join(positional_fields(method.input_type))
    out = method.output_type.name
    kind = "yields" if method.server_streaming else "answers"
    return (
        f"{method.containing_service.name}.{method.name}({fields}): {kind} {out}.\n\n"
        "Fields positionally in this order or by name (request_id is generated when not "
        "given); or pass the request message itself."
    )


def _make(method: MethodDescriptor) -> Callable[..., Any]:
    service, name = method.containing_service.name, method.name
    request_type = GetMessageClass(method.input_type)

    def build(client: Transport, args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
        return build_request(request_type, args, fields, client.new_request_id)

    if method.server_streaming:

        def stream(
            self: Transport, *args: Any, timeout_s: float | None = None, **fields: Any
        ) -> Iterator[Any]:
            return self.server_stream(service, name, build(self, args, fields), timeout_s=timeout_s)

        call: Callable[..., Any] = stream
    else:

        def unary(
            self: Transport, *args: Any, timeout_s: float | None = None, **fields: Any
        ) -> Any:
            return self.call(service, name, build(self, args, fields), timeout_s=timeout_s)

        call = unary
    call.__name__ = method_name(name)
    call.__doc__ = _doc(method)
    return call


def install_rpc_methods(cls: type[Transport]) -> None:
    """Give ``cls`` a method per RPC of petribill.v1 that it does not define itself."""
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming or hasattr(cls, method_name(method.name)):
                    continue
                setattr(cls, method_name(method.name), _make(method))
