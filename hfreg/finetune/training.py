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
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..rdrop import IGNORE_INDEX, rdrop_loss
from ..schedule import RateScheduler
from . import causal_lm
from .data import by_length, eval_loader, split_batch_size, stratified_indices, subset_indices, train_loader
from .prepare import param_groups, prepare_model
from .presets import NO_METHODS
from .records import SELECT_BY
from .scores import evaluate, point_metrics, test_metrics
from .settings import Settings
from .tasks import CAUSAL_LM, CLASSIFICATION, TOKENS, task
from .tokens import reducer as word_outputs


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
    one per step), the last at the epoch's end. With ``points`` (a run stretched by ``min_steps``: its nominal
    epochs' ``evals_per_epoch`` each): that many points evenly over all steps (``total``, where ``max_steps`` ends
    the run inside an epoch), at most one per step, the last at the end."""
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
    return _Run(job, log, on_point, progress, keep).run()


class _Run:
    """One run, built in phases — its model copy, its data (`_data`), its optimizer and schedules (`_optimizer`),
    their placement on the device or the ranks (`_place`) — then trained (`run`): a backward per micro-batch
    (`_backward`), an optimizer step per batch (`_step`), the evaluation points (`_point`) and what is left after
    training (`_finish`)."""

    def __init__(self, job: Job, log, on_point, progress: bool | None, keep):
        from accelerate.utils import set_seed

        self.job, self.log, self.on_point, self.progress, self.keep = job, log, on_point, progress, keep
        self.settings, self.accelerator, self.preset = job.settings, job.accelerator, job.preset
        self.data_parallel = self.settings.parallel == "data"
        self.indices = subset_indices(job.data, job.roles, job.train_size, job.seed)
        # data mode: each rank draws its own dropout masks; run mode: the seed alone decides, on any rank
        set_seed(job.seed, device_specific=self.data_parallel)
        kind = self.settings.problem_type
        self.reduce = causal_lm.outputs if kind == CAUSAL_LM else word_outputs(list(self.settings.label_names)) \
            if kind == TOKENS else None
        self.model, self.methods, self.reinit = prepare_model(job.base_model, job.settings, job.preset, job.seed,
                                                              log)
        self._data()
        self._optimizer()
        self._place()
        self.final = max(self.at)
        self.leaders = None if self.settings.test_every_point or self.settings.mc_samples or self.data_parallel \
            else Leaders(task(kind).select_by)
        self.points, self.logits = [], {"selection": [], "test": []}
        self.step, self.eval_time, self.started = 0, 0.0, time.time()
        device = self.accelerator.device
        self.total, self.count = torch.zeros((), device=device), torch.zeros((), device=device)

    def _data(self) -> None:
        """The training batches, the evaluated views (a sample of the training subset, selection, test) in length
        order with their loaders and labels."""
        job, settings, data = self.job, self.settings, self.job.data
        self.micro = settings.train_batch_size // settings.gradient_accumulation_steps  # global examples per backward
        # the batch order: the run's seed, or a stream of its own (`placebo`: only the order differs from the baseline)
        self.train_dl = train_loader(data["train"], self.indices, self.micro, self.preset.order_seed(job.seed),
                                     causal_lm.Packed(job.collate.tokenizer) if settings.packing else job.collate,
                                     step_batch=settings.train_batch_size)
        fit = self.indices
        if settings.train_eval_samples and len(fit) > settings.train_eval_samples:  # evaluation dominates run time
            fit = fit[stratified_indices(data["train"].labels[fit], settings.train_eval_samples, job.seed)]
        self.views = {"train": ("train", fit), "selection": job.roles.selection, "test": job.roles.test}
        self.orders = {name: by_length(data[split], idx) for name, (split, idx) in self.views.items()}
        # data mode splits each batch across ranks: batches of one size there, none larger than its split needs
        tokens = 0 if self.data_parallel else settings.eval_tokens
        ranks = job.accelerator.num_processes if self.data_parallel else 1
        self.eval_dls = {name: eval_loader(data[self.views[name][0]], order,
                                           split_batch_size(settings.eval_batch_size, len(order), ranks),
                                           job.collate, tokens) for name, order in self.orders.items()}
        self.labels = {name: data[split].labels[np.asarray(self.orders[name], dtype=int)]
                       for name, (split, _) in self.views.items()}

    def _optimizer(self) -> None:
        """AdamW over the parameter groups, the learning-rate and dropout-rate schedules, the evaluation steps."""
        from transformers import get_scheduler

        settings, preset = self.settings, self.preset
        # the fused AdamW kernel (CPU and CUDA) is several times faster than the per-tensor loop on the embeddings
        fused = self.accelerator.device.type in ("cpu", "cuda")
        # the preset's weight decay; the grid's (`--weight_decay`) where the preset's is 0
        groups = param_groups(self.model, preset.weight_decay or settings.weight_decay, self.methods["llrd"],
                              settings.learning_rate)
        self.optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, fused=fused)
        self.steps_per_epoch = math.ceil(len(self.indices) / settings.train_batch_size)
        self.epochs = settings.epochs(self.steps_per_epoch, preset.steps_factor)
        self.steps = settings.total_steps(self.steps_per_epoch, preset.steps_factor)
        # the preset's rate schedules (constant where it has none); before prepare
        self.rates = RateScheduler(self.model, self.steps)
        # stretched by min_steps, steps_factor or max_steps: the nominal epochs' points, spread over the run (which
        # has room for them where a nominal epoch, of fewer steps than points, had not), at most one per step of the
        # run without steps_factor: an equal-compute arm is evaluated as often as its control
        stretched = settings.stretched(self.steps_per_epoch, preset.steps_factor)
        points = min(settings.num_train_epochs * settings.evals_per_epoch,
                     settings.total_steps(self.steps_per_epoch)) if stretched else None
        self.at = set(eval_steps(self.steps_per_epoch, self.epochs, settings.evals_per_epoch, points,
                                 total=self.steps))
        warmup = settings.warmup_steps or int(settings.warmup_ratio * self.steps)
        self.scheduler = get_scheduler(settings.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.steps)

    def _place(self) -> None:
        """Data mode: batches split across ranks (split_batches), model, optimizer and scheduler wrapped. Run mode:
        the model on the device, and a gradient scaler under fp16."""
        accelerator = self.accelerator
        self.scaler = None
        if self.data_parallel:
            self.model, self.optimizer, self.train_dl, self.scheduler, *loaders = accelerator.prepare(
                self.model, self.optimizer, self.train_dl, self.scheduler, *self.eval_dls.values())
            self.eval_dls = dict(zip(self.eval_dls, loaders))
        else:
            self.model.to(accelerator.device)
            if accelerator.mixed_precision == "fp16":
                self.scaler = torch.amp.GradScaler(accelerator.device.type)

    def run(self) -> tuple[dict, dict]:
        job = self.job
        self.bar = tqdm(total=self.steps, desc=f"{self.preset.name} n={job.train_size} s={job.seed}", unit="step",
                        leave=False, dynamic_ncols=True, disable=None if self.progress is None else not self.progress)
        self.shown = 0.0
        for _ in range(self.epochs):
            self.model.train()
            for i, batch in enumerate(self.train_dl):
                if not self._backward(i, batch):
                    continue
                self._step()
                if self.step not in self.at:
                    continue
                self._point()
                if self.step == self.steps:
                    break
            if self.step == self.steps:  # --max_steps ends the run inside an epoch
                break
        self.bar.close()
        return self._finish()

    def _step_divisor(self, i: int) -> float:
        """Micro-batch ``i``'s part of its optimizer step, as the divisor of its mean loss: the step's examples over
        its own, so that a per-example loss's step gradient is its mean over the step's examples (a per-token loss
        is weighed by examples too) — ``accum`` for every full step, less where an epoch's last step is short
        (counted globally: the same on every rank)."""
        accum, m = self.settings.gradient_accumulation_steps, len(self.train_dl)
        last = len(self.indices) - (m - 1) * self.micro  # only an epoch's last micro-batch may be short

        def rows(k):
            return self.micro if k < m - 1 else last

        start = i - i % accum
        return sum(rows(k) for k in range(start, min(start + accum, m))) / rows(i)

    def _backward(self, i: int, batch: dict) -> bool:
        """One micro-batch's backward; returns whether it completes the optimizer step's batch."""
        settings, model, accum = self.settings, self.model, self.settings.gradient_accumulation_steps
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        last = (i + 1) % accum == 0 or i + 1 == len(self.train_dl)
        sync = contextlib.nullcontext() if last or not self.data_parallel else self.accelerator.no_sync(model)
        with sync, self.accelerator.autocast():
            loss = task_loss(model, batch, self.methods["rdrop"], settings.label_smoothing_factor,
                             settings.problem_type)
        divisor = self._step_divisor(i)
        if self.data_parallel:
            self.accelerator.backward(loss / divisor)
        elif self.scaler is not None:
            self.scaler.scale(loss / divisor).backward()
        else:
            (loss / divisor).backward()
        # examples in the batch: its rows, or the sequences a packed row holds (each starts at position 0)
        rows = len(batch["labels"]) if "position_ids" not in batch else int((batch["position_ids"] == 0).sum())
        self.total += loss.detach() * rows
        self.count += rows
        return last

    def _step(self) -> None:
        """The optimizer step, after clipping the whole step's gradient (every micro-batch, both R-Drop passes)."""
        if self.settings.max_grad_norm > 0:
            if self.data_parallel:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            else:
                _clip(self.model, self.optimizer, self.scaler, self.settings.max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.rates.step()
        self.optimizer.zero_grad()
        self.step += 1
        self.bar.update()
        if not self.bar.disable and time.time() - self.shown > 0.5:  # the loss is read off the device twice a second
            self.shown = time.time()
            self.bar.set_postfix(loss=f"{(self.total / self.count).item():.4f}", refresh=False)

    def _point(self) -> None:
        """An evaluation point: the views in eval mode (the test split only at the last point where selection rules
        keep weights), MC dropout where asked, the running training loss; offered to the leaders and the keeper."""
        t0, settings, accelerator, model = time.time(), self.settings, self.accelerator, self.model
        if self.data_parallel:
            self.total, self.count = accelerator.reduce(self.total, "sum"), accelerator.reduce(self.count, "sum")
        running = (self.total / self.count).item()
        names = [n for n in self.views if n != "test" or self.leaders is None or self.step == self.final]
        out = {n: predict(accelerator, model, self.eval_dls[n], self.data_parallel, reduce=self.reduce)
               for n in names}
        point = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "running_loss": running,
                 "rates": self.rates.rates(),
                 **point_metrics(*((out[n], self.labels[n]) for n in names), problem_type=settings.problem_type)}
        if self.leaders is not None:
            self.leaders.offer(point, None if "test" in out else model)
        if self.keep is not None and self.leaders is None:  # with leaders, their copy of the rule's weights serves
            self.keep.offer(point, accelerator.unwrap_model(model))
        if settings.mc_samples:
            for n, dl in self.eval_dls.items():
                if n != "train":
                    mc = predict(accelerator, model, dl, self.data_parallel, settings.mc_samples)
                    point.update({f"mc_{n}_{k}": v for k, v in evaluate(mc, self.labels[n]).items()})
        self.points.append(point)
        if self.on_point is not None:
            self.on_point(point)
        for name in self.logits.keys() & out.keys():
            self.logits[name].append((self.step, out[name]))
        self.total.zero_(), self.count.zero_()
        model.train()
        self.eval_time += time.time() - t0
        self._log(point)

    def _log(self, point: dict) -> None:
        """The point's line; on a terminal it goes above the bar, which is drawn again below."""
        job = self.job
        score = task(self.settings.problem_type).fit.removeprefix("train_")  # accuracy, r2, exact_match, ...
        short = {"accuracy": "acc", "exact_match": "EM", "token_accuracy": "word acc"}.get(score, score)
        with contextlib.nullcontext() if self.bar.disable else self.bar.external_write_mode():
            self.log(f"  {self.preset.name} n={job.train_size} seed={job.seed} step {self.step}/{self.steps} (epoch "
                     f"{point['epoch']:g}): train {point['train_loss']:.3f} {short} {point['train_' + score]:.3f} | "
                     f"selection {point['selection_loss']:.3f} {short} {point['selection_' + score]:.3f}")

    def _finish(self) -> tuple[dict, dict]:
        """Keep the weights asked for, test at each selection rule's point, and make the record."""
        job, accelerator, model, leaders = self.job, self.accelerator, self.model, self.leaders
        kept = None
        if self.keep is not None and (not self.data_parallel or accelerator.is_main_process):
            if leaders is not None:  # before the leaders' weights load
                self.keep.adopt(leaders)
            kept = self.keep.save(accelerator.unwrap_model(model), self.points[-1]["step"])
        if leaders is not None:  # the test split at each rule's selected point, from the weights kept there
            t0 = time.time()
            _test_at_leaders(job, model, leaders, self.eval_dls["test"], self.labels["test"], self.points,
                             self.logits, self.reduce, self.on_point)
            self.eval_time += time.time() - t0
        seconds = time.time() - self.started
        if self.data_parallel:
            accelerator.free_memory()
        # every run says what a step cost it; records made before say so only where a method was on (absent: 1)
        extra = {"methods": self.methods} if self.methods != NO_METHODS else {}
        extra["forward_passes"] = self.preset.passes(self.settings)
        if self.reinit:
            extra["reinitialised"] = self.reinit
        if kept is not None:
            extra["kept_step"] = kept
        return _outcome(job, self.points, self.logits, self.labels, self.orders, extra, self.steps, seconds,
                        self.eval_time)


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
