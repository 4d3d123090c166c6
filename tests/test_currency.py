"""The one ISO 4217 check (billing.money.is_currency_code) and the three places that use it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from billing.accounts import Account, PaymentMode
from billing.invariant import InvariantViolation
from billing.money import Money, is_currency_code
from billing.rating import load_catalogue
from billing.tariffs import TariffError

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "tariffs"
# Each passed at least one of the three former checks (len 3 and isupper, or isalpha too).
NOT_CODES = ["A1B", "ÄÖÜ", "EU1", "eur", "Eur", "EURO", "EU", "", "E R", "ＥＵＲ"]


def test_three_ascii_capitals_are_a_code() -> None:
    """EUR, USD and XAU have the form of a code; the check does not hold the code list."""
    assert all(is_currency_code(code) for code in ("EUR", "USD", "XAU", "QQQ"))


@pytest.mark.parametrize("text", NOT_CODES)
def test_anything_else_is_not(text: str) -> None:
    """Digits, non-ASCII capitals, lower case, other lengths are no currency code."""
    assert not is_currency_code(text)


@pytest.mark.parametrize("text", NOT_CODES)
def test_money_and_accounts_refuse_what_is_not_a_code(text: str) -> None:
    """Money and Account take only a currency code: anything else is a programmer error."""
    with pytest.raises(InvariantViolation, match="ISO 4217"):
        Money(1, text)
    with pytest.raises(InvariantViolation, match="ISO 4217"):
        Account(account_id="acct-1", currency=text, payment_mode=PaymentMode.PREPAID)


@pytest.mark.parametrize("text", ["ÄÖÜ", "A1B", "eur"])
def test_the_catalogue_refuses_what_is_not_a_code(tmp_path: Path, text: str) -> None:
    """A catalogue currency that is not three ASCII capitals is a load error naming the key."""
    folder = tmp_path / "tariffs"
    shutil.copytree(SAMPLE, folder)
    catalogue = folder / "catalogue.toml"
    catalogue.write_text(catalogue.read_text().replace('currency = "EUR"', f'currency = "{text}"'))
    with pytest.raises(TariffError, match="currency: expected an ISO 4217 code"):
        load_catalogue(folder)
