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

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..patcher import patch_model
from .data import eval_loader, stratified_indices, train_loader

PARALLEL_MODES = ("run", "data")


@dataclass(frozen=True)
class Settings:
    """The training hyperparameters of a run: everything the loop reads, nothing about where output goes."""

    learning_rate: float
    num_train_epochs: int
    train_batch_size: int  # global: examples per optimizer step, whatever the process count
    eval_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.1
    parallel: str = "run"


def param_groups(model: nn.Module, weight_decay: float):
    """AdamW groups: decay on weight matrices only, never on biases or normalization parameters."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
    no_decay = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def reset_head(model: nn.Module, seed: int):
    """Re-draw the classification head (everything outside the base model) from ``seed``."""
    base = getattr(model, "base_model", model)
    gen = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    for child in model.children():
        if child is base:
            continue
        for m in child.modules():
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    if m.bias is not None:
                        m.bias.zero_()


class Evaluator:
    def __init__(self):
        self.accuracy, self.f1 = metrics.load("accuracy"), metrics.load("f1")

    @torch.inference_mode()
    def __call__(self, accelerator, model, loader, gather: bool, autocast) -> dict:
        model.eval()
        losses, preds, refs = [], [], []
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast():
                logits = model(**batch).logits.float()
            loss = F.cross_entropy(logits, labels, reduction="none")
            pred = logits.argmax(-1)
            if gather:
                loss, pred, labels = accelerator.gather_for_metrics((loss, pred, labels))
            losses.append(loss.cpu())
            preds.append(pred.cpu())
            refs.append(labels.cpu())
        losses, preds, refs = torch.cat(losses), torch.cat(preds).numpy(), torch.cat(refs).numpy()
        return {"loss": losses.mean().item(),
                "accuracy": self.accuracy.compute(predictions=preds, references=refs)["accuracy"],
                "f1": self.f1.compute(predictions=preds, references=refs)["f1"],
                "examples": int(len(refs))}


def train(accelerator, base_model, preset, data, train_size: int, seed: int, settings: Settings, evaluator,
          collate, log=print, tick=lambda: None) -> dict:
    """Fine-tune a fresh copy of ``base_model`` under ``preset``; evaluate both sets every epoch in eval mode.

    ``tick`` is called every optimizer step (the sweep keeps its claim on the run alive with it)."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    data_parallel = settings.parallel == "data"
    indices = stratified_indices(data["train"].labels, train_size, seed)
    # data mode: each rank draws its own dropout masks; run mode: the seed alone decides, on any rank
    set_seed(seed, device_specific=data_parallel)
    model = copy.deepcopy(base_model)
    reset_head(model, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_model(model, preset.reg)
    for w in caught:
        log(f"  note: {w.message}")
    micro = settings.train_batch_size // settings.gradient_accumulation_steps  # global examples per backward
    train_dl = train_loader(data["train"], indices, micro, seed, collate)
    fit_dl = eval_loader(data["train"], indices, settings.eval_batch_size, collate)
    val_dl = eval_loader(data["validation"], range(len(data["validation"])), settings.eval_batch_size, collate)
    # the fused AdamW kernel (CPU and CUDA) is several times faster than the per-tensor loop on the embedding matrix
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, preset.weight_decay), lr=settings.learning_rate, fused=fused)
    steps = settings.num_train_epochs * math.ceil(len(indices) / settings.train_batch_size)
    scheduler = get_scheduler(settings.lr_scheduler_type, optimizer,
                              num_warmup_steps=int(settings.warmup_ratio * steps), num_training_steps=steps)
    scaler = None
    if data_parallel:  # batches are split across ranks (split_batches), optimizer and scheduler wrapped
        model, optimizer, train_dl, fit_dl, val_dl, scheduler = accelerator.prepare(
            model, optimizer, train_dl, fit_dl, val_dl, scheduler)
        backward, no_sync = accelerator.backward, accelerator.no_sync
    else:
        model.to(accelerator.device)
        scaler = torch.amp.GradScaler(accelerator.device.type) if accelerator.mixed_precision == "fp16" else None
        backward = (lambda loss: scaler.scale(loss).backward()) if scaler else (lambda loss: loss.backward())
        no_sync = lambda m: contextlib.nullcontext()  # noqa: E731
    accum = settings.gradient_accumulation_steps
    epochs, started = [], time.time()
    for epoch in range(settings.num_train_epochs):
        model.train()
        total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(train_dl):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = (i + 1) % accum == 0 or i + 1 == len(train_dl)
            with (contextlib.nullcontext() if last else no_sync(model)), accelerator.autocast():
                loss = model(**batch).loss
            backward(loss / accum)
            if last:
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                optimizer.zero_grad()
                tick()
            total += loss.detach() * len(batch["labels"])
            count += len(batch["labels"])
        if data_parallel:
            total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
        running = (total / count).item()
        fit = evaluator(accelerator, model, fit_dl, data_parallel, accelerator.autocast)
        val = evaluator(accelerator, model, val_dl, data_parallel, accelerator.autocast)
        record = {"epoch": epoch + 1, "running_loss": running,
                  "train_loss": fit["loss"], "train_accuracy": fit["accuracy"], "train_f1": fit["f1"],
                  "eval_loss": val["loss"], "eval_accuracy": val["accuracy"], "eval_f1": val["f1"],
                  "eval_examples": val["examples"]}
        epochs.append(record)
        log(f"  {preset.name} n={train_size} seed={seed} epoch {epoch + 1}/{settings.num_train_epochs}: "
            f"running {running:.3f} | train {fit['loss']:.3f} acc {fit['accuracy']:.3f} | "
            f"val {val['loss']:.3f} acc {val['accuracy']:.3f}")
    if data_parallel:
        accelerator.free_memory()
    return {"seconds": round(time.time() - started, 2), "epochs": epochs}
