"""The harness's command line, declared once: four dataclasses that `transformers.HfArgumentParser` reads, as
transformers' `run_glue.py` declares its own, and `parse`, which turns a command line, or one .json/.yaml args
file, into the single namespace the sweep reads.

    ModelArguments       the model, its config and tokenizer; LoRA
    DataArguments        the data (a GLUE task, a hub data set or files), its columns, length and roles
    ComparisonArguments  the grid: presets, rate sweeps, sizes, seeds, learning rates, selection, margins, the
                         training-loop methods for presets without their own, evaluation, the backend
    RunArguments         each run's training, under `TrainingArguments`' names where HF has one: learning rate,
                         budget, batch, warm-up, weight decay, clipping, label smoothing, precision, output, tracking

A flag is a field; its help is the field's ``metadata["help"]``; a wrong value is one `ValueError` line naming the
flag, the value and what is allowed. Names HF users type are the flags themselves (`--max_seq_length`,
`--per_device_train_batch_size`, `--seed`, `--task_name`, ...); an earlier name (`--max_length`) still works and
says on stderr that it is deprecated.
"""

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Literal

from transformers import HfArgumentParser

from .data import ROLES
from .records import DEFAULT_EXPERIMENT, SELECT_BY, margins_arg
from .settings import PARALLEL_MODES
from .tasks import CLASSIFIER_TYPES as PROBLEM_TYPES
from .tasks import TASK_NAMES, TASKS
from .tracking import TRACKERS, trackers

PROG = "hfreg-finetune"
DEFAULTS = dict(learning_rate=2e-4, num_train_epochs=4, train_batch_size=16, seeds="0,1,2,3")
# earlier flag names -> their names now; the earlier ones work, with a deprecation line on stderr
DEPRECATED = {"max_length": "max_seq_length"}
# GLUE's tasks (`--task_name`); stsb's float labels make it a regression (`tasks`)
GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
ARGS_FILE_SUFFIXES = (".json", ".yaml", ".yml")
SAVE_STRATEGIES = ("no", "best", "final")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$")


def _is_name(text: str) -> bool:
    """Letters, digits, '-', '_' or '.': safe as a directory name and in a tracker's run name."""
    return bool(text) and text.replace("-", "").replace("_", "").replace(".", "").isalnum()


def _positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(obj, name)}")


MIN_POINTS = 10  # evaluation points a run has at least, by default (--evals_per_epoch)


