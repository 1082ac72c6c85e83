"""How often a staged grid claims a difference that is not there, by how each learning rate is chosen on the
selection split: per cell, again at every look, from the seeds it compares (hfreg's rule before 2026-12-06); per
cell, once, on five tuning seeds set aside (briefly the decided answer's); or per seed, on that seed's own runs
(hfreg's rule: `report.chosen_runs`).

    .venv/bin/python benchmarks/rate_choice.py docs/results/answer-sst2-sentences --sims 20000

A null arm (the baseline's own distribution) against the baseline, per training size, with the per-seed
(selection, test) accuracies at every rate drawn from a normal law fitted to the grid's tuning-stage records: the
baseline's means, the covariance of a run's six numbers within a cell, and the part of it that a seed shares
across cells (its subset and initialisation: what pairing cancels). Scenarios: the observed means, and the two best
rates tied on the selection split while their test accuracies differ by a gap. Each simulated experiment runs the
looks of the design (5 to 40 compared seeds in stages of 5) at the column's nominal levels (`stats.nominal_alpha`;
primary column's share over 32 comparisons) and stops when the paired interval excludes 0 (a claim: better,
worse or trivial) or shows equivalence within the margin; futility stops are left out, which can only add claims.
Prints the probability of a false claim per scenario and rule beside the per-comparison budget.
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hfreg.finetune import report, stats  # noqa: E402
from hfreg.finetune.records import read_runs  # noqa: E402

MAX_SEEDS, STAGE, TUNING, MARGIN = 40, 5, 5, 0.02


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


RULES = ("per cell, again at every look", "per cell, once on 5 tuning seeds", "per seed")


def false_claims(means, shared, own, rule: str, sims: int, seed: int = 0) -> float:
    """The share of simulated null experiments with a claim (better, worse or trivial) at any look, under one of
    `RULES`."""
    rng = np.random.default_rng(seed)
    dim, seeds = len(means), MAX_SEEDS + TUNING  # the same draws for every rule; the tuning seeds' used by one
    ls, lo = np.linalg.cholesky(shared + 1e-12 * np.eye(dim)), np.linalg.cholesky(own)
    common = rng.standard_normal((sims, seeds, dim)) @ ls.T
    arm = means + common + rng.standard_normal((sims, seeds, dim)) @ lo.T
    base = means + common + rng.standard_normal((sims, seeds, dim)) @ lo.T
    if rule == RULES[1]:  # the rate chosen once on the tuning seeds, which no look compares
        pick_arm, pick_base = (a[:, :TUNING, 0::2].mean(1).argmax(1) for a in (arm, base))
    arm, base = arm[:, TUNING:], base[:, TUNING:]
    share = report.column_alpha("early", "test_accuracy", 32)
    claimed, open_ = np.zeros(sims, bool), np.ones(sims, bool)
    for n in stats.looks(MAX_SEEDS, STAGE):
        if rule == RULES[0]:  # chosen again from the seeds compared so far
            pick_arm, pick_base = (a[:, :n, 0::2].mean(1).argmax(1) for a in (arm, base))
        if rule == RULES[2]:  # each seed its own: a seed's runs ranked on its selection split
            pick_arm, pick_base = (a[:, :n, 0::2].argmax(2)[..., None] for a in (arm, base))
        else:
            pick_arm, pick_base = (p[:, None, None] if p.ndim == 1 else p for p in (pick_arm, pick_base))
        test_arm = np.take_along_axis(arm[:, :n, 1::2], np.broadcast_to(pick_arm, (sims, n, 1)), 2)[..., 0]
        test_base = np.take_along_axis(base[:, :n, 1::2], np.broadcast_to(pick_base, (sims, n, 1)), 2)[..., 0]
        d = test_arm - test_base
        mean, se = d.mean(1), d.std(1, ddof=1) / math.sqrt(n)
        level = stats.nominal_alpha(n, share, MAX_SEEDS, STAGE)
        differs = np.abs(mean) > stats.t_ppf(1 - level / 2, n - 1) * se
        half = stats.t_ppf(1 - level, n - 1) * se
        equivalent = (mean - half > -MARGIN) & (mean + half < MARGIN)
        claimed |= open_ & differs
        open_ &= ~(differs | equivalent)
    return float(claimed.mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output_dir", help="a grid whose first seeds ran every learning rate")
    p.add_argument("--sims", type=int, default=20000)
    p.add_argument("--gaps", default="0.004,0.007", help="test-accuracy gaps between two rates tied on selection")
    args = p.parse_args(argv)
    runs = read_runs(args.output_dir)
    tuning = list(range(TUNING))
    if not runs or len({r["learning_rate"] for r in runs}) < 2:
        p.error(f"{args.output_dir} holds no grid of several learning rates")
    budget = report.column_alpha("early", "test_accuracy", 32)
    print(f"per-comparison budget {budget:.2e}; {args.sims} simulated experiments per line; primary column")
    print("| size | scenario | " + " | ".join(f"rate chosen {r}" for r in RULES) + " |")
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
            rates_ = " | ".join(f"{false_claims(m, shared, own, rule, args.sims):.1e}" for rule in RULES)
            print(f"| {size} | {name} | {rates_} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
