"""The gateway's own Python per ChargeSession call, without gRPC, Ray or a cluster.

The servicer method that the gateway registers for ``ChargingService.ChargeSession``
is called directly, ``--calls`` times per round, with a stand-in for grpc.aio's servicer
context and a backend that answers at once: what is timed (CPU time of this process) is
the gateway's Python of one call — the guard (its done callback writes the audit line,
one append to a real audit file), the request rules, the deadline (``asyncio.timeout``),
admission and metrics, the status mapping — and nothing of the C core, the coalescer or
the Ray call. The baseline is the same backend awaited bare (``baseline_us_per_call``).
``--profile`` prints a cProfile of one round. The last line printed is JSON
(``us_per_call``: median of ``--runs`` rounds).

    PYTHONPATH=.:proto .venv/bin/python bench/gateway_call.py [--calls 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "proto"))

from petribill.v1 import charging_pb2, common_pb2  # noqa: E402

from cluster.backend.rpcs import Rpc  # noqa: E402
from cluster.gateway.calls import Calls  # noqa: E402
from cluster.gateway.guard import Guard, SecuritySettings  # noqa: E402
from cluster.gateway.limits import Admission, GatewayLimits  # noqa: E402
from cluster.gateway.servicers import SERVICERS  # noqa: E402

ANSWER = charging_pb2.SessionAnswer(
    request_id="ocs-1-1-0", session_id="ocs-1-1", result=charging_pb2.SESSION_RESULT_SUCCESS
)
REQUEST = charging_pb2.SessionRequest(
    request_id="ocs-1-1-0", session_id="ocs-1-1", account_id="ocs-00001",
    step=charging_pb2.SESSION_STEP_INITIAL, service=common_pb2.SERVICE_VOICE,
    requested_units=60, called_number="447700900123",
)  # fmt: skip


class Context:
    """The part of grpc.aio's servicer context a unary call uses; runs done callbacks."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def time_remaining(self) -> float:
        return 5.0

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def cancelled(self) -> bool:
        return False

    def code(self) -> None:
        return None

    async def abort(self, code: Any, details: str = "") -> None:
        raise RuntimeError(f"{code}: {details}")


class Answering:
    """A backend that answers every call at once."""

    async def call(self, rpc: Rpc, request: Any, timeout_s: float) -> Any:
        return ANSWER

    def stream(self, rpc: Rpc, request: Any, timeout_s: float | None) -> Any:
        raise NotImplementedError("no streams here")


async def round_us(calls: int, method: Callable[..., Any] | None, profile: bool) -> float:
    """CPU µs per call over ``calls`` calls of ``method`` (None: the bare backend)."""
    backend = Answering()
    profiler = cProfile.Profile() if profile else None
    began = time.process_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(calls):
        if method is None:
            await backend.call(None, REQUEST, 5.0)  # type: ignore[arg-type]
            continue
        context = Context()
        await method(REQUEST, context)
        for callback in context.callbacks:
            callback(context)  # as grpc.aio does once the call is done: the audit line
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return (time.process_time() - began) / calls * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    limits = GatewayLimits()
    with tempfile.TemporaryDirectory(prefix="pbgwcall") as audit_dir:
        guard = Guard(SecuritySettings(audit_dir=audit_dir))
        servicer_class = next(c for c, _ in SERVICERS if c.__name__ == "ChargingServiceServicer")
        servicer: Any = servicer_class(Answering(), Calls(limits, Admission(limits)), guard)
        method = servicer.ChargeSession
        await round_us(min(args.calls, 2_000), method, False)  # warm: rules compiled, caches
        rounds = [await round_us(args.calls, method, False) for _ in range(args.runs)]
        baseline = [await round_us(args.calls, None, False) for _ in range(args.runs)]
        if args.profile:
            await round_us(args.calls, method, True)
        guard.close()
    result = {
        "us_per_call": round(statistics.median(rounds), 2),
        "baseline_us_per_call": round(statistics.median(baseline), 2),
        "rounds": [round(r, 2) for r in rounds],
        "calls": args.calls,
    }
    rounds_text = ", ".join(f"{r:.1f}" for r in rounds)
    print(f"gateway Python per ChargeSession call: {result['us_per_call']} µs ({rounds_text})")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one round")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
