"""Who is calling, and may they: a call's bearer token to a :class:`Principal`, then its role.

Three checks, each its own function so the gateway can call them where it
validates a request, without grpc.aio's servicer context:

- :func:`authenticate` — the ``authorization: Bearer <token>`` metadata to a
  :class:`Principal`, or :class:`Unauthenticated`;
- :func:`check_role` — the principal's role is among the RPC's roles, or
  :class:`PermissionDenied`;
- :func:`check_account` — a ``selfcare`` principal names only its own
  account, or :class:`PermissionDenied`.

Both exceptions carry the gRPC ``code`` and a ``message`` for the client
(never the token), like the gateway's ``Failure``. :class:`TokenInterceptor`
does the first two from metadata alone, for calls whose request need not be
read (reflection needs a valid token of any role; the standard health check
needs none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

import grpc
import structlog

from cluster.security.roles import Role
from cluster.security.tokens import InvalidToken, TokenFileError, TokenRecord

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "AuthError",
    "PermissionDenied",
    "Principal",
    "TokenInterceptor",
    "TokenVerifier",
    "Unauthenticated",
    "authenticate",
    "bearer_metadata",
    "check_account",
    "check_accounts",
    "check_role",
    "current_principal",
]

log = structlog.get_logger("petribill.security")

#: Every method of the standard health service: open to all, as load balancers probe it.
HEALTH_METHOD_PREFIX: Final = "/grpc.health.v1.Health/"
_HEADER: Final = "authorization"
_SCHEME: Final = "bearer"

Metadata = Iterable[tuple[str, str | bytes]] | None


class AuthError(Exception):
    """A refused call: ``code`` is its gRPC status, ``message`` what the client is told."""

    code: ClassVar[grpc.StatusCode]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(AuthError):
    """Raised by :func:`authenticate` when the caller is not known: the authorization
    metadata is missing, repeated or not ``Bearer <token>``, or the token is malformed,
    unknown or revoked, or the tokens file cannot be used right now."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AuthError):
    """Raised by :func:`check_role` for a role outside the RPC's set, and by
    :func:`check_account` when a selfcare token names another account."""

    code = grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """The authenticated caller of one call: a token's id, role and bound account."""

    token_id: str
    role: Role
    account_id: str | None = None  # set for selfcare tokens only

    @classmethod
    def of(cls, record: TokenRecord) -> Principal:
        return cls(token_id=record.token_id, role=record.role, account_id=record.account_id)


class TokenVerifier(Protocol):
    """What :func:`authenticate` needs of a token store (:class:`~.tokens.TokenStore`)."""

    def verify(self, bearer: str) -> TokenRecord: ...


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends with ``token`` (pass as ``metadata=`` on each call)."""
    return ((_HEADER, f"Bearer {token}"),)


def _bearer(metadata: Metadata) -> str:
    values = [value for key, value in metadata or () if key.lower() == _HEADER]
    if not values:
        raise Unauthenticated("missing authorization metadata (authorization: Bearer <token>)")
    if len(values) > 1:
        # Two headers could be read differently by a proxy and by us: refuse the ambiguity.
        raise Unauthenticated("more than one authorization metadata entry")
    value = values[0]
    scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
    token = token.strip(" ")
    if scheme.lower() != _SCHEME or not token:
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token


def authenticate(metadata: Metadata, verifier: TokenVerifier) -> Principal:
    """The principal of a call with invocation ``metadata``; :class:`Unauthenticated` if none.

    ``metadata`` is what grpc gives: ``context.invocation_metadata()`` or
    ``HandlerCallDetails.invocation_metadata`` (pairs of key and value).
    """
    token = _bearer(metadata)
    try:
        record = verifier.verify(token)
    except InvalidToken as exc:
        raise Unauthenticated(exc.message) from None
    except TokenFileError:
        # The store has logged the file's problem; the client learns only that it must wait.
        raise Unauthenticated("tokens cannot be verified now; try again later") from None
    return Principal.of(record)


def check_role(principal: Principal, allowed_roles: Collection[Role], rpc_name: str) -> None:
    """Refuse (:class:`PermissionDenied`) a principal whose role the RPC does not admit."""
    if principal.role not in allowed_roles:
        allowed = ", ".join(sorted(r.value for r in allowed_roles)) or "none"
        raise PermissionDenied(
            f"{rpc_name}: role {principal.role.value} is not allowed (allowed: {allowed})"
        )


def check_account(principal: Principal, account_id: str) -> None:
    """Refuse (:class:`PermissionDenied`) a selfcare principal naming another account.

    Other roles may name any account (their RPC set is their limit). An empty
    ``account_id`` is another account too: a selfcare call must name its own.
    """
    if principal.role is Role.SELFCARE and account_id != principal.account_id:
        raise PermissionDenied("a selfcare token may only read the account it is bound to")


def check_accounts(principal: Principal, account_ids: Collection[str]) -> None:
    """:func:`check_account` for a request naming several accounts (Subscribe's
    ``account_ids``): a selfcare principal must name its own account only, and
    naming none (which means *all* to Subscribe) is refused too."""
    if principal.role is Role.SELFCARE and set(account_ids) != {principal.account_id}:
        raise PermissionDenied("a selfcare token may only read the account it is bound to")


_current: ContextVar[Principal | None] = ContextVar("petribill_principal", default=None)


def current_principal() -> Principal | None:
    """The principal :class:`TokenInterceptor` admitted for the call being handled, if any."""
    return _current.get()


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call from its metadata, before its handler runs.

    Methods starting with one of ``open_prefixes`` (default: the standard
    health service) pass without a token. For the others, the token must be
    valid; if ``method_roles`` is given and returns a set of roles for the
    method's full name (``/package.Service/Method``), the role must be in it,
    and ``None`` means any valid token (reflection, for instance). A refused
    call is answered with the status of the :class:`AuthError`, after
    ``on_refused(method, principal, error)`` is told (``principal`` is None when
    the caller was not authenticated); an admitted one runs with
    :func:`current_principal` set, so the handler can apply
    :func:`check_account` to the account its request names.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        open_prefixes: tuple[str, ...] = (HEALTH_METHOD_PREFIX,),
        method_roles: Callable[[str], Collection[Role] | None] | None = None,
        on_refused: Callable[[str, Principal | None, AuthError], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.open_prefixes = open_prefixes
        self.method_roles = method_roles
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.startswith(self.open_prefixes):
            return await continuation(handler_call_details)
        principal: Principal | None = None
        try:
            principal = authenticate(handler_call_details.invocation_metadata, self.verifier)
            roles = self.method_roles(method) if self.method_roles is not None else None
            if roles is not None:
                check_role(principal, roles, method)
        except AuthError as exc:
            log.info("call_refused", method=method, code=exc.code.name, reason=exc.message)
            if self.on_refused is not None:
                self.on_refused(method, principal, exc)
            handler = await continuation(handler_call_details)
            # An unknown method stays UNIMPLEMENTED: there is no handler shape to answer with.
            return None if handler is None else _refusing(handler, exc)
        # grpc.aio runs the interceptors and the handler of one call in one contextvars
        # Context, fresh per call: the principal set here is the handler's, and only its.
        _current.set(principal)
        return await continuation(handler_call_details)


def _refusing(handler: grpc.RpcMethodHandler, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``error`` without reading."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.code, error.message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    result: grpc.RpcMethodHandler = make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return result
