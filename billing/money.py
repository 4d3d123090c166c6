"""Money: integer amounts in one fixed scale, and the one place where rounding happens.

Every amount in petribill is an ``int`` of *micro-units*: ``SCALE = 10**6`` units
per currency unit (so 1.25 EUR is ``1_250_000``). Six decimals make per-second
rates with four or more decimals exact (0.0123 /s is 12_300), and a signed
64-bit field still holds 9.2 trillion currency units, far above any balance.

Rating works on exact rationals (numerator / denominator in micro-units) and
calls :func:`round_scaled` exactly once per priced piece, with the rate's
rounding mode and number of decimals. Nothing else rounds.
"""

from __future__ import annotations

import decimal
import enum
from dataclasses import dataclass
from typing import Final

from billing.invariant import InvariantViolation, invariant

__all__ = [
    "DECIMALS",
    "SCALE",
    "Money",
    "MoneyParseError",
    "RoundingMode",
    "format_amount",
    "is_currency_code",
    "parse_amount",
    "round_scaled",
]

DECIMALS: Final = 6
SCALE: Final = 10**DECIMALS


class RoundingMode(enum.StrEnum):
    """Named rounding modes. ``up``/``down`` are away from / towards zero."""

    UP = "up"
    DOWN = "down"
    HALF_UP = "half_up"
    HALF_EVEN = "half_even"


def is_currency_code(text: str) -> bool:
    """Whether ``text`` has the form of an ISO 4217 currency code: three ASCII capitals (EUR).

    The one currency check of petribill. ``str.isupper`` alone would pass
    ``"A1B"`` and ``"ÄÖÜ"``; the code list itself changes, so it is not checked.
    """
    return len(text) == 3 and text.isascii() and text.isalpha() and text.isupper()


class MoneyParseError(ValueError):
    """Raised when a decimal string is not a valid amount at the system scale."""


def round_scaled(numerator: int, denominator: int, *, decimals: int, mode: RoundingMode) -> int:
    """Round the exact rational ``numerator / denominator`` micro-units to ``decimals``.

    Returns micro-units (an ``int`` at :data:`SCALE`) that are a multiple of
    ``10**(DECIMALS - decimals)``. ``half_up`` rounds ties away from zero, as
    CGRateS' ``*middle`` does; ``up`` is away from zero (CGRateS' ``*up``).
    """
    # Checked inline, not through invariant(): this is the hot path of rating,
    # and an eagerly formatted message would cost more than the arithmetic.
    if denominator <= 0 or not 0 <= decimals <= DECIMALS:
        raise InvariantViolation(
            f"round_scaled: denominator {denominator} must be > 0 and decimals "
            f"{decimals} within 0..{DECIMALS}"
        )
    step = 10 ** (DECIMALS - decimals)
    # Work on the magnitude so every mode is symmetric around zero.
    sign = -1 if numerator < 0 else 1
    num = abs(numerator)
    den = denominator * step
    quotient, remainder = divmod(num, den)
    if remainder:
        if mode is RoundingMode.UP:
            quotient += 1
        elif mode is RoundingMode.HALF_UP:
            if 2 * remainder >= den:
                quotient += 1
        elif mode is RoundingMode.HALF_EVEN:
            twice = 2 * remainder
            if twice > den or (twice == den and quotient % 2 == 1):
                quotient += 1
        # DOWN truncates towards zero: nothing to add.
    result: int = sign * quotient * step
    return result


def parse_amount(text: str | int) -> int:
    """Parse a decimal string such as ``"0.7002"`` into micro-units, exactly.

    More than :data:`DECIMALS` significant decimals is an error rather than a
    silent rounding: a tariff that asks for more precision than the system
    keeps must be fixed, not guessed at.
    """
    if isinstance(text, bool):
        raise MoneyParseError(f"not an amount: {text!r}")
    if isinstance(text, int):
        return text * SCALE
    try:
        value = decimal.Decimal(text.strip())
    except (decimal.InvalidOperation, AttributeError) as exc:
        raise MoneyParseError(f"not a decimal amount: {text!r}") from exc
    if not value.is_finite():
        raise MoneyParseError(f"not a finite amount: {text!r}")
    scaled = value.scaleb(DECIMALS)
    if scaled != scaled.to_integral_value():
        raise MoneyParseError(f"more than {DECIMALS} decimals: {text!r}")
    return int(scaled)


def format_amount(micros: int, decimals: int = 4) -> str:
    """Format micro-units as a decimal string with at least ``decimals`` places.

    Digits beyond ``decimals`` are kept when they are not zero, so formatting
    never hides money: ``format_amount(700_250, 4) == "0.70025"``.
    """
    invariant(0 <= decimals <= DECIMALS, f"decimals must be 0..{DECIMALS}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), SCALE)
    digits = f"{frac:0{DECIMALS}d}".rstrip("0")
    digits = digits.ljust(decimals, "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in micro-units of one currency. Arithmetic refuses to mix currencies."""

    micros: int
    currency: str

    def __post_init__(self) -> None:
        invariant(isinstance(self.micros, int), f"Money needs an int, got {self.micros!r}")
        invariant(
            is_currency_code(self.currency),
            f"currency must be an ISO 4217 code, got {self.currency!r}",
        )

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        return cls(parse_amount(text), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        invariant(
            self.currency == other.currency,
            f"currency mismatch: {self.currency} vs {other.currency}",
        )

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.micros + other.micros, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.micros - other.micros, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.micros, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.micros < other.micros

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.micros <= other.micros

    def is_zero(self) -> bool:
        return self.micros == 0

    def format(self, decimals: int = 4) -> str:
        return format_amount(self.micros, decimals)

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"
