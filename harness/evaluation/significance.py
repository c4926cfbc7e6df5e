"""One-sided t-tests for "the new score beats the record by at least a margin".

The challenge README: a new record must beat the current one by >= 0.005 nats per token with
p < 0.01. H0: mean_new >= mean_record - margin; H1: mean_new < mean_record - margin.

The Student t CDF is computed here (regularised incomplete beta by Lentz's continued fraction,
Numerical Recipes §6.4) because scipy is not a dependency.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import mean, stdev
from typing import Any


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df may be fractional: Welch)."""
    if df <= 0:
        raise ValueError("df must be positive")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


@dataclass
class TestResult:
    test: str  # "welch" or "one-sample"
    n_new: int
    mean_new: float
    std_new: float | None
    n_record: int
    mean_record: float
    std_record: float | None
    margin: float
    alpha: float
    improvement: float  # mean_record - mean_new (positive = better)
    t: float | None
    df: float | None
    p_value: float | None
    significant: bool | None  # None: the test cannot be computed
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _moments(xs: list[float]) -> tuple[float, float | None]:
    return mean(xs), (stdev(xs) if len(xs) >= 2 else None)


def welch_one_sided(new: list[float], record: list[float], margin: float, alpha: float) -> TestResult:
    """H1: mean(new) < mean(record) - margin, Welch's unequal-variance t-test."""
    mn, sn = _moments(new)
    mr, sr = _moments(record)
    base = dict(test="welch", n_new=len(new), mean_new=mn, std_new=sn, n_record=len(record),
                mean_record=mr, std_record=sr, margin=margin, alpha=alpha, improvement=mr - mn)
    if sn is None or sr is None:
        return TestResult(**base, t=None, df=None, p_value=None, significant=None,
                          note="Welch's test needs at least 2 runs on each side")
    vn, vr = sn * sn / len(new), sr * sr / len(record)
    se = math.sqrt(vn + vr)
    diff = mn - (mr - margin)
    if se == 0.0:
        p = 0.0 if diff < 0 else 1.0
        return TestResult(**base, t=None, df=None, p_value=p, significant=p < alpha,
                          note="zero variance on both sides: the comparison is exact")
    t = diff / se
    df = (vn + vr) ** 2 / ((vn * vn / (len(new) - 1)) + (vr * vr / (len(record) - 1)))
    p = t_cdf(t, df)
    return TestResult(**base, t=t, df=df, p_value=p, significant=p < alpha)


def one_sample_one_sided(new: list[float], record_value: float, margin: float, alpha: float) -> TestResult:
    """H1: mean(new) < record_value - margin, with the record taken as a known constant."""
    mn, sn = _moments(new)
    base = dict(test="one-sample", n_new=len(new), mean_new=mn, std_new=sn, n_record=1,
                mean_record=record_value, std_record=None, margin=margin, alpha=alpha,
                improvement=record_value - mn)
    note = "record given as one number: one-sample t-test (the record's own run-to-run noise is ignored)"
    if sn is None:
        return TestResult(**base, t=None, df=None, p_value=None, significant=None,
                          note=note + "; needs at least 2 runs")
    diff = mn - (record_value - margin)
    if sn == 0.0:
        p = 0.0 if diff < 0 else 1.0
        return TestResult(**base, t=None, df=None, p_value=p, significant=p < alpha,
                          note=note + "; zero variance")
    t = diff / (sn / math.sqrt(len(new)))
    df = float(len(new) - 1)
    p = t_cdf(t, df)
    return TestResult(**base, t=t, df=df, p_value=p, significant=p < alpha, note=note)
