"""Security: bearer tokens and roles, TLS, confined server-side paths, the audit log (issue 14).

One module per concept, none importing the rest of ``cluster/``:

- :mod:`~cluster.security.roles` — the :class:`Role` a token carries;
- :mod:`~cluster.security.tokens` — the tokens file, creating and revoking
  tokens, the :class:`TokenStore` that verifies them and follows the file;
- :mod:`~cluster.security.auth` — a call's metadata to a :class:`Principal`,
  role and account checks, and a grpc.aio interceptor;
- :mod:`~cluster.security.tls` — server and channel credentials from PEM files;
- :mod:`~cluster.security.certs` — a development CA and certificates;
- :mod:`~cluster.security.paths` — :func:`resolve_under`, for Backup and LoadTariffs;
- :mod:`~cluster.security.audit` — the audit log writer and reader.

The TLS and certificate modules import ``cryptography``; they are not
imported here, so a process that only checks tokens does not load it.
"""

from cluster.security.auth import (
    AuthError,
    PermissionDenied,
    Principal,
    Unauthenticated,
    authenticate,
    check_account,
    check_accounts,
    check_role,
)
from cluster.security.paths import PathRefused, resolve_under
from cluster.security.roles import Role
from cluster.security.tokens import TokenStore

__all__ = [
    "AuthError",
    "PathRefused",
    "PermissionDenied",
    "Principal",
    "Role",
    "TokenStore",
    "Unauthenticated",
    "authenticate",
    "check_account",
    "check_accounts",
    "check_role",
    "resolve_under",
]
