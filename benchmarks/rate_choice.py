"""How often a staged grid claims a difference that is not there, by how each learning rate is chosen on the
selection split: per cell, again at every look, from the seeds it compares (hfreg's rule before 2026-12-06); per
cell, once, on five tuning seeds set aside (briefly the decided answer's); per seed, on that seed's own runs
(hfreg's rule: `report.chosen_runs`); beside one rate for every seed, no choice at all (the design's own error).

    .venv/bin/python benchmarks/rate_choice.py docs/results/answer-sst2-sentences --sims 50000

A null arm (the baseline's own distribution) against the baseline, per training size, with the per-seed
(selection, test) accuracies at every rate drawn from a normal law fitted to the grid's first five seeds: the
baseline's means, the covariance of a run's six numbers within a cell, and the part of it that a seed shares across
cells (its subset and initialisation: what pairing cancels). Scenarios: the observed means, and the two best rates
tied on the selection split while their test accuracies differ by a gap (which tests the per-cell rules; under the
per-seed rule a null arm and the baseline stay exchangeable). Each simulated experiment reads the looks of the
design (5 to 40 seeds in stages of 5) at the primary column's nominal levels (`stats.nominal_alpha`, its share over
32 comparisons); a claim is an interval that excludes 0 at any look (better, worse or trivial), every look read,
as a row is while another row of its cell keeps the cell open. Prints the false-claim rate per scenario and rule
beside the per-comparison budget.
"""

import argparse
import functools
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hfreg.finetune import report, stats  # noqa: E402
from hfreg.finetune.records import read_runs  # noqa: E402

MAX_SEEDS, STAGE, TUNING = 40, 5, 5


def fitted_law(runs: list[dict], size: int, tuning: list[int]):
    """(rates, baseline means, shared covariance, own covariance) of a run's (selection, test) accuracy at every
    rate, from the tuning seeds' runs of one size."""
    rates = sorted({r["learning_rate"] for r in runs})
    cells = sorted({r["preset"] for r in runs if r["train_size"] == size})
    by = {}
    for r in runs:
        if r["train_size"] == size and r["seed"] in tuning:
            point = report.selected_point(r, "accuracy")
            by[(r["preset"], r["seed"], r["learning_rate"])] = (point["selection_accuracy"], point["test_accuracy"])
    cells = [c for c in cells if all((c, s, lr) in by for s in tuning for lr in rates)]
    x = np.array([[[v for lr in rates for v in by[(c, s, lr)]] for s in tuning] for c in cells])  # cell, seed, 2k
    resid = x - x.mean(1, keepdims=True)
    k, n = len(cells), len(tuning)
    total = np.einsum("csi,csj->ij", resid, resid) / (k * (n - 1))
    cross = sum(resid[a].T @ resid[b] for a in range(k) for b in range(k) if a != b) / (k * (k - 1) * (n - 1))
    shared, own = _psd((cross + cross.T) / 2), _psd(total - _psd((cross + cross.T) / 2), floor=1e-8)
    return rates, x[cells.index("pretrain-zero")].mean(0), shared, own


def _psd(m, floor=0.0):
    w, v = np.linalg.eigh(m)
    return v @ np.diag(np.clip(w, floor, None)) @ v.T


RULES = ("one rate, no choice", "per cell, again at every look", "per cell, once on 5 tuning seeds", "per seed")


@functools.lru_cache(maxsize=1)
def _bounds() -> tuple:
    """(seeds, t quantile) of each look, at the primary column's nominal level (its share over 32 comparisons)."""
    share = report.column_alpha("early", "test_accuracy", 32)
    return tuple((n, stats.t_ppf(1 - stats.nominal_alpha(n, share, MAX_SEEDS, STAGE) / 2, n - 1))
                 for n in stats.looks(MAX_SEEDS, STAGE))


