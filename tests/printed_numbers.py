"""Checks on numbers a benchmark printed, rounded to the digits it printed."""

from __future__ import annotations


def _half_unit(text: str) -> float:
    """Half the unit of the last printed digit: the most that rounding moved the number."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0**-decimals


def assert_printed_ratio(ratio: str, numerator: str, denominator: str, what: str = "") -> None:
    """``ratio`` is ``numerator / denominator`` up to the rounding of all three printed numbers: a
    ratio taken against another row than the unit it names fails."""
    a, b, r = float(numerator), float(denominator), float(ratio)
    slack = (a / b) * (_half_unit(numerator) / a + _half_unit(denominator) / b) + _half_unit(ratio)
    assert abs(r - a / b) <= slack * 1.001, f"{what}: printed ratio {ratio}, but {numerator} / {denominator} = {a / b}"
