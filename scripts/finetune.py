"""`accelerate launch scripts/finetune.py [flags]`: the fine-tuning comparison (see `hfreg/finetune/sweep.py`).

The same program runs from an installed package as `accelerate launch -m hfreg.finetune` or `hfreg-finetune`."""

import sys

from hfreg.finetune.sweep import cli

if __name__ == "__main__":
    sys.exit(cli())
