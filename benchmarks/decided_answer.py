"""The decided answer's grids: the design written down in docs/results.md (*The decided answer: design*), as the
commands that run it — on this machine's CPU cores one data set after another, or on one GPU with many runs
packed onto it by processes that share each grid's queue. Every launch resumes where its `runs.jsonl` stops.

    .venv/bin/python benchmarks/decided_answer.py --print             # the commands, nothing run
    .venv/bin/python benchmarks/decided_answer.py --processes 2       # CPU: each data set in turn, a core per launch
    .venv/bin/python benchmarks/decided_answer.py --gpu --processes 16    # one GPU, 16 runs in flight
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
DESIGN = ["--train_sizes", "64,512", "--min_steps", "100", "--num_train_epochs", "3", "--evals_per_epoch", "4",
          "--learning_rates", "5e-5,1e-4,2e-4", "--seeds", "auto", "--seed_stage", "5", "--max_seeds", "40",
          "--select_by", "accuracy", "--no_plots"]
# the grids that store every point's selection-split outputs too: those started before the design chose to store
# the test split's alone (what a report reads; a third of the bytes, docs/results.md)
KEEP_SELECTION_PREDICTIONS = ("sst2-sentences",)


def answer_dir(name: str) -> str:
    return os.path.join(ROOT, "docs", "results", f"answer-{name}")


def report_command(python: str, data_sets=DATA_SETS) -> list[str]:
    """The report that pools ``data_sets``' grids into docs/results/answer/."""
    return [python, "-m", "hfreg.cli", "report", "--no_plots", *map(answer_dir, data_sets),
            "--out", os.path.join(ROOT, "docs", "results", "answer")]


def commands(data_dir: str, gpu: bool, python: str, data_sets=DATA_SETS) -> list[list[str]]:
    """One grid per data set (selection on its validation split, report on its test split), then the report. On the
    CPU the grids pin fp32; on a GPU they take the harness's default precision (bf16 where the GPU has it), and
    each is launched once per process (`main`), the launches sharing its queue."""
    out = []
    for name in data_sets:
        files = ["--train_file", os.path.join(data_dir, name, "train.csv"),
                 "--validation_file", os.path.join(data_dir, name, "validation.csv"),
                 "--test_file", os.path.join(data_dir, name, "test.csv")]
        backend = ["--threads", "1"] if gpu else ["--mixed_precision", "no"]
        sweeps = [a for s in SWEEPS for a in ("--rates", s)]
        lean = [] if name in KEEP_SELECTION_PREDICTIONS else ["--no_selection_predictions"]
        out.append([python, "-m", "hfreg.finetune", *files, "--presets", ARMS, *sweeps, *DESIGN, *lean, *backend,
                    "--output_dir", answer_dir(name)])
    return [*out, report_command(python)]


