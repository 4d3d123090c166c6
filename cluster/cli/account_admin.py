"""Client commands that change who may use an account, how it pays, and who pays for it.

``petribill accounts block|unblock|close ACCOUNT`` set the account's status
(operator calls; docs/billing-rules.md, "Account status"), ``petribill
accounts switch ACCOUNT MODE`` and ``credit-limit ACCOUNT AMOUNT`` change how
it pays (docs/billing-rules.md, "Switching payment mode", "Credit limit"), and
``petribill sponsors add|list|end`` manage its sponsor rules (backward billing).
They go through a gateway like every client command (``--gateway``, ``--data``,
``--json``; :mod:`cluster.cli.client`), and each write is idempotent by its
``--request-id`` (one is made up when none is given).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import click
from petribill.v1 import accounts_pb2
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.cli.client import (
    AMOUNT,
    WHEN,
    Session,
    accounts,
    cluster_command,
    proto_json,
    request_id_option,
)
from cluster.cli.render import show_account, when_text

__all__ = ["register", "show_sponsor_rules"]


def _status_command(name: str, method: str, done: str, help_text: str) -> click.Command:
    @click.argument("account_id", metavar="ACCOUNT")
    @click.option("--reason", default="", help="Why; kept in the customer's notification.")
    @click.option("--at", "at_s", type=WHEN, default=None, help="When (default: now).")
    @request_id_option
    @cluster_command
    def command(
        s: Session, account_id: str, reason: str, at_s: int | None, request_id: str | None
    ) -> None:
        call = getattr(s.client, method)
        account = call(
            account_id,
            reason,
            at_s or 0,
            request_id=request_id or f"{name}-{uuid.uuid4().hex[:12]}",
        )

        def show(c: Console) -> None:
            c.print(f"{escape(account_id)} {done}")
            show_account(c, account)

        s.emit(proto_json(account), show)

    command.__doc__ = help_text
    return accounts.command(name)(command)


block = _status_command(
    "block",
    "block_account",
    "is blocked",
    "Block ACCOUNT: online charges are refused; offline usage is still charged.",
)
unblock = _status_command(
    "unblock",
    "unblock_account",
    "is active",
    "Unblock ACCOUNT (blocked by an operator, the credit limit or a fraud rule).",
)
close = _status_command(
    "close",
    "close_account",
    "is closed",
    "Close ACCOUNT for good: new usage and online charges are refused account_closed.",
)


@accounts.command("switch")
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("mode", type=click.Choice(["prepaid", "postpaid", "hybrid"]))
@click.option("--at", "at_s", type=WHEN, default=None, help="When (default: now).")
@request_id_option
@cluster_command
def switch(
    s: Session, account_id: str, mode: str, at_s: int | None, request_id: str | None
) -> None:
    """Switch ACCOUNT to MODE, losing nothing (docs/billing-rules.md, "Switching")."""
    account = s.client.switch_payment_mode(
        account_id, mode, at_s or 0, request_id=request_id or f"switch-{uuid.uuid4().hex[:12]}"
    )
    s.emit(proto_json(account), lambda c: show_account(c, account))


@accounts.command("credit-limit")
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("amount", metavar="AMOUNT|none")
@request_id_option
@cluster_command
def credit_limit(s: Session, account_id: str, amount: str, request_id: str | None) -> None:
    """Set ACCOUNT's credit limit to AMOUNT (currency units), or none for no limit."""
    limit = None if amount == "none" else AMOUNT.convert(amount, None, None)
    account = s.client.set_credit_limit(
        account_id, limit, request_id=request_id or f"limit-{uuid.uuid4().hex[:12]}"
    )
    s.emit(proto_json(account), lambda c: show_account(c, account))


# --- sponsor rules -------------------------------------------------------------------------