@dataclass
class ModelArguments:
    """Which model fine-tunes, from which config and tokenizer, and whether as LoRA adapters."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "any model AutoModelForSequenceClassification loads: a local directory or a hub id (default: the "
                "packaged MiniLM-L6)"})
    config_name: str | None = field(default=None, metadata={
        "help": "a config (directory, config.json or hub id) to build the model with instead of the model's own"})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "a tokenizer (directory or hub id) instead of the model's own; recorded in the experiment"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let transformers run the model's, config's and tokenizer's own code from the hub"})
    peft: Literal["none", "lora"] = field(default="none", metadata={
        "help": "fine-tune LoRA adapters (and the head) instead of every weight; `adapter` sets their dropout"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha"})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "comma-separated module names, or all-linear (every linear layer but the output head)"})

    def __post_init__(self):
        if self.peft == "lora":
            _positive(self, "lora_r", "lora_alpha")


@dataclass
class DataArguments:
    """Which data, which of its columns, how long a sequence may be, and which examples play which role."""

    _argument_group_name = "data"

    task_name: str | None = field(default=None, metadata={
        "help": f"a GLUE task ({', '.join(GLUE_TASKS)}): the same as --dataset_name glue --dataset_config_name "
                f"TASK"})
    dataset_name: str | None = field(default=None, metadata={
        "help": "a dataset on the hub, e.g. rotten_tomatoes or glue"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration, e.g. sst2"})
    train_file: str | None = field(default=None, metadata={"help": "csv, json, jsonl or parquet"})
    validation_file: str | None = field(default=None, metadata={"help": "same format as --train_file"})
    test_file: str | None = field(default=None, metadata={
        "help": "labelled test split, used only to report (same format)"})
    train_dir: str | None = field(default=None, metadata={
        "help": "images in the imagefolder layout (one folder per class), as run_image_classification.py takes them"})
    validation_dir: str | None = field(default=None, metadata={"help": "the same layout as --train_dir"})
    test_dir: str | None = field(default=None, metadata={
        "help": "the same layout, a labelled test split used only to report"})
    image_column_name: str | None = field(default=None, metadata={
        "help": "the image column of an image data set (default: detected: image, img)"})
    # HF's example scripts name these --text_column_name(s) and --label_column_name: both work
    text_column: str | None = field(default=None, metadata={
        "aliases": ["--text_column_name", "--text_column_names"],
        "help": "text column, or two comma-separated for sentence pairs (default: detected)"})
    label_column: str | None = field(default=None, metadata={
        "aliases": ["--label_column_name"],
        "help": "label column: strings or integers (classes), or floats (a regression) (default: detected)"})
    task: str | None = field(default=None, metadata={
        "help": f"{', '.join(TASK_NAMES)}: a sequence classifier (classes, or a regression with float labels), an "
                f"image classifier, or instruction tuning of a causal LM (prompt/completion, messages or text "
                f"columns, loss on the completion) (default: from the data: an image column, or such columns and "
                f"no label column; else text-classification)"})
    problem_type: str | None = field(default=None, metadata={
        "help": f"{' or '.join(PROBLEM_TYPES)} (default: regression where the training labels are floats, as "
                f"run_glue infers it; else classification)"})
    max_seq_length: int = field(default=128, metadata={
        "help": "truncate every example to this many tokens (earlier name: --max_length)"})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "cap the validation and test splits (faster sweeps)"})
    roles: Literal[ROLES] = field(default="auto", metadata={
        "help": "which examples select the evaluation point and which report: validation (select on validation, "
                "report on test), validation-half (a stratified half of validation each), train-pool (select on "
                "--selection_size training examples never trained on); auto = validation when a labelled test "
                "split exists, else validation-half"})
    split_seed: int = field(default=0, metadata={"help": "seed of the role split, fixed across runs"})
    selection_size: int = field(default=512, metadata={"help": "selection examples under --roles train-pool"})

    def __post_init__(self):
        if self.task_name is not None:
            task = self.task_name.strip().lower()
            if task not in GLUE_TASKS:
                raise ValueError(f"--task_name must be a GLUE task, one of {list(GLUE_TASKS)}, got "
                                 f"{self.task_name!r}")
            if self.dataset_name or self.dataset_config_name or self.train_file:
                raise ValueError("--task_name TASK is --dataset_name glue --dataset_config_name TASK: give it "
                                 "without --dataset_name, --dataset_config_name and --train_file")
            self.task_name = task
        if self.dataset_name and self.train_file:
            raise ValueError("give either --dataset_name or --train_file, not both")
        if self.task is not None and self.task not in TASK_NAMES:
            raise ValueError(f"--task must be one of {list(TASK_NAMES)}, got {self.task!r}")
        if self.task == "causal-lm" and self.problem_type is not None:
            raise ValueError(f"--problem_type {self.problem_type} is a sequence classifier's: leave it out with "
                             f"--task causal-lm")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"--problem_type must be one of {list(PROBLEM_TYPES)}, got {self.problem_type!r}")
        for flag in ("validation_file", "test_file"):
            if getattr(self, flag) and not self.train_file:
                raise ValueError(f"--{flag} needs --train_file")
        for flag in ("validation_dir", "test_dir"):
            if getattr(self, flag) and not self.train_dir:
                raise ValueError(f"--{flag} needs --train_dir")
        if self.train_dir and (self.train_file or self.dataset_name or self.task_name):
            raise ValueError("give one source of data: --train_dir, --train_file or --dataset_name")
        _positive(self, "max_seq_length")


@dataclass
class ComparisonArguments:
    """The grid and how it is judged: presets x sizes x seeds (x learning rates), the selection rule and margins,
    the training-loop methods of presets that set none, evaluation, and where the runs go (local or Ray)."""

    _argument_group_name = "comparison"

    presets: str = field(default="pretrain-zero,classic,weight-decay", metadata={
        "help": "preset names (configs/presets/*.toml) or .toml paths, comma-separated"})
    rates: list[str] = field(default_factory=list, metadata={
        "action": "append", "metavar": "KNOB=r1,r2,... | PRESET*f1,f2,...",
        "help": "a rate sweep, added to --presets: one knob at each rate (hidden=0.05,0.1,0.2), or every rate of "
                "a preset scaled by each factor (classic*0.5,1,2,3); repeatable"})
    train_sizes: str = field(default="64", metadata={"help": "training-subset sizes, comma-separated"})
    seeds: str | None = field(default=None, metadata={
        "help": f"seeds, comma-separated (default: {DEFAULTS['seeds']}); or auto: stages of --seed_stage seeds, "
                f"each preset x size stopping once its verdicts are decided, at most --max_seeds"})
    seed: int | None = field(default=None, metadata={"help": "one seed: the same as --seeds SEED"})
    max_seeds: int = field(default=40, metadata={"help": "with --seeds auto: the most seeds per cell"})
    seed_stage: int = field(default=5, metadata={"help": "with --seeds auto: seeds added per stage"})
    learning_rates: str | None = field(default=None, metadata={
        "help": "several rates, comma-separated: each preset runs at each for every seed, and each seed's rate is "
                "chosen on its own selection split, as its early-stopping point is (so no preset is judged at a "
                "rate tuned for another); default: --learning_rate"})
    select_by: str | None = field(default=None, metadata={
        "help": "selection-split metric that picks each run's early-stopping point and each preset's learning "
                "rate in the report (ties: the earliest point): "
                + "; ".join(f"{' or '.join(t.select_by)} for {name}" for name, t in TASKS.items())
                + " (default: the first)"})
    margin: str = field(default="", metadata={
        "metavar": "METRIC=VALUE[,...]",
        "help": "equivalence margins for the verdicts, e.g. test_accuracy=0.01 (defaults: 0.02)"})
    experiment: str = field(default=DEFAULT_EXPERIMENT, metadata={
        "help": "name of this experiment in --output_dir; a directory whose runs were made under other settings "
                "is refused unless the new runs get a name of their own"})
    rdrop_alpha: float = field(default=0.0, metadata={
        "help": "R-Drop (Liang et al., 2021) for every preset that sets no `rdrop` of its own: two dropout passes "
                "per batch, cross-entropy on both plus alpha x symmetric KL (doubles the forward)"})
    llrd: float = field(default=1.0, metadata={
        "help": "layer-wise learning-rate decay for presets without their own `llrd`: layer i of L trains at "
                "lr * llrd^(L-1-i), embeddings at lr * llrd^L (e.g. 0.9; 1: off)"})
    reinit_layers: int = field(default=0, metadata={
        "help": "re-initialise the top k layers (and a pooler) before training, for presets without their own "
                "`reinit_layers` (Zhang et al., 2021)"})
    evals_per_epoch: int | None = field(default=None, metadata={
        "help": "evaluation points per epoch (default: 2, more when needed for 10 points in all)"})
    max_train_eval_samples: int = field(default=256, metadata={
        "help": "train_* metrics on a fixed stratified sample of at most this many subset examples (0: all)"})
    test_every_point: bool = field(default=False, metadata={
        "help": "evaluate the test split at every evaluation point (default: at the final point and at the point "
                "each selection rule picks, from a CPU copy of the weights kept while it leads; every point "
                "anyway with --mc_samples or --parallel data)"})
    no_selection_predictions: bool = field(default=False, metadata={
        "help": "store only the test split's outputs in predictions/, the only ones a report reads, not the "
                "selection split's at every evaluation point (which benchmarks/compare_select_by.py reads)"})
    mc_samples: int = field(default=0, metadata={
        "help": "also evaluate selection and test by MC-dropout with this many samples (mc_* metrics)"})
    backend: Literal["local", "ray"] = field(default="local", metadata={
        "help": "local: this launch's processes share the grid through --output_dir; ray: one driver submits "
                "every run to a Ray cluster (pip install \"hfreg[ray]\")"})
    ray_address: str | None = field(default=None, metadata={
        "help": "with --backend ray: HOST:PORT of a running cluster's head (default: start a local one)"})
    run_cpus: float = field(default=1.0, metadata={"help": "with --backend ray: CPUs each run asks for"})
    run_gpus: float = field(default=0.0, metadata={
        "help": "with --backend ray: GPUs each run asks for; a fraction (0.25) packs runs onto one GPU"})
    run_retries: int = field(default=2, metadata={
        "help": "with --backend ray: how often a run whose worker process died is tried again"})
    no_plots: bool = field(default=False, metadata={"help": "write no plots"})

    def __post_init__(self):
        if self.seeds is not None and self.seed is not None:
            raise ValueError("give --seeds (several) or --seed (one), not both")
        if self.seeds is not None and self.seeds.strip() == "auto":
            if self.seed_stage < 2 or self.max_seeds < self.seed_stage:
                raise ValueError(f"--seeds auto needs --seed_stage >= 2 and --max_seeds >= --seed_stage, got "
                                 f"{self.seed_stage} and {self.max_seeds}")
        if self.backend == "ray":
            if not self.run_cpus > 0 or self.run_gpus < 0 or self.run_retries < 0:
                raise ValueError(f"--run_cpus must be > 0, --run_gpus and --run_retries >= 0, got "
                                 f"{self.run_cpus:g}, {self.run_gpus:g} and {self.run_retries}")
        elif self.ray_address:
            raise ValueError("--ray_address needs --backend ray")
        if not self.rdrop_alpha >= 0 or not 0 < self.llrd <= 1 or self.reinit_layers < 0:
            raise ValueError(f"--rdrop_alpha must be >= 0, --llrd in (0, 1] and --reinit_layers >= 0, got "
                             f"{self.rdrop_alpha:g}, {self.llrd:g} and {self.reinit_layers}")
        if self.evals_per_epoch is not None:
            _positive(self, "evals_per_epoch")
        if self.mc_samples < 0 or self.mc_samples == 1:
            raise ValueError(f"--mc_samples must be 0 (off) or >= 2, got {self.mc_samples}")
        if self.max_train_eval_samples < 0:
            raise ValueError(f"--max_train_eval_samples must be >= 0, got {self.max_train_eval_samples}")
        if self.select_by is not None and self.select_by not in SELECT_BY:
            raise ValueError(f"--select_by must be one of {list(SELECT_BY)}, got {self.select_by!r}")
        if not _is_name(self.experiment):
            raise ValueError(f"--experiment must be a name of letters, digits, '-', '_' or '.', got "
                             f"{self.experiment!r}")


@dataclass
class RunArguments:
    """How each run trains, under the names of `transformers.TrainingArguments` where it has one, and where the
    results and the live tracking go."""

    _argument_group_name = "training"

    output_dir: str = field(default="runs/default", metadata={
        "help": "where runs.jsonl, predictions/, the summaries and plots go; re-running resumes"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start --output_dir afresh: delete the runs, predictions, summaries, plots and tracking logs it "
                "holds (each named on stdout) before training; without it a re-run resumes"})
    learning_rate: float = field(default=DEFAULTS["learning_rate"], metadata={
        "help": "AdamW's peak learning rate (see --learning_rates for several)"})
    num_train_epochs: int = field(default=DEFAULTS["num_train_epochs"], metadata={
        "help": "epochs per run (see --min_steps); with --max_steps, only how many evaluation points a run has"})
    max_steps: int = field(default=0, metadata={
        "help": "optimizer steps per run, overriding --num_train_epochs and --min_steps as in the HF Trainer; the "
                "evaluation points stay those of --num_train_epochs x --evals_per_epoch, spread over the run "
                "(0: off)"})
    min_steps: int = field(default=48, metadata={
        "help": "a small training subset trains more epochs, until at least this many optimizer steps (the "
                "evaluation points stay --num_train_epochs x --evals_per_epoch, spread over the run; 0: off)"})
    train_batch_size: int | None = field(default=None, metadata={
        "help": f"examples per optimizer step, summed over processes: the same whatever their number (default: "
                f"{DEFAULTS['train_batch_size']})"})
    per_device_train_batch_size: int | None = field(default=None, metadata={
        "help": "the HF name: examples per forward pass on each process; the global batch is this x "
                "--gradient_accumulation_steps x the processes a run spreads over (1 under --parallel run). "
                "Either this or --train_batch_size"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "split each batch into this many backward passes (memory; each step holds the same examples, and "
                "a per-example loss the same mean; a per-token loss weighs each pass by its examples)"})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "examples per evaluation batch"})
    eval_tokens: int | None = field(default=None, metadata={
        "help": "at most this many padded tokens per evaluation batch (0: batches of the batch size only; default: "
                "4096 in fp32, 0 under bf16/fp16, where batch shapes change the roundings)"})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "transformers' learning-rate schedule (linear, cosine, constant_with_warmup, ...)"})
    warmup_ratio: float = field(default=0.1, metadata={
        "help": "linear warm-up over this fraction of the steps, rounded down (the HF Trainer rounds up)"})
    warmup_steps: int = field(default=0, metadata={
        "help": "warm-up over this many optimizer steps instead of --warmup_ratio (0: the ratio)"})
    weight_decay: float = field(default=0.0, metadata={
        "help": "AdamW weight decay (weight matrices only) for every preset whose own is 0; presets with their "
                "own (weight-decay, strong-baseline) keep it"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "clip the gradients' global norm to this before every optimizer step, as the HF Trainer does by "
                "default (0: no clipping)"})
    label_smoothing_factor: float = field(default=0.0, metadata={
        "help": "label smoothing of the training loss (R-Drop's cross-entropy terms too), as the HF Trainer's; "
                "evaluation losses stay plain NLL (0: off)"})
    neftune_noise_alpha: float = field(default=0.0, metadata={
        "help": "NEFTune (Jain et al., 2023) for every preset that sets no `embedding_noise`: uniform noise of "
                "scale alpha / sqrt(L * d) on the input embeddings, at a constant rate (0: off)"})
    packing: bool = field(default=False, metadata={
        "help": "causal-lm: each training batch's examples side by side in one row, without padding (position ids "
                "restart at each, so each example attends to itself alone, as TRL's padding-free packing); "
                "NEFTune then takes each example's own length; evaluation stays one example per row"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (transformers' gradient checkpointing): less memory, "
                "more time"})
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "autocast precision; auto = bf16 where the hardware runs it natively (CUDA with bf16, CPUs with "
                "AMX or AVX512-BF16), else no"})
    cpu: bool = field(default=False, metadata={"help": "run on CPU processes (gloo) even where a GPU exists"})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads per process (default: every core this process may use, shared among the launch's "
                "processes on this machine; under `accelerate launch` its one-thread default is not taken as a "
                "choice)"})
    parallel: Literal[PARALLEL_MODES] = field(default="run", metadata={
        "help": "run: each run whole on one process, runs shared out (default); data: each run spread over all "
                "processes (DDP/FSDP), for models too big or slow for one device"})
    report_to: str | None = field(default=None, metadata={
        "help": f"log every run live to these trackers, comma-separated ({', '.join(TRACKERS)}), all (every one "
                f"installed) or none; giving one turns tracking on"})
    with_tracking: bool = field(default=False, metadata={
        "help": "turn tracking on (with --report_to, or every installed tracker without it)"})
    run_name: str | None = field(default=None, metadata={
        "help": "the trackers' run names start with this instead of --experiment: NAME/PRESET/nSIZE/sSEED/lrLR"})
    save_strategy: Literal[SAVE_STRATEGIES] = field(default="no", metadata={
        "help": "which weights of each run to keep, with the tokenizer and a model card, in "
                "OUTPUT_DIR/models/EXPERIMENT/PRESET/nSIZE-sSEED-lrLR/: no (none; the default, so grids do not fill "
                "disks), best (at the point --select_by picks) or final (at the last step)"})
    push_to_hub: bool = field(default=False, metadata={
        "help": "after the grid, upload each preset's best kept run (chosen on the selection split) to the Hugging "
                "Face Hub as HUB_MODEL_ID-PRESET; needs --save_strategy and --hub_model_id"})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "the Hub repository name --push_to_hub uploads to, each preset's as NAME-PRESET (NAME or "
                "NAMESPACE/NAME)"})

    def __post_init__(self):
        if self.train_batch_size is not None and self.per_device_train_batch_size is not None:
            raise ValueError("give --train_batch_size (global, summed over processes) or "
                             "--per_device_train_batch_size (per process), not both")
        for name in ("train_batch_size", "per_device_train_batch_size"):
            if getattr(self, name) is not None:
                _positive(self, name)
        _positive(self, "num_train_epochs", "gradient_accumulation_steps", "per_device_eval_batch_size")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {self.threads}")
        for name in ("min_steps", "max_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not self.max_grad_norm >= 0:
            raise ValueError(f"--max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm:g}")
        if self.eval_tokens is not None and self.eval_tokens < 0:
            raise ValueError(f"--eval_tokens must be >= 0 (0: no token budget), got {self.eval_tokens}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1], got {self.warmup_ratio:g}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"--weight_decay must be a finite number >= 0, got {self.weight_decay:g}")
        if not 0 <= self.label_smoothing_factor < 1:
            raise ValueError(f"--label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor:g}")
        if not 0 <= self.neftune_noise_alpha < math.inf:
            raise ValueError(f"--neftune_noise_alpha must be a finite number >= 0, got "
                             f"{self.neftune_noise_alpha:g}")
        if self.run_name is not None and not _is_name(self.run_name):
            raise ValueError(f"--run_name must be a name of letters, digits, '-', '_' or '.', got {self.run_name!r}")
        if self.hub_model_id is not None and not _HUB_ID.match(self.hub_model_id):
            raise ValueError(f"--hub_model_id must be NAME or NAMESPACE/NAME (letters, digits, '-', '_', '.'), got "
                             f"{self.hub_model_id!r}")


GROUPS = (ModelArguments, DataArguments, ComparisonArguments, RunArguments)
FLAGS = {f.name for group in GROUPS for f in fields(group)}


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over `GROUPS` whose errors are one `ValueError` line (the console entry point prints it
    and exits 2), not a usage dump and a `SystemExit`; abbreviations of flags are not taken (``--seed`` is not
    ``--seeds``)."""

    def __init__(self, description: str | None = None):
        super().__init__(GROUPS, prog=PROG, description=description, allow_abbrev=False)

    def error(self, message):
        # "argument --max_steps/--max-steps: ..." names the flag once, as it is documented
        raise ValueError(re.sub(r"^argument (--\w+)/--[\w-]+:", r"argument \1:", message))


