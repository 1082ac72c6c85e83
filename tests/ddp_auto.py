"""Launched by test_sweeps.py with 2 CPU processes: a data-parallel staged grid (`--seeds auto`) whose second
rank, at its first look at whether the stage is complete, would see one record fewer than the first (a launch
beside it recording meanwhile). The ranks must still agree, or they go on to different collectives and hang.

Arguments: the harness's own.
"""

import inspect
import os
import sys

from hfreg.finetune import grid, sweep

if os.environ.get("RANK") == "1":
    real, lagged = grid.Grid.grid_runs, []

    def grid_runs(self):
        runs = real(self)
        if not lagged and any(f.function == "train_stage" for f in inspect.stack()):
            lagged.append(True)  # this rank's first look at the stage: the last record not there yet
            return runs[:-1]
        return runs

    grid.Grid.grid_runs = grid_runs

sys.exit(sweep.cli(sys.argv[1:]))
