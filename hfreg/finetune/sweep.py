"""How much does each regularization preset change overfitting when fine-tuning on small data?

    accelerate launch -q -m hfreg.finetune                     # embedded default: MiniLM-L6, synthetic data
    accelerate launch -q --num_processes 4 -m hfreg.finetune --train_file train.csv --validation_file dev.csv \\
        --train_sizes 64,256,1024 --seeds 0,1,2 --output_dir runs/sst2
    accelerate launch -q -m hfreg.finetune config.yaml         # the whole configuration in one args file

Grid: presets x train sizes (seeded, stratified subsamples) x seeds. Each run fine-tunes a fresh copy of the
model; every epoch both the training subset and the validation set are evaluated in eval mode. Under several
processes the runs are shared out, each trained whole on one process (`--parallel run`, the default), or each
run is spread over all processes (`--parallel data`). Finished runs are appended to OUTPUT_DIR/runs.jsonl;
re-running resumes. The summary table, summary.json/.csv and plots follow; `hfreg report OUTPUT_DIR` rebuilds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections import defaultdict

from . import tracking
from .arguments import PROG, parse
from .records import (
    DEFAULT_MODEL,
    SELECT_BY,
    RunKey,
    WorkQueue,
    append_run,
    check_output_dir,
    code_identity,
    default_model_path,
    digest,
    experiment_conflict,
    experiment_of,
    read_runs,
    run_key,
)

EVAL_TOKENS = 4096
# settings of a run recorded with the experiment only where they are on (their defaults are all falsy: 0, False)
NEWER_SETTINGS = ("max_steps", "warmup_steps", "weight_decay", "label_smoothing_factor", "neftune_noise_alpha",
                  "gradient_checkpointing", "packing")


def parse_args(argv=None):
    """The command line (or one .json/.yaml args file) as one namespace: every flag of `arguments`' dataclasses
    under its own name, with the values derived from them (`arguments.resolve`); one-line ValueError on bad input."""
    return parse(argv, description=__doc__.split("\n\n")[0])


def check_local_path(flag: str, name: str | None) -> None:
    """One line for a model, config or tokenizer named by a local path that does not exist (a hub id has at most
    one '/', and does not start with '/', '.' or '~')."""
    if name is None:
        return
    local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if local and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(f"--{flag} {name!r} does not exist: give a local directory or a model id on the hub "
                         f"(e.g. bert-base-uncased)")


@contextlib.contextmanager
def loading(flag: str, name: str):
    """Loading from ``--flag NAME``: transformers' and the hub's errors (no such model, no network, no file) as
    one line naming the flag."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise ValueError(f"--{flag} {name!r} cannot be loaded: {str(e).strip().splitlines()[0]}") from None


def auto_precision(cpu: bool) -> str:
    """bf16 where matrix units run it natively; the README shows it leaves accuracy unchanged."""
    import torch

    if not cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    fast = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if fast else "no"


def eval_tokens(flag: int | None, precision: str, lm: bool = False) -> int:
    """The evaluation batches' token budget: the flag's, else 4096 in fp32 (the same logits to 1e-7, 1.2x faster on a
    CPU; benchmarks/eval_profile.py) and none in low precision, where other batch shapes round differently; a causal
    LM's 4096 always (its logits span the vocabulary: 4096 x 128k float32 logits are 2 GB)."""
    return flag if flag is not None else (EVAL_TOKENS if precision == "no" or lm else 0)


def lora_settings(args) -> dict | None:
    """LoRA's settings as recorded and as passed to `peft.LoraConfig`; None without --peft lora."""
    if args.peft != "lora":
        return None
    targets = args.lora_target_modules.strip()
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return {"r": args.lora_r, "lora_alpha": args.lora_alpha, "target_modules": targets}


