"""The servicers of every ``petribill.v1`` service, built from the one table of RPCs.

For each service of the protos, a class is made from the generated servicer
base with one method per row of ``cluster.backend.rpcs.RPCS``: a unary RPC
checks the request and runs the row through the backend (the rules of a call —
deadline, limits, status mapping — live in :mod:`cluster.gateway.calls`; who may
call it, in :mod:`cluster.gateway.guard`); a server stream relays the backend's
iterator. StreamUsage is the one RPC with logic of its own: it pipelines a
stream's batches (up to ``stream_batches_inflight_max`` at once) and answers
them in order.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message
from petribill.v1 import usage_pb2

from cluster.api.columns import ipc_rows
from cluster.backend.rpcs import PACKAGE, RPCS, SERVICES, Rpc, rpc_named
from cluster.gateway.calls import Calls, Failure, checked, internal_failure
from cluster.gateway.guard import Guard
from cluster.gateway.limits import Overloaded
from cluster.gateway.validate import Unreadable, check

__all__ = ["SERVICERS", "Backend", "add_servicers"]

Handler = Callable[[Any, Any, Any], Awaitable[Any]]


class Backend(Protocol):
    """What the gateway serves from (``cluster.backend.backend.Backend`` in production)."""

    async def call(self, rpc: Rpc, request: Any, timeout_s: float) -> Message: ...

    def stream(self, rpc: Rpc, request: Any, timeout_s: float | None) -> AsyncIterator[Message]: ...


class _Relay:
    """Holds the backend, the call runner and the guard every servicer relays through."""

    def __init__(self, backend: Backend, calls: Calls, guard: Guard) -> None:
        self._backend = backend
        self._calls = calls
        self._guard = guard


def _records(rpc: Rpc, request: Any) -> int:
    if not rpc.records or isinstance(request, Unreadable):
        return 0  # an unreadable request is refused by its check, before admission
    found = getattr(request, rpc.records)
    # The bulk path's records are the rows of an Arrow IPC stream (0 if it is not one:
    # the request's check refuses it).
    return ipc_rows(found) if isinstance(found, bytes) else len(found)


def _unary(rpc: Rpc) -> Handler:
    """A servicer method that checks the request and runs ``rpc`` through the backend."""

    async def handler(self: _Relay, request: Any, context: Any) -> Any:
        await self._guard.enter(rpc, request, context)
        call = partial(self._backend.call, rpc)
        return await self._calls.unary(
            context, rpc.name, call, request, check=check, records=_records(rpc, request)
        )

    handler.__name__ = rpc.method
    return handler


def _server_stream(rpc: Rpc) -> Handler:
    """A servicer method relaying the backend's stream of answers to ``rpc``."""

    async def handler(self: _Relay, request: Any, context: Any) -> None:
        await self._guard.enter(rpc, request, context)
        calls = self._calls
        try:
            checked(check, rpc.name, request, calls.limits)
            timeout_s = calls.stream_timeout_s(context)
        except Failure as exc:
            await context.abort(exc.code, exc.message)
            return
        assert rpc.stream is not None
        await calls.server_stream(
            context,
            rpc.name,
            lambda: self._backend.stream(rpc, request, timeout_s),
            kind=rpc.stream,
        )

    handler.__name__ = rpc.method
    return handler


async def _stream_usage(
    self: _Relay, request_iterator: AsyncIterator[usage_pb2.SubmitUsageRequest], context: Any
) -> None:
    """Answer each batch in order; end the stream with the first batch's failure status.

    Batches before a failed one are answered first, so a client knows which
    batches to resend (the failed one and those after it).
    """
    rpc = rpc_named("UsageService.StreamUsage")
    await self._guard.enter(rpc, None, context)  # the role was checked before: no account
    calls = self._calls
    assert rpc.stream is not None
    try:
        calls.admission.open_stream(rpc.stream)
    except Overloaded as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return
    window = calls.limits.stream_batches_inflight_max
    answers: asyncio.Queue[asyncio.Future[usage_pb2.SubmitUsageResponse] | None]
    answers = asyncio.Queue(maxsize=window)
    reader = asyncio.create_task(_read_batches(self, rpc, request_iterator, context, answers))
    failure: Failure | None = None
    try:
        while (answer := await answers.get()) is not None:
            try:
                response = await answer
            except Failure as exc:
                failure = exc
                break
            await context.write(response)
    finally:
        reader.cancel()
        while not answers.empty():
            pending = answers.get_nowait()
            if pending is None:
                continue
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: a batch after the failed one
            pending.cancel()
        calls.admission.close_stream(rpc.stream)
    if failure is not None:
        await context.abort(failure.code, failure.message)


