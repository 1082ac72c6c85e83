"""The decided answer's grids: the design written down in docs/results.md (*The decided answer: design*), as the
commands that run it — on this machine's CPU cores one data set after another, or on one GPU with many runs
packed onto it through a local Ray cluster. Every launch resumes where its `runs.jsonl` stops.

    .venv/bin/python benchmarks/decided_answer.py --print             # the commands, nothing run
    .venv/bin/python benchmarks/decided_answer.py                     # CPU: each data set in turn, then the report
    .venv/bin/python benchmarks/decided_answer.py --gpu --run_gpus 0.05   # one GPU, about 20 runs in flight
    .venv/bin/python benchmarks/decided_answer.py --progress          # what the records hold so far, per data set

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


def progress(data_dir: str = DATA, results_dir: str | None = None) -> str:
    """Per data set, how much of the design its `runs.jsonl` holds: the first stage's runs done of those it plans
    (its arms, sizes, learning rates and first seeds, as the harness expands the command; a run counts under the
    key the grid plans it by, its preset's recorded contents included), per size; and the runs of later stages,
    which the first stage's verdicts plan. Read from the records (in ``results_dir``, default the repository's),
    so that docs/results.md can quote it."""
    from hfreg.finetune.experiment import _grid_presets
    from hfreg.finetune.records import RunKey, digest, read_runs, run_key
    from hfreg.finetune.sweep import parse_args

    lines = []
    for name, command in zip(DATA_SETS, commands(data_dir, False, 0.05, sys.executable)):
        args = parse_args(command[3:])
        presets, _ = _grid_presets(args)
        first = args.seeds[:args.seed_stage]
        out = os.path.join(results_dir, f"answer-{name}") if results_dir else args.output_dir
        have = {run_key(r) for r in read_runs(out)}
        per_size = []
        for n in sorted(args.train_sizes, reverse=True):  # the order the queue takes them
            plan = {RunKey(args.experiment, p.name, digest(p.contents()), n, s, lr)
                    for p in presets for s in first for lr in args.learning_rates}
            per_size.append((n, len(plan & have), len(plan)))
        done, planned = sum(d for _, d, _ in per_size), sum(t for _, _, t in per_size)
        if not have:
            lines.append(f"- `{name}`: not started ({planned} first-stage runs planned).")
            continue
        later = sum(1 for key in have if key.seed not in first)
        sizes = ", ".join(f"n={n} {d} of {t}" for n, d, t in per_size)
        lines.append(f"- `{name}`: first stage (seeds {first[0]}–{first[-1]}) {done} of {planned} runs ({sizes}); "
                     + (f"later stages {later} run{'' if later == 1 else 's'}." if later else "no later stage yet."))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true", help="print the commands; run nothing")
    p.add_argument("--progress", action="store_true", help="how much of the design the records hold; run nothing")
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
    if args.progress:
        print(progress(args.data_dir))
        return 0
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
