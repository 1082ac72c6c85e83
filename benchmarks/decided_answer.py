"""The decided answer's grids: the design written down in docs/results.md (*The decided answer: design*), as the
commands that run it — on this machine's CPU cores one data set after another, or on one GPU with many runs
packed onto it through a local Ray cluster. Every launch resumes where its `runs.jsonl` stops.

    .venv/bin/python benchmarks/decided_answer.py --print             # the commands, nothing run
    .venv/bin/python benchmarks/decided_answer.py                     # CPU: each data set in turn, then the report
    .venv/bin/python benchmarks/decided_answer.py --gpu --run_gpus 0.05   # one GPU, about 20 runs in flight

Results go to docs/results/answer-<data set>/; the report pools them into docs/results/answer/.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
DATA_SETS = ("sst2-sentences", "rt-polarity", "sst5")
ARMS = "pretrain-zero,checkpoint,placebo,classic,drop-path,rdrop"  # rdrop adds classic@2x itself
SWEEPS = ("classic*0.25,0.5,2,4", "classifier=0.3,0.5,0.7,0.9")  # ×0 is the baseline, ×1 is classic
DESIGN = ["--train_sizes", "64,512", "--min_steps", "100", "--num_train_epochs", "3",
          "--learning_rates", "5e-5,1e-4,2e-4", "--seeds", "auto", "--seed_stage", "5", "--max_seeds", "40",
          "--select_by", "accuracy", "--no_plots"]


def commands(data_dir: str, gpu: bool, run_gpus: float, python: str) -> list[list[str]]:
    """One grid per data set (selection on its validation split, report on its test split), then the report."""
    out = []
    for name in DATA_SETS:
        files = ["--train_file", os.path.join(data_dir, name, "train.csv"),
                 "--validation_file", os.path.join(data_dir, name, "validation.csv"),
                 "--test_file", os.path.join(data_dir, name, "test.csv")]
        backend = (["--backend", "ray", "--run_gpus", str(run_gpus), "--run_cpus", "1"] if gpu
                   else ["--mixed_precision", "no"])
        sweeps = [a for s in SWEEPS for a in ("--rates", s)]
        out.append([python, "-m", "hfreg.finetune", *files, "--presets", ARMS, *sweeps, *DESIGN, *backend,
                    "--output_dir", os.path.join(ROOT, "docs", "results", f"answer-{name}")])
    out.append([python, "-m", "hfreg.cli", "report", "--no_plots",
                *(os.path.join(ROOT, "docs", "results", f"answer-{n}") for n in DATA_SETS),
                "--out", os.path.join(ROOT, "docs", "results", "answer")])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true", help="print the commands; run nothing")
    p.add_argument("--gpu", action="store_true", help="run on one GPU through a local Ray cluster")
    p.add_argument("--run_gpus", type=float, default=0.05, help="with --gpu: the share of the GPU each run takes")
    p.add_argument("--data_dir", default=DATA, help="the folder holding sst2-sentences/, rt-polarity/, sst5/")
    args = p.parse_args(argv)
    missing = [n for n in DATA_SETS if not os.path.isdir(os.path.join(args.data_dir, n))]
    if missing:
        print(f"decided_answer.py: error: {args.data_dir} lacks {', '.join(missing)} (expected the shared data "
              f"folders, see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if not 0 < args.run_gpus <= 1:
        print(f"decided_answer.py: error: --run_gpus must be in (0, 1], got {args.run_gpus}", file=sys.stderr)
        return 2
    steps = commands(args.data_dir, args.gpu, args.run_gpus, sys.executable)
    if args.print:
        print("\n".join(" ".join(c) for c in steps))
        return 0
    for command in steps:
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
