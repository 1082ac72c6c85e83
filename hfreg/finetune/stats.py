"""Paired statistics over seeds: intervals, four-way verdicts, pooling, effect size and power (scipy, no torch).

Within one family of m comparisons (one table column: a comparison and a metric):
  * **better** / **worse**: the simultaneous interval — the t-interval at level 1 - alpha/m (Bonferroni) —
    excludes zero. Holm-adjusted p-values of the same family are reported beside it; Bonferroni is never less
    strict than Holm's procedure, so every such verdict is one Holm's test would also make.
  * **equivalent**: two one-sided tests (TOST, Schuirmann 1987) against the declared margin both reject at
    alpha/m, i.e. the (1 - 2 alpha/m) interval lies inside (-margin, +margin).
  * **inconclusive**: neither.
Pooling across cells (data sets x sizes) is a random-effects meta-analysis: DerSimonian-Laird between-cell
variance, and the Hartung-Knapp-Sidik-Jonkman interval with the "modified" factor max(1, q) (Roever, Knapp &
Friede 2015), t with k - 1 degrees of freedom, which keeps its level with few cells.
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


VERDICTS = ("better", "worse", "equivalent", "inconclusive")
# declared equivalence margins per metric (absolute units of the metric); `hfreg report --margin` overrides them
MARGINS = {"test_accuracy": 0.02, "test_f1": 0.02, "test_loss": 0.02, "test_nll_ts": 0.02, "test_ece": 0.02,
           "test_brier": 0.01, "gap": 0.05, "degradation": 0.02}


def verdict(lo: float, hi: float, higher_is_better: bool, eq: tuple[float, float] | None = None,
            margin: float | None = None) -> str:
    """One of `VERDICTS` for preset minus baseline: ``lo, hi`` the simultaneous interval of the difference,
    ``eq`` the simultaneous equivalence (TOST) interval, judged against +-``margin``."""
    if not (math.isnan(lo) or lo <= 0 <= hi):
        return "better" if (lo > 0) == higher_is_better else "worse"
    if eq is not None and margin is not None and not math.isnan(eq[0]) and -margin < eq[0] and eq[1] < margin:
        return "equivalent"
    return "inconclusive"


def judge(deltas, margin: float, higher_is_better: bool, m: int = 1, alpha: float = ALPHA) -> dict:
    """The four-way verdict of paired ``deltas`` (preset - baseline) in a family of ``m`` comparisons at
    family-wise ``alpha``: the simultaneous interval (1 - alpha/m), the equivalence interval (1 - 2 alpha/m) and
    the verdict against +-``margin``.

    Identical non-zero differences (a discrete metric, few seeds: two runs each one test example apart) give a
    zero-width interval that proves nothing by itself; they decide only where the exact sign test does, i.e. where
    ``2 * 0.5 ** n`` is at most ``alpha / m``."""
    ci = list(interval(deltas, 1 - alpha / m))
    eq = list(interval(deltas, 1 - 2 * alpha / m))
    decision = verdict(*ci, higher_is_better=higher_is_better, eq=eq, margin=margin)
    d = np.asarray(deltas, dtype=float)
    if len(d) >= 2 and paired(d)["sd"] == 0 and d.mean() != 0 and 2 * 0.5 ** len(d) > alpha / m:
        decision = "inconclusive"
    return {"ci_adjusted": ci, "ci_equivalence": eq, "verdict": decision}


def looks(max_seeds: int, stage: int) -> int:
    """How many times a staged grid (`--seeds auto`) may look at its verdicts: after every ``stage`` seeds up to
    ``max_seeds``. Its family-wise alpha is spent evenly over them (alpha / looks at each look), a Bonferroni
    bound over the looks: whatever the data, the chance of any false better/worse verdict at any look stays at or
    below alpha."""
    return math.ceil(max_seeds / stage)


def tost_p(deltas, margin: float) -> float:
    """The TOST p-value of ``deltas`` against +-``margin``: the larger of the two one-sided t-test p-values."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if abs(float(d.mean())) < margin else 1.0
    se = sd / math.sqrt(n)
    lower = stats.t.sf((d.mean() + margin) / se, n - 1)  # H0: delta <= -margin
    upper = stats.t.cdf((d.mean() - margin) / se, n - 1)  # H0: delta >= +margin
    return float(max(lower, upper))


def random_effects(means, variances, alpha: float = ALPHA) -> dict:
    """Pool per-cell mean differences ``means`` with sampling variances ``variances``: the DerSimonian-Laird
    estimate, its modified Hartung-Knapp interval at 1 - ``alpha`` (and the 1 - 2 ``alpha`` one for TOST), I^2
    and tau."""
    y = np.asarray(means, dtype=float)
    v = np.maximum(np.asarray(variances, dtype=float), 1e-12)  # a near-copy of the baseline: no spread
    k = len(y)
    if k == 0:
        nan = float("nan")
        return {"k": 0, "delta": nan, "ci": [nan, nan], "ci_equivalence": [nan, nan], "i2": nan, "tau": nan}
    w = 1 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    c = float(w.sum() - (w ** 2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    ws = 1 / (v + tau2)
    mu = float((ws * y).sum() / ws.sum())
    if k == 1:
        return {"k": 1, "delta": mu, "ci": [float("nan")] * 2, "ci_equivalence": [float("nan")] * 2,
                "i2": float("nan"), "tau": 0.0}
    hk = float((ws * (y - mu) ** 2).sum() / (k - 1))
    se = math.sqrt(max(1.0, hk) / ws.sum())

    def ci(level):
        half = float(stats.t.ppf(1 - (1 - level) / 2, k - 1)) * se
        return [mu - half, mu + half]

    return {"k": k, "delta": mu, "ci": ci(1 - alpha), "ci_equivalence": ci(1 - 2 * alpha),
            "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0, "tau": math.sqrt(tau2)}


def seeds_for_equivalence(sd: float, margin: float, alpha: float = ALPHA, power: float = 0.8) -> int:
    """About how many seeds a TOST at ``alpha`` needs to show equivalence within +-``margin`` with probability
    ``power`` when the true difference is 0 (normal approximation, then the t quantile; Chow et al. 2008)."""
    if not sd > 0:
        return 2
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(1 - (1 - power) / 2)
    n = max(2, math.ceil((z * sd / margin) ** 2))
    while n < 10_000 and (stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(1 - (1 - power) / 2, n - 1)) * sd \
            / math.sqrt(n) > margin:
        n += 1
    return n
