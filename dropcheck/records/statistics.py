"""Paired-seed comparison of two training variants: mean difference, Student-t interval, verdict.

Pure Python on purpose: `train-compare` reports on a handful of seeds, and this module must
import without numpy or scipy. The t quantile comes from the regularized incomplete beta
function (continued fraction, modified Lentz), inverted by safeguarded Newton steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

VERDICTS = ("better", "no detectable difference", "worse", "too few seeds")
MIN_SEEDS_FOR_NULL = 3  # below this, only an interval that excludes 0 is a verdict

_CF_EPS = 1e-15
_CF_TINY = 1e-300
_CF_MAX_TERMS = 10_000
_NEWTON_MAX_STEPS = 200


@dataclass(frozen=True)
class Summary:
    """One variant's accuracies over seeds; `std` is the sample std (n - 1), None below two seeds."""

    n: int
    mean: float
    std: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class PairedDifference:
    """Treatment minus baseline per seed, with a `level` Student-t interval of the mean difference."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    level: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "low": self.low, "high": self.high,
                "level": self.level, "verdict": self.verdict}


def summarize(values: Sequence[float]) -> Summary:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"summarize needs finite values, got {values}")
    n = len(values)
    if all(v == values[0] for v in values):  # fsum(n * v) / n can miss v by an ulp; keep std exactly 0
        return Summary(n, values[0], 0.0 if n > 1 else None)
    mean = math.fsum(values) / n  # n >= 2 here: a single value is "all identical" above
    return Summary(n, mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)))


def paired_difference(treatment: Sequence[float], baseline: Sequence[float], level: float = 0.95,
                      resolution: float = 0.0) -> PairedDifference:
    """Compare two variants trained on the same seeds; values are paired by position.

    `resolution` is the step the values are measured in (an accuracy on 360 test images moves in
    steps of 100/360 %). Each value is then known to within ±resolution/2, so a difference carries
    at least the rounding variance resolution²/6 (two uniform errors); it is added to the sample
    variance, so three seeds that each differ by exactly one test image do not read as certainty.
    """
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}")
    if not treatment:
        raise ValueError("paired_difference needs at least one seed")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    diff = summarize([float(t) - float(b) for t, b in zip(treatment, baseline)])
    if diff.std is None:
        return PairedDifference(diff.n, diff.mean, None, None, None, level, "too few seeds")
    spread = math.sqrt(diff.std ** 2 + resolution ** 2 / 6.0)
    half_width = t_quantile((1.0 + level) / 2.0, diff.n - 1) * spread / math.sqrt(diff.n)
    low, high = diff.mean - half_width, diff.mean + half_width
    verdict = "better" if low > 0 else "worse" if high < 0 else "no detectable difference"
    if verdict == "no detectable difference" and diff.n < MIN_SEEDS_FOR_NULL:
        # two seeds: df = 1, t = 12.7 at 95%; an interval holding 0 says nothing about the difference
        verdict = "too few seeds"
    return PairedDifference(diff.n, diff.mean, diff.std, low, high, level, verdict)


def t_quantile(p: float, df: int) -> float:
    """Inverse CDF of Student's t with `df` degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, got {p}")
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if p == 0.5:
        return 0.0
    # Solve on the smaller tail so that p near 0 keeps its relative precision; t is symmetric.
    tail = min(p, 1.0 - p)
    t = _solve_upper_tail(tail, df)
    return t if p > 0.5 else -t


def _upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: one half of I_x(df/2, 1/2) at x = df / (df + t^2)."""
    if t == 0.0:
        return 0.5
    t2 = t * t
    return 0.5 * _regularized_beta(df / 2.0, 0.5, -math.log1p(t2 / df), math.log(t2 / (df + t2)))


def _density(t: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def _solve_upper_tail(tail: float, df: float) -> float:
    """The t > 0 with P(T > t) = tail: Newton steps kept inside a shrinking bracket, else bisection."""
    low, high = 0.0, 1.0
    while _upper_tail(high, df) > tail:
        low, high = high, 2.0 * high
    t = (low + high) / 2.0
    for _ in range(_NEWTON_MAX_STEPS):
        excess = _upper_tail(t, df) - tail  # decreasing in t
        if excess > 0:
            low = t
        else:
            high = t
        step = excess / _density(t, df)
        candidate = t + step
        if not low < candidate < high:
            candidate = (low + high) / 2.0
        if abs(candidate - t) <= 1e-13 * candidate or high - low <= 1e-13 * high:
            return candidate
        t = candidate
    raise ArithmeticError(f"t quantile did not converge for tail={tail}, df={df}")


def _regularized_beta(a: float, b: float, log_x: float, log_y: float) -> float:
    """I_x(a, b) with y = 1 - x, both passed as logs so neither end loses precision."""
    x, y = math.exp(log_x), math.exp(log_y)
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    # The continued fraction converges fast only below the mean of Beta(a, b); use the mirror above it.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_beta(b, a, log_y, log_x)
    log_front = a * log_x + b * log_y - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / (a * _beta_fraction(a, b, x))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """1 + d1/(1 + d2/(1 + ...)) for the incomplete beta function, by the modified Lentz method."""
    value, c, d = 1.0, 1.0, 0.0
    for j in range(1, _CF_MAX_TERMS):
        m = j // 2
        if j % 2:
            coeff = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            coeff = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coeff * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + coeff / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        value *= c * d
        if abs(c * d - 1.0) < _CF_EPS:
            return value
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")