def show_sponsor_rules(c: Console, rules: Sequence[accounts_pb2.SponsorRule]) -> None:
    table = Table(title="Sponsor rules, in the order tried", title_justify="left")
    for column in ("rule", "sponsor", "covers", "price", "from", "until"):
        table.add_column(column)
    for rule in rules:
        covers = [*rule.usage_classes]
        if rule.HasField("rating_group"):
            covers.append(f"rating group {rule.rating_group}")
        if rule.content_provider:
            covers.append(f"content of {rule.content_provider}")
        if rule.msisdn:
            covers.append(f"msisdn {rule.msisdn}")
        table.add_row(
            escape(rule.rule_id),
            escape(rule.sponsor_account_id),
            escape(", ".join(covers) or "all usage"),
            escape(f"rate {rule.rate_id}" if rule.rate_id else "rated amount"),
            when_text(rule.start_s),
            when_text(rule.end_s) if rule.end_s else "open",
        )
    c.print(table)


@click.group()
def sponsors() -> None:
    """Sponsor rules: who pays for which of an account's usage (backward billing)."""


@sponsors.command("add")
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("sponsor_id", metavar="SPONSOR")
@click.option("--rule-id", default="", help="The rule's name (default: the request id).")
@click.option("--msisdn", default="", help="Only this number of ACCOUNT.")
@click.option("--class", "usage_classes", multiple=True, help="A usage class pattern (repeat).")
@click.option("--rating-group", type=click.IntRange(min=0), default=None)
@click.option("--provider", "content_provider", default="", help="Only this provider's content.")
@click.option("--rate", "rate_id", default="", help="SPONSOR pays this rate (default: rated).")
@click.option("--from", "start_s", type=WHEN, default=None, help="Effective from (default: now).")
@click.option("--until", "end_s", type=WHEN, default=None, help="Effective until (exclusive).")
@request_id_option
@cluster_command
def sponsors_add(
    s: Session,
    account_id: str,
    sponsor_id: str,
    rule_id: str,
    msisdn: str,
    usage_classes: tuple[str, ...],
    rating_group: int | None,
    content_provider: str,
    rate_id: str,
    start_s: int | None,
    end_s: int | None,
    request_id: str | None,
) -> None:
    """SPONSOR pays for ACCOUNT's usage that the options select, from --from on."""
    rule = s.client.add_sponsor_rule(
        account_id,
        sponsor_id,
        rule_id=rule_id,
        msisdn=msisdn,
        usage_classes=usage_classes,
        rating_group=rating_group,
        content_provider=content_provider,
        rate_id=rate_id,
        start_s=start_s or 0,
        end_s=end_s or 0,
        request_id=request_id or f"sponsor-{uuid.uuid4().hex[:12]}",
    )
    s.emit(proto_json(rule), lambda c: show_sponsor_rules(c, [rule]))


@sponsors.command("list")
@click.argument("account_id", metavar="ACCOUNT")
@cluster_command
def sponsors_list(s: Session, account_id: str) -> None:
    """ACCOUNT's sponsor rules, ended ones included."""
    rules = list(s.client.list_sponsor_rules(account_id).rules)
    s.emit([proto_json(r) for r in rules], lambda c: show_sponsor_rules(c, rules))


@sponsors.command("end")
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("rule_id", metavar="RULE")
@click.option("--at", "end_s", type=WHEN, default=None, help="Effective end (default: now).")
@request_id_option
@cluster_command
def sponsors_end(
    s: Session, account_id: str, rule_id: str, end_s: int | None, request_id: str | None
) -> None:
    """End RULE of ACCOUNT: usage from --at on is ACCOUNT's own again."""
    rule = s.client.end_sponsor_rule(
        account_id,
        rule_id,
        end_s or 0,
        request_id=request_id or f"end-{rule_id}-{uuid.uuid4().hex[:8]}",
    )
    s.emit(proto_json(rule), lambda c: show_sponsor_rules(c, [rule]))


def register(group: click.Group) -> None:
    """Add ``sponsors`` to the ``petribill`` group (the status commands join ``accounts``)."""
    group.add_command(sponsors)
