"""A run's training settings (`Settings`): the hyperparameters the training loop reads, and what they make of a run
of a given size (its epochs, its steps, its budget in words). Torch-free, so the flag parser reads it cheaply."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tasks import CLASSIFICATION

PARALLEL_MODES = ("run", "data")


@dataclass(frozen=True)
class Settings:
    """The training hyperparameters of a run: everything the loop reads, nothing about where output goes."""

    learning_rate: float
    num_train_epochs: int
    train_batch_size: int  # global: examples per optimizer step, whatever the process count
    eval_batch_size: int = 256
    eval_tokens: int = 0  # at most this many padded tokens per evaluation batch (0: batches of eval_batch_size)
    gradient_accumulation_steps: int = 1
    evals_per_epoch: int = 2
    train_eval_samples: int | None = 256  # train_* metrics on at most this many examples of the subset
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.1
    parallel: str = "run"
    mc_samples: int = 0  # > 0: also MC-dropout metrics (mc_selection_*, mc_test_*) at every evaluation point
    test_every_point: bool = False  # the test split at every point, not only where a selection rule can read it
    lora: dict | None = None  # LoRA fine-tuning: `peft.LoraConfig` arguments (r, lora_alpha, target_modules)
    min_steps: int = 0  # a small subset trains more epochs, until at least this many optimizer steps
    # training-loop methods for every preset that does not set its own (`Preset.rdrop`, `.llrd`, `.reinit_layers`)
    rdrop_alpha: float = 0.0  # R-Drop's alpha (0: off)
    llrd: float = 1.0  # layer-wise learning-rate decay: layer i of L trains at lr * llrd ** (L - 1 - i)
    reinit_layers: int = 0  # re-initialise the top k layers of every tower (and a pooler) before training
    max_grad_norm: float = 1.0  # clip the gradients' global norm to this before each step (the Trainer's; 0: off)
    # the HF Trainer's names; each off (or the presets' own) at its default
    max_steps: int = 0  # > 0: optimizer steps per run, overriding num_train_epochs and min_steps
    warmup_steps: int = 0  # > 0: warm-up steps, overriding warmup_ratio
    weight_decay: float = 0.0  # AdamW weight decay for every preset whose own is 0
    label_smoothing_factor: float = 0.0  # label smoothing of the training loss
    neftune_noise_alpha: float = 0.0  # NEFTune's alpha (`embedding_noise`) for every preset that sets none
    gradient_checkpointing: bool = False  # recompute activations in the backward pass
    packing: bool = False  # a causal LM's training batch in one row, without padding (`causal_lm.Packed`)
    problem_type: str = CLASSIFICATION  # `tasks`: or REGRESSION (one output, MSE), CAUSAL_LM (completion tokens),
    # TOKENS (word labels, whose entity F1 needs their names: `label_names`)
    label_names: tuple = ()

    def epochs(self, steps_per_epoch: int, factor: int = 1) -> int:
        """Epochs to train (the last one cut short where ``max_steps`` ends inside it): ``num_train_epochs``, or
        more where that gives fewer than ``min_steps`` steps; times ``factor`` (a preset's `steps_factor`: an
        equal-compute arm trains that many times the steps). With ``max_steps``, the epochs its steps reach."""
        if self.max_steps:
            return math.ceil(self.total_steps(steps_per_epoch, factor) / steps_per_epoch)
        return factor * max(self.num_train_epochs, math.ceil(self.min_steps / steps_per_epoch))

    def total_steps(self, steps_per_epoch: int, factor: int = 1) -> int:
        """Optimizer steps in a run of ``steps_per_epoch`` steps an epoch: ``max_steps`` (times ``factor``) where
        given, else every step of `epochs`."""
        if self.max_steps:
            return factor * self.max_steps
        return self.epochs(steps_per_epoch, factor) * steps_per_epoch

    def stretched(self, steps_per_epoch: int, factor: int = 1) -> bool:
        """Whether a run's steps are not those of ``num_train_epochs`` (``min_steps``, ``steps_factor`` or
        ``max_steps``): its evaluation points are then as many as the nominal epochs give, spread over the run."""
        return bool(self.max_steps) or self.epochs(steps_per_epoch, factor) > self.num_train_epochs

    def budget(self, train_size: int, factor: int = 1) -> str:
        """What a run of ``train_size`` examples trains, in words: ``16 examples: 48 epochs to reach 48 steps``
        where ``min_steps`` stretches it."""
        per_epoch = math.ceil(train_size / self.train_batch_size)
        epochs, steps = self.epochs(per_epoch, factor), self.total_steps(per_epoch, factor)
        times = f" ({factor}x the steps: equal compute)" if factor > 1 else ""
        if self.max_steps:
            return f"{train_size} examples: {steps} steps (--max_steps) in {epochs} epoch(s) of {per_epoch}{times}"
        if epochs > factor * self.num_train_epochs:
            return f"{train_size} examples: {epochs} epochs to reach {steps} steps (--min_steps){times}"
        return f"{train_size} examples: {epochs} epochs, {steps} steps{times}"
