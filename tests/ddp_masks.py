"""Launched by test_finetune.py with 2 CPU processes: in a data-parallel run, do the ranks draw different
drop-path masks?

Records the CPU generator's state at every drop-path draw of `training.train` on each rank and writes, from
rank 0, the list of (rank 0 state, rank 1 state) digests to the JSON file named on the command line.
"""

import hashlib
import json
import sys

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object
from transformers import BertConfig, BertForSequenceClassification

from hfreg.finetune import data, training
from hfreg.finetune.presets import load_preset
from hfreg.knobs import stack

draws = []
_drop_path_mask = stack.drop_path_mask


def spy(x, *args, **kwargs):
    draws.append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
    return _drop_path_mask(x, *args, **kwargs)


def collate(items):
    batch = {"input_ids": torch.tensor([x["input_ids"] for x in items])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = torch.tensor([x["labels"] for x in items])
    return batch


def main(out_file):
    stack.drop_path_mask = spy
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    rng = np.random.default_rng(0)
    # one length for every example: both ranks consume their generators identically, so only seeding can differ
    def split(n):
        return data.Encoded(rng.integers(1, 100, (n, 12)).tolist(), rng.integers(0, 2, n))

    splits = {"train": split(64), "validation": split(16)}
    settings = training.Settings(learning_rate=1e-3, num_train_epochs=1, train_batch_size=16, eval_batch_size=16,
                                 warmup_ratio=0.0, parallel="data")
    roles = data.Roles(np.arange(64), ("validation", np.arange(8)), ("validation", np.arange(8, 16)), "halves")
    training.train(training.Job(accelerator, model, splits, roles, collate, load_preset("drop-path"), 32, 0, settings),
                   log=lambda *_: None)
    ranks = gather_object([draws])
    if accelerator.is_main_process:
        with open(out_file, "w") as f:
            json.dump(list(zip(*ranks)), f)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