async def _read_batches(
    self: _Relay,
    rpc: Rpc,
    request_iterator: AsyncIterator[usage_pb2.SubmitUsageRequest],
    context: Any,
    answers: asyncio.Queue[asyncio.Future[usage_pb2.SubmitUsageResponse] | None],
) -> None:
    """Start a backend call per batch read; queue its future in stream order."""
    loop = asyncio.get_running_loop()
    calls = self._calls

    async def fail(exc: Failure) -> None:
        failed: asyncio.Future[usage_pb2.SubmitUsageResponse] = loop.create_future()
        failed.set_exception(exc)
        await answers.put(failed)

    try:
        async for request in request_iterator:
            try:
                checked(check, rpc.name, request, calls.limits)
                timeout_s = calls.timeout_s(context)
            except Failure as exc:
                await fail(exc)
                return
            task = asyncio.ensure_future(
                calls.run(
                    rpc.name,
                    partial(self._backend.call, rpc),
                    request,
                    timeout_s=timeout_s,
                    records=_records(rpc, request),
                )
            )
            await answers.put(task)
    except Exception as exc:  # reading the client's stream failed
        await fail(internal_failure(rpc.name, exc))
        return
    # The end of the client's stream. A cancellation skips this on purpose:
    # then the writer is gone, and nobody would take the marker.
    await answers.put(None)


def _method(rpc: Rpc) -> Handler:
    if rpc.client_streaming:
        if rpc.name != "UsageService.StreamUsage":
            raise RuntimeError(f"{rpc.name}: a client stream needs code of its own here")
        return _stream_usage
    return _server_stream(rpc) if rpc.server_streaming else _unary(rpc)


def _servicer_classes() -> list[tuple[type[_Relay], Callable[[Any, Any], None]]]:
    """A servicer class per service, with the function that registers it on a server.

    The generated bases are subclassed so that a method the table does not serve
    would answer UNIMPLEMENTED (the table is checked complete at import).
    """
    built: list[tuple[type[_Relay], Callable[[Any, Any], None]]] = []
    for service, methods in SERVICES.items():
        proto_file = rpc_named(f"{service}.{methods[0]}").descriptor.containing_service.file
        # petribill/v1/usage.proto -> petribill.v1.usage_pb2_grpc (generated beside _pb2)
        grpc_module = importlib.import_module(
            proto_file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
        )
        base = getattr(grpc_module, f"{service}Servicer")
        members = {m: _method(rpc_named(f"{service}.{m}")) for m in methods}
        cls = type(f"{service}Servicer", (_Relay, base), members)
        built.append((cls, partial(_register, service, methods)))
    return built


def _register(service: str, methods: tuple[str, ...], servicer: Any, server: Any) -> None:
    """Register ``servicer``'s methods as the generated ``add_*_to_server`` would, but
    with deserializers that hand an unreadable request to the servicer (as
    :class:`~cluster.gateway.validate.Unreadable`) rather than let grpc.aio answer
    UNKNOWN: the servicer's check answers INVALID_ARGUMENT."""
    handlers = {}
    for method in methods:
        rpc = rpc_named(f"{service}.{method}")
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(rpc.client_streaming, rpc.server_streaming)]
        handlers[method] = kind(
            getattr(servicer, method),
            request_deserializer=_reader(rpc.request_type),
            response_serializer=rpc.response_type.SerializeToString,
        )
    name = f"{PACKAGE}.{service}"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _reader(message_type: type[Message]) -> Callable[[bytes], Any]:
    """``message_type.FromString``, answering :class:`Unreadable` for bytes it cannot parse."""
    parse = message_type.FromString
    type_name = message_type.DESCRIPTOR.name

    def read(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Unreadable(type_name, "not a valid protobuf encoding")
        except RecursionError:
            return Unreadable(type_name, "nested too deeply")

    return read


def add_servicers(server: Any, backend: Backend, calls: Calls, guard: Guard) -> None:
    """Register every petribill.v1 servicer on ``server``."""
    for servicer_class, register in SERVICERS:
        register(servicer_class(backend, calls, guard), server)


SERVICERS = _servicer_classes()
assert {cls.__name__.removesuffix("Servicer") for cls, _ in SERVICERS} == set(SERVICES)
assert len(RPCS) == sum(len(m) for m in SERVICES.values())
