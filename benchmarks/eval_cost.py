"""Where a run's time goes, from finished records: seconds per optimizer step, per evaluation point, and the
share of the run spent evaluating; with ``--by_preset``, per preset, with each preset's training step against
the baseline's (what a method costs: R-Drop's doubled forward, Mixout's weight masks).

    .venv/bin/python benchmarks/eval_cost.py docs/results/sst2 [more output dirs]
    .venv/bin/python benchmarks/eval_cost.py --by_preset docs/results/methods-sst2

Reads only runs.jsonl (`seconds`, `eval_seconds`, `steps`, the evaluation points); the machine is whatever ran
the records (see the README for which).
"""

import sys
from collections import defaultdict
from statistics import fmean

from hfreg.finetune.presets import BASELINE
from hfreg.finetune.records import read_runs


def _step(r):
    return (r["seconds"] - r["eval_seconds"]) / r["steps"]


def main(dirs, by_preset=False):
    extra = " preset | × baseline step |" if by_preset else ""
    print(f"| runs | train size |{extra} runs | s / training step | s / evaluation point | evaluation share |")
    print("|---" * (6 + 2 * by_preset) + "|")
    for d in dirs:
        groups = defaultdict(list)
        for r in read_runs(d):
            groups[(r["train_size"], r["preset"] if by_preset else "")].append(r)
        for (size, preset), runs in sorted(groups.items()):
            step = fmean(_step(r) for r in runs)
            point = fmean(r["eval_seconds"] / len(r["evals"]) for r in runs)
            share = fmean(r["eval_seconds"] / r["seconds"] for r in runs)
            cells = ""
            if by_preset:
                base = groups.get((size, BASELINE))
                ratio = f"{step / fmean(_step(r) for r in base):.2f}" if base else "-"
                cells = f" {preset} | {ratio} |"
            print(f"| {d} | {size} |{cells} {len(runs)} | {step:.2f} | {point:.1f} | {share:.0%} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--by_preset"]
    main(args or ["runs/default"], by_preset="--by_preset" in sys.argv[1:])
