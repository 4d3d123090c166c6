"""What token authentication and TLS cost a unary call on loopback.

Four servers of the same trivial method (raw bytes echoed): plaintext
without authentication (the baseline), plaintext with the token interceptor,
TLS with tokens, and mutual TLS with tokens. One synchronous client calls
each in turn (interleaved rounds, so a noisy neighbour hits all alike); the
figure is the median per-call latency over ``--rounds`` rounds, and each is
given as a ratio to the baseline. Also: ``TokenStore.verify`` alone.

Run: ``PYTHONPATH=.:proto .venv/bin/python bench/security.py`` (≈10 s).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from cluster.security.auth import TokenInterceptor, bearer_metadata
from cluster.security.certs import write_dev_certs
from cluster.security.roles import Role
from cluster.security.tls import channel_credentials, server_credentials
from cluster.security.tokens import TokenStore, create_token

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, _context: Any) -> bytes:
    return request


def _serve(loop: asyncio.AbstractEventLoop, interceptors: list[Any], creds: Any) -> int:
    async def start() -> int:
        server = grpc.aio.server(interceptors=interceptors)
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        address = "127.0.0.1:0"
        port: int = (
            server.add_insecure_port(address)
            if creds is None
            else server.add_secure_port(address, creds)
        )
        await server.start()
        _servers.append(server)
        return port

    return asyncio.run_coroutine_threadsafe(start(), loop).result(10)


_servers: list[Any] = []


def _caller(stub: Any, metadata: Any) -> Callable[[], Any]:
    return lambda: stub(b"x" * 64, metadata=metadata, timeout=5)


def _per_call_us(call: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="pb-bench-security-"))
    certs = write_dev_certs(folder / "certs")
    tokens = folder / "tokens.jsonl"
    token = create_token(tokens, role=Role.OPERATOR).bearer
    for role in Role:  # a file of a realistic handful of tokens
        create_token(tokens, role=role, account_id="a-1" if role is Role.SELFCARE else None)
    store = TokenStore(tokens)
    auth = [TokenInterceptor(store)]

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    tls = server_credentials(certs.server_cert, certs.server_key)
    mtls = server_credentials(certs.server_cert, certs.server_key, client_ca=certs.ca)
    ports = {
        "plaintext": _serve(loop, [], None),
        "plaintext+token": _serve(loop, auth, None),
        "tls+token": _serve(loop, auth, tls),
        "mtls+token": _serve(loop, auth, mtls),
    }
    client_tls = channel_credentials(ca=certs.ca)
    client_mtls = channel_credentials(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    channels = {
        "plaintext": grpc.insecure_channel(f"127.0.0.1:{ports['plaintext']}"),
        "plaintext+token": grpc.insecure_channel(f"127.0.0.1:{ports['plaintext+token']}"),
        "tls+token": grpc.secure_channel(f"127.0.0.1:{ports['tls+token']}", client_tls),
        "mtls+token": grpc.secure_channel(f"127.0.0.1:{ports['mtls+token']}", client_mtls),
    }
    metadata = bearer_metadata(token)
    calls: dict[str, Callable[[], Any]] = {}
    for name, channel in channels.items():
        stub = channel.unary_unary(METHOD)
        calls[name] = _caller(stub, None if name == "plaintext" else metadata)
        for _ in range(50):  # connect, handshake, warm up
            calls[name]()

    samples: dict[str, list[float]] = {name: [] for name in calls}
    verify_us: list[float] = []
    for _ in range(args.rounds):
        for name, call in calls.items():
            samples[name].append(_per_call_us(call, args.calls))
        verify_us.append(_per_call_us(lambda: store.verify(token), 20_000))

    base = statistics.median(samples["plaintext"])
    result: dict[str, Any] = {"bench": "security", "calls": args.calls, "rounds": args.rounds}
    print(f"{'case':<18}{'µs/call (median)':>18}{'vs plaintext':>14}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>18.1f}{median / base:>13.2f}x")
        key = name.replace("+", "_")
        result[f"{key}_us"] = round(median, 1)
        result[f"{key}_ratio"] = round(median / base, 3)
    verify = statistics.median(verify_us)
    print(f"{'verify() alone':<18}{verify:>18.2f}")
    result["verify_us"] = round(verify, 2)
    for channel in channels.values():
        channel.close()
    for server in _servers:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
