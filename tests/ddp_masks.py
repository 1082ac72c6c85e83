"""Launched by test_finetune.py with 2 CPU processes: do the ranks draw different drop-path masks in a run?

Records the CPU generator's state at every drop-path draw of `experiment.run` on each rank and writes, from
rank 0, the list of (rank 0 state, rank 1 state) digests to the JSON file named on the command line.
"""

import hashlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import BertConfig, BertForSequenceClassification

from hfreg import experiment, patcher
from hfreg.presets import load_preset

draws = []
_drop_path = patcher.drop_path


def spy(x, *args, **kwargs):
    draws.append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
    return _drop_path(x, *args, **kwargs)


def main(out_file):
    patcher.drop_path = spy
    accelerator = Accelerator(cpu=True)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rng = np.random.default_rng(0)
    # one length for every example: both ranks consume their generators identically, so only seeding can differ
    split = lambda n: experiment.Encoded(rng.integers(1, 100, (n, 12)).tolist(), rng.integers(0, 2, n))
    data = {"train": split(64), "validation": split(16)}
    args = SimpleNamespace(pad_token_id=0, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                           learning_rate=1e-3, num_train_epochs=1, lr_scheduler_type="linear", warmup_ratio=0.0,
                           with_tracking=False)
    experiment.run(accelerator, model, load_preset("drop-path"), data, 32, 0, args, experiment.Evaluator(),
                   log=lambda *_: None)
    ranks = gather_object([draws])
    if accelerator.is_main_process:
        with open(out_file, "w") as f:
            json.dump(list(zip(*ranks)), f)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
