"""`accelerate launch -q scripts/finetune.py [flags | config.yaml]`: the fine-tuning comparison (see
`hfreg/finetune/sweep.py`; the flags: `hfreg/finetune/arguments.py`, or `--help`).

The same program runs from an installed package as `accelerate launch -q -m hfreg.finetune` or `hfreg-finetune`."""

import sys

from hfreg.finetune.sweep import cli

if __name__ == "__main__":
    sys.exit(cli())
