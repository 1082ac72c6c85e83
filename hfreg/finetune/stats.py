"""Paired statistics over seeds: intervals, five-way verdicts, sequential boundaries, pooling, effect size and power
(scipy, no torch).

Verdicts (Lakens 2017; Lakens, Scheel & Isager 2018), from the simultaneous interval CI of preset - control and the
equivalence interval EI (the 1 - 2 alpha interval of the two one-sided tests, TOST) against a declared margin:
  * **better** / **worse**: CI excludes 0 and EI is not inside the margin;
  * **trivial**: CI excludes 0 and EI lies inside the margin (a real difference too small to matter);
  * **equivalent**: CI contains 0 and EI lies inside the margin;
  * **inconclusive**: neither.
Exactly one per comparison.

Error control: one family-wise alpha (0.05) per experiment over every verdict it reports. It is split over the
verdict columns (`ALPHA_SHARES`: the primary endpoint, test accuracy, takes most of it), Bonferroni over the
comparisons of a column, and spent over the looks of a staged grid (`--seeds auto`) by a Lan-DeMets
O'Brien-Fleming-type function (`nominal_alpha`): little at the early looks, nearly the whole share at the last.

Pooling across cells: at one training size the data sets are fixed strata (`strata`: the equal-weight mean, Welch-
Satterthwaite df); over three or more cells a random-effects model (`random_effects`: DerSimonian-Laird tau^2, the
modified Hartung-Knapp interval with t(k - 1), and the prediction interval for a new cell with t(k - 2)); size as a
moderator (`between_sizes`; the slope on log size, `meta_regression`, describes its direction). Cells' variances
add what the test set contributes (`test_set_terms`), so that no cell rules a pool by a variance its seeds
alone understate.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special, stats

from .tasks import TASKS

ALPHA = 0.05


# The t and normal laws through the scipy.special functions that scipy.stats' `t` and `norm` wrap: the same values,
# bit for bit, without ~40 µs of argument handling per call (a staged grid's stopping rule and the coverage
# simulations call these thousands of times).
def t_ppf(q: float, df: float) -> float:
    """For 0 < q < 1 (at q = 0 the special function gives +inf where scipy.stats gives -inf)."""
    return float(special.stdtrit(df, q))


def t_cdf(x: float, df: float) -> float:
    return float(special.stdtr(df, x))


def t_sf(x: float, df: float) -> float:
    return float(special.stdtr(df, -x))


def norm_cdf(x: float) -> float:
    return float(special.ndtr(x))


def norm_ppf(q: float) -> float:
    return float(special.ndtri(q))


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
    half = t_ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:  # the one-sample t-test against 0 (scipy's ttest_1samp, without its per-call overhead)
        p = 2 * t_sf(abs(mean) / (sd / math.sqrt(n)), n - 1)
    return {"n": n, "mean": mean, "sd": sd, "ci95": (mean - half, mean + half), "p": p,
            "d_z": mean / sd if sd > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))}


def interval(deltas, level: float) -> tuple[float, float]:
    """The two-sided t-interval of the mean at confidence ``level``."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    q = t_ppf(1 - (1 - level) / 2, n - 1)
    if math.isinf(q):  # a level so close to 1 that no error is spent (a first look): the interval is everything,
        return -math.inf, math.inf  # identical differences included (not inf x 0 = nan)
    half = q * d.std(ddof=1) / math.sqrt(n)
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
        crit = t_ppf(1 - alpha / 2, df)
        achieved = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return n
    return limit


VERDICTS = ("better", "worse", "trivial", "equivalent", "inconclusive")
# declared equivalence margins per metric (absolute units of the metric); `hfreg report --margin` overrides them.
# Accuracy: 0.02 is a difference most users would act on and about one run's binomial SE on a few hundred test
# examples (the findings print what each test set resolves beside it); NLL after temperature scaling: 0.02 nats.
# R² and Spearman (regression): 0.02 on the same 0..1 scale of explained variance and rank agreement.
MARGINS = {"test_accuracy": 0.02, "test_f1": 0.02, "test_loss": 0.02, "test_nll_ts": 0.02, "test_ece": 0.02,
           "test_brier": 0.01, "test_r2": 0.02, "test_spearman": 0.02, "test_pearson": 0.02,
           "test_exact_match": 0.02, "test_perplexity": 0.05, "test_entity_f1": 0.02, "test_token_accuracy": 0.02,
           "gap": 0.05,
           "degradation": 0.02}


