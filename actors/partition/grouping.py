"""Several submit calls of one partition settled as one: the rule both usage paths share.

A gateway cuts every usage request into one part per partition, and each part
claims on every owner partition and charges on every shard its accounts live
on. A unit call has a fixed cost (a lock round, a multi-get, a synced commit,
and on the bulk path tens of Arrow kernels) whatever its size, so P parts of a
request make P x (P + S) calls of a few hundred records each, and the fixed
costs dominate. The gateway's coalescer (``actors.coalesce``) therefore sends
the parts bound for one host together, and the parts of one partition become
one group operation (``SubmitGroup`` for the per-record path,
``SubmitColumnsGroup`` for the bulk path): :func:`settle_group` settles them
with one call over their items put end to end, so each owner partition sees
one claim call and each shard one charge call for the whole group.

The answer is each part's own, exactly as it would have been alone and in
arrival order: a part joins the run only when it could not tell the
difference, that is when it has

- the run's ``at_s`` and ``source`` (its items are charged at that time and
  counted under that source);
- no record id repeated inside it (a repeat answers "repeats item k of this
  batch", naming its place in the call) and no record id of another part of
  the run (across two calls the second is a replay through the claims and the
  shard's marks, inside one it would be an in-batch repeat);

and its items read (the bulk path: its columns read as usage columns). Any
other part is settled alone, in its place in the order. A run whose settling
raises is settled part by part, so one part's failure is that part's answer
only; a store that is no longer this unit's (fenced, closed, failed) raises
for the whole call, as alone.

What differs between the paths (how a part lists its ids, is settled, is put
end to end with others and has its answer cut back) is a :class:`Grouping`;
``actors.partition.bulk_group`` and ``actors.partition.record_group`` give one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from actors.store.fencing import StaleEpoch
from actors.store.storage import StorageFailed, StoreClosed
from billing.invariant import invariant

if TYPE_CHECKING:
    from actors.partition.engine import SourceProgress

__all__ = ["Grouping", "Part", "settle_group"]

# Failures that mean the store is not ours (or not writable) any more: never retried here.
_STORE_LOST = (StaleEpoch, StoreClosed, StorageFailed)


class Part(Protocol):
    """What the join rule reads of a call: when it is charged and what it is counted under."""

    @property
    def at_s(self) -> int: ...

    @property
    def source(self) -> SourceProgress | None: ...


P = TypeVar("P", bound=Part)
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Grouping(Generic[P, A]):
    """How one path's calls are grouped: ``ids`` (its records' ids in item order, repeats
    kept; ``None``: the part must be settled alone), ``items`` (how many answers it
    gets), ``alone`` (settle one part), ``joined`` (one part of several, items end to
    end) and ``cut`` (``answer``'s ``count`` items from ``start``: a part's answer out
    of the joined one)."""

    ids: Callable[[P], Sequence[str] | None]
    items: Callable[[P], int]
    alone: Callable[[P], A]
    joined: Callable[[Sequence[P]], P]
    cut: Callable[[A, int, int], A]


def settle_group(parts: Sequence[P], grouping: Grouping[P, A], limit: int) -> list[A | Exception]:
    """Each part's answer (or the exception it raised alone), in order; the parts that
    may share a call settled in one of at most ``limit`` items (module docstring)."""
    answers: list[A | Exception | None] = [None] * len(parts)
    run: list[int] = []
    seen: set[str] = set()
    rows = 0
    for index, part in enumerate(parts):
        keys = _keys_if_joinable(grouping.ids(part))
        first = parts[run[0]] if run else None
        size = grouping.items(part)
        fits = (
            keys is not None
            and (first is None or (part.at_s == first.at_s and part.source == first.source))
            and seen.isdisjoint(keys)
            and rows + size <= limit
        )
        if not fits and run:
            _settle_run(parts, run, grouping, answers)
            run, seen, rows = [], set(), 0
        if keys is None:
            answers[index] = _alone(grouping, part)
            continue
        run.append(index)
        seen.update(keys)
        rows += size
    if run:
        _settle_run(parts, run, grouping, answers)
    done = [a for a in answers if a is not None]
    invariant(len(done) == len(parts), f"{len(done)} answers for {len(parts)} calls")
    return done


def _keys_if_joinable(ids: Sequence[str] | None) -> set[str] | None:
    """The part's record ids, or None when it must be settled alone (unreadable, or a
    record id repeated inside it)."""
    keys = None if ids is None else set(ids)
    return None if keys is None or len(keys) != len(ids or ()) else keys


def _alone(grouping: Grouping[P, A], part: P) -> A | Exception:
    try:
        return grouping.alone(part)
    except _STORE_LOST:
        raise
    except Exception as exc:  # this part's own failure, answered to its caller only
        return exc


def _settle_run(
    parts: Sequence[P],
    run: list[int],
    grouping: Grouping[P, A],
    answers: list[A | Exception | None],
) -> None:
    """Settle the parts ``run`` (indexes into ``parts``) in one call, their answers into
    ``answers``; part by part if that call raises."""
    if len(run) == 1:
        answers[run[0]] = _alone(grouping, parts[run[0]])
        return
    members = [parts[i] for i in run]
    try:
        merged = grouping.alone(grouping.joined(members))
    except _STORE_LOST:
        raise
    except Exception:  # find the part that raised: each alone, its failure its own
        for index in run:
            answers[index] = _alone(grouping, parts[index])
        return
    start = 0
    for index, part in zip(run, members, strict=True):
        count = grouping.items(part)
        answers[index] = grouping.cut(merged, start, count)
        start += count
