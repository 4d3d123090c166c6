"""The bounds of billing.limits keep the account arithmetic inside the store's int64.

The property is the inductive step: from any state whose books are within
``BALANCE_MAX_MICROS``, any money-moving operation with an amount within
``AMOUNT_MAX_MICROS`` either is refused or leaves every book within the bound
(and every posting within int64). Since a new account starts at zero, no
sequence of these operations can leave the bound, and the shard's 8-byte codec
can always store what the core computes. A real shard stores a book at the bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_account_shard import open_shard
from test_accounts import CONFIG, T0, account

from actors.shard import ops
from billing.accounts import AccountState, PaymentMode, Result
from billing.ledger import Book
from billing.limits import AMOUNT_MAX_MICROS, BALANCE_MAX_MICROS, INT64_MAX, SUM_MAX_MICROS
from billing.ocs.events import refund
from billing.outcome import Outcome
from billing.switching import switch_mode
from billing.topup import top_up

_BOOK = st.one_of(
    st.integers(-BALANCE_MAX_MICROS, BALANCE_MAX_MICROS),
    st.sampled_from((0, BALANCE_MAX_MICROS, -BALANCE_MAX_MICROS, BALANCE_MAX_MICROS - 1)),
)
_AMOUNT = st.one_of(st.integers(1, AMOUNT_MAX_MICROS), st.just(AMOUNT_MAX_MICROS))


def _state(mode: PaymentMode, books: tuple[int, ...]) -> AccountState:
    state = AccountState(account("A", mode))
    for book, value in zip(Book, books, strict=True):
        state.add(book, value)
    return state


def _apply(kind: str, state: AccountState, amount: int, to_mode: PaymentMode) -> Outcome[object]:
    if kind == "top_up":
        return top_up(  # type: ignore[return-value]
            request_id="r", state=state, amount=amount, currency="EUR", at_s=T0,
            existing=None, config=CONFIG,
        )  # fmt: skip
    if kind == "refund":
        return refund(  # type: ignore[return-value]
            request_id="r", state=state, amount=amount, service="voice", reason_ref="x",
            at_s=T0, existing=None, config=CONFIG,
        )  # fmt: skip
    return switch_mode(  # type: ignore[return-value]
        request_id="r", state=state, to_mode=to_mode, at_s=T0, existing=None, config=CONFIG
    )


@settings(max_examples=400, deadline=None)
@given(
    mode=st.sampled_from(list(PaymentMode)),
    to_mode=st.sampled_from(list(PaymentMode)),
    books=st.tuples(*[_BOOK] * len(Book)),
    kind=st.sampled_from(("top_up", "refund", "switch")),
    amount=_AMOUNT,
)
def test_an_operation_never_takes_a_book_beyond_the_bound(
    mode: PaymentMode, to_mode: PaymentMode, books: tuple[int, ...], kind: str, amount: int
) -> None:
    """From books within the bound, a top-up, refund or switch stays within it or is refused."""
    out = _apply(kind, _state(mode, books), amount, to_mode)
    if out.result is Result.BALANCE_LIMIT:
        assert not out.effects.accounts and not out.effects.entries
        return
    for new in out.effects.accounts:
        for book, value in new.balances().items():
            assert abs(value) <= BALANCE_MAX_MICROS, (kind, book, value)
    for entry in out.effects.entries:
        for posting in entry.postings:
            assert abs(posting.amount) <= SUM_MAX_MICROS < INT64_MAX


def test_limits_leave_int64_headroom() -> None:
    """A book plus several amounts still fits the store's signed 8 bytes."""
    assert BALANCE_MAX_MICROS + 8 * AMOUNT_MAX_MICROS == SUM_MAX_MICROS < INT64_MAX // 4


def test_a_top_up_past_the_bound_is_refused_and_the_shard_stores_the_bound(
    tmp_path: Path,
) -> None:
    """On a real shard, books can reach the bound exactly; one micro more is BALANCE_LIMIT."""
    shard = open_shard(tmp_path / "s", 1)
    created = shard.run(
        ops.CreateAccount(request_id="c", account=account("A", PaymentMode.PREPAID))
    )
    assert created.result is Result.CREATED
    steps = BALANCE_MAX_MICROS // AMOUNT_MAX_MICROS
    for i in range(steps):
        up = shard.run(
            ops.TopUp(
                request_id=f"t{i}", account_id="A", amount=AMOUNT_MAX_MICROS, currency="EUR",
                at_s=T0,
            )
        )  # fmt: skip
        assert up.result is Result.TOPPED_UP
    more = shard.run(
        ops.TopUp(request_id="over", account_id="A", amount=1, currency="EUR", at_s=T0)
    )
    assert more.result is Result.BALANCE_LIMIT
    state = shard.run(ops.GetAccount(account_id="A"))
    assert state is not None and state.prepaid == BALANCE_MAX_MICROS
    assert shard.run(ops.Audit()).ok
    shard.close()


@pytest.mark.parametrize("amount", [0, -1, AMOUNT_MAX_MICROS + 1])
def test_the_core_refuses_amounts_out_of_range(amount: int) -> None:
    """Callers other than the gateway cannot pass an amount beyond the bound either."""
    out = _apply(
        "top_up", _state(PaymentMode.PREPAID, (0,) * len(Book)), amount, PaymentMode.PREPAID
    )
    assert out.result is Result.INVALID_ARGUMENT
