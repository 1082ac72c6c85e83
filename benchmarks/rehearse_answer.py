"""Rehearse a staged grid's end before its runs exist: how its findings and pooled answer will read once every cell
has stopped. FABRICATED records, for checking the report, never for publishing: they go to OUT only.

    .venv/bin/python benchmarks/rehearse_answer.py docs/results/answer-sst2-sentences /tmp/rehearsal
    .venv/bin/hfreg report --no_plots /tmp/rehearsal/answer-sst2-sentences --out /tmp/rehearsal

The first stage's runs (seeds below --seed_stage) are copied; each later stage the grid would plan from them
(`grid.next_cells`, the grid's own rule) is filled with copies of first-stage runs, one source seed per new seed
and size drawn at random (every arm and learning rate of that seed alike, so that pairs stay pairs), until no cell
is open or the grid's maximum seeds is reached. The copies repeat the first stage's differences, so their spread
is too small and the cells stop early: the numbers mean nothing, the page's shape is what is rehearsed.
"""

import argparse
import copy
import json
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hfreg.finetune.grid import next_cells  # noqa: E402
from hfreg.finetune.records import PREDICTIONS_DIR, RUNS_FILE, experiment_of, read_runs  # noqa: E402


def rehearse(source: str, out: str, seed: int = 0) -> list[str]:
    """Write the rehearsed grid to ``out`` (a new directory); return what each stage planned, in words."""
    runs = read_runs(source)
    if not runs:
        raise ValueError(f"no finished runs in {os.path.join(source, RUNS_FILE)}")
    settings = runs[0]["experiment"]["settings"]
    design = settings.get("seeds") or {}
    if design.get("rule") != "auto":
        raise ValueError(f"{source} is not a staged grid (--seeds auto): nothing to rehearse")
    if os.path.exists(out):
        raise ValueError(f"{out} exists: give a new directory")
    stage, most = design["stage"], design["max_seeds"]
    experiment = experiment_of(runs[0])
    first = [r for r in runs if experiment_of(r) == experiment and r["seed"] < stage]
    os.makedirs(os.path.join(out, PREDICTIONS_DIR))
    kept, said, made = [], [], 0

    def add(run, source_run):
        shutil.copy(os.path.join(source, source_run["predictions"]), os.path.join(out, run["predictions"]))
        kept.append(run)

    for r in first:
        add(r, r)
    draw = random.Random(seed)
    done = list(range(stage))
    while len(done) < most:
        undecided, cells = next_cells(kept, experiment, done, settings.get("select_by"), settings.get("margins"))
        said.append(f"after {len(done)} seeds: {len(undecided)} cell(s) open")
        if not undecided:
            break
        seeds = list(range(len(done), min(len(done) + stage, most)))
        sizes = sorted({n for _, n in cells})
        origin = {(s, n): draw.randrange(stage) for s in seeds for n in sizes}
        for r in first:
            if (r["preset"], r["train_size"]) not in cells:
                continue
            for s in seeds:
                if origin[(s, r["train_size"])] == r["seed"]:
                    run = copy.deepcopy(r)
                    run["seed"], run["predictions"] = s, f"{PREDICTIONS_DIR}/rehearsed-{made:06d}.npz"
                    made += 1
                    add(run, r)
        done += seeds
    with open(os.path.join(out, RUNS_FILE), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    return said


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a staged grid's --output_dir with its first stage complete")
    p.add_argument("out", help="a new directory for the rehearsed grid (fabricated records)")
    p.add_argument("--seed", type=int, default=0, help="the draw of source seeds")
    args = p.parse_args(argv)
    try:
        said = rehearse(args.source, args.out, args.seed)
    except ValueError as e:
        print(f"rehearse_answer.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(said))
    print(f"{args.out}: fabricated, for rehearsing the report only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
