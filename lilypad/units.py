"""Token amounts: the one parser and printer of what users type (``10``, ``0.5``) and the chain's
base units (18 decimals, at most a ``uint96`` in any offer or deal)."""

from __future__ import annotations

import re

from lilypad.errors import InputError

TOKEN_DECIMALS = 18
_SCALE: int = 10**TOKEN_DECIMALS
#: The largest amount an offer or a deal can carry (``uint96``).
UINT96_MAX = 2**96 - 1
#: Plain decimal numbers only: no sign, exponent, underscore or inner space (``1e3`` and ``1_0``
#: are typos far more often than intent, and an exponent can name a number too big to build).
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_tokens(
    text: str, what: str, *, allow_zero: bool = False, maximum: int = UINT96_MAX
) -> int:
    """``"10"`` or ``"0.5"`` tokens -> base units.

    Raises:
        InputError: not a plain decimal number, more than 18 decimals, zero (unless allowed),
            or more than ``maximum`` base units; the message names ``what`` and the value.
    """
    value = text.strip()
    if not _AMOUNT.fullmatch(value):
        raise InputError(
            f"{what} {text!r} is not a number of tokens: digits with an optional decimal point, "
            "e.g. 10 or 0.5"
        )
    whole, _, fraction = value.partition(".")
    if len(fraction) > TOKEN_DECIMALS:
        raise InputError(f"{what} {text!r} has more than {TOKEN_DECIMALS} decimals")
    largest = format_tokens(maximum)
    if len(whole.lstrip("0")) > len(largest.partition(".")[0]):
        raise InputError(f"{what} {text!r} is more than the most allowed, {largest} tokens")
    units = int(whole) * _SCALE + int(fraction.ljust(TOKEN_DECIMALS, "0"))
    if units > maximum:
        raise InputError(f"{what} {text!r} is more than the most allowed, {largest} tokens")
    if units == 0 and not allow_zero:
        raise InputError(f"{what} {text!r} must be more than 0 tokens")
    return units


def format_tokens(units: int) -> str:
    """Base units -> tokens, without trailing zeros (``500000000000000000`` -> ``0.5``)."""
    whole, fraction = divmod(units, _SCALE)
    digits = f"{fraction:0{TOKEN_DECIMALS}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)
