"""The verification policy's odds and the one token-amount parser (no network needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lilypad.errors import InputError
from lilypad.units import UINT96_MAX, format_tokens, parse_tokens
from lilypad.verification import (
    AUDIT_SAFETY,
    MIN_AUDIT_PROBABILITY,
    audit_probability,
    draw_audit,
)

ETH = 10**18


def test_audits_make_cheating_cost_more_than_it_earns() -> None:
    """p x collateral >= safety x price for every deal the market allows (collateral >= 10x)."""
    for price, collateral in ((ETH, 10 * ETH), (3 * ETH, 30 * ETH), (ETH, 100 * ETH), (1, 10)):
        p = audit_probability(price, collateral)
        assert p * collateral >= AUDIT_SAFETY * price * (1 - 1e-12)
        assert (1 - p) * price - p * collateral < 0  # a cheat's expected gain is negative
    assert audit_probability(ETH, 10 * ETH) == pytest.approx(0.15)
    assert audit_probability(0, 10 * ETH) == MIN_AUDIT_PROBABILITY  # free jobs too, now and then
    assert audit_probability(ETH, ETH) == 1.0
    assert audit_probability(ETH, 0) == 1.0


def test_the_audit_draw_has_the_stated_odds() -> None:
    draws = [draw_audit(0.15) for _ in range(20_000)]
    assert 0.135 < sum(draws) / len(draws) < 0.165  # 5 standard deviations either side
    assert all(draw_audit(1.0) for _ in range(100))
    assert not any(draw_audit(0.0) for _ in range(1000))


@pytest.mark.parametrize(
    ("text", "units"),
    [("10", 10 * ETH), ("0.5", ETH // 2), (" 3 ", 3 * ETH), ("0.000000000000000001", 1)],
)
def test_token_amounts_parse_exactly(text: str, units: int) -> None:
    assert parse_tokens(text, "--max-price") == units


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1e40", "not a number of tokens"),
        ("1e999999999", "not a number of tokens"),  # no giant number is ever built
        ("1_0", "not a number of tokens"),
        ("-1", "not a number of tokens"),
        ("0x10", "not a number of tokens"),
        ("NaN", "not a number of tokens"),
        ("", "not a number of tokens"),
        ("\u0661\u0660", "not a number of tokens"),  # Arabic-Indic digits: str.isdigit says yes
        ("0", "more than 0"),
        ("1.0000000000000000001", "more than 18 decimals"),
        ("79228162514.264337593543950336", "most allowed"),
        ("9" * 10_000, "most allowed"),
    ],
)
def test_bad_token_amounts_are_refused_with_the_value_named(text: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as info:
        parse_tokens(text, "--max-price")
    assert "--max-price" in str(info.value)


def test_zero_is_allowed_where_asked_and_the_largest_amount_round_trips() -> None:
    assert parse_tokens("0", "--price", allow_zero=True) == 0
    assert parse_tokens(format_tokens(UINT96_MAX), "--price") == UINT96_MAX


@given(st.integers(min_value=1, max_value=UINT96_MAX))
def test_format_and_parse_are_inverse(units: int) -> None:
    assert parse_tokens(format_tokens(units), "x") == units