def launch(command: list[str], processes: int) -> int:
    """``command`` run by ``processes`` processes at once, which share its grid's queue (a run each at a time);
    the first non-zero exit status, else 0."""
    if processes > 1 and "--threads" not in command:  # the cores shared out, not each launch taking them all
        command = [*command, "--threads", str(max(1, len(os.sched_getaffinity(0)) // processes))]
    running = [subprocess.Popen(command, cwd=ROOT) for _ in range(processes)]
    try:
        codes = [p.wait() for p in running]
    except KeyboardInterrupt:  # a time limit's SIGINT reaches the whole process group: each launch stops as it
        for p in running:     # does on Ctrl-C, and returns only once none is still writing its records
            p.wait()
        return 130
    return next((c for c in codes if c), 0)


def progress(data_dir: str = DATA, results_dir: str | None = None) -> str:
    """Per data set, how much of the design its `runs.jsonl` holds: the first stage's runs done of those it plans
    (its arms, sizes, learning rates and first seeds, as the harness expands the command; a run counts under the
    key the grid plans it by, its preset's recorded contents included), per size; once a stage is complete, the next
    one as the grid plans it from the stages done (`grid.next_cells`: the undecided cells, the baseline and their
    controls); the runs' recorded wall time (``seconds``, one process each), and what the rest of the current stage
    and, at most, the rest of the design cost at its median. Read from the records (in ``results_dir``, default the
    repository's), so that docs/results.md can quote it."""
    from hfreg.finetune.experiment import _grid_presets
    from hfreg.finetune.grid import next_cells, plan_runs
    from hfreg.finetune.records import read_runs, run_key
    from hfreg.finetune.sweep import parse_args

    lines = []
    for name, command in zip(DATA_SETS, commands(data_dir, False, sys.executable)):
        args = parse_args(command[3:])
        presets, _ = _grid_presets(args)
        first = args.seeds[:args.seed_stage]
        out = os.path.join(results_dir, f"answer-{name}") if results_dir else args.output_dir
        runs = read_runs(out)
        have = {run_key(r) for r in runs}
        per_size = []
        contents = {p.name: p.contents() for p in presets}
        for n in sorted(args.train_sizes, reverse=True):  # the order the queue takes them
            plan = set(plan_runs(args.experiment, presets, contents, [n], first, args.learning_rates))
            per_size.append((n, len(plan & have), len(plan)))
        done, planned = sum(d for _, d, _ in per_size), sum(t for _, _, t in per_size)
        # every cell to the last look: what the whole design can cost at most
        most = set(plan_runs(args.experiment, presets, contents, args.train_sizes, args.seeds, args.learning_rates))
        if not have:
            lines.append(f"- `{name}`: not started ({planned} first-stage runs planned, {len(most):,} at most).")
            continue
        sizes = ", ".join(f"n={n} {d} of {t}" for n, d, t in per_size)
        said, left, stage = [], planned - done, "the first stage"
        seeds_done = list(first)
        while not left and len(seeds_done) < len(args.seeds):  # each later stage as the grid plans it
            undecided, cells = next_cells(runs, args.experiment, seeds_done, args.select_by, args.margin)
            if not undecided:
                said.append("every cell stopped")
                break
            seeds = args.seeds[len(seeds_done):len(seeds_done) + args.seed_stage]
            plan = set(plan_runs(args.experiment, presets, contents, args.train_sizes, seeds, args.learning_rates,
                                 cells))
            stage = f"stage {len(seeds_done) // args.seed_stage + 1}"
            said.append(f"{stage} (seeds {seeds[0]}–{seeds[-1]}) {len(plan & have)} of {len(plan)} runs for "
                        f"{len(undecided)} undecided preset × size cells")
            left, seeds_done = len(plan - have), seeds_done + seeds
        seconds = sorted(r["seconds"] for r in runs)
        tenth, median, ninth = (seconds[min(len(seconds) - 1, int(q * len(seconds)))] for q in (0.1, 0.5, 0.9))
        rest = f"; at that median the rest of {stage} is {left * median / 3600:.0f} core-hours" if left else ""
        rest += (f"; this data set's design at most {len(most - have) * median / 3600:.0f} core-hours more "
                 f"({len(most - have):,} runs, were no cell to stop before {len(args.seeds)} seeds)")
        lines.append(f"- `{name}`: first stage (seeds {first[0]}–{first[-1]}) {done} of {planned} runs ({sizes}); "
                     + ("; ".join(said) if said else "no later stage yet")
                     + f". Recorded run time: median {median:.0f} s (10–90%: {tenth:.0f}–{ninth:.0f} s){rest}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true", help="print the commands; run nothing")
    p.add_argument("--progress", action="store_true", help="how much of the design the records hold; run nothing")
    p.add_argument("--gpu", action="store_true", help="on one GPU: --processes launches share each grid's queue")
    p.add_argument("--processes", type=int, default=None,
                   help="launches per grid, a run each at a time (default: 16 with --gpu, else 1)")
    p.add_argument("--data_sets", default=",".join(DATA_SETS), help="the grids to run, in this order")
    p.add_argument("--data_dir", default=DATA, help="the folder holding sst2-sentences/, rt-polarity/, sst5/")
    args = p.parse_args(argv)
    chosen = [n.strip() for n in args.data_sets.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in DATA_SETS]
    if unknown or not chosen:
        print(f"decided_answer.py: error: --data_sets {args.data_sets!r}: choose from {', '.join(DATA_SETS)}",
              file=sys.stderr)
        return 2
    processes = args.processes if args.processes is not None else 16 if args.gpu else 1
    if processes < 1:
        print(f"decided_answer.py: error: --processes must be a positive integer, got {processes}", file=sys.stderr)
        return 2
    missing = [n for n in chosen if not os.path.isdir(os.path.join(args.data_dir, n))]
    if missing:
        print(f"decided_answer.py: error: {args.data_dir} lacks {', '.join(missing)} (expected the shared data "
              f"folders, see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if args.progress:
        print(progress(args.data_dir))
        return 0
    *grids, report = commands(args.data_dir, args.gpu, sys.executable, chosen)
    if args.print:
        print("\n".join(f"{' '.join(c)}{f'  # x{processes} processes' if processes > 1 else ''}" for c in grids))
        print(" ".join(report))
        return 0
    for command in grids:
        code = launch(command, processes)
        if code:
            return code
    # the pool over the grids that hold runs (one GPU machine may run one data set)
    held = [n for n in DATA_SETS if os.path.isfile(os.path.join(answer_dir(n), "runs.jsonl"))]
    return subprocess.run(report_command(sys.executable, held), cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
