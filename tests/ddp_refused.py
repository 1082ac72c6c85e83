"""Launched by test_sweeps.py with 2 CPU processes: a data-parallel grid whose first record is refused when it is
written, because a launch of other settings wrote one into the directory meanwhile. Only the main process writes
records; every rank must stop with the one-line error, none left waiting for a run that never comes.

Arguments: the harness's own.
"""

import copy
import os
import sys

from hfreg.finetune import records, sweep

if os.environ.get("RANK") == "0":
    real = records.WorkQueue.finish

    def finish(self, key, record, predictions=None, check=None):
        other = copy.deepcopy(record)  # the neighbour's run: another max_length, the same experiment name
        other["experiment"]["settings"]["max_length"] += 1
        other["seed"] += 100
        records.append_run(self.output_dir, other)
        return real(self, key, record, predictions, check)

    records.WorkQueue.finish = finish

sys.exit(sweep.cli(sys.argv[1:]))
