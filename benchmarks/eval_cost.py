"""Where a run's time goes, from finished records: seconds per optimizer step, per evaluation point, and the
share of the run spent evaluating.

    .venv/bin/python benchmarks/eval_cost.py docs/results/sst2 [more output dirs]

Reads only runs.jsonl (`seconds`, `eval_seconds`, `steps`, the evaluation points); the machine is whatever ran
the records (see the README for which).
"""

import sys
from collections import defaultdict
from statistics import fmean

from hfreg.finetune.records import read_runs


def main(dirs):
    print("| runs | train size | runs | s / training step | s / evaluation point | evaluation share |")
    print("|---|---|---|---|---|---|")
    for d in dirs:
        by_size = defaultdict(list)
        for r in read_runs(d):
            by_size[r["train_size"]].append(r)
        for size, runs in sorted(by_size.items()):
            step = fmean((r["seconds"] - r["eval_seconds"]) / r["steps"] for r in runs)
            point = fmean(r["eval_seconds"] / len(r["evals"]) for r in runs)
            share = fmean(r["eval_seconds"] / r["seconds"] for r in runs)
            print(f"| {d} | {size} | {len(runs)} | {step:.2f} | {point:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/default"])
