"""TLS credentials for gateways and their clients, from PEM files.

A gateway has a certificate and key; with a client CA it also demands a
client certificate signed by that CA, and a client without one is refused in
the TLS handshake, before any call (``require_client_auth``). Files are read
and checked here, with a message naming the file, because gRPC itself reports
a bad key or a mismatched pair only as a failure to bind or to connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TlsConfigError", "TlsFiles", "channel_credentials", "server_credentials"]


class TlsConfigError(ValueError):
    """Raised when a certificate, key or CA file is missing, unreadable or not what it should be
    (not PEM, a key that does not match its certificate, a key without its certificate)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """The PEM contents a gateway serves with, read and checked by :meth:`load`."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> TlsFiles:
        cert_pem, key_pem = _read(cert), _read(key)
        _check_pair(cert, cert_pem, key, key_pem)
        ca_pem = None
        if client_ca is not None:
            ca_pem = _read(client_ca)
            _certificates(client_ca, ca_pem)
        return cls(cert_pem=cert_pem, key_pem=key_pem, client_ca_pem=ca_pem)


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``: TLS, and mutual TLS when ``client_ca`` is set."""
    files = TlsFiles.load(cert, key, client_ca)
    return grpc.ssl_server_credentials(
        [(files.key_pem, files.cert_pem)],
        root_certificates=files.client_ca_pem,
        require_client_auth=files.client_ca_pem is not None,
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Credentials for ``grpc.secure_channel``: trust ``ca`` (default: the system's roots),
    and present ``cert``/``key`` (both or neither) to a gateway that wants mutual TLS."""
    if (cert is None) != (key is None):
        raise TlsConfigError("a client certificate needs its key, and a key its certificate")
    ca_pem = None
    if ca is not None:
        ca_pem = _read(ca)
        _certificates(ca, ca_pem)
    cert_pem = key_pem = None
    if cert is not None and key is not None:
        cert_pem, key_pem = _read(cert), _read(key)
        _check_pair(cert, cert_pem, key, key_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _certificates(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError(f"{path}: not a PEM certificate") from None
    return certs


def _check_pair(cert: Path, cert_pem: bytes, key: Path, key_pem: bytes) -> None:
    # The first certificate of a chain is the one the key belongs to.
    leaf = _certificates(cert, cert_pem)[0]
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; gRPC cannot take a passphrase.
        raise TlsConfigError(f"{key}: not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(
        der, public
    ):
        raise TlsConfigError(f"{key}: does not belong to the certificate in {cert}")
