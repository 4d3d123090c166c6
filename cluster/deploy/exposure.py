"""What ``petribill up`` refuses to expose: plaintext, unauthenticated listeners beyond loopback.

The embedded default listens on 127.0.0.1 only and may run without TLS and
tokens: only this machine can reach it. A gateway bound to any other address
(``[gateway] host``) must have TLS and tokens (``[security] tls_cert``,
``tls_key``, ``tokens_file``), and a Ray cluster joined on another address
(``--address``) must run with Ray's token authentication, which this process
must be set up for too (``RAY_AUTH_MODE=token``; docs/operations-notes.md).
``--insecure`` overrides both, knowingly.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from cluster.config import ClusterConfig

__all__ = ["exposure_problem", "is_loopback_host"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for a name or address that only this machine can reach (127.0.0.0/8, ::1,
    localhost); False for wildcards (0.0.0.0, ::, empty) and every other name."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` too); an address without a port as is."""
    address = address.strip()
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else address


def exposure_problem(
    config: ClusterConfig, ray_address: str | None, env: Mapping[str, str] | None = None
) -> str | None:
    """Why starting this cluster would expose it (one line), or None when it would not."""
    env = os.environ if env is None else env
    host = config.gateway.host
    security = config.security
    if not is_loopback_host(host) and not (security.tls and security.tokens):
        missing = [
            what
            for what, present in (("TLS", security.tls), ("tokens", security.tokens))
            if not present
        ]
        return (
            f"refusing to serve gateways on {host or '0.0.0.0'} without "
            f"{' and '.join(missing)} ([security] tls_cert, tls_key, tokens_file in "
            "cluster.toml); pass --insecure to do it anyway"
        )
    ray_authenticated = env.get("RAY_AUTH_MODE", "").lower() == "token"
    if ray_address and not is_loopback_host(_host_of(ray_address)) and not ray_authenticated:
        return (
            f"refusing to join Ray at {ray_address} without Ray's token authentication "
            "(export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH on every node and here: "
            "docs/operations-notes.md); pass --insecure to do it anyway"
        )
    return None
