"""How the gateway runs one call: deadline, admission, the backend, and the status it answers.

Every servicer method goes through :class:`Calls`, so the rules hold for all
RPCs alike: the backend gets the time left (``timeout_s``) and is cancelled
when it overruns it (DEADLINE_EXCEEDED); a call that does not fit the limits
is refused at once (RESOURCE_EXHAUSTED, naming the limit); a
:class:`~cluster.api.errors.BackendError` becomes its own status; anything
else is logged with an error id and answered INTERNAL with that id. No path
leaves a call unanswered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from actors import metrics
from cluster.api.errors import BackendError
from cluster.gateway.limits import Admission, GatewayLimits, Overloaded

__all__ = ["MESSAGE_CHARS_MAX", "Calls", "Failure", "checked", "internal_failure"]

log = structlog.get_logger("petribill.gateway")

#: The longest status message answered; longer ones are cut.
MESSAGE_CHARS_MAX = 2000

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class Failure(Exception):
    """A call's final status, raised inside the gateway and answered by the servicer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        # The message travels as the grpc-message trailer, which clients cap (16 KiB
        # of metadata by default): a longer one would turn into RESOURCE_EXHAUSTED.
        if len(message) > MESSAGE_CHARS_MAX:
            message = f"{message[:MESSAGE_CHARS_MAX]}... ({len(message)} characters)"
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class _Context(Protocol):
    """The part of ``grpc.aio.ServicerContext`` the gateway uses (typed here: grpc has no stubs)."""

    def time_remaining(self) -> float | None: ...

    async def abort(self, code: grpc.StatusCode, details: str = "") -> Any: ...

    async def write(self, message: Any) -> None: ...


class Calls:
    """Runs calls against the backend under the gateway's limits."""

    def __init__(self, limits: GatewayLimits, admission: Admission) -> None:
        self.limits = limits
        self.admission = admission

    def timeout_s(self, context: _Context) -> float:
        """The backend's time for a unary call or a stream batch.

        The client's deadline left, capped at ``request_timeout_max_s``, or
        ``request_timeout_default_s`` when the client set none.
        """
        remaining = self.stream_timeout_s(context)
        return self.limits.request_timeout_default_s if remaining is None else remaining

    def stream_timeout_s(self, context: _Context) -> float | None:
        """The time left of a whole stream: the client's deadline, capped, or None for none."""
        remaining = context.time_remaining()
        if remaining is None:
            return None
        if remaining <= 0:
            raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call ran")
        return min(remaining, self.limits.request_timeout_max_s)

    async def run(
        self,
        name: str,
        call: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        timeout_s: float,
        records: int = 0,
    ) -> Resp:
        """Admit, call the backend within ``timeout_s``, and turn every failure into a Failure.

        Every outcome is counted in the metrics (``actors.metrics.rpc``)."""
        began = time.monotonic()
        code = "OK"
        try:
            return await self._run(name, call, request, timeout_s=timeout_s, records=records)
        except Failure as failure:
            code = failure.code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            metrics.rpc(name, code, time.monotonic() - began)

    async def _run(
        self,
        name: str,
        call: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        timeout_s: float,
        records: int,
    ) -> Resp:
        try:
            self.admission.enter(records)
        except Overloaded as exc:
            log.info("rpc_refused", rpc=name, reason=str(exc))
            raise Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        try:
            # asyncio.timeout, not wait_for: the call runs in this task, not in one more.
            async with asyncio.timeout(timeout_s):
                return await call(request, timeout_s=timeout_s)
        except BackendError as exc:
            failure = Failure(exc.code, exc.message)  # the message cut to its bound
            log.debug("rpc_backend_error", rpc=name, code=exc.code.name, message=failure.message)
            raise failure from None
        except TimeoutError:
            log.warning("rpc_deadline_exceeded", rpc=name, timeout_s=round(timeout_s, 3))
            raise Failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{name}: no answer from the cluster within {timeout_s:.3f} s; "
                "the outcome is unknown, retry with the same ids",
            ) from None
        except Exception as exc:
            raise internal_failure(name, exc) from None
        finally:
            self.admission.leave(records)

    async def unary(
        self,
        context: _Context,
        name: str,
        call: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        check: Callable[[Any, GatewayLimits], None] | None = None,
        records: int = 0,
    ) -> Resp:
        """A unary RPC: validate, run, answer (``context.abort`` on failure)."""
        try:
            if check is not None:
                checked(check, name, request, self.limits)
            timeout_s = self.timeout_s(context)
            return await self.run(name, call, request, timeout_s=timeout_s, records=records)
        except Failure as failure:
            await context.abort(failure.code, failure.message)
            raise  # abort raises; this line only satisfies type checkers

    async def server_stream(
        self,
        context: _Context,
        name: str,
        items: Callable[[], AsyncIterator[Message]],
        *,
        kind: str,
    ) -> None:
        """A server stream: admit one stream of ``kind``, relay every item, close the iterator."""
        try:
            self.admission.open_stream(kind)
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        iterator: AsyncIterator[Message] | None = None
        failure: Failure | None = None
        try:
            iterator = items()
            async for item in iterator:
                await context.write(item)
        except BackendError as exc:
            failure = Failure(exc.code, exc.message)
        except Failure as exc:
            failure = exc
        except Exception as exc:
            failure = internal_failure(name, exc)
        finally:
            self.admission.close_stream(kind)
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        if failure is not None:
            await context.abort(failure.code, failure.message)


def checked(
    check: Callable[[Any, GatewayLimits], None], name: str, request: Any, limits: GatewayLimits
) -> None:
    """Run a request check; a check that fails by a bug answers INTERNAL with an id, not
    UNKNOWN (grpc.aio's answer to an exception that escapes a servicer)."""
    try:
        check(request, limits)
    except Failure:
        raise
    except Exception as exc:
        raise internal_failure(name, exc) from None


def internal_failure(name: str, exc: BaseException) -> Failure:
    """Log an unexpected exception with an id, and the INTERNAL answer that quotes the id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("rpc_internal_error", rpc=name, error_id=error_id, exc_info=exc)
    return Failure(
        grpc.StatusCode.INTERNAL, f"{name}: internal error {error_id} (see the gateway log)"
    )
