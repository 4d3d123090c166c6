"""Typed, located reads from parsed TOML tables.

``tomllib`` gives untyped dicts; these helpers turn each value into the type
the model wants or raise a :class:`TariffError` naming the file and key. Unknown
keys are errors too, because a misspelt ``incremnet`` silently ignored would
price every call wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from billing.money import DECIMALS, MoneyParseError, RoundingMode, parse_amount
from billing.tariffs.errors import Loc

__all__ = [
    "Table",
    "check_keys",
    "get_amount",
    "get_bool",
    "get_int",
    "get_list",
    "get_rounding",
    "get_str",
    "get_table",
    "ident",
    "opt_amount",
    "opt_int",
    "opt_str",
    "ppm_share",
]

Table = Mapping[str, object]

_MISSING: Final = object()
_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_keys(table: Table, loc: Loc, allowed: Sequence[str]) -> None:
    """Refuse keys the schema does not know, naming the closest allowed ones."""
    for key in table:
        if key not in allowed:
            raise loc.key(key).error(f"unknown key (expected one of: {', '.join(allowed)})")


def _get(table: Table, key: str, loc: Loc) -> object:
    value = table.get(key, _MISSING)
    if value is _MISSING:
        raise loc.key(key).error("missing required key")
    return value


def get_table(table: Table, key: str, loc: Loc) -> Table:
    value = _get(table, key, loc)
    return as_table(value, loc.key(key))


def as_table(value: object, loc: Loc) -> Table:
    if not isinstance(value, dict):
        raise loc.error(f"expected a table, got {type(value).__name__}")
    return value


def get_list(
    table: Table, key: str, loc: Loc, *, default: list[object] | None = None
) -> list[object]:
    if key not in table and default is not None:
        return default
    value = _get(table, key, loc)
    if not isinstance(value, list):
        raise loc.key(key).error(f"expected an array, got {type(value).__name__}")
    return value


def get_str(table: Table, key: str, loc: Loc) -> str:
    value = _get(table, key, loc)
    if not isinstance(value, str) or not value:
        raise loc.key(key).error(f"expected a non-empty string, got {value!r}")
    return value


def opt_str(table: Table, key: str, loc: Loc) -> str | None:
    return get_str(table, key, loc) if key in table else None


def ident(value: object, loc: Loc) -> str:
    """An identifier: letters, digits, ``_``, ``-`` and ``.``; used for ids of everything."""
    if not isinstance(value, str) or not value or not set(value) <= _ID_CHARS:
        raise loc.error(f"expected an id of letters, digits, '_', '-', '.', got {value!r}")
    return value


def get_int(table: Table, key: str, loc: Loc, *, minimum: int = 0) -> int:
    value = _get(table, key, loc)
    # bool is an int in Python; `true` is never a count of seconds.
    if not isinstance(value, int) or isinstance(value, bool):
        raise loc.key(key).error(f"expected an integer, got {value!r}")
    if value < minimum:
        raise loc.key(key).error(f"must be >= {minimum}, got {value}")
    return value


def opt_int(table: Table, key: str, loc: Loc, *, minimum: int = 0) -> int | None:
    return get_int(table, key, loc, minimum=minimum) if key in table else None


def get_bool(table: Table, key: str, loc: Loc, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise loc.key(key).error(f"expected true or false, got {value!r}")
    return value


def get_amount(table: Table, key: str, loc: Loc) -> int:
    """A money amount or price as micro-units; quoted decimals or integers, never floats."""
    value = _get(table, key, loc)
    if isinstance(value, float):
        raise loc.key(key).error(
            f'write amounts as quoted decimals ("{value}"): floats are inexact'
        )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise loc.key(key).error(f"expected a decimal amount, got {value!r}")
    try:
        micros = parse_amount(value)
    except MoneyParseError as exc:
        raise loc.key(key).error(str(exc)) from None
    if micros < 0:
        raise loc.key(key).error(f"must not be negative, got {value!r}")
    return micros


def opt_amount(table: Table, key: str, loc: Loc) -> int | None:
    return get_amount(table, key, loc) if key in table else None


def get_rounding(
    table: Table, loc: Loc, default: tuple[RoundingMode, int]
) -> tuple[RoundingMode, int]:
    """The ``rounding`` mode and ``decimals`` of a rate, defaulting to the catalogue's."""
    mode, decimals = default
    if "rounding" in table:
        text = get_str(table, "rounding", loc)
        try:
            mode = RoundingMode(text)
        except ValueError:
            names = ", ".join(m.value for m in RoundingMode)
            raise loc.key("rounding").error(
                f"unknown rounding mode {text!r} (one of: {names})"
            ) from None
    if "decimals" in table:
        decimals = get_int(table, "decimals", loc)
        if decimals > DECIMALS:
            raise loc.key("decimals").error(f"must be 0..{DECIMALS}, got {decimals}")
    return mode, decimals


def ppm_share(table: Table, loc: Loc) -> int | None:
    """A revenue share as parts per million: ``share_ppm = 700000`` or ``share = "70%"``."""
    if "share_ppm" in table and "share" in table:
        raise loc.key("share").error("give either share or share_ppm, not both")
    if "share_ppm" in table:
        ppm = get_int(table, "share_ppm", loc)
    elif "share" in table:
        text = get_str(table, "share", loc)
        if not text.endswith("%"):
            raise loc.key("share").error(f'expected a percentage such as "70%", got {text!r}')
        try:
            # parse_amount gives micro-units of the percent: 70% is 70_000_000, i.e. 700_000 ppm.
            micro_percent = parse_amount(text[:-1])
        except MoneyParseError as exc:
            raise loc.key("share").error(str(exc)) from None
        if micro_percent % 100:
            raise loc.key("share").error(f"more precise than parts per million: {text!r}")
        ppm = micro_percent // 100
    else:
        return None
    if not 0 <= ppm <= 1_000_000:
        raise loc.key("share_ppm" if "share_ppm" in table else "share").error(
            f"must be between 0% and 100%, got {ppm} ppm"
        )
    return ppm
