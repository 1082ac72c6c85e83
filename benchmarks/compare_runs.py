"""Compare the same runs recorded in two output directories, e.g. one grid made on two machines or versions.

    .venv/bin/python benchmarks/compare_runs.py docs/results/sst2-cpu docs/results/sst2

Runs are paired by (preset, train size, seed, learning rate), whatever their settings; for each preset it prints
how many pairs agree on every evaluation point's metrics to within --tol, the largest difference in final test
accuracy and loss, and how often both chose the same early-stopping step. Presets without dropout should agree to
rounding; presets with dropout draw their masks from the device's own random stream, so they differ as seeds do.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hfreg.finetune.records import read_runs  # noqa: E402  (no torch: runs anywhere)


def key(r):
    return r["preset"], r["train_size"], r["seed"], r["learning_rate"]


def same_points(a, b, tol):
    """Whether two runs have the same evaluation steps and every shared metric within ``tol``."""
    if [p["step"] for p in a["evals"]] != [p["step"] for p in b["evals"]]:
        return False
    for p, q in zip(a["evals"], b["evals"]):
        for m in set(p) & set(q):
            if isinstance(p[m], float) and isinstance(q[m], float) and abs(p[m] - q[m]) > tol:
                return False
    return True


def compare(dir_a, dir_b, tol=1e-4):
    """Rows of (preset, pairs, identical, max |Δ final test acc|, max |Δ final test loss|, same selected step)."""
    a = {key(r): r for r in read_runs(dir_a)}
    b = {key(r): r for r in read_runs(dir_b)}
    rows = {}
    for k in sorted(set(a) & set(b), key=str):
        ra, rb = a[k], b[k]
        fa, fb = ra["evals"][-1], rb["evals"][-1]
        row = rows.setdefault(k[0], [k[0], 0, 0, 0.0, 0.0, 0])
        row[1] += 1
        row[2] += same_points(ra, rb, tol)
        row[3] = max(row[3], abs(fa["test_accuracy"] - fb["test_accuracy"]))
        row[4] = max(row[4], abs(fa["test_loss"] - fb["test_loss"]))
        row[5] += ra["selected_step"] == rb["selected_step"]
    return list(rows.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--tol", type=float, default=1e-4, help="largest difference of a metric still called equal")
    args = p.parse_args(argv)
    for d in (args.first, args.second):
        if not os.path.isfile(os.path.join(d, "runs.jsonl")):
            p.error(f"{d} holds no runs.jsonl")
    rows = compare(args.first, args.second, args.tol)
    if not rows:
        p.error(f"{args.first} and {args.second} share no run (preset, size, seed, learning rate)")
    print(f"| preset | pairs | every point equal (±{args.tol:g}) | max Δ final test acc | max Δ final test loss "
          f"| same selected step |")
    print("|---|---|---|---|---|---|")
    for name, n, same, d_acc, d_loss, sel in rows:
        print(f"| {name} | {n} | {same} | {d_acc:.4f} | {d_loss:.4f} | {sel} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
