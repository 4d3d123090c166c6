"""A development CA and certificates for trials and tests (``petribill certs DIR``).

Writes ``ca.pem``, ``server.pem`` + ``server.key`` (valid for localhost and
127.0.0.1, and any further hosts given) and ``client.pem`` + ``client.key``
(for mutual TLS). Keys are ECDSA P-256 (quick to make, supported by every gRPC
language) and written 0600. The CA's own key is not written: nobody can issue
further certificates under this CA, so a forgotten dev folder cannot become a
way in. For production, use certificates from a real CA (docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.security.files import write_atomic

__all__ = ["DEFAULT_HOSTS", "DEV_CERT_FILES", "CertsExist", "DevCerts", "write_dev_certs"]

DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1")
DEV_CERT_FILES: Final = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
VALID_DAYS_DEFAULT: Final = 365
# Valid from a little in the past, so a machine whose clock is slightly behind accepts it.
_BACKDATE: Final = timedelta(hours=1)


class CertsExist(FileExistsError):
    """Raised by :func:`write_dev_certs` when the folder already holds one of its files:
    replacing a CA silently would break every client that trusts the old one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DevCerts:
    """Where :func:`write_dev_certs` put its files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_dev_certs(
    folder: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    valid_days: int = VALID_DAYS_DEFAULT,
    now: datetime | None = None,
) -> DevCerts:
    """Write a fresh development CA and a server and a client certificate into ``folder``.

    ``folder`` is created if missing. ``hosts`` are the server certificate's
    names: IP addresses become IP SANs, others DNS SANs. Raises
    :class:`CertsExist` if any of the files is already there, ``OSError`` if
    the folder cannot be written.
    """
    if not hosts:
        raise ValueError("the server certificate needs at least one host")
    if valid_days <= 0:
        raise ValueError("valid_days must be > 0")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [name for name in DEV_CERT_FILES if (folder / name).exists()]
    if taken:
        raise CertsExist(f"{folder}: already holds {', '.join(taken)}; choose an empty folder")
    start = (now or datetime.now(UTC)) - _BACKDATE
    end = start + _BACKDATE + timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("petribill development CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(common_name), ca_name, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf(
        "petribill gateway", ExtendedKeyUsageOID.SERVER_AUTH, [_san(h) for h in hosts]
    )
    client_cert, client_key = leaf("petribill client", ExtendedKeyUsageOID.CLIENT_AUTH, None)

    paths = DevCerts(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    write_atomic(paths.ca, _cert_pem(ca_cert), mode=0o644)
    write_atomic(paths.server_cert, _cert_pem(server_cert), mode=0o644)
    write_atomic(paths.server_key, _key_pem(server_key), mode=0o600)
    write_atomic(paths.client_cert, _cert_pem(client_cert), mode=0o644)
    write_atomic(paths.client_key, _key_pem(client_key), mode=0o600)
    return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime,
    end: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
