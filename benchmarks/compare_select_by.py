"""Which early-stopping rule to default to, decided without test data: each `--select_by` rule judged on the
selection split alone, by two-fold cross-validation of its stored predictions.

    .venv/bin/python benchmarks/compare_select_by.py docs/results/sst2 docs/results/rt-polarity

For every run, the selection split's stored logits (every evaluation point) are split in two halves (alternate
examples in stored order); each rule picks its point on one half (highest accuracy or macro-F1, lowest NLL; ties to
the earliest) and that point's accuracy is read on the other half, then the halves swap. Per data set and rule:
the mean held-out accuracy of the picked points (how good a point the rule finds) and the median paired SD of
Δ held-out accuracy (preset − baseline, by seed; near-copies of the baseline, under a tenth of the median, left
out), which sets the seeds a verdict needs. The test split is never read. Prints a Markdown table; writes nothing.
"""

import argparse
import collections
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hfreg.finetune import scores  # noqa: E402
from hfreg.finetune.presets import BASELINE  # noqa: E402
from hfreg.finetune.records import load_predictions, read_runs  # noqa: E402

RULES = {"accuracy": (scores.accuracy, +1), "f1": (scores.macro_f1, +1), "loss": (scores.nll, -1)}


def held_out(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{rule: held-out accuracy of the point it picks}, two folds of alternate examples, averaged."""
    folds = [np.arange(len(labels))[k::2] for k in (0, 1)]
    out = {}
    for rule, (metric, sign) in RULES.items():
        got = []
        for pick, read in (folds, folds[::-1]):
            values = [sign * metric(point[pick], labels[pick]) for point in logits]
            best = int(np.argmax(values))  # the first of equal points
            got.append(scores.accuracy(logits[best][read], labels[read]))
        out[rule] = float(np.mean(got))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dirs", nargs="+")
    args = p.parse_args(argv)
    rows = [["data set", "select by", "held-out selection accuracy", "paired SD of Δ (held out)"], ["---"] * 4]
    for d in args.output_dirs:
        runs = read_runs(d)
        if not runs:
            print(f"compare_select_by.py: error: no finished runs in {d}", file=sys.stderr)
            return 2
        values = {}  # (preset, size, lr, seed) -> {rule: held-out accuracy}
        for r in runs:
            arrays = load_predictions(d, r)
            if "selection_logits" not in arrays:
                print(f"compare_select_by.py: error: {d} stores no selection-split outputs "
                      f"(--no_selection_predictions); the rules need them at every point", file=sys.stderr)
                return 2
            values[(r["preset"], r["train_size"], r["learning_rate"], r["seed"])] = held_out(
                arrays["selection_logits"], arrays["selection_labels"])
        for rule in RULES:  # a classifier's rules (SELECT_BY also holds the regressors')
            cells = collections.defaultdict(dict)
            for (preset, size, lr, seed), v in values.items():
                cells[(preset, size, lr)][seed] = v[rule]
            sds = []
            for (preset, size, lr), seeds in cells.items():
                base = cells.get((BASELINE, size, lr), {})
                paired = [seeds[s] - base[s] for s in seeds if s in base]
                if preset != BASELINE and len(paired) >= 2:
                    sds.append(statistics.stdev(paired))
            median = statistics.median(sds) if sds else float("nan")
            kept = [s for s in sds if s >= 0.1 * median] or [float("nan")]
            rows.append([os.path.basename(os.path.normpath(d)), rule,
                         f"{statistics.fmean(v[rule] for v in values.values()):.4f}",
                         f"{statistics.median(kept):.4f}"])
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
