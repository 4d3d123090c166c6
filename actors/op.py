"""Engine operations: what a caller asks of one unit, as a typed value.

Every call into a unit (an account shard or a rating partition) is an
:class:`Op`: a frozen dataclass naming the operation by its type and carrying
its arguments as fields. Each engine has a closed set of them
(:mod:`actors.shard.ops`, :mod:`actors.partition.ops`), in the spirit of
TigerBeetle's ``Operation`` enum: a reader (and mypy) follows a call from the
gateway's backend through the router and the host straight to the engine
method that runs it (``op.apply(engine, env)``), with no method names passed as
strings. An op's type parameter is what the engine answers.

Ops cross process boundaries inside Ray calls (they pickle as dataclasses), so
they hold plain values only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

__all__ = ["ChargeFn", "Env", "Op", "R"]

R = TypeVar("R", covariant=True)

ChargeFn = Callable[[str, list[Any]], Sequence[Any]]
"""Charges rated items on an account shard, wherever it is served: (shard_id, items) -> rows."""


class Env(Protocol):
    """What a host lends an operation besides its engine: the way to other units."""

    def charge(self, shard_id: str, items: list[Any], at_s: int) -> Sequence[Any]:
        """Charge rated ``(account_id, rated)`` items on ``shard_id`` (here or elsewhere)."""
        ...

    def fan_out(self, calls: Mapping[str, Op[Any]]) -> dict[str, Any]:
        """Run one operation on each of several units (here or elsewhere), concurrently
        where they are elsewhere: ``{unit_id: answer}``, or the exception a unit raised."""
        ...


class Op(Generic[R]):
    """One operation on one unit; subclasses are frozen dataclasses.

    ``kind`` is the unit kind it runs on (``account`` or ``partition``);
    ``read`` marks a query of committed state that may run beside a write of
    the same unit, without the unit's lock (the engine promises it reads only
    what a commit published); ``serialised`` is False for an operation the
    engine serialises itself (with a lock of its own) and that must never wait
    for the unit's lock (a record-id claim, which other units make while this
    one may be busy claiming on them).
    """

    __slots__ = ()

    kind: ClassVar[str]
    read: ClassVar[bool] = False
    serialised: ClassVar[bool] = True

    def apply(self, engine: Any, env: Env) -> R:
        """Run the operation on ``engine`` (the host holds the unit's lock unless ``read``)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The operation's name, for logs and metrics (its class name)."""
        return type(self).__name__
