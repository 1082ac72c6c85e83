"""How the early-stopping rule changes the comparison, measured on committed grids: for each `--select_by`, the
median paired SD of Δ test accuracy (near-copies of the baseline left out) and the verdict counts, per data set.

    .venv/bin/python scripts/compare_select_by.py docs/results/sst2 docs/results/rt-polarity

Prints a Markdown table (the README's "Which point to stop at" quotes it). Reads runs.jsonl only; writes nothing.
"""

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hfreg.finetune import report  # noqa: E402
from hfreg.finetune.records import SELECT_BY, read_runs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dirs", nargs="+")
    args = p.parse_args(argv)
    rows = [["data set", "select by", "paired SD (early)", "paired SD (fixed)", "better", "worse", "equivalent",
             "inconclusive"], ["---"] * 8]
    for d in args.output_dirs:
        runs = read_runs(d)
        if not runs:
            print(f"compare_select_by.py: error: no finished runs in {d}", file=sys.stderr)
            return 2
        for select_by in SELECT_BY:
            records = report.summarize(runs, select_by)
            pw = report.power(records)
            counts = collections.Counter(r[f"delta_{c}_{m}"]["verdict"] for r in records for c in report.COMPARISONS
                                         for m in report.VERDICT_METRICS if f"delta_{c}_{m}" in r)
            rows.append([os.path.basename(os.path.normpath(d)), select_by, f"{pw['early']['paired_sd']:.4f}",
                         f"{pw['fixed']['paired_sd']:.4f}",
                         *(str(counts[v]) for v in ("better", "worse", "equivalent", "inconclusive"))])
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
