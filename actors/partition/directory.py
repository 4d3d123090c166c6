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

**A number belongs to one account at a time.** A ``put_subscriber`` for an
MSISDN another account holds is refused (``MSISDN_IN_USE``, naming the
holder); for one the same account holds it replaces the plans and sponsor
rules (``UPDATED``). A number changes hands only by ``move_number``, with an
effective time: the entry keeps the earlier holders (``DirectoryEntry.earlier``),
so usage from before the move is charged to the old holder and usage from
then on to the new one (``DirectoryEntry.at``). ``release_number`` undoes a
``put_subscriber`` that created an entry, for a CreateAccount the account
shard then refused. A plan change closes the open subscription at the new
plan's start and appends the new one.

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

from actors.partition.codec import DIRECTORY_PREFIX, directory_key, json_bytes, request_key
from actors.store.storage import Batch, LruCache, ShardStore
from billing.accounts import Result, SponsorRule, Subscription, conflict_result
from billing.idempotency import Conflict, Mark, Replay, check
from billing.ledger import is_valid_account_id

__all__ = ["Directory", "DirectoryAnswer", "DirectoryEntry", "Holding"]

_MISSING: Final = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """An earlier holder of a number: its account, plans and sponsor rules, until a move."""

    account_id: str
    subscriptions: tuple[Subscription, ...]
    sponsor_rules: tuple[SponsorRule, ...]
    until_s: int

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "subscriptions": [asdict(s) for s in self.subscriptions],
            "sponsor_rules": [asdict(r) for r in self.sponsor_rules],
            "until_s": self.until_s,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryEntry:
    """Who pays for an MSISDN's usage and on which plans (subscriptions in start order):
    the holder since ``since_s``, and the ``earlier`` holders (oldest first)."""

    msisdn: str
    account_id: str
    subscriptions: tuple[Subscription, ...] = ()
    sponsor_rules: tuple[SponsorRule, ...] = ()
    since_s: int = 0
    earlier: tuple[Holding, ...] = ()

    def at(self, t_s: int) -> DirectoryEntry:
        """The entry as it stood for usage at ``t_s``: the holder then, with its plans."""
        for holding in self.earlier:
            if t_s < holding.until_s:
                return DirectoryEntry(
                    msisdn=self.msisdn,
                    account_id=holding.account_id,
                    subscriptions=holding.subscriptions,
                    sponsor_rules=holding.sponsor_rules,
                )
        return self

    def plan_at(self, t_s: int) -> str | None:
        """The plan of the latest subscription active at ``t_s`` (as ``Account.plan_at``)."""
        found = None
        for subscription in self.subscriptions:
            if subscription.active_at(t_s):
                found = subscription.plan_id
        return found

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "msisdn": self.msisdn,
            "account_id": self.account_id,
            "subscriptions": [asdict(s) for s in self.subscriptions],
            "sponsor_rules": [asdict(r) for r in self.sponsor_rules],
        }
        if self.since_s or self.earlier:  # entries without a move keep their old shape
            out["since_s"] = self.since_s
            out["earlier"] = [h.to_json() for h in self.earlier]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DirectoryEntry:
        return cls(
            msisdn=data["msisdn"],
            account_id=data["account_id"],
            subscriptions=_subscriptions(data["subscriptions"]),
            sponsor_rules=_rules(data["sponsor_rules"]),
            since_s=data.get("since_s", 0),
            earlier=tuple(
                Holding(
                    account_id=h["account_id"],
                    subscriptions=_subscriptions(h["subscriptions"]),
                    sponsor_rules=_rules(h["sponsor_rules"]),
                    until_s=h["until_s"],
                )
                for h in data.get("earlier", ())
            ),
        )


def _subscriptions(data: list[dict[str, Any]]) -> tuple[Subscription, ...]:
    return tuple(Subscription(**s) for s in data)


