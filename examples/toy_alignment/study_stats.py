"""The statistics of the regime study: paired-by-seed differences and their Student-t interval.

Pure functions of plain numbers (no numpy, no scipy), tested against hand-derived values in
``tests/toy/test_study_stats.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass


def paired_differences(plain: Mapping[int, float], treated: Mapping[int, float]) -> list[float]:
    """``treated[s] − plain[s]`` for every seed ``s`` both have, in seed order.

    Pairing by seed removes what the two arms of a seed share (data order, sampling draws)
    from the comparison; a seed missing on either side is left out, never imputed.
    """
    return [treated[s] - plain[s] for s in sorted(plain.keys() & treated.keys())]


def student_t_density(x: float, df: int) -> float:
    """Density of Student's t with ``df`` degrees of freedom:
    ``Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + x²/ν)^(−(ν+1)/2)``."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def student_t_cdf(x: float, df: int, intervals: int = 4000) -> float:
    """``P(T ≤ x)`` for Student's t: ``1/2 + ∫₀^x density``, the integral by Simpson's rule
    (``intervals`` even; error below 1e-9 for |x| ≤ 100 and df ≥ 1)."""
    if x == 0:
        return 0.5
    a, b = 0.0, abs(x)
    h = (b - a) / intervals
    total = student_t_density(a, df) + student_t_density(b, df)
    for i in range(1, intervals):
        total += (4 if i % 2 else 2) * student_t_density(a + i * h, df)
    half = total * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


def student_t_quantile(p: float, df: int) -> float:
    """The ``x`` with ``student_t_cdf(x, df) = p`` (``0.5 ≤ p < 1``), by bisection to 1e-10."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must lie in [0.5, 1), got {p}")
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided ``level`` Student-t interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """``mean ± t_{(1+level)/2, n−1} · s / √n`` with ``s`` the sample standard deviation
    (the one-sample t interval; for paired differences, the paired-t interval).
    With fewer than two values the bounds are NaN: one seed says nothing about the spread."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    half = student_t_quantile((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)
