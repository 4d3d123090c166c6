"""TLS and mutual TLS over real gRPC on loopback, with certificates from ``write_dev_certs``."""

from __future__ import annotations

import socket
import ssl
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2
from security_support import call, health_status, probe_server, status_of

from cluster.security.certs import CertsExist, DevCerts, write_dev_certs
from cluster.security.tls import TlsConfigError, channel_credentials, server_credentials

pytestmark = pytest.mark.timeout(60)

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCerts, DevCerts]:
    """Two unrelated development PKIs: the server's, and another one (a wrong CA)."""
    return (
        write_dev_certs(tmp_path_factory.mktemp("pki")),
        write_dev_certs(tmp_path_factory.mktemp("other")),
    )


def _secure(address: str, creds: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(address, creds)


def test_tls_with_the_right_ca_works_and_a_wrong_ca_or_plaintext_is_refused(
    pki: tuple[DevCerts, DevCerts],
) -> None:
    """A client trusting the server's CA is served; one trusting another CA, or speaking
    plaintext, never reaches a handler."""
    ours, other = pki
    creds = server_credentials(ours.server_cert, ours.server_key)
    with probe_server(credentials=creds) as served:
        with _secure(served.address, channel_credentials(ca=ours.ca)) as channel:
            assert call(channel, "Echo", b"over tls") == b"over tls"
        with _secure(served.address, channel_credentials(ca=other.ca)) as channel:
            code, details = status_of(call, channel, "Echo")
            assert code == Code.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in details
        with grpc.insecure_channel(served.address) as channel:
            code, _ = status_of(call, channel, "Echo")
            assert code == Code.UNAVAILABLE
        assert served.probe.calls == ["Echo"]


def test_mutual_tls_refuses_a_client_without_a_certificate_in_the_handshake(
    pki: tuple[DevCerts, DevCerts],
) -> None:
    """With a client CA, a client without a certificate (or with one of another CA) cannot
    even run the health check, which needs no token: the handshake itself refused it."""
    ours, other = pki
    creds = server_credentials(ours.server_cert, ours.server_key, client_ca=ours.ca)
    with probe_server(credentials=creds) as served:
        with _secure(served.address, channel_credentials(ca=ours.ca)) as channel:
            code, _ = status_of(health_status, channel)
            assert code == Code.UNAVAILABLE
        foreign = channel_credentials(ca=ours.ca, cert=other.client_cert, key=other.client_key)
        with _secure(served.address, foreign) as channel:
            code, _ = status_of(health_status, channel)
            assert code == Code.UNAVAILABLE
        mutual = channel_credentials(ca=ours.ca, cert=ours.client_cert, key=ours.client_key)
        with _secure(served.address, mutual) as channel:
            assert health_status(channel) == SERVING
            assert call(channel, "Echo", b"mtls") == b"mtls"
        assert served.probe.calls == ["Echo"]


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _first_http2_frame(port: int, certs: DevCerts, *, with_client_cert: bool) -> bytes:
    """Speak TLS by hand to the gateway port, send the HTTP/2 preface, read what comes back."""
    context = ssl.create_default_context(cafile=certs.ca)
    context.set_alpn_protocols(["h2"])
    if with_client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(_HTTP2_PREFACE)
        return tls.recv(9)


def test_mutual_tls_refusal_is_a_tls_alert_not_an_rpc_status(
    pki: tuple[DevCerts, DevCerts],
) -> None:
    """Below gRPC: with a client certificate the server answers the HTTP/2 preface with a
    SETTINGS frame; without one it ends the TLS session and not one HTTP/2 byte comes back."""
    ours, _ = pki
    creds = server_credentials(ours.server_cert, ours.server_key, client_ca=ours.ca)
    with probe_server(credentials=creds) as served:
        frame = _first_http2_frame(served.port, ours, with_client_cert=True)
        assert frame[3] == 0x04  # the frame type byte: SETTINGS
        try:
            answer = _first_http2_frame(served.port, ours, with_client_cert=False)
        except (ssl.SSLError, ConnectionResetError):  # an alert, or a reset, by the TLS version
            answer = b""
        assert answer == b""


def test_dev_certs_name_localhost_and_loopback_and_keep_keys_private(
    pki: tuple[DevCerts, DevCerts],
) -> None:
    """The server certificate is valid for localhost and 127.0.0.1; keys are mode 0600."""
    ours, _ = pki
    cert = x509.load_pem_x509_certificate(ours.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in (ours.server_key, ours.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in ours.ca.parent.iterdir()) == sorted(
        ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"]
    )


def test_dev_certs_refuse_to_replace_an_existing_ca(tmp_path: Path) -> None:
    """A second run into the same folder is refused and leaves the first CA as it was."""
    first = write_dev_certs(tmp_path)
    before = first.ca.read_bytes()
    with pytest.raises(CertsExist, match="already holds"):
        write_dev_certs(tmp_path)
    assert first.ca.read_bytes() == before


def test_tls_files_are_checked_with_a_message_naming_the_file(
    pki: tuple[DevCerts, DevCerts], tmp_path: Path
) -> None:
    """A key of another certificate, a missing file, a half client pair: refused, file named."""
    ours, other = pki
    with pytest.raises(TlsConfigError, match=r"server\.key: does not belong to the certificate"):
        server_credentials(ours.server_cert, other.server_key)
    with pytest.raises(TlsConfigError, match=r"missing\.pem: cannot read"):
        server_credentials(tmp_path / "missing.pem", ours.server_key)
    with pytest.raises(TlsConfigError, match="not a PEM certificate"):
        server_credentials(ours.server_key, ours.server_key)
    with pytest.raises(TlsConfigError, match="needs its key"):
        channel_credentials(ca=ours.ca, cert=ours.client_cert)
