"""Paired statistics over seeds: intervals, multiplicity correction, effect size and power (scipy, no torch).

A verdict calls a difference a difference only when its simultaneous interval — the t-interval at level
1 - alpha/m over the m comparisons of one table (Bonferroni) — excludes zero. Holm-adjusted p-values of the same
family are reported beside it; Holm never rejects less than Bonferroni, so no verdict is stricter than Holm's.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05


def paired(deltas) -> dict:
    """Mean paired difference, its 95% t-interval, two-sided p-value (one-sample t-test against 0), d_z."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci95": (float("nan"), float("nan")), "p": float("nan"),
                "d_z": float("nan")}
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # identical differences (rounding aside): no spread to test against
        sd = 0.0
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"n": n, "mean": mean, "sd": sd, "ci95": (mean - half, mean + half), "p": p,
            "d_z": mean / sd if sd > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))}


def interval(deltas, level: float) -> tuple[float, float]:
    """The two-sided t-interval of the mean at confidence ``level``."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def holm(pvalues) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order (nan stays nan and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), np.nan)
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def seeds_for_power(sd: float, delta: float, alpha: float = ALPHA, power: float = 0.8, limit: int = 10_000) -> int:
    """The fewest seeds for which a two-sided paired t-test at ``alpha`` detects a true mean difference ``delta``
    with probability ``power``, given the paired SD ``sd`` (noncentral t)."""
    if not sd > 0:
        return 2
    for n in range(2, limit + 1):
        df, nc = n - 1, delta / sd * math.sqrt(n)
        crit = stats.t.ppf(1 - alpha / 2, df)
        achieved = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return n
    return limit


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    """"better", "worse" or "no detectable difference" from a (corrected) interval of preset minus baseline."""
    if math.isnan(lo) or lo <= 0 <= hi:
        return "no detectable difference"
    up = lo > 0
    return "better" if up == higher_is_better else "worse"
