"""Coverage of the pooled intervals with *estimated* variances, on the configurations of the published grids.

    .venv/bin/python benchmarks/pooling_coverage.py docs/results/sst2 docs/results/rt-polarity --sims 2000

For each arm against the baseline (test accuracy, early-stopped), each cell of the given directories keeps what
`hfreg report` measured of it from its stored predictions: the seeds' SD of the paired difference, the number of
seeds, and its test set's terms (`stats.test_set_terms`: per seed, McNemar's variance; the examples' systematic
part). A simulated cell follows the crossed model d_js = theta + a_j + b_s + e_js: the cell's test set is one draw
(a_j: its mean enters every seed alike), each seed another (b_s, and e_js averaged over the test set), with the
variances those measurements imply. Each simulation draws the cells' true effects theta around a pooled mean of 0
with between-cell SD tau (0, 0.01, 0.02) and pools as the report does (`report.cell_parts`, `stats.strata`,
`stats.random_effects`) at nominal 95% (``--level``: another level, such as the pooled rows' own, about 0.999):

* the random-effects interval over all cells, against the pooled mean (0);
* each size's strata interval, against the mean of that size's true effects.

Every configuration runs with the test set's terms as the report uses them and again on the seeds' variance alone
(what a report of records without stored predictions does), each also with a *near-copy* cell in place of its
first one (a preset that changes almost nothing there: seed SD 5.8e-5 and 2 of the test set's examples differing
per seed, as weight decay did in one published cell, with a true effect of 0). Each strata coverage is one size's.
The last line is a JSON object: per interval (random effects; strata, each size) and variance rule, the smallest
and the mean coverage over every configuration measured and their number. The smallest of many configurations
falls below 0.95 by chance (about 2.4 Monte-Carlo SEs for 60 of them); the mean says whether coverage is short.

With ``--max_seeds N --seed_stage K`` the cells are staged as `--seeds auto` stages them, so that a cell's number
of seeds depends on its own data: each simulated cell draws N seeds and keeps those up to the first look (every K
seeds) at which the harness's rule stops it (`report.numbers._adjust` at the level of that look for a column of
``--comparisons`` rows, then `report.stop_reason`: decided, or futile from half the seeds on), as the grid would;
then the cells are pooled as above. Cells that stop early are those whose estimate crossed a boundary, and cells
that stop as equivalent are often those whose seeds happened to agree: this measures what that does to the pooled
intervals. Staged runs also try true effects centred on ``--means`` (the near-copy configurations only at 0, the
near-copy's own effect).
"""

import argparse
import json
import sys

import numpy as np

from hfreg.finetune import report, stats
from hfreg.finetune.presets import BASELINE
from hfreg.finetune.records import read_runs

KEY = "delta_early_test_accuracy"


def configurations(dirs: list[str]) -> dict[str, list[dict]]:
    """{arm: [cell: sd, n, size, N, per_seed, examples]} from the records of ``dirs``."""
    out: dict[str, list[dict]] = {}
    for d in dirs:
        runs = read_runs(d)
        records = report.summarize(runs)
        report.test_set_terms(d, runs, records, "accuracy")
        for r in records:
            d_ = r.get(KEY)
            if r["preset"] == BASELINE or r["against"] != BASELINE or not d_ or d_["n"] < 2 or not d_.get("test_set"):
                continue
            out.setdefault(r["preset"], []).append({"sd": d_["sd"], "n": d_["n"], "size": r["train_size"],
                                                    "N": r["test_examples"], **d_["test_set"]})
    return out


def near_copy(cell: dict) -> dict:
    per_seed = 2 / cell["N"] ** 2  # two examples differ per seed
    return {**cell, "sd": 5.8e-5, "per_seed": per_seed, "examples": 0.0, "near_copy": True}