def make_accelerator(args, find_unused_parameters: bool):
    """An Accelerator whose process count is the launched one, on machines with or without a GPU."""
    from datetime import timedelta

    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    here = int(os.environ.get("LOCAL_WORLD_SIZE", launched))
    if args.parallel == "run" and launched > here:
        raise ValueError(f"run mode across several machines ({launched} processes, {here} on this one) is not "
                         f"shared through --output_dir: use --backend ray for several machines, or --parallel data "
                         f"for one large model per run")
    # Without cpu=True, a multi-process launch on a machine with no accelerator leaves every process alone,
    # each running the whole grid; with it they join one gloo group.
    cpu = args.cpu or (launched > 1 and not torch.accelerator.is_available())
    precision = auto_precision(cpu) if args.mixed_precision == "auto" else args.mixed_precision
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters),
                # run mode: ranks meet only at the end, after the longest of their runs
                InitProcessGroupKwargs(timeout=timedelta(days=7))]
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=handlers,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              project_dir=args.output_dir)
    if accelerator.num_processes != launched:
        raise ValueError(f"{launched} processes were launched but they did not join one group "
                         f"({accelerator.distributed_type}); launch with `accelerate launch --multi_gpu` "
                         f"or pass --cpu")
    return accelerator


def cpu_threads(requested: int | None, local_processes: int, device: str) -> int:
    """Set and return this process's torch CPU threads: ``requested`` (``--threads``) when given; on a CPU, every
    core the process may use, divided among the launch's processes on this machine — unless OMP_NUM_THREADS was
    set by the user (not by `accelerate launch`, whose default of one thread a process is no choice)."""
    import torch

    if requested:
        torch.set_num_threads(requested)
    elif device == "cpu" and ("OMP_NUM_THREADS" not in os.environ or "ACCELERATE_DYNAMO_BACKEND" in os.environ):
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, allowed // max(1, local_processes)))
    return torch.get_num_threads()


def check_batch(args, num_processes: int) -> None:
    micro = args.train_batch_size // args.gradient_accumulation_steps
    if args.parallel == "data" and micro % num_processes:
        raise ValueError(f"--parallel data splits each batch across {num_processes} processes: --train_batch_size "
                         f"{args.train_batch_size} / --gradient_accumulation_steps "
                         f"{args.gradient_accumulation_steps} = {micro} is not a multiple of {num_processes}")


def clear_output_dir(output_dir: str) -> list[str]:
    """Delete what the harness wrote into ``output_dir`` (`--overwrite_output_dir`): the runs and their
    predictions, claims of runs in progress, summaries, findings, plots and tracking logs; nothing else. Returns
    what went, in words."""
    import glob
    import shutil

    from .records import CLAIMS_DIR, PREDICTIONS_DIR, RUNS_FILE, locked

    if not os.path.isdir(output_dir):
        return []
    removed = []
    with locked(output_dir):  # no run is appended half-way through
        runs = read_runs(output_dir)
        for name in (RUNS_FILE, PREDICTIONS_DIR, CLAIMS_DIR, tracking.LOGS_DIR):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(name + "/")
            elif os.path.exists(path):
                os.remove(path)
                removed.append(f"{name} ({len(runs)} run(s))" if name == RUNS_FILE else name)
    for pattern in ("summary.json", "summary.csv", "findings.md", "pooled.json", "pooled.md", "learning_curves*.png",
                    "gap_vs_size*.png", "dose_response*.png"):
        for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern))):
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def presets_line(presets: list, arms: dict) -> str:
    """The grid's presets, each equal-compute arm (``<control>@<k>x``) with the presets whose compute it has."""
    return "presets: " + ", ".join(f"{p.name} (equal compute for {', '.join(arms[p.name])})" if p.name in arms
                                   else p.name for p in presets)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(done: list[dict], grid: list[RunKey], num_processes: int) -> str:
    """Runs done and left, and an ETA from the measured run times (per training-set size, else scaled)."""
    finished = {run_key(r) for r in done}
    left = [k for k in grid if k not in finished]
    line = f"grid: {len(grid) - len(left)}/{len(grid)} runs done, {len(left)} left"
    if not done or not left:
        return line
    per_size = {}
    for r in done:
        per_size.setdefault(r["train_size"], []).append(r["seconds"])
    mean = {n: sum(v) / len(v) for n, v in per_size.items()}
    per_example = sum(mean[n] / n for n in mean) / len(mean)
    eta = sum(mean.get(k.train_size, per_example * k.train_size) for k in left) / num_processes
    return f"{line}, ETA {_duration(eta)} ({num_processes} process(es))"


