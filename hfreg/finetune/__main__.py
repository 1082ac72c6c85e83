"""`accelerate launch -q -m hfreg.finetune [flags | config.yaml]` (or `python -m hfreg.finetune`, or
`hfreg-finetune`)."""

import sys

from .sweep import cli

sys.exit(cli())