def _say(line: str) -> None:
    """A line on stderr from the first process of a launch only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _deprecation(old: str) -> None:
    _say(f"FutureWarning: --{old} is deprecated, use --{DEPRECATED[old]} (the same setting)")


def _undeprecate(argv: list[str]) -> list[str]:
    """``argv`` with every deprecated flag renamed to its name now, each said once on stderr."""
    out, said = [], set()
    for token in argv:
        name, eq, value = token.partition("=")
        old = name[2:].replace("-", "_") if name.startswith("--") else None
        if old in DEPRECATED:
            if old not in said:
                _deprecation(old)
                said.add(old)
            token = f"--{DEPRECATED[old]}{eq}{value}"
        out.append(token)
    return out


def args_file_argv(path: str) -> list[str]:
    """The command line an args file stands for: a .json or .yaml mapping of flag names (without ``--``) to
    values. A list is comma-separated (`rates`: one sweep per item), a mapping ``KEY=VALUE,...`` (`margin`), a
    boolean true/false, null the default."""
    kind = "JSON" if path.lower().endswith(".json") else "YAML"
    if not os.path.isfile(path):
        raise ValueError(f"args file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if kind == "JSON":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as e:  # json's and yaml's errors: the first line says where
        raise ValueError(f"args file {path!r} is not valid {kind}: {str(e).strip().splitlines()[0]}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"args file {path!r} must hold a mapping of flag names to values, got "
                         f"{type(values).__name__}")
    unknown = sorted(str(k) for k in values if str(k) not in FLAGS and str(k) not in DEPRECATED)
    if unknown:
        raise ValueError(f"args file {path!r}: unknown key(s) {unknown}; the keys are the flags' names without "
                         f"'--' ({PROG} --help)")
    argv = []
    for key, value in values.items():
        flag = f"--{key}"
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"{flag}={'true' if value else 'false'}")
        elif isinstance(value, dict):
            argv.append(f"{flag}={','.join(f'{k}={v}' for k, v in value.items())}")
        elif isinstance(value, list) and key == "rates":
            argv += [f"{flag}={v}" for v in value]
        elif isinstance(value, list):
            argv.append(f"{flag}={','.join(str(v) for v in value)}")
        else:
            argv.append(f"{flag}={value}")
    return argv


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{flag} is empty")
    return list(dict.fromkeys(values))


def resolve(model: ModelArguments, data: DataArguments, comparison: ComparisonArguments,
            run: RunArguments) -> argparse.Namespace:
    """The one namespace the sweep reads, from the four groups: every field under its own name, and the values
    derived from them (`train_sizes`, `seeds`, `learning_rates` as lists, `auto_seeds`, `margin` as a mapping,
    `evals_per_epoch`, the global `train_batch_size`, the GLUE task's data set, the trackers in `report_to`).
    Checks what spans groups; one-line ValueError."""
    ns = argparse.Namespace(**{f.name: getattr(group, f.name) for group in (model, data, comparison, run)
                               for f in fields(group)})
    if ns.push_to_hub and (ns.save_strategy == "no" or not ns.hub_model_id):
        raise ValueError(f"--push_to_hub uploads the models --save_strategy keeps, to --hub_model_id: give both "
                         f"(got --save_strategy {ns.save_strategy}, --hub_model_id {ns.hub_model_id})")
    if ns.save_strategy != "no" and ns.backend == "ray":
        raise ValueError(f"--save_strategy {ns.save_strategy} needs --backend local: with ray, workers never write to "
                         f"--output_dir")
    if ns.task_name:
        ns.dataset_name, ns.dataset_config_name = "glue", ns.task_name
    ns.rates = [r for item in ns.rates for r in (item if isinstance(item, list) else [item])]
    ns.train_sizes = _ints("train_sizes", ns.train_sizes)
    seeds = str(ns.seed) if ns.seed is not None else DEFAULTS["seeds"] if ns.seeds is None else ns.seeds
    ns.auto_seeds = seeds.strip() == "auto"
    ns.seeds = list(range(ns.max_seeds)) if ns.auto_seeds else _ints("seeds", seeds)
    if ns.evals_per_epoch is None:
        # at least 10 points: with 6, most runs of the published 64-example methods grid (40 of 56) picked the
        # first point, which censors early stopping (the report counts such runs)
        ns.evals_per_epoch = max(2, math.ceil(MIN_POINTS / max(ns.num_train_epochs, 1)))
    flag = "--learning_rates" if ns.learning_rates is not None else "--learning_rate"  # the one the user gave
    rates = ns.learning_rates if ns.learning_rates is not None else str(ns.learning_rate)
    try:
        ns.learning_rates = list(dict.fromkeys(float(x) for x in rates.split(",") if x.strip()))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {rates!r}") from None
    if not ns.learning_rates or not all(r > 0 for r in ns.learning_rates):
        raise ValueError(f"{flag} must be {'a positive number' if flag == '--learning_rate' else 'positive numbers'}, "
                         f"got {rates!r}")
    try:
        ns.margin = margins_arg(ns.margin)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"argument --margin: {e}") from None
    if ns.backend == "ray" and ns.parallel != "run":
        raise ValueError("--backend ray runs each run whole on one worker: it takes --parallel run")
    if ns.per_device_train_batch_size is not None:  # HF's meaning: per forward pass, per process
        spread = int(os.environ.get("WORLD_SIZE", "1")) if ns.parallel == "data" else 1
        ns.train_batch_size = ns.per_device_train_batch_size * ns.gradient_accumulation_steps * spread
    elif ns.train_batch_size is None:
        ns.train_batch_size = DEFAULTS["train_batch_size"]
    if ns.peft == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ValueError("--peft lora needs the package peft (pip install peft)") from None
    if ns.train_batch_size % ns.gradient_accumulation_steps:
        raise ValueError(f"--train_batch_size {ns.train_batch_size} must be a multiple of "
                         f"--gradient_accumulation_steps {ns.gradient_accumulation_steps}")
    ns.report_to = trackers(ns.report_to, ns.with_tracking)
    ns.with_tracking = bool(ns.report_to)
    return ns


def _check_schedule(name: str) -> None:
    """One line unless ``name`` is one of transformers' learning-rate schedules. Checked after the flags are known:
    the names come from `transformers.SchedulerType`, whose module imports peft and more (seconds), which a
    mistyped flag should not wait for."""
    from transformers import SchedulerType

    schedules = [s.value for s in SchedulerType]
    if name not in schedules:
        raise ValueError(f"--lr_scheduler_type must be one of {schedules}, got {name!r}")


def parse(argv=None, description: str | None = None) -> argparse.Namespace:
    """Parse a command line (``sys.argv[1:]`` by default) into the sweep's namespace (`resolve`). A single argument
    ending in .json, .yaml or .yml is an args file holding the whole configuration (`args_file_argv`): the same
    namespace as the command line it stands for. Unknown flags, bad values and a missing tracker are one
    ValueError line; ``--help`` prints the flags and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    files = [a for a in argv if a.lower().endswith(ARGS_FILE_SUFFIXES) and not a.startswith("-")]
    if files and len(argv) == 1:
        argv = args_file_argv(argv[0])
    elif files and argv.index(files[0]) == 0:
        raise ValueError(f"an args file ({files[0]}) holds the whole configuration: give it as the only argument")
    parser = ArgumentParser(description)
    *groups, rest = parser.parse_args_into_dataclasses(args=_undeprecate(argv), return_remaining_strings=True,
                                                       look_for_args_file=False)
    if rest:
        raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
    _check_schedule(groups[-1].lr_scheduler_type)
    ns = resolve(*groups)
    return ns
