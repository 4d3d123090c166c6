"""Who may call what: the roles a token carries (docs/security.md)."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ALL_ROLES", "Role"]


class Role(enum.StrEnum):
    """A token's role; each RPC of the table admits a set of them."""

    MEDIATION = "mediation"  # submits usage and unreadable lines
    CHARGING = "charging"  # online charging
    CRM = "crm"  # accounts, top-ups, plan changes, payment-mode switches
    BILLING = "billing"  # bill runs, invoices, payments, reversals
    SELFCARE = "selfcare"  # reads of the one account its token is bound to
    OPERATOR = "operator"  # status, drain, rebalance, backup, tariffs, rejects, reconcile


ALL_ROLES: Final = frozenset(Role)
