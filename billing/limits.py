"""The bounds on amounts, balances, units and times that keep the arithmetic in int64.

The shard stores every book and amount as an 8-byte signed integer
(``actors.shard.codec``). Python's ints never overflow, so the danger is the
store: a book past 2^63 - 1 cannot be written. The bounds below make that
impossible for any sequence of operations:

- a single amount of money a request carries (a top-up, a payment, a refund, a
  credit limit) is at most :data:`AMOUNT_MAX_MICROS` in size (the gateway
  refuses more, from the rules in ``proto/petribill/v1/rules.proto``);
- a write that would leave any book of an account beyond
  :data:`BALANCE_MAX_MICROS` in size is refused (``Result.BALANCE_LIMIT``);
- so every book stays within ``BALANCE_MAX_MICROS``, and every sum the core
  makes on its way (a book plus a handful of amounts) within
  :data:`SUM_MAX_MICROS`, well inside int64.

Times are Unix seconds in the window of CDR opening times
(``billing.readers.values``); units of usage at most :data:`UNITS_MAX`.
"""

from __future__ import annotations

from typing import Final

from billing.invariant import invariant
from billing.readers.values import OPENING_TIME_MAX_S, OPENING_TIME_MIN_S

__all__ = [
    "AMOUNT_MAX_MICROS",
    "BALANCE_MAX_MICROS",
    "INT64_MAX",
    "SUM_MAX_MICROS",
    "TIME_MAX_S",
    "TIME_MIN_S",
    "UNITS_MAX",
    "amount_in_range",
    "over_balance_limit",
]

INT64_MAX: Final = 2**63 - 1
#: The largest amount one request may carry: 10^9 currency units.
AMOUNT_MAX_MICROS: Final = 10**15
#: The largest size of any book of an account: 10^12 currency units.
BALANCE_MAX_MICROS: Final = 10**18
#: A bound on any intermediate sum: a book plus a few amounts (x8 for headroom).
SUM_MAX_MICROS: Final = BALANCE_MAX_MICROS + 8 * AMOUNT_MAX_MICROS
#: Units of usage in one request or record (seconds, messages, bytes, items).
UNITS_MAX: Final = 10**12
#: Times: [2000-01-01, 2100-01-01) UTC, as for CDR opening times.
TIME_MIN_S: Final = OPENING_TIME_MIN_S
TIME_MAX_S: Final = OPENING_TIME_MAX_S

invariant(SUM_MAX_MICROS < INT64_MAX // 4, "balance bounds must leave int64 headroom")


def amount_in_range(amount: int) -> bool:
    """Whether one amount of a request is within :data:`AMOUNT_MAX_MICROS` in size."""
    return -AMOUNT_MAX_MICROS <= amount <= AMOUNT_MAX_MICROS


def over_balance_limit(*books: int) -> bool:
    """Whether any of ``books`` (balances after a write) is beyond the balance bound."""
    return any(not -BALANCE_MAX_MICROS <= book <= BALANCE_MAX_MICROS for book in books)
