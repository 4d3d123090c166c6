"""The auditor's own model of what the cluster should have charged.

Independent of the production code on purpose: no rating engine, no charging
code, no ledger. Prices are those of ``chaos/tariffs/chaos.toml`` written out
by hand (a test rates sample records with the real engine and checks both
agree), and balances are rebuilt from what the load generator saw
acknowledged.

Money is in micro-units (1 EUR = 1 000 000), like the cluster's wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MICROS_PER_MINOR",
    "PLAN_POSTPAID",
    "PLAN_PREPAID",
    "Expected",
    "price",
]

PLAN_PREPAID: Final = "chaos-pre"
PLAN_POSTPAID: Final = "chaos-post"
MICROS_PER_MINOR: Final = 10_000  # a cent: EUR has two decimals

VOICE_CONNECT_MICROS: Final = 10_000  # 0.0100
VOICE_MINUTE_MICROS: Final = 15_000  # 0.0150 per started minute
SMS_MICROS: Final = 20_000  # 0.0200 per message


def price(service: str, units: int) -> int:
    """What one record costs under the chaos catalogue, in micros."""
    if service == "voice":
        minutes = -(-units // 60)  # per started minute
        return VOICE_CONNECT_MICROS + minutes * VOICE_MINUTE_MICROS
    if service == "sms":
        return units * SMS_MICROS
    raise ValueError(f"the chaos catalogue has no price for {service!r}")


@dataclass(slots=True)
class Expected:
    """Per account: what should be owed or left, from acknowledged operations only."""

    prepaid: bool
    topped_up: int = 0
    charged: int = 0
    records: set[str] = field(default_factory=set)
    # Charged by online sessions (chaos.sessions), at the reference price of their units.
    online: int = 0

    def add_charges(self, items: Iterable[tuple[str, str, int]]) -> None:
        """``(record_id, service, units)`` of records charged to this account."""
        for record_id, service, units in items:
            self.records.add(record_id)
            self.charged += price(service, units)

    @property
    def balance(self) -> int:
        """Prepaid money left (prepaid), or unbilled charges owed (postpaid)."""
        spent = self.charged + self.online
        return self.topped_up - spent if self.prepaid else spent