def stopped_at(deltas: np.ndarray, design: dict, comparisons: int, margins: dict) -> int:
    """The seeds a staged grid ends this cell with: the first look at which `report.stop_reason` stops it, read at
    that look's level in a column of ``comparisons`` rows (the others play no part in a cell's stop), else all."""
    others = [{KEY: {"n": 0}} for _ in range(comparisons - 1)]  # the column's other rows: its Bonferroni share
    for n in stats.looks(**design):
        row = {"preset": "arm", "against": BASELINE, "design": design,
               KEY: {**stats.paired(deltas[:n]), "deltas": deltas[:n].tolist()}}
        report.numbers._adjust([row] + others, margins, design)
        if report.stop_reason([row], margins) is not None:
            return n
    return design["max_seeds"]


def draw(cell: dict, theta: float, rng, staged: dict | None = None) -> dict:
    """One simulated cell: its seeds' mean differences and the report's view of them; ``staged`` (design,
    comparisons, margins): as many seeds as the staged grid would have kept."""
    n, N = (staged["design"]["max_seeds"] if staged else cell["n"]), cell["N"]
    sigma_a2 = cell["examples"] * N  # examples' systematic part
    sigma_e2 = max(cell["per_seed"] * N - sigma_a2, 0.0)  # the rest of the per-example spread
    sigma_b2 = max(cell["sd"] ** 2 - sigma_e2 / N, 0.0)  # what the seeds add beyond the test set's noise
    test_set = rng.normal(0, np.sqrt(sigma_a2 / N))
    seeds = theta + test_set + rng.normal(0, np.sqrt(sigma_b2), n) + rng.normal(0, np.sqrt(sigma_e2 / N), n)
    if staged:
        seeds = seeds[:stopped_at(seeds, staged["design"], staged["comparisons"], staged["margins"])]
    return {KEY: {**stats.paired(seeds), "test_set": {"per_seed": cell["per_seed"], "examples": cell["examples"]}}}


