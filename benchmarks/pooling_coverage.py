"""Coverage of the pooled intervals with *estimated* variances, on the configurations of the published grids.

    .venv/bin/python benchmarks/pooling_coverage.py docs/results/sst2 docs/results/rt-polarity --sims 2000

For each arm against the baseline (test accuracy, early-stopped), the cells of the given directories keep their
observed per-seed SD of the paired difference, their number of seeds and their test set's resolution (what
`hfreg report` floors a cell's variance at). Each simulation draws the cells' true effects around a pooled mean of
0 with between-cell SD tau (0, 0.01, 0.02), then each cell's seeds around its true effect, and pools them as
`hfreg report` does (`report.cell_variance`'s floor, `stats.random_effects`, `stats.strata`), at nominal 95%:

* the random-effects interval over all cells, against the pooled mean (0);
* each size's strata interval, against the mean of that size's true effects.

Every configuration runs twice more with a *near-copy* cell: the first cell's per-seed SD replaced by 5.8e-5 (a
preset that changes nothing there, as weight decay did in one published cell), once floored as the report does and
once without the floor, to show what the floor buys. The last line is a JSON object: the smallest coverage of each
interval with the floor, and without it on near-copy configurations.
"""

import argparse
import json
import sys

import numpy as np

from hfreg.finetune import report, stats
from hfreg.finetune.presets import BASELINE
from hfreg.finetune.records import read_runs

KEY = "delta_early_test_accuracy"
NEAR_COPY_SD = 5.8e-5


def configurations(dirs: list[str]) -> dict[str, list[dict]]:
    """{arm: [cell: sd, n, size, resolution]} from the records of ``dirs``."""
    out: dict[str, list[dict]] = {}
    for d in dirs:
        runs = read_runs(d)
        records = report.summarize(runs)
        resolution = report.test_resolution(d, runs)
        for r in records:
            if r["preset"] == BASELINE or r["against"] != BASELINE or KEY not in r or r[KEY]["n"] < 2:
                continue
            res = resolution.get((r["experiment"], r["train_size"]), {}).get("resolution", {})
            out.setdefault(r["preset"], []).append({"sd": r[KEY]["sd"], "n": r[KEY]["n"], "size": r["train_size"],
                                                    "resolution": res.get("test_accuracy", 0.0)})
    return out


def coverage(cells: list[dict], tau: float, sims: int, floor: bool, rng) -> dict:
    """Shares of simulations whose random-effects and strata intervals (95%) cover their targets."""
    sizes = sorted({c["size"] for c in cells})
    hits_re, hits_strata, tested = 0, 0, 0
    for _ in range(sims):
        theta = rng.normal(0.0, tau, len(cells)) if tau > 0 else np.zeros(len(cells))
        rows = []
        for c, t in zip(cells, theta):
            deltas = rng.normal(t, c["sd"], c["n"])
            rows.append({KEY: stats.paired(deltas), "resolution": {"test_accuracy": c["resolution"] if floor else 0},
                         "train_size": c["size"]})
        v = [report.cell_variance(r, KEY) for r in rows]
        y = [r[KEY]["mean"] for r in rows]
        if len(cells) >= 3:
            lo, hi = stats.random_effects(y, v)["ci"]
            hits_re += lo <= 0 <= hi
        for size in sizes:
            idx = [i for i, c in enumerate(cells) if c["size"] == size]
            pool = stats.strata([y[i] for i in idx], [v[i] for i in idx], [cells[i]["n"] - 1 for i in idx])
            target = float(np.mean(theta[idx]))
            hits_strata += pool["ci"][0] <= target <= pool["ci"][1]
            tested += 1
    return {"random_effects": hits_re / sims if len(cells) >= 3 else None, "strata": hits_strata / tested}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--sims", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sims < 1:
        print(f"pooling_coverage.py: error: --sims must be >= 1, got {args.sims}", file=sys.stderr)
        return 2
    configs = configurations(args.dirs)
    if not configs:
        print("pooling_coverage.py: error: no arm with at least 2 paired seeds", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    print("| arm | cells | tau | near-copy cell | floor | random effects | strata (per size) |")
    print("|---|---|---|---|---|---|---|")
    worst = {"random_effects": 1.0, "strata": 1.0, "random_effects_near_copy_unfloored": 1.0,
             "strata_near_copy_unfloored": 1.0}
    for arm, cells in configs.items():
        for tau in (0.0, 0.01, 0.02):
            near = [{**cells[0], "sd": NEAR_COPY_SD}] + cells[1:]
            for label, these, floor in (("no", cells, True), ("yes", near, True), ("yes", near, False)):
                cov = coverage(these, tau, args.sims, floor, rng)
                suffix = "" if floor else "_near_copy_unfloored"
                for k in ("random_effects", "strata"):
                    if cov[k] is not None:
                        worst[k + suffix] = min(worst[k + suffix], cov[k])
                re = "-" if cov["random_effects"] is None else f"{cov['random_effects']:.3f}"
                print(f"| {arm} | {len(these)} | {tau:g} | {label} | {'yes' if floor else 'no'} | {re} | "
                      f"{cov['strata']:.3f} |")
    mc_se = (0.95 * 0.05 / args.sims) ** 0.5
    print(json.dumps({**{f"min_coverage_{k}": v for k, v in worst.items()}, "nominal": 0.95, "sims": args.sims,
                      "mc_se_at_nominal": mc_se, "arms": len(configs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