def false_claims(means, shared, own, sims: int, seed: int = 0) -> dict[str, float]:
    """Per rule of `RULES`, the share of simulated null experiments whose interval excludes 0 at some look (a
    claim: better, worse or trivial). Every look is read, as a row is while another row of its cell keeps the cell
    open. One set of draws serves every rule; the first five seeds are the tuning seeds of the third alone. Each
    look reads running sums over the seeds, per pair of rates where the choice may change between looks."""
    rng = np.random.default_rng(seed)
    dim, seeds, k = len(means), MAX_SEEDS + TUNING, len(means) // 2
    ls, lo = np.linalg.cholesky(shared + 1e-12 * np.eye(dim)), np.linalg.cholesky(own)
    common = rng.standard_normal((sims, seeds, dim)) @ ls.T
    arm = means + common + rng.standard_normal((sims, seeds, dim)) @ lo.T
    base = means + common + rng.standard_normal((sims, seeds, dim)) @ lo.T
    tuned = [a[:, :TUNING, 0::2].mean(1).argmax(1) for a in (arm, base)]
    arm, base = arm[:, TUNING:], base[:, TUNING:]
    rows, stages = np.arange(sims), MAX_SEEDS // STAGE

    def at_looks(x):  # running sums over the seeds, read at the looks only (x: sims x seeds x ...)
        return x.reshape(sims, stages, STAGE, *x.shape[2:]).sum(2).cumsum(1)

    # every pair of rates (arm's, baseline's): the paired test differences and their squares, summed to each look
    pairs = (arm[:, :, 1::2][:, :, :, None] - base[:, :, 1::2][:, :, None, :]).reshape(sims, MAX_SEEDS, k * k)
    sums, squares = at_looks(pairs), at_looks(pairs ** 2)
    chosen = [a[:, :, 0::2].argmax(2) for a in (arm, base)]  # per seed, its own runs
    own_d = np.take_along_axis(pairs, (chosen[0] * k + chosen[1])[..., None], 2)[..., 0]
    own_sums, own_squares = at_looks(own_d), at_looks(own_d ** 2)
    running = [at_looks(a[:, :, 0::2]) for a in (arm, base)]  # selection scores so far, per rate
    claimed = {rule: np.zeros(sims, bool) for rule in RULES}
    for look, (n, bound) in enumerate(_bounds()):
        again = [r[:, look].argmax(1) for r in running]
        pair = {RULES[0]: np.full(sims, (k // 2) * k + k // 2), RULES[1]: again[0] * k + again[1],
                RULES[2]: tuned[0] * k + tuned[1]}
        for rule in RULES:
            if rule == RULES[3]:
                total, total2 = own_sums[:, look], own_squares[:, look]
            else:
                total, total2 = sums[rows, look, pair[rule]], squares[rows, look, pair[rule]]
            mean = total / n
            se = np.sqrt(np.maximum(total2 - n * mean ** 2, 0) / (n - 1) / n)
            claimed[rule] |= np.abs(mean) > bound * se
    return {rule: float(c.mean()) for rule, c in claimed.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output_dir", help="a grid whose first seeds ran every learning rate")
    p.add_argument("--sims", type=int, default=50000)
    p.add_argument("--gaps", default="0.004,0.007", help="test-accuracy gaps between two rates tied on selection")
    args = p.parse_args(argv)
    runs = read_runs(args.output_dir)
    tuning = list(range(TUNING))
    if not runs or len({r["learning_rate"] for r in runs}) < 2:
        p.error(f"{args.output_dir} holds no grid of several learning rates")
    budget = report.column_alpha("early", "test_accuracy", 32)
    print(f"per-comparison budget {budget:.2e}; {args.sims} simulated experiments per line (a rate near the budget "
          f"is known to about ±{2 * math.sqrt(budget / args.sims):.0e}); primary column")
    print("| size | scenario | " + " | ".join(RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for size in sorted({r["train_size"] for r in runs}):
        rates, means, shared, own = fitted_law(runs, size, tuning)
        scenarios = [("observed means", means)]
        best = np.argsort(means[0::2])[-2:]  # the two rates with the best selection means
        for gap in (float(g) for g in args.gaps.split(",")):
            tie = means.copy()
            tie[2 * best[0]] = tie[2 * best[1]]
            tie[2 * best[0] + 1] = tie[2 * best[1] + 1] - gap
            scenarios.append((f"{rates[best[0]]:g} and {rates[best[1]]:g} tied on selection, test gap {gap:g}", tie))
        for name, m in scenarios:
            found = false_claims(m, shared, own, args.sims)
            print(f"| {size} | {name} | " + " | ".join(f"{found[rule]:.1e}" for rule in RULES) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