def coverage(cells: list[dict], tau: float, sims: int, terms: bool, rng, mu: float = 0.0,
             staged: dict | None = None, level: float = 0.95) -> dict:
    """Shares of simulations whose intervals at ``level`` cover their targets: random effects over all cells (the
    mean of the true effects, ``mu``), and per size the strata interval (that size's mean of its cells' true
    effects); and the mean seeds a cell ends with."""
    sizes = sorted({c["size"] for c in cells})
    hits_re, hits_strata, seeds = 0, dict.fromkeys(sizes, 0), 0
    for _ in range(sims):
        theta = np.array([0.0 if c.get("near_copy") else rng.normal(mu, tau) if tau else mu for c in cells])
        rows = [draw(c, t, rng, staged) for c, t in zip(cells, theta)]
        seeds += sum(r[KEY]["n"] for r in rows)
        if not terms:
            for r in rows:
                r[KEY]["test_set"] = None
        parts = [report.cell_parts(r, KEY) for r in rows]
        y = [r[KEY]["mean"] for r in rows]
        if len(cells) >= 3:
            lo, hi = stats.random_effects(y, [a + b for a, b in parts], 1 - level)["ci"]
            hits_re += lo <= mu <= hi
        for size in sizes:
            idx = [i for i, c in enumerate(cells) if c["size"] == size]
            pool = stats.strata([y[i] for i in idx], [parts[i][0] for i in idx], [rows[i][KEY]["n"] - 1 for i in idx],
                                1 - level, fixed=[parts[i][1] for i in idx])
            hits_strata[size] += pool["ci"][0] <= float(np.mean(theta[idx])) <= pool["ci"][1]
    return {"random_effects": hits_re / sims if len(cells) >= 3 else None,
            "strata": {n: h / sims for n, h in hits_strata.items()}, "mean_seeds": seeds / (sims * len(cells))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--sims", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_seeds", type=int, default=0, help="stage the cells as --seeds auto does, up to this")
    p.add_argument("--seed_stage", type=int, default=5)
    p.add_argument("--comparisons", type=int, default=32,
                   help="the rows of the primary column a staged cell is read among (its Bonferroni share)")
    p.add_argument("--means", default="0,0.02", help="staged: the true effects' centres, comma-separated")
    p.add_argument("--taus", default="0,0.01,0.02", help="the true effects' spreads between cells, comma-separated")
    p.add_argument("--arms", default="", help="only these arms (comma-separated; default every arm)")
    p.add_argument("--sizes", default="", help="only the cells of these sizes (comma-separated; default all)")
    p.add_argument("--level", type=float, default=0.95, help="the intervals' confidence level")
    args = p.parse_args(argv)
    try:
        means, taus = ([float(m) for m in v.split(",")] for v in (args.means, args.taus))
        sizes = {int(n) for n in args.sizes.split(",") if n.strip()}
    except ValueError:
        means = taus = []
    if args.sims < 1 or not means or not taus or args.comparisons < 1 or not 0 < args.level < 1 or (
            args.max_seeds and not 2 <= args.seed_stage <= args.max_seeds):
        print(f"pooling_coverage.py: error: --sims >= 1, --comparisons >= 1, 0 < --level < 1, --means, --taus and "
              f"--sizes numbers and, with --max_seeds, 2 <= --seed_stage <= --max_seeds, got {args.sims}, "
              f"{args.comparisons}, {args.level}, {args.means!r}, {args.taus!r}, {args.sizes!r}, {args.seed_stage}, "
              f"{args.max_seeds}", file=sys.stderr)
        return 2
    arms = {a.strip() for a in args.arms.split(",") if a.strip()}
    configs = {arm: [c for c in cells if not sizes or c["size"] in sizes]
               for arm, cells in configurations(args.dirs).items() if not arms or arm in arms}
    configs = {arm: cells for arm, cells in configs.items() if cells}
    if not configs:
        print("pooling_coverage.py: error: no arm with stored predictions and at least 2 paired seeds"
              + (f" among --arms {args.arms!r}" if arms else "") + (f" at --sizes {args.sizes!r}" if sizes else ""),
              file=sys.stderr)
        return 2
    staged = {"design": {"max_seeds": args.max_seeds, "stage": args.seed_stage}, "comparisons": args.comparisons,
              "margins": report.check_margins(None)} if args.max_seeds else None
    means = means if staged else [0.0]
    rng = np.random.default_rng(args.seed)
    print("| arm | cells | mean | tau | near-copy cell | test set's terms | random effects | strata (each size) | "
          "mean seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen: dict[str, list[float]] = {}  # every coverage measured, per interval and variance rule
    for arm, cells in configs.items():
        for mu in means:
            for tau in taus:
                near = [near_copy(cells[0])] + cells[1:]
                for terms in (True, False):
                    for label, these in [("no", cells)] + ([("yes", near)] if mu == 0 else []):
                        cov = coverage(these, tau, args.sims, terms, rng, mu, staged, args.level)
                        rule = "" if terms else "_seeds_only"
                        if cov["random_effects"] is not None:
                            seen.setdefault("random_effects" + rule, []).append(cov["random_effects"])
                        seen.setdefault("strata" + rule, []).extend(cov["strata"].values())
                        re = "-" if cov["random_effects"] is None else f"{cov['random_effects']:.4f}"
                        per_size = ", ".join(f"{v:.4f}" for v in cov["strata"].values())
                        print(f"| {arm} | {len(these)} | {mu:g} | {tau:g} | {label} | {'yes' if terms else 'no'} | "
                              f"{re} | {per_size} | {cov['mean_seeds']:.1f} |", flush=True)
    mc_se = (args.level * (1 - args.level) / args.sims) ** 0.5
    summary = {}
    for k, values in seen.items():
        summary[f"min_coverage_{k}"] = min(values)
        summary[f"mean_coverage_{k}"] = float(np.mean(values))
        summary[f"measured_{k}"] = len(values)
    print(json.dumps({**summary, "nominal": args.level, "sims": args.sims, "mc_se_at_nominal": mc_se,
                      "arms": len(configs),
                      **({"staged": staged["design"], "comparisons": args.comparisons} if staged else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
