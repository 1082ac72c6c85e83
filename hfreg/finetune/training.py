"""One fine-tuning run of the overfitting comparison: a fresh copy of the model under one preset.

Two shapes (`Settings.parallel`):
  * ``"run"``: the run trains start to finish on the calling process, seeded by its own seed alone, so it gives
    the same record whichever rank, machine or process count runs it;
  * ``"data"``: the run is spread over all processes (DDP/FSDP through Accelerate). Each global batch of
    ``train_batch_size`` examples is split across the ranks, so the optimizer sees the same batch size and the
    same number of steps whatever the process count.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..patcher import patch_model
from ..rdrop import IGNORE_INDEX, rdrop_loss
from ..schedule import RateScheduler
from . import causal_lm
from .data import by_length, eval_loader, stratified_indices, subset_indices, train_loader
from .prepare import enable_checkpointing, grid_noise, lora_task, param_groups, reinit_top_layers, reset_head
from .presets import NO_METHODS
from .records import SELECT_BY
from .scores import evaluate, point_metrics, test_metrics
from .tasks import CAUSAL_LM, CLASSIFICATION, TOKENS, task
from .tokens import reducer as word_outputs

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


@torch.inference_mode()
def predict(accelerator, model, loader, gather: bool, mc_samples: int = 0, reduce=None) -> np.ndarray:
    """Logits (float32, on the CPU) of every example of ``loader``, in the loader's order, in eval mode; with
    ``mc_samples``, the log mean probabilities of that many MC-dropout passes (usable as logits) instead; with
    ``reduce`` (logits, labels -> a row per example: `causal_lm.outputs`, `tokens.outputs`), its rows, never the
    per-token logits."""
    from ..mc import mc_log_probs, mc_predict

    model.eval()
    out = []
    # one autocast for all batches: its cache casts each weight to the low precision once, not once per batch
    with accelerator.autocast(), warnings.catch_warnings():
        if mc_samples:  # a preset without dropout: MC is the eval pass, said in the README
            warnings.simplefilter("ignore")
        for batch in loader:
            labels = batch["labels"].to(accelerator.device) if reduce else None
            batch = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
            if mc_samples:
                logits = mc_log_probs(mc_predict(accelerator.unwrap_model(model), batch, mc_samples))
            elif reduce:  # per-token logits reduced per batch: a whole split's would not fit (a vocabulary's)
                logits = reduce(model(**batch).logits, labels)
            else:
                logits = model(**batch).logits.float()
            if gather:
                logits = accelerator.gather_for_metrics(logits)
            out.append(logits.cpu())
    return torch.cat(out).numpy()


def eval_steps(steps_per_epoch: int, epochs: int, evals_per_epoch: int, points: int | None = None,
               total: int | None = None) -> list[int]:
    """Optimizer steps after which to evaluate: ``evals_per_epoch`` evenly spaced points in every epoch (at most
    one per step), the last at the epoch's end. With ``points`` (a run stretched by ``min_steps``, whose evaluation
    work should stay that of its nominal epochs): that many points evenly over all steps (``total``, where
    ``max_steps`` ends the run inside an epoch), the last at the end."""
    if points is not None:
        total = total or steps_per_epoch * epochs
        if points >= total:  # more points than steps: every step, the last at the end
            return list(range(1, total + 1))
        return sorted({math.ceil(total * i / points) for i in range(1, points + 1)})
    k = min(evals_per_epoch, steps_per_epoch)
    within = sorted({math.ceil(steps_per_epoch * i / k) for i in range(1, k + 1)})
    return [e * steps_per_epoch + s for e in range(epochs) for s in within]


class Leaders:
    """Per selection rule of the task (`SELECT_BY`, `tasks.Task.select_by`), the point that leads so far, and a CPU
    copy of the weights there: the points whose test predictions a report can read, besides the final one. A point
    leads a rule when its score beats every earlier one (ties: the earliest), the rule by which the report selects;
    rules share a copy."""

    def __init__(self, rules: tuple = tuple(SELECT_BY)):
        self.rules = {rule: SELECT_BY[rule] for rule in rules}
        self.best: dict[str, tuple[float, int]] = {}  # rule -> (signed score, step)
        self.states: dict[int, dict] = {}  # step -> weights

    def offer(self, point: dict, model: nn.Module | None) -> None:
        """``model``: the weights at ``point``, copied where it leads; None where its test split is evaluated."""
        for rule, (key, sign) in self.rules.items():
            if rule not in self.best or sign * point[key] > self.best[rule][0]:
                self.best[rule] = (sign * point[key], point["step"])
                if model is not None and point["step"] not in self.states:
                    self.states[point["step"]] = {k: v.detach().to("cpu", copy=True)
                                                  for k, v in model.state_dict().items()}
        leading = {step for _, step in self.best.values()}
        self.states = {step: state for step, state in self.states.items() if step in leading}


def task_loss(model, batch: dict, rdrop_alpha: float = 0.0, label_smoothing: float = 0.0,
              problem_type: str = CLASSIFICATION) -> torch.Tensor:
    """The training loss of one batch: the model's own cross-entropy, R-Drop's objective where ``rdrop_alpha`` is
    on; with ``label_smoothing`` (the HF Trainer's ``label_smoothing_factor``) every cross-entropy term smoothed. A
    tagger's terms are over its labelled tokens, a causal LM's over the positions that predict a completion token."""
    shift = problem_type == CAUSAL_LM
    if rdrop_alpha:
        return rdrop_loss(model, batch, rdrop_alpha, label_smoothing, shift=shift)[0]
    if not label_smoothing:
        return model(**batch).loss
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"]
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    # one row per labelled position (a sequence's, or a token's), the unlabelled left out of the mean
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


def _clip(model: nn.Module, optimizer, scaler, max_norm: float) -> None:
    """Run mode's clipping, torch's own: the model and optimizer are not the accelerator's there, nor is the fp16
    scaler, so `accelerator.clip_grad_norm_` would clip gradients still scaled (and under a DeepSpeed launch it
    leaves clipping to DeepSpeed, which has no part in a run-mode run)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # the step then skips, as without clipping, where an fp16 gradient overflowed
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


@dataclass(frozen=True)
class Job:
    """One training run: a fresh copy of ``base_model`` fine-tuned under ``preset`` on ``train_size`` examples of the
    training pool drawn at ``seed``, under ``settings``; the encoded ``data``, the ``roles`` of its splits and the
    ``collate`` function it reads, and the ``accelerator`` it runs on."""

    accelerator: object
    base_model: nn.Module
    data: dict
    roles: object
    collate: object
    preset: object  # a `presets.Preset`
    train_size: int
    seed: int
    settings: Settings


def train(job: Job, log=print, on_point=None, progress: bool | None = None, keep=None) -> tuple[dict, dict]:
    """Fine-tune a fresh copy of ``job.base_model`` under ``job.preset`` on a subset of the training pool.

    At every evaluation point the training subset and the selection split are evaluated in eval mode; the test
    split at the final point and at each point a selection rule picks (`Leaders`: evaluated after training from a
    copy of the weights), or at every point with ``settings.test_every_point``, under MC dropout (whose draws
    share the training's random stream) and in data mode. Returns (the run's record fields, its predictions:
    selection logits at every point, test logits at the points ``test_steps``, with their labels and example
    indices). The test split is only ever evaluated: nothing in here reads its results.

    ``on_point(values)``, where given, is called as each evaluation point is measured (a tracker logs it live),
    and after training with the test metrics of each point a selection rule picked (``{"step", "test_*"}``).
    ``progress``: a tqdm bar of the steps with the running loss and an ETA (None: where stderr is a terminal).
    ``keep`` (a `keep.Keeper`, ``--save_strategy``): offered the weights at every point, it saves those of the
    point it keeps after training, and the record says which (``kept_step``)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    accelerator, data, roles, collate = job.accelerator, job.data, job.roles, job.collate
    preset, train_size, seed, settings = job.preset, job.train_size, job.seed, job.settings
    data_parallel = settings.parallel == "data"
    indices = subset_indices(data, roles, train_size, seed)
    # data mode: each rank draws its own dropout masks; run mode: the seed alone decides, on any rank
    set_seed(seed, device_specific=data_parallel)
    lm = settings.problem_type == CAUSAL_LM
    reduce = causal_lm.outputs if lm else word_outputs(list(settings.label_names)) \
        if settings.problem_type == TOKENS else None
    model, methods, reinit = _prepare_model(job, log)
    micro = settings.train_batch_size // settings.gradient_accumulation_steps  # global examples per backward
    # the batch order: the run's seed, or a stream of its own (`placebo`: only the order differs from the baseline)
    train_dl = train_loader(data["train"], indices, micro, preset.order_seed(seed),
                            causal_lm.Packed(collate.tokenizer) if settings.packing else collate)
    fit = indices
    if settings.train_eval_samples and len(indices) > settings.train_eval_samples:  # evaluation dominates run time
        fit = indices[stratified_indices(data["train"].labels[indices], settings.train_eval_samples, seed)]
    views = {"train": ("train", fit), "selection": roles.selection, "test": roles.test}
    orders = {name: by_length(data[split], idx) for name, (split, idx) in views.items()}
    # data mode splits each batch across ranks: batches of one size there
    tokens = 0 if data_parallel else settings.eval_tokens
    eval_dls = {name: eval_loader(data[views[name][0]], orders[name], settings.eval_batch_size, collate, tokens)
                for name in views}
    # the fused AdamW kernel (CPU and CUDA) is several times faster than the per-tensor loop on the embedding matrix
    fused = accelerator.device.type in ("cpu", "cuda")
    # the preset's weight decay; the grid's (`--weight_decay`) where the preset's is 0
    groups = param_groups(model, preset.weight_decay or settings.weight_decay, methods["llrd"], settings.learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, fused=fused)
    alpha = methods["rdrop"]
    steps_per_epoch = math.ceil(len(indices) / settings.train_batch_size)
    epochs = settings.epochs(steps_per_epoch, preset.steps_factor)
    steps = settings.total_steps(steps_per_epoch, preset.steps_factor)
    rates = RateScheduler(model, steps)  # the preset's rate schedules (constant where it has none); before prepare
    # stretched by min_steps, steps_factor or max_steps: as many evaluation points as the nominal epochs would have
    stretched = settings.stretched(steps_per_epoch, preset.steps_factor)
    at = set(eval_steps(steps_per_epoch, epochs, settings.evals_per_epoch,
                        settings.num_train_epochs * min(settings.evals_per_epoch, steps_per_epoch) if stretched
                        else None, total=steps))
    warmup = settings.warmup_steps or int(settings.warmup_ratio * steps)
    scheduler = get_scheduler(settings.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=steps)
    scaler = None
    if data_parallel:  # batches are split across ranks (split_batches), optimizer and scheduler wrapped
        model, optimizer, train_dl, scheduler, *loaders = accelerator.prepare(
            model, optimizer, train_dl, scheduler, *eval_dls.values())
        eval_dls = dict(zip(eval_dls, loaders))
        backward, no_sync = accelerator.backward, accelerator.no_sync
        clip = lambda: accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)  # noqa: E731
    else:
        model.to(accelerator.device)
        scaler = torch.amp.GradScaler(accelerator.device.type) if accelerator.mixed_precision == "fp16" else None
        backward = (lambda loss: scaler.scale(loss).backward()) if scaler else (lambda loss: loss.backward())
        no_sync = lambda m: contextlib.nullcontext()  # noqa: E731
        clip = lambda: _clip(model, optimizer, scaler, settings.max_grad_norm)  # noqa: E731
    labels = {name: data[split].labels[np.asarray(orders[name], dtype=int)] for name, (split, _) in views.items()}
    final = max(at)
    leaders = None if settings.test_every_point or settings.mc_samples or data_parallel \
        else Leaders(task(settings.problem_type).select_by)
    accum = settings.gradient_accumulation_steps
    points, logits = [], {"selection": [], "test": []}
    step, eval_time, started = 0, 0.0, time.time()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    smoothing = settings.label_smoothing_factor
    bar = tqdm(total=steps, desc=f"{preset.name} n={train_size} s={seed}", unit="step", leave=False,
               dynamic_ncols=True, disable=None if progress is None else not progress)
    shown = 0.0
    for epoch in range(epochs):
        model.train()
        for i, batch in enumerate(train_dl):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = (i + 1) % accum == 0 or i + 1 == len(train_dl)
            with (contextlib.nullcontext() if last else no_sync(model)), accelerator.autocast():
                loss = task_loss(model, batch, alpha, smoothing, settings.problem_type)
            backward(loss / accum)
            # examples in the batch: its rows, or the sequences a packed row holds (each starts at position 0)
            rows = len(batch["labels"]) if "position_ids" not in batch else int((batch["position_ids"] == 0).sum())
            total += loss.detach() * rows
            count += rows
            if not last:
                continue
            if settings.max_grad_norm > 0:  # on the whole step's gradient: every micro-batch, both R-Drop passes
                clip()
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            rates.step()
            optimizer.zero_grad()
            step += 1
            bar.update()
            if not bar.disable and time.time() - shown > 0.5:  # the loss is read off the device twice a second
                shown = time.time()
                bar.set_postfix(loss=f"{(total / count).item():.4f}", refresh=False)
            if step not in at:
                continue
            t0 = time.time()
            if data_parallel:
                total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
            running = (total / count).item()
            names = [n for n in views if n != "test" or leaders is None or step == final]
            out = {n: predict(accelerator, model, eval_dls[n], data_parallel, reduce=reduce) for n in names}
            point = {"step": step, "epoch": round(step / steps_per_epoch, 4), "running_loss": running,
                     "rates": rates.rates(),
                     **point_metrics(*((out[n], labels[n]) for n in names), problem_type=settings.problem_type)}
            if leaders is not None:
                leaders.offer(point, None if "test" in out else model)
            if keep is not None and leaders is None:  # with leaders, their copy of the rule's weights serves
                keep.offer(point, accelerator.unwrap_model(model))
            if settings.mc_samples:
                for n, dl in eval_dls.items():
                    if n != "train":
                        mc = predict(accelerator, model, dl, data_parallel, settings.mc_samples)
                        point.update({f"mc_{n}_{k}": v for k, v in evaluate(mc, labels[n]).items()})
            points.append(point)
            if on_point is not None:
                on_point(point)
            for name in logits.keys() & out.keys():
                logits[name].append((step, out[name]))
            total.zero_(), count.zero_()
            model.train()
            eval_time += time.time() - t0
            # a bar on the terminal: the line goes above it, and the bar is drawn again below
            score = task(settings.problem_type).fit.removeprefix("train_")  # accuracy, r2, exact_match, ...
            score = (score, {"accuracy": "acc", "exact_match": "EM", "token_accuracy": "word acc"}.get(score, score))
            with contextlib.nullcontext() if bar.disable else bar.external_write_mode():
                log(f"  {preset.name} n={train_size} seed={seed} step {step}/{steps} (epoch {point['epoch']:g}): "
                    f"train {point['train_loss']:.3f} {score[1]} {point['train_' + score[0]]:.3f} | selection "
                    f"{point['selection_loss']:.3f} {score[1]} {point['selection_' + score[0]]:.3f}")
            if step == steps:
                break
        if step == steps:  # --max_steps ends the run inside an epoch
            break
    bar.close()
    kept = None
    if keep is not None and (not data_parallel or accelerator.is_main_process):  # before the leaders' weights load
        if leaders is not None:
            keep.adopt(leaders)
        kept = keep.save(accelerator.unwrap_model(model), points[-1]["step"])
    if leaders is not None:  # the test split at each rule's selected point, from the weights kept there
        t0 = time.time()
        _test_at_leaders(job, model, leaders, eval_dls["test"], labels["test"], points, logits, reduce, on_point)
        eval_time += time.time() - t0
    seconds = time.time() - started
    if data_parallel:
        accelerator.free_memory()
    # every run says what a step cost it; records made before say so only where a method was on (absent: 1)
    extra = {"methods": methods} if methods != NO_METHODS else {}
    extra["forward_passes"] = preset.passes(settings)
    if reinit:
        extra["reinitialised"] = reinit
    if kept is not None:
        extra["kept_step"] = kept
    return _outcome(job, points, logits, labels, orders, extra, steps, seconds, eval_time)


def _prepare_model(job: Job, log) -> tuple[nn.Module, dict, list]:
    """A fresh copy of the job's model, ready to train: its head re-drawn (a causal LM's stays), checkpointing,
    adapters and re-initialised layers as the settings ask, then patched with the preset. Returns the model, the
    training-loop methods in force and the layers re-initialised."""
    settings, preset = job.settings, job.preset
    model = copy.deepcopy(job.base_model)
    if settings.problem_type != CAUSAL_LM:  # a language model's output layer is pretrained (often tied): it stays
        reset_head(model, job.seed)
    if settings.gradient_checkpointing:  # before the adapters and the patch, on the transformers model itself
        enable_checkpointing(model)
    if settings.packing:  # transformers keeps packed sequences apart only where no cache is kept (training)
        model.config.use_cache = False
    if settings.lora:  # adapters first, so that the patch finds them (`adapter` knob)
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**settings.lora, lora_dropout=0.0,
                                                 **lora_task(model, settings.problem_type)))
    methods = preset.methods(settings)
    reinit = reinit_top_layers(model, methods["reinit_layers"]) if methods["reinit_layers"] else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_model(model, grid_noise(preset.reg, settings.neftune_noise_alpha))
    for w in caught:
        log(f"  note: {w.message}")
    return model, methods, reinit


def _test_at_leaders(job: Job, model, leaders, test_dl, test_labels, points, logits, reduce, on_point) -> None:
    """The test split at each point a selection rule picked, evaluated after training from the weights kept there:
    its metrics go into that point (and to ``on_point``), its outputs into ``logits["test"]``, in step order."""
    by_step = {p["step"]: p for p in points}
    for step, state in sorted(leaders.states.items()):
        model.load_state_dict(state)  # the run's model copy ends here: nothing trains after this
        out = predict(job.accelerator, model, test_dl, False, reduce=reduce)
        measured = test_metrics(out, test_labels, by_step[step].get("temperature"), job.settings.problem_type)
        by_step[step].update(measured)
        if on_point is not None:
            on_point({"step": step, **measured})
        logits["test"].append((step, out))
    logits["test"].sort(key=lambda x: x[0])


def machine(device) -> str:
    """What trained a run, for the record: the CPU's model and core count, or the GPU's name."""
    import os
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({os.cpu_count()} CPU cores)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} thread(s)"


def _outcome(job: Job, points, logits, labels, orders, extra, steps, seconds, eval_time) -> tuple[dict, dict]:
    """The run's record fields and its predictions (each view's stored outputs with their labels and order)."""
    # early stopping: the point with the lowest selection loss (the first of equals)
    selected = min(points, key=lambda p: p["selection_loss"])["step"]
    # the selection split's majority-class rate, what a classifier's accuracy is near chance against
    majority = {} if job.settings.problem_type != CLASSIFICATION else {
        "selection_majority": float(np.bincount(labels["selection"]).max() / len(labels["selection"]))}
    record = {**extra, "evals": points, "selected_step": selected, "steps": steps,
              "learning_rate": job.settings.learning_rate,
              **majority, "seconds": round(seconds, 2), "eval_seconds": round(eval_time, 2),
              "machine": machine(job.accelerator.device)}
    predictions = {"steps": np.array([p["step"] for p in points]),
                   "test_steps": np.array([step for step, _ in logits["test"]])}
    for name in logits:
        predictions[f"{name}_logits"] = np.stack([x for _, x in logits[name]])
        predictions[f"{name}_labels"] = labels[name]
        predictions[f"{name}_index"] = np.asarray(orders[name], dtype=int)
    return record, predictions
