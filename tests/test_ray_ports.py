"""No port of the embedded default listens beyond loopback: Ray's GCS, raylets, object
managers, agents, workers, the driver, and petribill's gateways.

Every listening TCP socket of the cluster's processes is found from ``/proc``: the
sockets in LISTEN state (``/proc/net/tcp`` and ``tcp6``) whose inode one of the
processes holds open (``/proc/<pid>/fd``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path

import pytest

from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]

_LISTEN = "0A"


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return ipaddress.IPv4Address(struct.pack("<I", int(hex_ip, 16)))
    # /proc prints an IPv6 address as four 32-bit words in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, words))


def listening_sockets() -> dict[str, tuple[str, int]]:
    """``inode -> (address, port)`` of every TCP socket in LISTEN state on this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN:
                hex_ip, hex_port = local.split(":")
                found[inode] = (str(_address(hex_ip)), int(hex_port, 16))
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (none if it is gone)."""
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_is_loopback_tells_wildcards_and_interfaces_from_loopback() -> None:
    """The check itself: 0.0.0.0, :: and an interface address are not loopback."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"))


def test_no_port_of_the_embedded_default_listens_beyond_loopback(tmp_path: Path) -> None:
    """Two simulated nodes with their gateways: every listener of every process is loopback."""
    runtime = small_runtime(tmp_path / "data", nodes=2, port=0)
    with running(runtime) as info:
        assert runtime.local is not None
        assert all(g.startswith("127.0.0.1:") for g in info.gateways), info.gateways
        assert info.address.startswith("127.0.0.1:"), info.address  # the GCS Ray advertises
        sockets = listening_sockets()
        pids = runtime.local.pids() | {os.getpid()}
        seen = {
            (pid, *sockets[inode])
            for pid in pids
            for inode in socket_inodes(pid)
            if inode in sockets
        }
        gateway_ports = {int(g.rsplit(":", 1)[1]) for g in info.gateways}
        assert gateway_ports <= {port for _, _, port in seen}  # the gateways were looked at
        assert len({pid for pid, _, _ in seen}) >= 6  # GCS, raylets, agents, workers, driver
        beyond = sorted(
            (pid, address, port) for pid, address, port in seen if not is_loopback(address)
        )
        assert not beyond, [(pid, address, port, _command(pid)) for pid, address, port in beyond]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"
