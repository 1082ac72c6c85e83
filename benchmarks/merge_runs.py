"""Append to DEST the finished runs of SOURCE that it lacks, each with its predictions (`records.merge_runs`): how
records made elsewhere join a grid — the decided answer's CPU workers write to a copy of its directory, so that the
committed one changes only when its new records are merged, and a GPU machine's grid comes back as a directory.

    .venv/bin/python benchmarks/merge_runs.py /elsewhere/answer-sst2-sentences docs/results/answer-sst2-sentences

Records DEST holds stay as they are. Runs of an experiment DEST holds under other settings (versions included), a
changed preset, or a predictions file DEST holds with other bytes are refused, and nothing is written.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hfreg.finetune.records import merge_runs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a grid's directory (its runs.jsonl and predictions/)")
    p.add_argument("dest", help="the grid's directory to append to (made if missing)")
    args = p.parse_args(argv)
    try:
        total, added = merge_runs(args.source, args.dest)
    except ValueError as e:
        print(f"merge_runs.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dest}: {total} runs ({added} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
