"""The staged-seeds rule (`--seeds auto`) simulated exactly as implemented, under Δ = 0 in every cell.

    .venv/bin/python benchmarks/sequential.py docs/results/sst2 docs/results/rt-polarity --sims 400

Per result directory and training size, the per-seed paired differences of every arm (each preset against the
baseline, and against its controls) in every verdict column (test accuracy and temperature-scaled NLL, early-
stopped and fixed budget) are stacked into one vector per seed; their observed covariance over the seeds all arms
share is the covariance of the simulation, and their mean is set to 0. Each simulation draws `--max_seeds` such
vectors per size and runs the rule of the harness on them: at each look the experiment's records are judged by
`report.numbers._adjust` (the same alpha shares, Bonferroni and O'Brien-Fleming-type boundaries), a cell stops when
`report.stop_reason` says so, and a stopped cell keeps the differences it stopped with. Counted:

* ``fwer``: the share of simulations with any better, worse or trivial verdict, in any row or column, at any look
  (every true difference is 0, so any such verdict is false; counting every look bounds what any reading of the
  grid reports), per experiment (a directory: the family its alpha covers); the largest over the directories
  given. The deltas are drawn from a normal law with the observed covariance (the tests' t-intervals assume it);
* ``stopped_before_max``: the share of (arm, size) cells that stop before `--max_seeds`;
* ``mean_seeds``: the mean number of seeds a cell ends with.

The last line printed is that JSON object (with Monte-Carlo standard errors).
"""

import argparse
import json
import math
import sys

import numpy as np

from hfreg.finetune import report, stats
from hfreg.finetune.presets import BASELINE
from hfreg.finetune.records import read_runs

COLUMNS = [(c, m) for c in report.COMPARISONS for m in report.VERDICT_METRICS]


def groups(dirs: list[str]) -> list[dict]:
    """Per directory x experiment x size: the arms (preset, against), their stacked per-seed differences' covariance
    (arms x columns), from the seeds every arm shares."""
    out = []
    for d in dirs:
        records = report.summarize(read_runs(d))
        for size in sorted({r["train_size"] for r in records}):
            rows = [r for r in records if r["train_size"] == size and r["preset"] != BASELINE
                    and all(f"delta_{c}_{m}" in r for c, m in COLUMNS)]
            if not rows:
                continue
            common = sorted(set.intersection(*(set(r["paired_seeds"]) for r in rows)))
            if len(common) < 3:
                continue
            stacked = np.array([[dict(zip(r["paired_seeds"], r[f"delta_{c}_{m}"]["deltas"]))[s]
                                 for r in rows for c, m in COLUMNS] for s in common])
            out.append({"source": d, "size": size, "arms": [(r["preset"], r["against"]) for r in rows],
                        "cov": np.cov(stacked, rowvar=False), "seeds": len(common)})
    return out


def simulate(experiment: list[dict], design: dict, margins: dict, rng) -> tuple[bool, list[int]]:
    """One simulated staged grid over one experiment (its sizes' groups, judged as one family, as the harness
    does): whether any false difference (better, worse or trivial) appeared at any look, and the seeds each cell
    ended with. As in the grid, a stopped preset keeps receiving seeds while a preset that names it as a control
    (or an equal-compute arm made for it) is still open; each row reads the seeds both its arms have."""
    k = len(COLUMNS)
    draws = {id(g): rng.multivariate_normal(np.zeros(len(g["arms"]) * k), g["cov"], size=design["max_seeds"],
                                            method="eigh")  # singular where seeds are fewer than dimensions
             for g in experiment}
    presets = {(id(g), p) for g in experiment for p, _ in g["arms"]}
    seeds = dict.fromkeys(presets, 0)
    open_ = set(presets)
    false = False
    for n in stats.looks(**design):
        needed = open_ | {(gid, against) for g in experiment for p, against in g["arms"]
                          if (gid := id(g), p) in open_ and (gid, against) in presets}
        for key in needed:
            seeds[key] = n
        rows, cells = [], {}
        for g in experiment:
            for i, (preset, against) in enumerate(g["arms"]):
                have = min(seeds[(id(g), preset)], seeds.get((id(g), against), n))  # the baseline runs on
                row = {"preset": preset, "against": against, "train_size": g["size"], "design": design}
                for j, (c, m) in enumerate(COLUMNS):
                    deltas = draws[id(g)][:have, i * k + j].tolist()
                    row[f"delta_{c}_{m}"] = {**stats.paired(deltas), "deltas": deltas}
                rows.append(row)
                cells.setdefault((id(g), preset), []).append(row)
        report.numbers._adjust(rows, margins, design)
        false = false or any(r[f"delta_{c}_{m}"]["verdict"] in ("better", "worse", "trivial")
                             for r in rows for c, m in COLUMNS)
        for key, members in cells.items():
            if key in open_ and report.stop_reason(members, margins) is not None:
                open_.discard(key)
        if not open_:
            break
    return false, list(seeds.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="result directories (runs.jsonl)")
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--max_seeds", type=int, default=40)
    p.add_argument("--seed_stage", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sims < 1 or args.seed_stage < 2 or args.max_seeds < args.seed_stage:
        print("sequential.py: error: --sims >= 1, --seed_stage >= 2 and --max_seeds >= --seed_stage, got "
              f"{args.sims}, {args.seed_stage}, {args.max_seeds}", file=sys.stderr)
        return 2
    design = {"max_seeds": args.max_seeds, "stage": args.seed_stage}
    margins = report.check_margins(None)
    found = groups(args.dirs)
    if not found:
        print("sequential.py: error: no size with at least 3 seeds shared by every arm", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    sources = list(dict.fromkeys(g["source"] for g in found))  # a directory is one experiment: one family
    false, seeds = {s: 0 for s in sources}, []
    for _ in range(args.sims):
        for source in sources:
            f, ends = simulate([g for g in found if g["source"] == source], design, margins, rng)
            false[source] += f
            seeds += ends
    rates = {s: v / args.sims for s, v in false.items()}
    fwer = max(rates.values())  # the guarantee is per experiment: the worst of them
    stopped = sum(s < args.max_seeds for s in seeds) / len(seeds)
    out = {"fwer": fwer, "fwer_mc_se": math.sqrt(fwer * (1 - fwer) / args.sims), "fwer_by_experiment": rates,
           "stopped_before_max": stopped, "mean_seeds": float(np.mean(seeds)), "sims": args.sims,
           "cells": len(seeds) // args.sims,
           "max_seeds": args.max_seeds, "stage": args.seed_stage,
           "groups": [f"{g['source']} n={g['size']} ({len(g['arms'])} arms, {g['seeds']} seeds)" for g in found]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
