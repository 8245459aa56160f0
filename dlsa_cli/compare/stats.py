"""Paired comparisons of two methods: over seeds (a t-interval) and over test samples (a bootstrap).

Both report `a - b`. The t quantile is computed here (no scipy): Student's t
CDF through the regularised incomplete beta function (its continued fraction,
evaluated by the modified Lentz method), inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError

__all__ = ["BootstrapDifference", "PairedDifference", "paired_bootstrap", "paired_difference", "t_cdf", "t_quantile"]


@dataclass
class PairedDifference:
    """`a - b` per seed, their mean, sd (n - 1) and the `level` t-interval of the mean (None for one seed)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    level: float
    differences: list[float]

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero (False without an interval)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"excludes_zero": self.excludes_zero}


@dataclass
class BootstrapDifference:
    """`mean(a) - mean(b)` over test samples and its `level` percentile interval from `resamples` draws."""

    n: int
    mean: float
    low: float
    high: float
    level: float
    resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"excludes_zero": self.excludes_zero}


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> PairedDifference:
    """The paired difference `a - b` of one metric over seeds (a[i], b[i]: seed i), with a t-interval."""
    x, y = _finite_pair(a, b, "per-seed")
    d = x - y  # (n,)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, None, None, None, level, d.tolist())
    sd = float(d.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, level, d.tolist())


def paired_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> BootstrapDifference:
    """Accuracy difference of two methods on the same test samples, with a percentile bootstrap interval.

    Resampling the N samples with replacement only changes how many of them
    fall in each kind of pair (a right and b wrong: +1, the reverse: -1, else
    0), so each resample is one multinomial draw of those three counts: the
    same distribution as resampling indices, in O(resamples) work.
    """
    x, y = _finite_pair(correct_a, correct_b, "correctness")
    if not np.isin(x, (0, 1)).all() or not np.isin(y, (0, 1)).all():
        raise InputError("correctness vectors must hold only 0/1 (or booleans)")
    if resamples < 1:
        raise InputError(f"resamples must be at least 1, got {resamples}")
    d = x - y  # (N,) in {-1, 0, 1}
    n = len(d)
    p = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()], dtype=np.float64) / n
    draws = np.random.default_rng(seed).multinomial(n, p, size=resamples)  # (R, 3)
    means = (draws[:, 2] - draws[:, 0]) / n  # (R,)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return BootstrapDifference(n, float(d.mean()), float(low), float(high), level, resamples, seed)


def _finite_pair(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} values must be numbers (a run without this metric cannot be paired)") from None
    if x.ndim != 1 or x.shape != y.shape:
        raise InputError(f"{what} values must be two vectors of one length, got shapes {x.shape} and {y.shape}")
    if len(x) == 0:
        raise InputError(f"no {what} values to pair")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(f"{what} values must be finite")
    return x, y


# ----------------------------------------------------------------------------- Student's t


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise InputError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on `t_cdf` to about 1e-12."""
    if not 0 < p < 1:
        raise InputError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta I_x(a, b), 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):  # the continued fraction converges fast on this side
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
