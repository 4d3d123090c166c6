"""The roles a token can carry; each RPC admits a set of them .

A role names a kind of client, not a person: a mediation system submits usage,
a CRM manages accounts, a self-care app reads one subscriber's account. The
RPC table says which roles each RPC admits; this module only names them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACCOUNT_BOUND_ROLES", "Role"]


class Role(StrEnum):
    """The role of a token, as written in the tokens file and on the command line."""

    MEDIATION = "mediation"  # submit usage, store unreadable lines
    CHARGING = "charging"  # online charging
    CRM = "crm"  # accounts, top-ups, plan changes, payment-mode switches
    BILLING = "billing"  # bill runs, invoices, payments, reversals
    SELFCARE = "selfcare"  # reads of one account only: the token names the account
    # status, drain, rebalance, backup, tariffs, rejects, reconcile, inspect; account
    # block, unblock and close
    OPERATOR = "operator"


#: Roles whose tokens are bound to one account id (required for them, refused for others).
ACCOUNT_BOUND_ROLES: frozenset[Role] = frozenset({Role.SELFCARE})
