"""The gateway's limits and its admission control (bounded in-flight work).

Every limit has a name with its unit last and a default that suits one node.
Admission is non-blocking: a request that does not fit is refused at once with
RESOURCE_EXHAUSTED and a message naming the limit, so a client backs off and
retries (with the same ids) instead of queueing invisibly inside the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from billing.invariant import invariant

if TYPE_CHECKING:
    from cluster.config import ClusterConfig

__all__ = ["Admission", "GatewayLimits", "Overloaded"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayLimits:
    """What one gateway accepts. ``from_config`` maps ``conf/cluster.toml`` onto it.

    The rules of each request field (lengths of ids, bounds of amounts and
    times) are not here: they are in the protos (``proto/petribill/v1/rules.proto``).
    """

    # Largest message in either direction; grpc itself refuses a larger one
    # with RESOURCE_EXHAUSTED before it reaches a servicer.
    message_bytes_max: int = 16 * MIB
    # Unary calls and stream batches being worked on at once.
    requests_inflight_max: int = 1_000
    # Usage records being worked on at once, over all batches and streams.
    records_inflight_max: int = 50_000
    # Records in one SubmitUsage request or one StreamUsage message.
    batch_records_max: int = 10_000
    # Open StreamUsage streams, and batches of one stream worked on at once.
    usage_streams_max: int = 256
    stream_batches_inflight_max: int = 4
    # Open Subscribe streams and RunBilling streams.
    subscriptions_max: int = 1_000
    bill_runs_max: int = 4
    # Backend time when the client set no deadline; a client's own deadline
    # is honoured up to request_timeout_max_s.
    request_timeout_default_s: float = 30.0
    request_timeout_max_s: float = 300.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            invariant(value > 0, f"GatewayLimits.{name} must be > 0, got {value!r}")
        invariant(
            self.request_timeout_default_s <= self.request_timeout_max_s,
            "GatewayLimits.request_timeout_default_s must be <= request_timeout_max_s",
        )

    @classmethod
    def from_config(cls, config: ClusterConfig) -> GatewayLimits:
        """The limits of ``conf/cluster.toml`` (``[limits]``); the rest keep their defaults."""
        return cls(
            records_inflight_max=config.limits.inflight_records_per_gateway_max,
            batch_records_max=config.limits.stream_records_max,
        )


class Overloaded(Exception):
    """Raised by :class:`Admission` when a request does not fit; the message names the limit."""


class Admission:
    """Counts in-flight requests and records against :class:`GatewayLimits`.

    Used only from the gateway's event loop, so plain counters suffice.
    """

    def __init__(self, limits: GatewayLimits) -> None:
        self._limits = limits
        self.requests = 0
        self.records = 0
        self.usage_streams = 0
        self.subscriptions = 0
        self.bill_runs = 0

    def enter(self, records: int = 0) -> None:
        """Admit one request carrying ``records`` usage records, or raise :class:`Overloaded`."""
        limits = self._limits
        if self.requests >= limits.requests_inflight_max:
            raise Overloaded(
                f"gateway busy: {self.requests} requests in flight "
                f"(requests_inflight_max={limits.requests_inflight_max}); retry later"
            )
        if records and self.records + records > limits.records_inflight_max:
            raise Overloaded(
                f"gateway busy: {self.records} records in flight, {records} more would exceed "
                f"records_inflight_max={limits.records_inflight_max}; "
                "retry later with the same record ids"
            )
        self.requests += 1
        self.records += records

    def leave(self, records: int = 0) -> None:
        self.requests -= 1
        self.records -= records
        invariant(self.requests >= 0 and self.records >= 0, "admission counters went negative")

    def open_stream(self, kind: str) -> None:
        """Admit a long-lived stream of ``kind`` (usage_streams, subscriptions, bill_runs)."""
        limit = {
            "usage_streams": self._limits.usage_streams_max,
            "subscriptions": self._limits.subscriptions_max,
            "bill_runs": self._limits.bill_runs_max,
        }[kind]
        current: int = getattr(self, kind)
        if current >= limit:
            raise Overloaded(f"gateway busy: {current} open {kind} ({kind}_max={limit})")
        setattr(self, kind, current + 1)

    def close_stream(self, kind: str) -> None:
        current: int = getattr(self, kind)
        invariant(current > 0, f"close_stream({kind}) without open_stream")
        setattr(self, kind, current - 1)