def verdict(lo: float, hi: float, higher_is_better: bool, eq: tuple[float, float] | None = None,
            margin: float | None = None) -> str:
    """One of `VERDICTS` for preset minus control: ``lo, hi`` the simultaneous interval of the difference,
    ``eq`` the simultaneous equivalence (TOST) interval, judged against +-``margin`` (see the module doc)."""
    differs = not (math.isnan(lo) or lo <= 0 <= hi)
    inside = eq is not None and margin is not None and not math.isnan(eq[0]) and -margin < eq[0] and eq[1] < margin
    if differs:
        return "trivial" if inside else ("better" if (lo > 0) == higher_is_better else "worse")
    return "equivalent" if inside else "inconclusive"


def judge(deltas, margin: float, higher_is_better: bool, m: int = 1, alpha: float = ALPHA) -> dict:
    """The four-way verdict of paired ``deltas`` (preset - baseline) in a family of ``m`` comparisons at
    family-wise ``alpha``: the simultaneous interval (1 - alpha/m), the equivalence interval (1 - 2 alpha/m) and
    the verdict against +-``margin``.

    Identical non-zero differences (a discrete metric, few seeds: two runs each one test example apart) give a
    zero-width interval that proves nothing by itself; they decide only where the exact sign test does, i.e. where
    ``2 * 0.5 ** n`` is at most ``alpha / m``, and elsewhere their interval is widened to reach 0."""
    ci = list(interval(deltas, 1 - alpha / m))
    eq = list(interval(deltas, 1 - 2 * alpha / m))
    decision = verdict(*ci, higher_is_better=higher_is_better, eq=eq, margin=margin)
    d = np.asarray(deltas, dtype=float)
    if decision in ("better", "worse", "trivial") and len(np.unique(d)) <= 2 and sign_flip_p(d) > alpha / m:
        # a discrete metric over few seeds (every seed one or two test examples apart): the t-interval's normal
        # law does not hold, and the exact sign-flip test does not reject
        decision = "equivalent" if eq[0] > -margin and eq[1] < margin and 0 in d else "inconclusive"
        decision = "inconclusive" if decision == "equivalent" and not (ci[0] <= 0 <= ci[1]) else decision
        # the interval reported is the one the verdict used: the sign-flip test did not exclude 0, so neither does it
        ci = [min(ci[0], 0.0), max(ci[1], 0.0)]
    return {"ci_adjusted": ci, "ci_equivalence": eq, "verdict": decision}


def sign_flip_p(deltas) -> float:
    """The two-sided p-value of the exact sign-flip (paired permutation) test of a zero mean: the share of the
    2^n sign patterns whose |sum| is at least the observed one (Monte Carlo over 2^16 patterns beyond n = 16)."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    observed = abs(d.sum()) - 1e-12 * max(1.0, float(np.abs(d).sum()))
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(0).choice([-1, 1], size=(2 ** 16, n))
    return float((np.abs(signs @ d) >= observed).mean())


# the experiment's alpha over its verdict columns (comparison, metric): the primary endpoint (test accuracy; a
# regression's test R², `tasks`) takes 40% under each comparison, the second verdict metric 10%
ALPHA_SHARES = {(comp, metric): share for t in TASKS.values() for metric, share in zip(t.verdicts, (0.4, 0.1))
                for comp in ("early", "fixed")}
PRIMARY = ("early", "test_accuracy")  # what `--seeds auto` stops on (a regression: its primary, `tasks.Task`)
FUTILITY = 0.10  # stop a cell as inconclusive once the chance of any verdict by the last look falls below this
FUTILITY_FROM = 0.5  # ... but only from this information fraction on


def spent(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction ``t``: 2 - 2 Phi(z_{1-alpha/2}/sqrt t)."""
    if t <= 0:
        return 0.0
    return 2 - 2 * norm_cdf(norm_ppf(1 - alpha / 2) / math.sqrt(min(t, 1.0)))


def looks(max_seeds: int, stage: int) -> list[int]:
    """The seed counts at which a staged grid looks at its verdicts: every ``stage`` seeds, and ``max_seeds``."""
    return sorted({*range(stage, max_seeds, stage), max_seeds})


