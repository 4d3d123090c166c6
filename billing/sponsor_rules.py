"""An account's sponsor rules, added and ended one request at a time (backward billing).

A :class:`~billing.accounts.SponsorRule` says who pays for which of the
account's usage (``billing.sponsor`` resolves it per record). The rules are
part of the account's profile, on its shard, so the one place that decides a
record's paying account (the subscriber's shard) has them at hand.

Rules (docs/billing-rules.md, "Backward (sponsored) billing"):

- :func:`add_sponsor_rule` appends a rule; rules are tried in the order they
  were added. It covers records that *start* at or after ``start_s`` (and
  before ``end_s``, if set), whenever they arrive; records already charged
  keep their charge. Refused, with nothing written: a closed account
  (``account_closed``); a rule naming the account itself as sponsor, an
  ``msisdn`` that is not one of the account's, or ``end_s`` not after
  ``start_s`` (``invalid_argument``); a ``rule_id`` the account has already
  (``sponsor_rule_exists``); an account holding :data:`SPONSOR_RULES_MAX`
  rules, ended ones included (``sponsor_rules_full``).
- :func:`end_sponsor_rule` ends a rule at ``end_s``: records starting from
  then on are no longer covered. A rule already ending earlier keeps its end
  (ending never extends a rule); ending it at or before its start means it
  never applies. Rules are never deleted: they are the history of who paid.

Both are idempotent by ``request_id``: fields ``account``, ``content`` (the
rule, or the rule id to end) and ``time`` (``start_s`` / ``end_s``, or
``None`` when the caller took it from its clock because the request named no
time, as for a plan change). The receipt is the rule as the request left it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Final

from billing.accounts import AccountState, AccountStatus, Effects, Outcome, Result, SponsorRule
from billing.idempotency import Mark, mark
from billing.outcome import replayed

__all__ = ["SPONSOR_RULES_MAX", "add_sponsor_rule", "end_sponsor_rule"]

#: Rules kept per account, ended ones included: each record tries them in turn.
SPONSOR_RULES_MAX: Final = 64


def _content(rule: SponsorRule) -> str:
    """The rule's fields but its start, as one canonical string (an idempotency field)."""
    fields = asdict(rule)
    del fields["start_s"]
    return json.dumps(fields, sort_keys=True)


def _with_rules(state: AccountState, rules: tuple[SponsorRule, ...]) -> AccountState:
    new = state.copy()
    new.account = replace(state.account, sponsor_rules=rules)
    return new


def add_sponsor_rule(
    *,
    request_id: str,
    state: AccountState,
    rule: SponsorRule,
    existing: Mark[SponsorRule] | None,
    at_from_clock: bool = False,
) -> Outcome[SponsorRule]:
    """Append ``rule`` to ``state``'s account under the module's rules."""
    account = state.account
    fields = {
        "account": account.account_id,
        "content": _content(rule),
        "time": None if at_from_clock else rule.start_s,
    }
    if (early := replayed(existing, fields)) is not None:
        return early
    if account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if (
        not rule.rule_id
        or rule.sponsor_account_id == account.account_id
        or (rule.msisdn is not None and rule.msisdn not in account.msisdns)
        or (rule.end_s is not None and rule.end_s <= rule.start_s)
        or rule.start_s < 0
    ):
        return Outcome(result=Result.INVALID_ARGUMENT)
    rules = account.sponsor_rules
    if any(r.rule_id == rule.rule_id for r in rules):
        return Outcome(result=Result.SPONSOR_RULE_EXISTS)
    if len(rules) >= SPONSOR_RULES_MAX:
        return Outcome(result=Result.SPONSOR_RULES_FULL)
    return Outcome(
        result=Result.CREATED,
        receipt=rule,
        effects=Effects(
            accounts=(_with_rules(state, (*rules, rule)),),
            explicit_marks=((request_id, mark(fields, rule)),),
        ),
    )


def end_sponsor_rule(
    *,
    request_id: str,
    state: AccountState,
    rule_id: str,
    end_s: int,
    existing: Mark[SponsorRule] | None,
    at_from_clock: bool = False,
) -> Outcome[SponsorRule]:
    """End the rule ``rule_id`` of ``state``'s account at ``end_s`` (module docstring)."""
    account = state.account
    fields = {
        "account": account.account_id,
        "content": rule_id,
        "time": None if at_from_clock else end_s,
    }
    if (early := replayed(existing, fields)) is not None:
        return early
    rules = account.sponsor_rules
    found = next((i for i, r in enumerate(rules) if r.rule_id == rule_id), None)
    if found is None:
        return Outcome(result=Result.UNKNOWN_SPONSOR_RULE)
    rule = rules[found]
    end = max(end_s, rule.start_s)
    marks = ((request_id, mark(fields, rule)),)
    if rule.end_s is not None and rule.end_s <= end:
        # Ends earlier already: nothing changes, the request is still answered the same.
        return Outcome(result=Result.UPDATED, receipt=rule, effects=Effects(explicit_marks=marks))
    ended = replace(rule, end_s=end)
    return Outcome(
        result=Result.UPDATED,
        receipt=ended,
        effects=Effects(
            accounts=(_with_rules(state, (*rules[:found], ended, *rules[found + 1 :])),),
            explicit_marks=((request_id, mark(fields, ended)),),
        ),
    )
