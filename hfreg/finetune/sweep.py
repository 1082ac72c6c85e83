"""How much does each regularization preset change overfitting when fine-tuning on small data?

    accelerate launch -q -m hfreg.finetune                     # embedded default: MiniLM-L6, synthetic data
    accelerate launch -q --num_processes 4 -m hfreg.finetune --train_file train.csv --validation_file dev.csv \\
        --train_sizes 64,256,1024 --seeds 0,1,2 --output_dir runs/sst2
    accelerate launch -q -m hfreg.finetune config.yaml         # the whole configuration in one args file

Grid: presets x train sizes (seeded, stratified subsamples) x seeds. Each run fine-tunes a fresh copy of the
model; every epoch both the training subset and the validation set are evaluated in eval mode. Under several
processes the runs are shared out, each trained whole on one process (`--parallel run`, the default), or each
run is spread over all processes (`--parallel data`). Finished runs are appended to OUTPUT_DIR/runs.jsonl;
re-running resumes. The summary table, summary.json/.csv and plots follow; `hfreg report OUTPUT_DIR` rebuilds them.
"""

from __future__ import annotations

import sys

from .arguments import PROG, parse
from .experiment import build_experiment
from .grid import run_grid
from .records import (
    check_output_dir,
)


def parse_args(argv=None):
    """The command line (or one .json/.yaml args file) as one namespace: every flag of `arguments`' dataclasses
    under its own name, with the values derived from them (`arguments.resolve`); one-line ValueError on bad input."""
    return parse(argv, description=__doc__.split("\n\n")[0])


def main(argv=None, quiet: bool = False) -> int:
    args = parse_args(argv)
    check_output_dir(args.output_dir)
    if quiet:  # after the flags are read: --help and a bad flag import nothing more
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar(), datasets.disable_progress_bars()
    if args.backend == "ray":  # joined (or started) before anything is read or written: its errors come first
        from . import cluster

        with cluster.connect(args.ray_address, args.run_cpus, args.run_gpus) as ray:
            return _main(args, ray)
    return _main(args, None)


def _main(args, ray) -> int:
    return run_grid(args, build_experiment(args, ray), ray)


def cli(argv=None) -> int:
    """Console entry point: a user error is one line on stderr and exit status 2; the libraries' progress bars
    (loading weights, generating splits) off, as the harness prints its own progress."""
    try:
        return main(argv, quiet=True)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
