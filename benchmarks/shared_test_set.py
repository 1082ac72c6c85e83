"""How far a data set's cells at different sizes are from independent, as the pooled intervals take them to be.

    .venv/bin/python benchmarks/shared_test_set.py docs/results/sst2 docs/results/rt-polarity

The cells of one data set share its test set, so an arm's systematic per-example differences (what more seeds do not
shrink) may reach every size alike, and their sampling errors would then correlate, which the strata and
random-effects pools leave out. For each arm against the baseline (the task's primary metric, such as test accuracy,
early-stopped; each run at its selected point) and each pair of sizes of an experiment, this estimates that
correlation: the covariance over test examples of the two cells' per-example mean differences (their runs are
distinct, so only the shared examples make it non-zero), over the number of examples, divided by the geometric mean
of the two cells' variances as the report computes them (`report.cell_variance`: seeds and test set). The last line
is a JSON object per directory: the median absolute, mean, smallest and largest correlation and their number. A cell
whose runs match the baseline's (no variance) has no error to correlate and is left out.
"""

import argparse
import json
import statistics
import sys

import numpy as np

from hfreg.finetune import report, stats, tasks
from hfreg.finetune.presets import BASELINE
from hfreg.finetune.records import read_runs
from hfreg.finetune.report.writing import paired_differences


def correlations(output_dir: str) -> list[dict]:
    """One row per arm and pair of sizes of ``output_dir``: the correlation of the two cells' sampling errors that
    their shared test set makes."""
    runs = read_runs(output_dir)
    records = report.summarize(runs)
    select_by = records[0]["select_by"] if records else "loss"
    primary = tasks.of_rows(records).primary
    key = f"delta_early_{primary}"
    means = {}
    for r, comp, diffs in paired_differences(output_dir, runs, records, select_by):  # the predictions read once
        if comp == "early" and r["against"] == BASELINE:
            r[key]["test_set"] = stats.test_set_terms(diffs[primary])  # as `report.test_set_terms` adds it
            means[r["experiment"], r["preset"], r["train_size"]] = (diffs[primary].mean(axis=1),
                                                                    report.cell_variance(r, key))
    out = []
    for experiment, arm in dict.fromkeys((e, a) for e, a, _ in means):
        sizes = sorted(n for e, a, n in means if (e, a) == (experiment, arm))
        for i, small in enumerate(sizes):
            for large in sizes[i + 1:]:
                (x, vx), (y, vy) = means[experiment, arm, small], means[experiment, arm, large]
                if not vx * vy:  # a cell identical to the baseline's runs has no error to correlate
                    continue
                cov = float(np.cov(x, y)[0, 1]) / len(x)
                out.append({"experiment": experiment, "arm": arm, "sizes": [small, large],
                            "correlation": cov / float(np.sqrt(vx * vy))})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+")
    args = p.parse_args(argv)
    summary = {}
    for d in args.dirs:
        rows = correlations(d)
        print(f"{d}: " + "; ".join(f"{r['arm']} {r['sizes'][0]}x{r['sizes'][1]} {r['correlation']:+.2f}"
                                    for r in rows))
        values = [r["correlation"] for r in rows]
        if values:
            summary[d] = {"median_abs": statistics.median(abs(v) for v in values), "mean": statistics.mean(values),
                          "min": min(values), "max": max(values), "pairs": len(values)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
