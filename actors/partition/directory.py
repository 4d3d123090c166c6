"""The subscriber directory of one rating partition: MSISDN → account, plans, sponsor rules.

The partition that owns an MSISDN (``routing.partition_of``) holds its entry,
so rating needs no remote lookup and the plan it uses is authoritative
(docs/architecture.md). Entries live in the partition's store under ``d/``
and are read through a bounded LRU cache that also remembers misses (a flood
of records for an unknown number costs one read, not one per record). The
cache stays coherent because the partition is the only writer of its store.

Writes are idempotent by ``request_id`` (mark under ``q/``, written in the
same synced batch as the entry): a retry with the same fields answers
``DUPLICATE`` with the entry as that request left it; the same id with other
fields answers ``exists_with_different_<field>`` and :attr:`DirectoryAnswer.field`
names the field (``account``, ``msisdn``, ``subscriptions``, ``sponsor_rules``,
``plan``, ``start``, or ``op`` when the id was used for another operation).

A ``put_subscriber`` with a new id for a known MSISDN replaces the entry
(``UPDATED``): a number can move to another account. A plan change closes the
open subscription at the new plan's start and appends the new one.

Sponsor rules are kept for the record (operators, price enquiries), but the
paying account is decided in one place only: the subscriber's account shard
(``billing.sponsor.resolve_sponsor`` with the account's own rules), which
forwards the sponsor's half. The partition routes every record by the
subscriber's account.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from actors.partition.codec import directory_key, json_bytes, request_key
from actors.store.storage import Batch, LruCache, ShardStore
from billing.accounts import Result, SponsorRule, Subscription, conflict_result
from billing.idempotency import Conflict, Mark, Replay, check
from billing.ledger import is_valid_account_id

__all__ = ["Directory", "DirectoryAnswer", "DirectoryEntry"]

_MISSING: Final = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryEntry:
    """Who pays for an MSISDN's usage and on which plans (subscriptions in start order)."""

    msisdn: str
    account_id: str
    subscriptions: tuple[Subscription, ...] = ()
    sponsor_rules: tuple[SponsorRule, ...] = ()

    def plan_at(self, t_s: int) -> str | None:
        """The plan of the latest subscription active at ``t_s`` (as ``Account.plan_at``)."""
        found = None
        for subscription in self.subscriptions:
            if subscription.active_at(t_s):
                found = subscription.plan_id
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "msisdn": self.msisdn,
            "account_id": self.account_id,
            "subscriptions": [asdict(s) for s in self.subscriptions],
            "sponsor_rules": [asdict(r) for r in self.sponsor_rules],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DirectoryEntry:
        rules = []
        for rule in data["sponsor_rules"]:
            values = dict(rule)
            values["usage_classes"] = tuple(values["usage_classes"])
            rules.append(SponsorRule(**values))
        return cls(
            msisdn=data["msisdn"],
            account_id=data["account_id"],
            subscriptions=tuple(Subscription(**s) for s in data["subscriptions"]),
            sponsor_rules=tuple(rules),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryAnswer:
    """The answer to a directory write: ``CREATED``, ``UPDATED``, ``DUPLICATE``, a
    conflict (``field`` names what differs), ``INVALID_ARGUMENT`` or
    ``UNKNOWN_ACCOUNT`` (a plan change for an MSISDN not in the directory, or, with
    ``entry`` set, one that belongs to another account)."""

    result: Result
    entry: DirectoryEntry | None = None
    field: str | None = None
    detail: str = ""


def _invalid(detail: str) -> DirectoryAnswer:
    return DirectoryAnswer(result=Result.INVALID_ARGUMENT, detail=detail)


def _check_subscriptions(subscriptions: Sequence[Subscription]) -> str | None:
    for s in subscriptions:
        if not s.plan_id:
            return "subscription without plan_id"
        if s.end_s is not None and s.end_s <= s.start_s:
            return f"subscription {s.plan_id}: end_s {s.end_s} is not after start_s {s.start_s}"
    return None


class Directory:
    """Directory entries of one partition's store (not thread-safe; the partition serialises)."""

    def __init__(self, store: ShardStore, *, cache_entries_max: int = 100_000) -> None:
        self._store = store
        self._cache: LruCache[str, object] = LruCache(cache_entries_max)

    def get(self, msisdn: str) -> DirectoryEntry | None:
        """The entry of ``msisdn``, from the cache or one read of the store."""
        hit = self._cache.get(msisdn)
        if hit is not None:
            return None if hit is _MISSING else hit  # type: ignore[return-value]
        raw = self._store.get(directory_key(msisdn)) if msisdn else None
        entry = DirectoryEntry.from_json(json.loads(raw)) if raw is not None else None
        self._cache.put(msisdn, _MISSING if entry is None else entry)
        return entry

    def put_subscriber(
        self,
        request_id: str,
        msisdn: str,
        account_id: str,
        subscriptions: Sequence[Subscription],
        sponsor_rules: Sequence[SponsorRule] = (),
    ) -> DirectoryAnswer:
        """Create or replace the entry of ``msisdn`` (idempotent by ``request_id``)."""
        fields = {
            "op": "put_subscriber",
            "msisdn": msisdn,
            "account": account_id,
            "subscriptions": [asdict(s) for s in subscriptions],
            "sponsor_rules": [asdict(r) for r in sponsor_rules],
        }
        replayed = self._replay(request_id, fields)
        if replayed is not None:
            return replayed
        if not (msisdn.isascii() and msisdn.isdigit() and 3 <= len(msisdn) <= 15):
            return _invalid(f"msisdn {msisdn!r} is not 3-15 E.164 digits")
        if not is_valid_account_id(account_id):
            return _invalid(f"bad account id {account_id!r}")
        problem = _check_subscriptions(subscriptions)
        if problem is not None:
            return _invalid(problem)
        entry = DirectoryEntry(
            msisdn=msisdn,
            account_id=account_id,
            subscriptions=tuple(sorted(subscriptions, key=lambda s: s.start_s)),
            sponsor_rules=tuple(sponsor_rules),
        )
        result = Result.CREATED if self.get(msisdn) is None else Result.UPDATED
        return self._write(request_id, fields, entry, result)

    def change_plan(
        self, request_id: str, msisdn: str, plan_id: str, start_s: int, account_id: str = ""
    ) -> DirectoryAnswer:
        """Move ``msisdn`` to ``plan_id`` from ``start_s`` on (idempotent by ``request_id``).

        The subscription open at ``start_s`` ends there; ``start_s`` must be
        later than the start of every existing subscription (history is not
        rewritten: records already rated keep their plan). With ``account_id``
        the change is for that account's number only: an entry that now
        belongs to another account (the number moved) is left alone and
        answered ``UNKNOWN_ACCOUNT`` with that entry.
        """
        fields = {"op": "change_plan", "msisdn": msisdn, "plan": plan_id, "start": start_s}
        if account_id:
            fields["account"] = account_id
        replayed = self._replay(request_id, fields)
        if replayed is not None:
            return replayed
        current = self.get(msisdn)
        if current is None:
            return DirectoryAnswer(
                result=Result.UNKNOWN_ACCOUNT, detail=f"msisdn {msisdn} not in directory"
            )
        if account_id and current.account_id != account_id:
            return DirectoryAnswer(
                result=Result.UNKNOWN_ACCOUNT,
                entry=current,
                detail=f"msisdn {msisdn} belongs to account {current.account_id}",
            )
        if not plan_id:
            return _invalid("empty plan_id")
        latest = max((s.start_s for s in current.subscriptions), default=None)
        if latest is not None and start_s <= latest:
            return _invalid(f"start_s {start_s} is not after the latest subscription {latest}")
        closed = tuple(
            Subscription(plan_id=s.plan_id, start_s=s.start_s, end_s=start_s)
            if s.end_s is None or s.end_s > start_s
            else s
            for s in current.subscriptions
        )
        new_sub = Subscription(plan_id=plan_id, start_s=start_s)
        entry = DirectoryEntry(
            msisdn=msisdn,
            account_id=current.account_id,
            subscriptions=(*closed, new_sub),
            sponsor_rules=current.sponsor_rules,
        )
        return self._write(request_id, fields, entry, Result.UPDATED)

    def _replay(self, request_id: str, fields: dict[str, Any]) -> DirectoryAnswer | None:
        raw = self._store.get(request_key(request_id))
        if raw is None:
            return None
        stored = json.loads(raw)
        existing: Mark[dict[str, Any]] = Mark(
            tuple(sorted(stored["fields"].items())), stored["entry"]
        )
        # Compare JSON with JSON: tuples and lists must not count as a difference.
        decision = check(existing, json.loads(json_bytes(fields)))
        if isinstance(decision, Replay):
            entry = DirectoryEntry.from_json(decision.result)
            return DirectoryAnswer(result=Result.DUPLICATE, entry=entry)
        if isinstance(decision, Conflict):
            return DirectoryAnswer(
                result=conflict_result(decision),
                field=decision.field,
                detail=f"request_id {request_id!r} was used with a different {decision.field}",
            )
        return None  # pragma: no cover - a stored mark is never Fresh

    def _write(
        self, request_id: str, fields: dict[str, Any], entry: DirectoryEntry, result: Result
    ) -> DirectoryAnswer:
        batch = Batch()
        entry_json = entry.to_json()
        batch.put(directory_key(entry.msisdn), json_bytes(entry_json))
        batch.put(request_key(request_id), json_bytes({"fields": fields, "entry": entry_json}))
        self._store.commit(batch)
        self._cache.put(entry.msisdn, entry)
        return DirectoryAnswer(result=result, entry=entry)