def _boundaries(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """Two-sided z boundaries c_j of a group-sequential test at the information ``fractions``: under the null, the
    chance of first crossing |Z| >= c_j at look j is the alpha spent between looks j - 1 and j. Exact for the
    Brownian score process (independent increments), by numerical integration on a grid (Armitage, McPherson &
    Rowe 1969; Jennison & Turnbull 2000, ch. 19)."""
    return _through(fractions, alpha)[0]


_GRID = np.linspace(-10.0, 10.0, 2001)


@functools.lru_cache(maxsize=512)
def _through(fractions: tuple[float, ...], alpha: float) -> tuple[tuple[float, ...], np.ndarray | None]:
    """`_boundaries` up to the last of ``fractions``, and the density that continues past it. Built on the
    boundaries of all but the last fraction (cached), which do not depend on it: the readings at 5, 10, ... seeds
    share their earlier looks' work, one look each."""
    if not fractions:
        return (), None
    before, density = _through(fractions[:-1], alpha)
    prev = fractions[-2] if len(fractions) > 1 else 0.0
    t, grid = fractions[-1], _GRID
    h = grid[1] - grid[0]
    pos = grid[grid >= 0]
    if density is None:
        f = stats.norm.pdf(grid, scale=math.sqrt(t))
    else:
        f = stats.norm.pdf(grid[:, None] - grid[None, :], scale=math.sqrt(t - prev)) @ density * h
    target = spent(t, alpha) - spent(prev, alpha)
    # the mass beyond +-b, for b on the grid (the density is symmetric), trapezoid rule from the outside in
    half = f[grid >= 0]
    tail = np.concatenate([np.cumsum(((half[1:] + half[:-1]) / 2 * h)[::-1])[::-1], [0.0]])
    outside = 2 * tail
    if target <= 0 or target >= outside[0]:
        b = pos[-1] if target <= 0 else 0.0
    else:  # outside falls with b: interpolate the b where it meets the target
        b = float(np.interp(-target, -outside, pos))
    # continuation region: the density inside (-b, b), its edge cell weighted by the share inside
    return (*before, b / math.sqrt(t)), f * np.clip((b - np.abs(grid)) / h + 0.5, 0.0, 1.0)


def nominal_alpha(n: int, alpha: float, max_seeds: int | None = None, stage: int | None = None) -> float:
    """The two-sided nominal level of a verdict read at ``n`` seeds when the family's share is ``alpha``: ``alpha``
    itself for a fixed grid; for a staged grid, the level of the O'Brien-Fleming-type boundary at ``n``, computed for
    the looks actually taken — the planned ones before ``n``, then ``n`` (a count between planned looks, from a
    missing run or a report read mid-stage, spends only the error its own information fraction allows)."""
    if not max_seeds or not stage:
        return alpha
    n = min(n, max_seeds)
    taken = [k for k in looks(max_seeds, stage) if k < n] + [n]
    c = _boundaries(tuple(k / max_seeds for k in taken), alpha)[-1]
    return 2 * norm_cdf(-c)


def futile(deltas, margin: float, alpha_final: float, max_seeds: int) -> bool:
    """Whether, with the effect and spread seen so far taken as true, the chance that the last look (``max_seeds``
    seeds, nominal level ``alpha_final``) gives any verdict but inconclusive is below `FUTILITY` (conditional power;
    non-binding: stopping here changes no boundary, so the error spent is the same)."""
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    if n < max(2, FUTILITY_FROM * max_seeds) or n >= max_seeds:  # early trends mislead: not before half the seeds
        return False
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return False
    se_final = sd / math.sqrt(max_seeds)
    diff = t_ppf(1 - alpha_final / 2, max_seeds - 1) * se_final
    eq = t_ppf(1 - alpha_final, max_seeds - 1) * se_final
    # the final mean given the seeds so far: n observed, the rest drawn around the current mean
    spread = sd * math.sqrt(max_seeds - n) / max_seeds
    def final(x):  # its distribution function: normal, centred on the current mean
        return norm_cdf((x - mean) / spread)

    p_differ = norm_cdf(-((diff - mean) / spread)) + final(-diff)
    # the two regions overlap (trivial) only where margin - eq > diff, and there they cover every final mean: the
    # sum is then >= 1, never futile, as the probability of their union is
    p_equiv = max(0.0, final(margin - eq) - final(-margin + eq)) if margin > eq else 0.0
    return p_differ + p_equiv < FUTILITY


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
    lower = t_sf((d.mean() + margin) / se, n - 1)  # H0: delta <= -margin
    upper = t_cdf((d.mean() - margin) / se, n - 1)  # H0: delta >= +margin
    return max(lower, upper)


def test_set_terms(d) -> dict:
    """What a test set adds to the variance of a cell's mean paired difference, from the per-example differences
    ``d`` (examples x seeds; correctness or loss of the arm minus its control's), in the crossed model
    d_js = mu + a_j + b_s + e_js (examples j, seeds s):

    * ``per_seed``: the test set's sampling variance of one seed's mean difference, Var_j(d_js) / N averaged over
      the seeds (for accuracy, McNemar's: (b + c)/N^2 - Delta^2/N) — what the test set resolves per seed;
    * ``examples``: sigma_a^2 / N, the part of the mean's variance that comes from each example's systematic
      difference between the arms, (MS_examples - MS_residual) / seeds / N: the seeds do not see it and more seeds
      do not shrink it;
    * ``disagreements``: how many example x seed entries differ at all (0: the arm is a no-op on this test set)."""
    d = np.asarray(d, dtype=float)
    n_ex, n_seeds = d.shape
    if n_ex < 2:
        return {"per_seed": 0.0, "examples": 0.0, "disagreements": int(np.count_nonzero(d))}
    per_seed = float(d.var(axis=0, ddof=1).mean() / n_ex)
    examples = 0.0
    if n_seeds >= 2:
        rows, cols, grand = d.mean(axis=1), d.mean(axis=0), d.mean()
        ms_rows = n_seeds * float(((rows - grand) ** 2).sum()) / (n_ex - 1)
        resid = d - rows[:, None] - cols[None, :] + grand
        ms_res = float((resid ** 2).sum()) / ((n_ex - 1) * (n_seeds - 1))
        examples = max(0.0, (ms_rows - ms_res) / n_seeds) / n_ex
    return {"per_seed": per_seed, "examples": examples, "disagreements": int(np.count_nonzero(d))}


def random_effects(means, variances, alpha: float = ALPHA) -> dict:
    """Pool per-cell mean differences ``means`` with sampling variances ``variances``: the DerSimonian-Laird
    estimate, its modified Hartung-Knapp interval at 1 - ``alpha`` (and the 1 - 2 ``alpha`` one for TOST), the
    prediction interval for a new cell (Higgins, Thompson & Spiegelhalter 2009; t with k - 2 df), I^2, tau and each
    cell's share of the weight. Fewer than 3 cells give no interval: with 2, t(1) makes any interval useless."""
    y = np.asarray(means, dtype=float)
    v = np.maximum(np.asarray(variances, dtype=float), 1e-12)
    k = len(y)
    nan = float("nan")
    empty = {"k": k, "delta": float(y.mean()) if k else nan, "ci": [nan, nan], "ci_equivalence": [nan, nan],
             "prediction_interval": [nan, nan], "i2": nan, "tau": nan, "df": max(k - 1, 0),
             "weights": [1.0 / k] * k if k else []}
    if k < 3:
        return empty
    w = 1 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    c = float(w.sum() - (w ** 2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    ws = 1 / (v + tau2)
    mu = float((ws * y).sum() / ws.sum())
    hk = float((ws * (y - mu) ** 2).sum() / (k - 1))
    se = math.sqrt(max(1.0, hk) / ws.sum())

    def ci(level):
        half = t_ppf(1 - (1 - level) / 2, k - 1) * se
        return [mu - half, mu + half]

    half_pi = t_ppf(1 - alpha / 2, k - 2) * math.sqrt(tau2 + se ** 2)
    return {"k": k, "delta": mu, "ci": ci(1 - alpha), "ci_equivalence": ci(1 - 2 * alpha),
            "prediction_interval": [mu - half_pi, mu + half_pi],
            "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0, "tau": math.sqrt(tau2), "df": k - 1,
            "weights": (ws / ws.sum()).tolist()}


def strata(means, variances, dfs, alpha: float = ALPHA, fixed=None) -> dict:
    """Data sets as fixed strata at one training size: the equal-weight mean of the cell means, SE = sqrt(sum v) / k,
    Welch-Satterthwaite df = (sum v)^2 / sum(v_seed^2 / df) where ``variances`` are the seed parts (``dfs`` their
    degrees of freedom) and ``fixed`` optional parts known without seed error (a test set's term: infinite df); its
    1 - ``alpha`` and 1 - 2 ``alpha`` t-intervals. Each cell's weight is 1/k whatever its variance."""
    y, v, df = (np.asarray(x, dtype=float) for x in (means, variances, dfs))
    extra = np.zeros_like(v) if fixed is None else np.asarray(fixed, dtype=float)
    k = len(y)
    mu, total = float(y.mean()), float((v + extra).sum())
    se = math.sqrt(total) / k
    denominator = float((v ** 2 / df).sum())
    dof = total ** 2 / denominator if denominator > 0 else math.inf

    def ci(level):
        half = (t_ppf(1 - (1 - level) / 2, dof) if dof < math.inf else norm_ppf(1 - (1 - level) / 2)) * se
        return [mu - half, mu + half]

    return {"k": k, "delta": mu, "ci": ci(1 - alpha), "ci_equivalence": ci(1 - 2 * alpha), "df": dof, "se": se,
            "weights": [1.0 / k] * k}


def between_sizes(groups) -> dict:
    """The moderator test of a designed factor (training size): ``groups`` holds, per size, its cells' (mean,
    variance) pairs. Mixed-effects subgroup test: the spread between data sets within a size, tau^2 (DerSimonian-
    Laird, pooled over the sizes), is added to every cell's variance, so that it is not read as an effect of size;
    each size's equal-weight estimate has SE sqrt(sum(v + tau^2)) / k; Q_between = sum w (mu_g - mu_bar)^2 with
    w = 1 / SE^2, chi-square with G - 1 df. Size is a factor, not a line in log size: a harm confined to the
    smallest size is a step that a slope fits badly. ``p`` is nan with fewer than 2 sizes."""
    groups = [[(float(m), max(float(v), 1e-12)) for m, v in g] for g in groups if g]
    q_within, dof, c = 0.0, 0, 0.0
    for g in groups:
        if len(g) < 2:
            continue
        w = np.array([1 / v for _, v in g])
        y = np.array([m for m, _ in g])
        q_within += float((w * (y - (w * y).sum() / w.sum()) ** 2).sum())
        dof += len(g) - 1
        c += float(w.sum() - (w ** 2).sum() / w.sum())
    tau2 = max(0.0, (q_within - dof) / c) if c > 0 else 0.0
    if len(groups) < 2:
        return {"q": float("nan"), "df": 0, "p": float("nan"), "tau_within": math.sqrt(tau2)}
    mu = np.array([np.mean([m for m, _ in g]) for g in groups])
    se2 = np.array([sum(v + tau2 for _, v in g) / len(g) ** 2 for g in groups])
    w = 1 / se2
    q = float((w * (mu - (w * mu).sum() / w.sum()) ** 2).sum())
    return {"q": q, "df": len(groups) - 1, "p": float(stats.chi2.sf(q, len(groups) - 1)),
            "tau_within": math.sqrt(tau2)}


def meta_regression(means, variances, x) -> dict:
    """Mixed-effects meta-regression of cell means on one moderator ``x`` (log training size): method-of-moments
    residual tau^2 (the DerSimonian-Laird estimator's extension), Knapp-Hartung t test of the slope with k - 2 df.
    ``p`` is nan where the moderator cannot be tested (fewer than 3 cells or a single value of ``x``)."""
    y, v, x = (np.asarray(a, dtype=float) for a in (means, variances, x))
    k = len(y)
    v = np.maximum(v, 1e-12)
    if k < 3 or np.ptp(x) == 0:
        return {"k": k, "slope": float("nan"), "p": float("nan"), "df": max(k - 2, 0)}
    X = np.column_stack([np.ones(k), x])

    def wls(w):
        cov = np.linalg.inv(X.T @ (w[:, None] * X))
        beta = cov @ X.T @ (w * y)
        return beta, cov, float((w * (y - X @ beta) ** 2).sum())

    w = 1 / v
    _, cov, q = wls(w)
    trace = float(w.sum() - np.trace(cov @ X.T @ ((w ** 2)[:, None] * X)))
    tau2 = max(0.0, (q - (k - 2)) / trace) if trace > 0 else 0.0
    beta, cov, q = wls(1 / (v + tau2))
    se = math.sqrt(max(1.0, q / (k - 2)) * cov[1, 1])
    t = float(beta[1] / se)
    return {"k": k, "slope": float(beta[1]), "se": se, "p": 2 * t_sf(abs(t), k - 2), "df": k - 2,
            "tau": math.sqrt(tau2)}


def seeds_for_equivalence(sd: float, margin: float, alpha: float = ALPHA, power: float = 0.8) -> int:
    """About how many seeds a TOST at ``alpha`` needs to show equivalence within +-``margin`` with probability
    ``power`` when the true difference is 0 (normal approximation, then the t quantile; Chow et al. 2008)."""
    if not sd > 0:
        return 2
    z = norm_ppf(1 - alpha) + norm_ppf(1 - (1 - power) / 2)
    n = max(2, math.ceil((z * sd / margin) ** 2))
    while n < 10_000 and (t_ppf(1 - alpha, n - 1) + t_ppf(1 - (1 - power) / 2, n - 1)) * sd \
            / math.sqrt(n) > margin:
        n += 1
    return n
