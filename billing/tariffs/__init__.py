"""The tariff catalogue: TOML files in one folder, loaded into frozen values.

See ``docs/tariffs.md`` for the file format and the pricing arithmetic. Rating
itself (``rate``, ``rate_batch``, ``reprice``...) lives in ``billing.rating``.
"""

from billing.tariffs.errors import TariffError
from billing.tariffs.loader import load_catalogue
from billing.tariffs.model import (
    Bundle,
    Catalogue,
    ContentItem,
    Destination,
    MaxCostStrategy,
    PaymentMode,
    Plan,
    PlanVersion,
    Provider,
    Rate,
    RateRule,
    Sponsor,
    Tier,
    class_matches,
)
from billing.tariffs.pricing import Priced, price

__all__ = [
    "Bundle",
    "Catalogue",
    "ContentItem",
    "Destination",
    "MaxCostStrategy",
    "PaymentMode",
    "Plan",
    "PlanVersion",
    "Priced",
    "Provider",
    "Rate",
    "RateRule",
    "Sponsor",
    "TariffError",
    "Tier",
    "class_matches",
    "load_catalogue",
    "price",
]
