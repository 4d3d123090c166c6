"""Who may call a gateway, and what is written down: tokens, roles, accounts, TLS, the audit.

:class:`SecuritySettings` is the ``[security]`` table as a gateway needs it (plain
paths: it crosses into the gateway's Ray actor). :class:`Guard` is what one
gateway process builds from it, and uses on every call:

1. **Before the handler** (:class:`~cluster.security.auth.TokenInterceptor`):
   every method but the standard health check needs a valid bearer token
   (UNAUTHENTICATED), and its role must be among the RPC's roles of the one RPC
   table, ``cluster.backend.rpcs`` (PERMISSION_DENIED). Reflection needs a
   valid token of any role.
2. **In the handler** (:meth:`Guard.enter`): a ``selfcare`` token may name only
   the account it is bound to, in the RPC's account field (``Rpc.account``;
   Subscribe's ``account_ids``): PERMISSION_DENIED otherwise.
3. **After the call**: an audited RPC (``Rpc.audited``: writes and operator
   calls) is written to the audit log with the token id, role, account,
   request id and the status it ended with; refused calls too.

TLS is the server's credentials (:meth:`Guard.server_credentials`): with a
client CA, a client without a certificate signed by it fails the handshake.
Without a tokens file nothing is authenticated (the embedded default on
loopback); ``petribill up`` refuses that beyond loopback.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.message import Message

from cluster.backend.rpcs import PACKAGE, Rpc, rpc_named
from cluster.security.audit import AuditLog
from cluster.security.auth import (
    AuthError,
    Principal,
    TokenInterceptor,
    check_account,
    check_accounts,
    current_principal,
)
from cluster.security.roles import Role
from cluster.security.tokens import TokenStore

if TYPE_CHECKING:
    from cluster.config import SecurityConfig

__all__ = ["Guard", "SecuritySettings"]

log = structlog.get_logger("petribill.gateway")

_PREFIX = f"/{PACKAGE}."


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuritySettings:
    """What a gateway enforces: absolute paths, or None for off."""

    tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    audit_dir: str | None = None

    @classmethod
    def from_config(cls, security: SecurityConfig, *, data_dir: Path) -> SecuritySettings:
        """The ``[security]`` table (paths made absolute by ``load_config``); the audit log
        goes to ``DATA/audit`` unless ``audit_dir`` says otherwise."""

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path.absolute())

        return cls(
            tokens_file=text(security.tokens_file),
            tls_cert=text(security.tls_cert),
            tls_key=text(security.tls_key),
            client_ca=text(security.client_ca),
            audit_dir=text(security.audit_dir or data_dir / "audit"),
        )


def rpc_of(method: str) -> Rpc | None:
    """The table's row of a full method name (``/petribill.v1.AccountService/TopUp``)."""
    if not method.startswith(_PREFIX):
        return None
    service, _, name = method[len(_PREFIX) :].partition("/")
    try:
        return rpc_named(f"{service}.{name}")
    except KeyError:
        return None


def _roles(method: str) -> Collection[Role] | None:
    """The roles of a petribill method; None (any valid token) for reflection and the rest."""
    rpc = rpc_of(method)
    return None if rpc is None else rpc.roles


class Guard:
    """The security of one gateway process (see the module docstring).

    Raises ``TokenFileError`` or ``TlsConfigError`` (naming the file) when a file
    of the settings is unusable, so a gateway does not start half protected.
    """

    def __init__(self, settings: SecuritySettings | None = None) -> None:
        self.settings = settings or SecuritySettings()
        s = self.settings
        self.tokens = TokenStore(Path(s.tokens_file)) if s.tokens_file else None
        self._credentials: grpc.ServerCredentials | None = None
        if s.tls_cert and s.tls_key:
            from cluster.security.tls import server_credentials

            ca = Path(s.client_ca) if s.client_ca else None
            self._credentials = server_credentials(Path(s.tls_cert), Path(s.tls_key), ca)
        self.audit_log = AuditLog(Path(s.audit_dir)) if s.audit_dir else None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The server's interceptors: token and role checks, when there is a tokens file."""
        if self.tokens is None:
            return []
        return [TokenInterceptor(self.tokens, method_roles=_roles, on_refused=self._refused)]

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS (mutual with a client CA) for ``add_secure_port``; None for plaintext."""
        return self._credentials

    async def enter(self, rpc: Rpc, request: Any, context: Any) -> None:
        """Start a call the interceptor admitted: note it for the audit, and refuse a
        selfcare token naming another account (``context.abort``: PERMISSION_DENIED)."""
        principal = current_principal()
        if self.audit_log is not None and rpc.audited:
            context.add_done_callback(partial(self._ended, rpc, request, principal))
        if principal is None or rpc.account is None or not isinstance(request, Message):
            return  # an unreadable request names no account: the check refuses it
        named = getattr(request, rpc.account)
        try:
            if isinstance(named, str):
                check_account(principal, named)
            else:
                check_accounts(principal, list(named))
        except AuthError as exc:
            log.info("call_refused", rpc=rpc.name, code=exc.code.name, reason=exc.message)
            await context.abort(exc.code, exc.message)

    def close(self) -> None:
        if self.audit_log is not None:
            self.audit_log.close()

    def _ended(self, rpc: Rpc, request: Any, principal: Principal | None, context: Any) -> None:
        """The done callback of an audited call: its status, as the client saw it."""
        if context.cancelled():
            outcome = grpc.StatusCode.CANCELLED
        else:
            outcome = context.code() or grpc.StatusCode.OK
        self._record(rpc, outcome, principal, request)

    def _refused(self, method: str, principal: Principal | None, error: AuthError) -> None:
        """The interceptor refused a call before its handler: audit it if its RPC is."""
        rpc = rpc_of(method)
        if rpc is not None and rpc.audited:
            self._record(rpc, error.code, principal, None)

    def _record(
        self, rpc: Rpc, outcome: grpc.StatusCode, principal: Principal | None, request: Any
    ) -> None:
        if self.audit_log is None:
            return
        account_field, request_id_field = _audit_fields(rpc)
        try:
            self.audit_log.record(
                rpc=rpc.name,
                outcome=outcome,
                principal=principal,
                account_id=_field(request, account_field),
                request_id=_field(request, request_id_field),
            )
        except (OSError, ValueError) as exc:  # a full disk must not fail the call itself
            log.error("audit_write_failed", rpc=rpc.name, error=str(exc))


_AUDIT_FIELDS: dict[str, tuple[str | None, str | None]] = {}


def _audit_fields(rpc: Rpc) -> tuple[str | None, str | None]:
    """The request fields an audit line quotes: the account and the request id, each
    None when the RPC's request has no such field (looked up once per RPC, not per call;
    keyed by name, as hashing a whole row costs more than the look-up it saves)."""
    found = _AUDIT_FIELDS.get(rpc.name)
    if found is None:
        fields = rpc.descriptor.input_type.fields_by_name
        account = rpc.account or "account_id"
        found = _AUDIT_FIELDS[rpc.name] = (
            account if account in fields else None,
            "request_id" if "request_id" in fields else None,
        )
    return found


def _field(request: Any, name: str | None) -> str | None:
    """A string field of the request, if it has it and it is set."""
    if name is None or not isinstance(request, Message):
        return None
    value = getattr(request, name)
    return value if isinstance(value, str) and value else None
