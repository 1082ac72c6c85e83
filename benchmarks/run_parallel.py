"""Wall time of one grid: 1 process with all cores against N run-parallel processes with one core each.

A third launch, 1 process with 1 thread, separates two effects: fp32 results depend on the thread count (the
order of parallel reductions), not on how many processes share the grid.

    .venv/bin/python benchmarks/run_parallel.py [--processes 2] [--data ../shared/data/sst2]

Both are `accelerate launch -m hfreg.finetune` of the same grid (the packaged MiniLM-L6; by default the synthetic
data), timed from launch to exit, so process start-up, model loading and tokenizing are included on both sides.
The records of the two grids are also compared: run-parallel must not change any number, only the wall time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)


def sweep(out, processes, threads, args):
    cmd = [os.path.join(BIN, "accelerate"), "launch", "-q", *(["--multi_gpu"] if processes > 1 else []),
           "--num_processes", str(processes), "--num_machines", "1", "--num_cpu_threads_per_process", str(threads),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hfreg.finetune",
           "--presets", args.presets, "--train_sizes", args.train_sizes, "--seeds", args.seeds,
           "--num_train_epochs", str(args.epochs), "--mixed_precision", "no", "--output_dir", out, "--no_plots"]
    if args.data:
        cmd += ["--train_file", f"{args.data}/train.csv", "--validation_file", f"{args.data}/validation.csv",
                "--max_eval_samples", "256"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def numbers(out):
    with open(os.path.join(out, "runs.jsonl")) as f:
        runs = [json.loads(line) for line in f]
    return {(r["preset"], r["train_size"], r["seed"]): r["epochs"] for r in runs}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=os.cpu_count())
    p.add_argument("--data", default=None, help="folder with train.csv and validation.csv; default: synthetic")
    p.add_argument("--presets", default="pretrain-zero,classic,drop-path")
    p.add_argument("--train_sizes", default="64,32")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, single, many = (os.path.join(tmp, d) for d in ("one", "single", "many"))
        t1 = sweep(one, 1, args.processes, args)
        t11 = sweep(single, 1, 1, args)
        tn = sweep(many, args.processes, 1, args)
        same = numbers(single) == numbers(many)
    print(f"grid: presets {args.presets} x sizes {args.train_sizes} x seeds {args.seeds}, {args.epochs} epochs, "
          f"data {args.data or 'synthetic'}, fp32")
    print(f"| launch | wall time (s) | speed vs 1 process x {args.processes} threads |")
    print("|---|---|---|")
    print(f"| 1 process x {args.processes} threads | {t1:.1f} | 1.00 |")
    print(f"| 1 process x 1 thread | {t11:.1f} | {t1 / t11:.2f} |")
    print(f"| {args.processes} processes x 1 thread, run-parallel | {tn:.1f} | {t1 / tn:.2f} |")
    print(f"records of {args.processes} processes x 1 thread identical to 1 process x 1 thread: {same}")


if __name__ == "__main__":
    main()