def main(argv=None) -> int:
    args = parse_args(argv)
    check_output_dir(args.output_dir)
    if args.backend == "ray":  # joined (or started) before anything is read or written: its errors come first
        from . import cluster

        with cluster.connect(args.ray_address, args.run_cpus, args.run_gpus) as ray:
            return _main(args, ray)
    return _main(args, None)


@dataclasses.dataclass
class Experiment:
    """What a grid runs on, built once per launch: the accelerator, the presets and their recorded contents, the
    training settings, the loaded model and encoded data, and the experiment record every run carries."""

    accelerator: object
    presets: list
    contents: dict
    settings: object
    base_model: object
    data: dict
    roles: object
    collate: object
    label_names: list
    model_name: str
    record: dict  # {"name", "settings"}: what a resume must match
    code: dict
    precision: str
    threads: int | None
    arms: dict = dataclasses.field(default_factory=dict)  # equal-compute arm -> the presets whose compute it has


def _main(args, ray) -> int:
    return run_grid(args, build_experiment(args, ray), ray)


def build_experiment(args, ray) -> Experiment:
    """Load presets, data, tokenizer and model, check every input and make the accelerator; nothing is written."""
    import warnings

    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from .. import __version__
    from . import data as data_mod
    from . import kinds, report, tasks
    from .presets import (
        BASELINE,
        METHOD_FLAGS,
        NO_METHODS,
        check_controls,
        equal_compute_arms,
        load_preset,
        sweep_presets,
    )
    from .training import Settings

    presets = [load_preset(p.strip()) for p in dict.fromkeys(args.presets.split(",")) if p.strip()]
    presets += [p for spec in args.rates for p in sweep_presets(spec)]
    if args.rates and BASELINE not in [p.name for p in presets]:  # a sweep's rate 0 is the baseline
        presets.insert(0, load_preset(BASELINE))
    presets = list({p.name: p for p in presets}.values())
    if not presets:
        raise ValueError("--presets is empty")
    check_controls(presets)
    # a costlier preset's control at its compute, as an arm of its own (the parsed flags carry the grid's methods)
    arms = equal_compute_arms(presets, args)
    for name, (arm, _) in arms.items():
        if name in [p.name for p in presets]:
            raise ValueError(f"preset {name!r} is the name of an equal-compute arm the grid adds: rename it")
        presets.append(arm)
    report.check_margins(args.margin)
    if args.auto_seeds and BASELINE not in [p.name for p in presets]:
        raise ValueError(f"--seeds auto compares with the baseline: add {BASELINE} to --presets")
    for flag in ("model_name_or_path", "config_name", "tokenizer_name"):  # before any data is read
        check_local_path(flag, getattr(args, flag))
    model_path = args.model_name_or_path or default_model_path()
    raw = data_mod.load_raw(args.dataset_name, args.dataset_config_name, args.train_file, args.validation_file,
                            args.test_file, args.train_dir, args.validation_dir, args.test_dir)
    kind, text_columns, label_column = kinds.choose(raw, args)
    lm = kind.name == tasks.CAUSAL_LM
    if args.max_eval_samples:
        for split in set(raw) - {"train"}:
            raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
    for size in args.train_sizes:  # early; checked against the training pool once the roles are known
        data_mod.check_train_size(size, len(raw["train"]))

    accelerator = make_accelerator(args, find_unused_parameters=any(p.reg.layerdrop for p in presets))
    check_batch(args, accelerator.num_processes)
    if args.backend == "ray" and accelerator.num_processes > 1:
        raise ValueError(f"--backend ray is one driver process, launched {accelerator.num_processes} times: run it "
                         f"as one process (the cluster spreads the runs)")
    threads = cpu_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)),
                          accelerator.device.type)
    # a Ray cluster's GPU workers run bf16 where the driver may have no GPU to ask
    precision = "bf16" if args.backend == "ray" and args.run_gpus > 0 and args.mixed_precision == "auto" \
        else accelerator.mixed_precision
    hf_logging.set_verbosity_error()
    remote = {"trust_remote_code": True} if args.trust_remote_code else {}
    tokenizer_flag = "tokenizer_name" if args.tokenizer_name else "model_name_or_path"
    with loading(tokenizer_flag, args.tokenizer_name or model_path):  # an image model's processor, in its place
        tokenizer = getattr(transformers, kind.processor).from_pretrained(args.tokenizer_name or model_path,
                                                                          **remote)
    data, label_names, problem_type = kind.encode(raw, tokenizer, text_columns, label_column, args)
    args.select_by = report.check_select_by(args.select_by, tasks.task(problem_type))  # None: the task's own
    roles = data_mod.assign_roles(data, args.roles, args.split_seed, args.selection_size)
    eval_batch = args.per_device_eval_batch_size
    if lm and args.parallel == "data":  # batches of one size there, not a token budget: as many as 4096 tokens hold
        eval_batch = min(eval_batch, max(1, EVAL_TOKENS // args.max_seq_length))
    settings = Settings(learning_rate=args.learning_rates[0], num_train_epochs=args.num_train_epochs,
                        train_batch_size=args.train_batch_size, eval_batch_size=eval_batch,
                        eval_tokens=eval_tokens(args.eval_tokens, precision, lm),
                        gradient_accumulation_steps=args.gradient_accumulation_steps,
                        evals_per_epoch=args.evals_per_epoch, train_eval_samples=args.max_train_eval_samples or None,
                        mc_samples=args.mc_samples, test_every_point=args.test_every_point,
                        lora=lora_settings(args),
                        lr_scheduler_type=args.lr_scheduler_type,
                        warmup_ratio=args.warmup_ratio, parallel=args.parallel, min_steps=args.min_steps,
                        rdrop_alpha=args.rdrop_alpha, llrd=args.llrd, reinit_layers=args.reinit_layers,
                        max_grad_norm=args.max_grad_norm, max_steps=args.max_steps,
                        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                        label_smoothing_factor=args.label_smoothing_factor,
                        neftune_noise_alpha=args.neftune_noise_alpha,
                        gradient_checkpointing=args.gradient_checkpointing, packing=args.packing,
                        problem_type=problem_type,
                        label_names=tuple(label_names) if problem_type == tasks.TOKENS else ())
    if args.packing and problem_type != tasks.CAUSAL_LM:
        raise ValueError(f"--packing joins a causal LM's training examples into one row; this grid is "
                         f"{problem_type}: leave --packing out")
    if args.packing and args.parallel == "data":  # data mode splits each batch's rows across the processes
        raise ValueError("--packing puts a batch in one row, which --parallel data cannot split across processes: "
                         "use --parallel run, or leave --packing out")
    if problem_type != tasks.CLASSIFICATION:  # methods defined on class probabilities
        # R-Drop and label smoothing act on the probabilities of a class (a tag, the next token): not a regression's;
        # MC dropout's metrics are a sequence classifier's
        regression = problem_type == tasks.REGRESSION
        needs = [f"--{flag} {getattr(args, flag):g}" for flag in ("label_smoothing_factor", "mc_samples")
                 if getattr(args, flag) and (regression or flag == "mc_samples")]
        needs += [f"preset {p.name} (R-Drop)" for p in presets if p.methods(settings)["rdrop"] and regression]
        if needs:
            what = "a regression has none of" if regression else "hfreg measures for a sequence classifier only"
            raise ValueError(f"{', '.join(needs)} act(s) on class probabilities, which {what}: leave them out of "
                             f"a {problem_type} grid")
    for size in args.train_sizes:  # before anything is written
        data_mod.check_train_size(size, len(roles.pool))
        per_epoch = math.ceil(size / args.train_batch_size)
        for p in presets:
            steps = settings.total_steps(per_epoch, p.steps_factor)
            for knob, s in (p.reg.schedule or {}).items():
                s.check_within(steps, f"preset {p.name} at train size {size}: the `{knob}`")
    labels = {} if lm else dict(num_labels=1, problem_type=problem_type) if problem_type == tasks.REGRESSION \
        else dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                  label2id={n: i for i, n in enumerate(label_names)})
    auto_model = getattr(transformers, kind.model)
    if args.config_name:  # the model built from another config, its weights loaded where they fit
        with loading("config_name", args.config_name):
            labels = {"config": AutoConfig.from_pretrained(args.config_name, **labels, **remote)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base_model = auto_model.from_pretrained(model_path, **labels, **kind.load, **remote)
    except OSError as e:  # no such model, no network, no weights
        raise ValueError(f"--model_name_or_path {model_path!r} cannot be loaded: "
                         f"{str(e).strip().splitlines()[0]}") from None
    except (ValueError, KeyError) as e:
        raise ValueError(f"{model_path} cannot be loaded as {kind.model.removeprefix('AutoModelFor')}: "
                         f"{str(e).splitlines()[0]}") from None
    lora = settings.lora
    if lora and lora["target_modules"] != "all-linear":  # peft's own error would come inside the first run
        names = [n for n, _ in base_model.named_modules()]
        missing = [t for t in lora["target_modules"] if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in base_model.named_modules()
                             if isinstance(m, torch.nn.Linear)})
            raise ValueError(f"--lora_target_modules {','.join(missing)}: no module of {type(base_model).__name__} "
                             f"has that name; its linear layers are named {leaves[:12]}")
    if args.gradient_checkpointing and not getattr(base_model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient_checkpointing: {type(base_model).__name__} does not support it")
    if kind.processor == "AutoTokenizer":
        if tokenizer.pad_token is None:  # decoder LLMs: pad with EOS, and tell the head where sequences end
            tokenizer.pad_token = tokenizer.eos_token
        base_model.config.pad_token_id = tokenizer.pad_token_id
    collate = kind.collator(tokenizer)

    model_name = args.model_name_or_path or DEFAULT_MODEL
    config = {k: v for k, v in base_model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version")}
    # everything that defines a run besides its preset, size and seed; a resume must match it exactly
    experiment = {"name": args.experiment, "settings": {
        "model": model_name, "model_config": digest(config),
        "data_sha256": data_mod.content_hash(raw, text_columns, label_column),  # a causal LM's: its format's
        "text_columns": list(text_columns), "label_column": label_column, "labels": label_names,
        **({"problem_type": problem_type} if problem_type != tasks.CLASSIFICATION else {}),  # older records match
        **({"task": kind.name} if kind.name != tasks.TEXT else {}),  # absent for text: older records match
        "splits": {s: len(data[s]) for s in data}, "roles": roles.description,
        "max_length": args.max_seq_length, "learning_rates": args.learning_rates,
        "num_train_epochs": args.num_train_epochs, "train_batch_size": args.train_batch_size,
        "lr_scheduler_type": args.lr_scheduler_type, "warmup_ratio": args.warmup_ratio,
        "evals_per_epoch": args.evals_per_epoch, "max_train_eval_samples": args.max_train_eval_samples,
        "precision": precision, "parallel": args.parallel,
        **({"mc_samples": args.mc_samples} if args.mc_samples else {}),  # absent when off: older records match
        **({"min_steps": args.min_steps} if args.min_steps else {}),
        # absent when off, as in every record made before clipping existed (those runs did not clip): such a
        # directory resumes with --max_grad_norm 0, and is refused, as other settings are, with clipping on
        **({"max_grad_norm": args.max_grad_norm} if args.max_grad_norm else {}),
        # the HF Trainer's settings added since: absent at their defaults, so that older records match
        **{flag: getattr(args, flag) for flag in NEWER_SETTINGS if getattr(args, flag)},
        **({"tokenizer": args.tokenizer_name} if args.tokenizer_name else {}),
        **{flag: getattr(args, flag) for flag, method in METHOD_FLAGS.items()  # absent when off
           if getattr(args, flag) != NO_METHODS[method]},
        **({"seeds": {"rule": "auto", "max_seeds": args.max_seeds, "stage": args.seed_stage}}
           if args.auto_seeds else {}),
        # a staged grid stops on its margins: they are part of what it did (absent when the defaults: older match)
        **({"margins": dict(sorted(args.margin.items()))} if args.auto_seeds and args.margin else {}),
        **({"lora": lora} if lora else {}),
        "versions": {"hfreg": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__.split("+")[0]}}}
    contents = {p.name: p.contents() for p in presets}
    code = code_identity()
    return Experiment(accelerator, presets, contents, settings, base_model, data, roles, collate, label_names,
                      model_name, experiment, code, precision, threads,
                      arms={name: matched for name, (_, matched) in arms.items()})


def run_grid(args, exp: Experiment, ray) -> int:
    """Train every run of the grid not yet recorded (in stages under ``--seeds auto``), then report."""
    return Grid(args, exp, ray).run()


class Grid:
    """One launch of the grid, in named phases: `prepare` the output directory, `plan` a stage, `announce` it,
    `train_stage` (here, or on a Ray cluster), decide the `next_stage` of a staged grid from the records, then
    `finish` with the report. Every process of a launch runs the same phases; the records are the only state they
    share."""

    def __init__(self, args, exp: Experiment, ray):
        self.args, self.exp, self.ray = args, exp, ray
        self.accelerator = exp.accelerator
        self.runner, self.cluster_cpus = None, 0.0
        self.by_key: dict = {}
        self.grid: list = []
        self.n_proc = exp.accelerator.num_processes
        self.rank_tag = (f"[rank {exp.accelerator.process_index}] " if self.n_proc > 1 and args.parallel == "run"
                         else "")
        self.log = print if args.parallel == "run" else exp.accelerator.print

    def run(self) -> int:
        args = self.args
        self.prepare()
        stage = args.seed_stage if args.auto_seeds else len(args.seeds)
        self.plan({(p.name, n) for p in self.exp.presets for n in args.train_sizes}, args.seeds[:stage])
        self.announce()
        self.train_stage()
        done = args.seeds[:stage]
        while args.auto_seeds and len(done) < len(args.seeds) and self.next_stage(done):
            done += args.seeds[len(done):len(done) + args.seed_stage]
            self.train_stage()
        self.finish()
        return 0

    # ------------------------------------------------------------------------------------------------ phases
    def prepare(self) -> None:
        """Check the directory against this experiment before anything is written; clear it on
        --overwrite_output_dir; make it; open the work queue the processes share."""
        args, accelerator = self.args, self.accelerator
        if args.overwrite_output_dir:  # every input checked: the directory starts afresh, saying what goes
            if accelerator.is_main_process:
                removed = clear_output_dir(args.output_dir)
                if removed:
                    print(f"--overwrite_output_dir: removed {', '.join(removed)} from {args.output_dir}", flush=True)
            accelerator.wait_for_everyone()
        self.refuse_other_settings(read_runs(args.output_dir))  # early, before anything is written
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        accelerator.wait_for_everyone()
        self.queue = WorkQueue(args.output_dir)
        if self.ray is not None:
            from . import cluster

            exp = self.exp
            self.cluster_cpus = self.ray.cluster_resources().get("CPU", 1.0)
            self.runner = cluster.Runner(self.ray, {"model": exp.base_model, "data": exp.data, "roles": exp.roles,
                                                    "collate": exp.collate},
                                         args.run_cpus, args.run_gpus, args.run_retries, exp.precision)

    def plan(self, cells: set, seeds: list) -> None:
        """The runs of ``cells`` (preset, size) at ``seeds`` and every learning rate, longest first, so that no
        rank is left with a long run while the others idle."""
        args, contents = self.args, self.exp.contents
        self.by_key = {RunKey(args.experiment, p.name, digest(contents[p.name]), n, s, lr): (p, n, s, lr)
                       for n in sorted(args.train_sizes, reverse=True) for s in seeds for lr in args.learning_rates
                       for p in self.exp.presets if (p.name, n) in cells}
        self.grid = list(self.by_key)

    def announce(self) -> None:
        args, exp = self.args, self.exp
        accelerator = self.accelerator
        mine = self.grid_runs()
        accelerator.print(
            f"hfreg: {exp.model_name} | {len(exp.roles.pool)} training-pool examples, {len(exp.label_names)} "
            f"classes | {len(self.grid)} runs{' in the first stage' if args.auto_seeds else ''}, {len(mine)} "
            f"already done | {self.n_proc} process(es) on {accelerator.device}"
            f"{f' ({exp.threads} thread(s) each)' if accelerator.device.type == 'cpu' else ''}, "
            f"parallel={args.parallel}, batch {args.train_batch_size}, mixed precision {exp.precision}\n"
            f"data roles ({args.roles}): training subsets from the training pool; {exp.roles.description}\n"
            f"{presets_line(exp.presets, exp.arms)}", flush=True)

    def train_stage(self) -> None:
        """Every run of the planned stage, here or on the cluster; returns once all are recorded."""
        if self.runner is not None:
            return self._train_on_cluster()
        while True:
            while (key := self.next_run()) is not None:
                self._train_here(key)
            # every run of this grid finished (a launch beside this one may still be training its last ones): a
            # staged grid decides its next stage from complete stages only
            if not self.args.auto_seeds or len({run_key(r) for r in self.grid_runs()}) == len(self.grid):
                return
            time.sleep(2)

    def next_stage(self, done: list) -> bool:
        """Plan the next stage of a staged grid: the cells whose primary verdicts are not yet decided (and could
        still be by --max_seeds, `report.stop_reason`), with the baseline and their controls beside them. Every
        process decides alike, from the same records. False: nothing is left open."""
        from . import report
        from .presets import BASELINE

        args = self.args
        self.accelerator.wait_for_everyone()
        so_far = [r for r in read_runs(args.output_dir) if experiment_of(r) == args.experiment]
        rows = defaultdict(list)
        for r in report.summarize(so_far, args.select_by, args.margin):
            if r["preset"] != BASELINE:
                rows[(r["preset"], r["train_size"])].append(r)
        open_cells = {cell for cell, mine in rows.items() if report.stop_reason(mine, args.margin) is None}
        if not open_cells:
            return False
        seeds = args.seeds[len(done):len(done) + args.seed_stage]
        against = report.controls(so_far)  # the baseline and each open cell's controls run on beside it
        self.plan(open_cells | {(c, n) for p, n in open_cells for c in [BASELINE, *against.get(p, [])]}, seeds)
        self.accelerator.print(f"stage {len(done) // args.seed_stage + 1}: seeds {seeds[0]}-{seeds[-1]} for "
                               f"{len(open_cells)} undecided preset x size cell(s), {len(self.grid)} runs",
                               flush=True)
        return True

    def finish(self) -> None:
        """The report, once every process is done; the best kept models pushed where asked."""
        from . import keep, report

        args, accelerator = self.args, self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            accelerator.print(report.report(args.output_dir, make_plots=not args.no_plots, select_by=args.select_by,
                                            margins=args.margin))
            accelerator.print(f"results in {args.output_dir}: runs.jsonl, predictions/, summary.json, summary.csv, "
                              f"findings.md" + ("" if args.no_plots else ", learning_curves.png, gap_vs_size.png"))
            if args.push_to_hub:  # each preset's best kept run, chosen on the selection split
                keep.push_best(args.output_dir, self.grid_runs(), SELECT_BY[args.select_by], args.hub_model_id)
        accelerator.end_training()

    # ------------------------------------------------------------------------------------------------ helpers
    def refuse_other_settings(self, runs: list[dict]) -> None:
        args = self.args
        why = experiment_conflict(runs, args.experiment, self.exp.record["settings"], self.exp.contents)
        if why:
            raise ValueError(f"{args.output_dir} holds experiment {args.experiment!r} made under other settings: "
                             f"{why}; use another --output_dir, or --experiment NAME to add these runs as a "
                             f"separate experiment")

    def grid_runs(self) -> list[dict]:
        """This stage's finished runs, whichever process or launch made them."""
        return [r for r in read_runs(self.args.output_dir) if run_key(r) in self.by_key]

    def next_run(self):
        """The key of the next run to train (None: none left). Data mode: every rank trains the run the main
        process claimed."""
        if self.args.parallel == "run":
            return self.queue.claim(self.grid, check=self.refuse_other_settings)
        from accelerate.utils import broadcast_object_list

        box = [None]
        if self.accelerator.is_main_process:
            try:
                box[0] = (self.queue.claim(self.grid, check=self.refuse_other_settings), None)
            except ValueError as e:  # every rank stops with it, none waits for a run that never comes
                box[0] = (None, str(e))
        broadcast_object_list(box)
        key, error = box[0]
        if error:
            raise ValueError(error)
        return key

    def tracker_for(self, preset, size: int, seed: int, lr: float):
        """The tracker run of one training run, where this process logs it (the one that trains it)."""
        args = self.args
        if not args.report_to or not (args.parallel == "run" or self.accelerator.is_main_process):
            return None
        group = args.run_name or args.experiment
        name = tracking.run_name(group, preset.name, size, seed, lr)
        config = tracking.run_config(args.experiment, preset.name, self.exp.contents[preset.name], size, seed, lr)
        return tracking.RunTracker(args.report_to, args.output_dir, name, group, config)

    def make_record(self, preset, size: int, seed: int, result: dict) -> dict:
        # an arm's pairing is not its identity: a grid may add presets of the same compute later, and its runs
        # must stay the same runs (preset_config, whose digest keys them, says what trained)
        exp, args = self.exp, self.args
        paired = {"equal_compute_for": exp.arms[preset.name]} if preset.name in exp.arms else {}
        return {"experiment": exp.record, "preset": preset.name, "preset_config": exp.contents[preset.name],
                "train_size": size, "seed": seed, **paired, **result,
                "provenance": {"data": args.dataset_name or args.train_file or "synthetic", "code": exp.code,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}

    def _train_here(self, key) -> None:
        from . import keep
        from .training import Job, train

        args, exp, accelerator = self.args, self.exp, self.accelerator
        preset, size, seed, lr = self.by_key[key]
        settings = dataclasses.replace(exp.settings, learning_rate=lr)
        self.log(f"{self.rank_tag}run preset={preset.name} train_size={size} seed={seed} learning_rate={lr:g} | "
                 f"{settings.budget(size, preset.steps_factor)}", flush=True)
        tracker = None
        keeper = None if args.save_strategy == "no" else keep.Keeper(
            args.save_strategy, args.select_by, exp.collate.tokenizer,
            keep.run_dir(args.output_dir, args.experiment, preset.name, size, seed, lr))
        try:
            tracker = self.tracker_for(preset, size, seed, lr)
            # the bar on the first process only: several processes' bars would overwrite each other
            result, predictions = train(Job(accelerator, exp.base_model, exp.data, exp.roles, exp.collate, preset,
                                            size, seed, settings),
                                        log=lambda line: self.log(self.rank_tag + line, flush=True),
                                        on_point=tracker.log if tracker else None,
                                        progress=None if accelerator.is_main_process else False, keep=keeper)
        except BaseException:
            if accelerator.is_main_process or args.parallel == "run":
                self.queue.release(key)
            raise
        finally:
            if tracker is not None:
                tracker.finish()
        record = self.make_record(preset, size, seed, result)
        if "kept_step" in result:  # this process saved the weights: the card says what they are
            keeper.write_card(record, exp.model_name)
        if args.parallel == "run" or accelerator.is_main_process:
            self.queue.finish(key, record, predictions)
        if accelerator.is_main_process:
            accelerator.print(progress_line(self.grid_runs(), self.grid, self.n_proc), flush=True)

    def _train_on_cluster(self) -> None:
        """Ray: this driver submits what is left and writes what comes back."""
        args = self.args
        finished = {run_key(r) for r in self.grid_runs()}

        def finish(key, result, predictions):
            preset, size, seed, _ = self.by_key[key]
            append_run(args.output_dir, self.make_record(preset, size, seed, result), predictions)
            print(f"done preset={preset.name} train_size={size} seed={seed}", flush=True)
            print(progress_line(self.grid_runs(), self.grid, max(1, int(self.cluster_cpus // args.run_cpus))),
                  flush=True)
            tracker = self.tracker_for(preset, size, seed, result["learning_rate"])
            if tracker is not None:  # a worker's run, logged by the driver as it comes back
                for point in result["evals"]:
                    tracker.log(point)
                tracker.finish()

        self.runner.run({k: self.by_key[k] for k in self.grid if k not in finished},
                        lambda lr: dataclasses.replace(self.exp.settings, learning_rate=lr), finish)


def cli(argv=None) -> int:
    """Console entry point: a user error is one line on stderr and exit status 2."""
    try:
        return main(argv)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
