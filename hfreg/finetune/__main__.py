"""`accelerate launch -m hfreg.finetune ...` (or `python -m hfreg.finetune`, or `hfreg-finetune`)."""

import sys

from .sweep import cli

sys.exit(cli())
