"""One launch's experiment, built before anything is written: the accelerator, the presets, the data and model
loaded and checked, the training settings, and the record every run of the experiment carries (`build_experiment`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

from ..hub import hub_kwargs
from .records import (
    DEFAULT_MODEL,
    code_identity,
    default_model_path,
    digest,
)

EVAL_TOKENS = 4096
# settings of a run recorded with the experiment only where they are on (their defaults are all falsy: 0, False)
NEWER_SETTINGS = ("max_steps", "warmup_steps", "weight_decay", "label_smoothing_factor", "neftune_noise_alpha",
                  "gradient_checkpointing", "packing")
# settings that say how a grid plans and stops its runs, not how a run trains (`hfreg export` leaves them out)
PLAN_SETTINGS = ("seeds", "margins", "select_by")


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


def build_experiment(args, ray) -> Experiment:
    """Load presets, data, tokenizer and model, check every input and make the accelerator; nothing is written."""
    import transformers
    from transformers.utils import logging as hf_logging

    from . import data as data_mod
    from . import kinds, report, tasks

    presets, arms = _grid_presets(args)
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
    # the loads' keywords: remote code where asked; offline, the local cache at once (not after the hub's retries)
    remote = {**({"trust_remote_code": True} if args.trust_remote_code else {}), **hub_kwargs()}
    tokenizer_flag = "tokenizer_name" if args.tokenizer_name else "model_name_or_path"
    with loading(tokenizer_flag, args.tokenizer_name or model_path):  # an image model's processor, in its place
        tokenizer = getattr(transformers, kind.processor).from_pretrained(args.tokenizer_name or model_path,
                                                                          **remote)
    data, label_names, problem_type = kind.encode(raw, tokenizer, text_columns, label_column, args)
    args.select_by = report.check_select_by(args.select_by, tasks.task(problem_type))  # None: the task's own
    roles = data_mod.assign_roles(data, args.roles, args.split_seed, args.selection_size)
    settings = _settings(args, precision, problem_type, label_names, lm)
    _check_task_methods(args, problem_type, presets, settings)
    for size in args.train_sizes:  # before anything is written
        data_mod.check_train_size(size, len(roles.pool))
        per_epoch = math.ceil(size / args.train_batch_size)
        for p in presets:
            steps = settings.total_steps(per_epoch, p.steps_factor)
            for knob, s in (p.reg.schedule or {}).items():
                s.check_within(steps, f"preset {p.name} at train size {size}: the `{knob}`")
    base_model = _load_model(args, kind, model_path, problem_type, label_names, settings, remote)
    if kind.processor == "AutoTokenizer":
        if tokenizer.pad_token is None:  # decoder LLMs: pad with EOS, and tell the head where sequences end
            tokenizer.pad_token = tokenizer.eos_token
        base_model.config.pad_token_id = tokenizer.pad_token_id
    collate = kind.collator(tokenizer)

    model_name = args.model_name_or_path or DEFAULT_MODEL
    experiment = _record(args, base_model, model_name, raw, data, roles, kind, text_columns, label_column,
                         label_names, problem_type, precision, settings.lora)
    contents = {p.name: p.contents() for p in presets}
    code = code_identity()
    return Experiment(accelerator, presets, contents, settings, base_model, data, roles, collate, label_names,
                      model_name, experiment, code, precision, threads,
                      arms={name: matched for name, (_, matched) in arms.items()})


def _grid_presets(args) -> tuple[list, dict]:
    """The grid's presets: those named, each rate sweep's points (with the baseline they start from), and each
    costlier preset's control at its compute (an arm of its own); checked."""
    from . import report
    from .presets import BASELINE, check_controls, equal_compute_arms, load_preset, sweep_presets

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
    return presets, arms


def _settings(args, precision: str, problem_type: str, label_names: list, lm: bool):
    """The training settings every run of the grid shares (`training.Settings`)."""
    from . import tasks
    from .settings import Settings

    eval_batch = args.per_device_eval_batch_size
    if lm and args.parallel == "data":  # batches of one size there, not a token budget: as many as 4096 tokens hold
        eval_batch = min(eval_batch, max(1, EVAL_TOKENS // args.max_seq_length))
    return Settings(learning_rate=args.learning_rates[0], num_train_epochs=args.num_train_epochs,
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


def _check_task_methods(args, problem_type: str, presets: list, settings) -> None:
    """One line for a method the task cannot take: packing outside a causal LM or under data parallelism, methods
    on class probabilities for a regression, MC dropout's metrics outside sequence classification."""
    from . import tasks

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


def _load_model(args, kind, model_path: str, problem_type: str, label_names: list, settings, remote: dict):
    """The pretrained model with the task's head, checked against the LoRA targets and checkpointing asked for."""
    import warnings

    import torch
    import transformers
    from transformers import AutoConfig

    from . import tasks

    lm = problem_type == tasks.CAUSAL_LM
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
    return base_model


def _record(args, base_model, model_name: str, raw, data, roles, kind, text_columns, label_column, label_names,
            problem_type: str, precision: str, lora) -> dict:
    """The experiment record every run carries: everything that defines a run besides its preset, size and seed; a
    resume must match it exactly. Keys added since the first records are written only where on, so that older
    records keep matching."""
    import torch
    import transformers

    from .. import __version__
    from . import data as data_mod
    from . import tasks
    from .presets import METHOD_FLAGS, NO_METHODS

    config = {k: v for k, v in base_model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version")}
    return {"name": args.experiment, "settings": {
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
        # and the selection rule it stopped by, where not the task's own (absent: older records match)
        **({"select_by": args.select_by} if args.auto_seeds
           and args.select_by != tasks.task(problem_type).default_select_by else {}),
        **({"lora": lora} if lora else {}),
        "versions": {"hfreg": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__.split("+")[0]}}}