def _rules(data: list[dict[str, Any]]) -> tuple[SponsorRule, ...]:
    rules = []
    for rule in data:
        values = dict(rule)
        values["usage_classes"] = tuple(values["usage_classes"])
        rules.append(SponsorRule(**values))
    return tuple(rules)


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

    def holders(self) -> frozenset[str]:
        """Every account that holds a number here now (a full scan of the entries)."""
        return frozenset(
            json.loads(raw)["account_id"] for _, raw in self._store.scan_prefix(DIRECTORY_PREFIX)
        )

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
        current = self.get(msisdn)
        if current is not None and current.account_id != account_id:
            return DirectoryAnswer(
                result=Result.MSISDN_IN_USE,
                entry=current,
                detail=f"msisdn {msisdn} belongs to account {current.account_id}",
            )
        entry = DirectoryEntry(
            msisdn=msisdn,
            account_id=account_id,
            subscriptions=tuple(sorted(subscriptions, key=lambda s: s.start_s)),
            sponsor_rules=tuple(sponsor_rules),
            since_s=0 if current is None else current.since_s,
            earlier=() if current is None else current.earlier,
        )
        result = Result.CREATED if current is None else Result.UPDATED
        return self._write(request_id, fields, entry, result)

    def move_number(
        self,
        request_id: str,
        msisdn: str,
        from_account: str,
        to_account: str,
        subscriptions: Sequence[Subscription],
        sponsor_rules: Sequence[SponsorRule],
        at_s: int,
        at_from_clock: bool = False,
    ) -> DirectoryAnswer:
        """Hand ``msisdn`` from ``from_account`` to ``to_account`` from ``at_s`` on, with the new
        holder's plans and sponsor rules (idempotent by ``request_id``; with
        ``at_from_clock`` the time was the service's now, and a retry at another now is the
        same request). Usage before ``at_s`` stays the old holder's. Refused
        (``NOT_HOLDER``) when ``from_account`` does not hold the number,
        ``INVALID_ARGUMENT`` when ``at_s`` is not after the current holding's start."""
        fields = {
            "op": "move_number",
            "msisdn": msisdn,
            "account": to_account,
            "from": from_account,
            "start": "now" if at_from_clock else at_s,
        }
        replayed = self._replay(request_id, fields)
        if replayed is not None:
            return replayed
        current = self.get(msisdn)
        if current is None or current.account_id != from_account:
            holder = "nobody" if current is None else current.account_id
            return DirectoryAnswer(
                result=Result.NOT_HOLDER,
                entry=current,
                detail=f"msisdn {msisdn} is held by {holder}, not {from_account}",
            )
        if not is_valid_account_id(to_account) or to_account == from_account:
            return _invalid(f"cannot move msisdn {msisdn} to {to_account!r}")
        if at_s <= current.since_s:
            return _invalid(
                f"at_s {at_s} is not after {current.since_s}, when {from_account} got it"
            )
        problem = _check_subscriptions(subscriptions)
        if problem is not None:
            return _invalid(problem)
        held = Holding(
            account_id=current.account_id,
            subscriptions=current.subscriptions,
            sponsor_rules=current.sponsor_rules,
            until_s=at_s,
        )
        entry = DirectoryEntry(
            msisdn=msisdn,
            account_id=to_account,
            subscriptions=tuple(sorted(subscriptions, key=lambda s: s.start_s)),
            sponsor_rules=tuple(sponsor_rules),
            since_s=at_s,
            earlier=(*current.earlier, held),
        )
        return self._write(request_id, fields, entry, Result.UPDATED)

    def release_number(self, put_request_id: str, msisdn: str, account_id: str) -> DirectoryAnswer:
        """Undo the ``put_subscriber`` ``put_request_id`` if it created ``msisdn``'s entry for
        ``account_id`` and nothing changed it since (idempotent: a released or changed entry
        is left alone). For a CreateAccount whose account the shard refused."""
        raw = self._store.get(request_key(put_request_id))
        current = self.get(msisdn)
        if raw is None or current is None:
            return DirectoryAnswer(result=Result.DUPLICATE)
        stored = json.loads(raw)
        created = DirectoryEntry.from_json(stored["entry"])
        if stored["fields"].get("op") != "put_subscriber" or current != created:
            return DirectoryAnswer(result=Result.DUPLICATE, entry=current)
        if current.account_id != account_id or current.earlier:
            return DirectoryAnswer(result=Result.DUPLICATE, entry=current)
        batch = Batch()
        batch.delete(directory_key(msisdn))
        batch.delete(request_key(put_request_id))
        self._store.commit(batch)
        self._cache.put(msisdn, _MISSING)
        return DirectoryAnswer(result=Result.UPDATED)

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
            since_s=current.since_s,
            earlier=current.earlier,
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
