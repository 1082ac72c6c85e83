"""Data preparation and one fine-tuning run of the overfitting comparison (used by scripts/finetune.py)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .patcher import patch_model

DATA_EXTENSIONS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
TEXT_CANDIDATES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"), ("text",),
                   ("sentence",), ("review",), ("content",))
LABEL_CANDIDATES = ("label", "labels", "class", "target", "sentiment", "category")


# ----------------------------------------------------------------------------------------------- data
def load_raw(dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None):
    """A DatasetDict with ``train`` and ``validation``; the built-in synthetic set when nothing is given."""
    from datasets import DatasetDict, load_dataset

    def load(*args, **kwargs):
        try:
            return load_dataset(*args, **kwargs)
        except Exception as e:  # datasets raises many types; the user needs the first line of the reason
            what = dataset_name or ", ".join(sorted(set(kwargs.get("data_files", {}).values())))
            raise ValueError(f"cannot load {what}: {str(e).strip().splitlines()[0]}") from None

    if dataset_name:
        raw = load(dataset_name, dataset_config_name)
    elif train_file:
        files = {"train": train_file}
        if validation_file:
            files["validation"] = validation_file
        kinds = set()
        for split, path in files.items():
            if not os.path.isfile(path):
                raise ValueError(f"--{split}_file {path!r} does not exist")
            ext = path.rsplit(".", 1)[-1].lower()
            if ext not in DATA_EXTENSIONS:
                raise ValueError(f"--{split}_file {path!r}: unsupported extension .{ext}; "
                                 f"use one of {sorted(DATA_EXTENSIONS)}")
            kinds.add(DATA_EXTENSIONS[ext])
        if len(kinds) > 1:
            raise ValueError(f"--train_file and --validation_file must have the same format, got {sorted(kinds)}")
        raw = load(kinds.pop(), data_files=files)
    else:
        from .synthetic import make_dataset

        raw = make_dataset()
    if "validation" not in raw:
        if "test" in raw:
            raw = DatasetDict(train=raw["train"], validation=raw["test"])
        else:
            raise ValueError("the data has no validation split: give --validation_file "
                             "(or a dataset with a 'validation' or 'test' split)")
    for split in ("train", "validation"):
        if len(raw[split]) == 0:
            raise ValueError(f"the {split} split is empty")
    return DatasetDict(train=raw["train"], validation=raw["validation"])


def detect_columns(columns, text_column=None, label_column=None) -> tuple[tuple[str, ...], str]:
    columns = list(columns)
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in columns), None)
        if label_column is None:
            raise ValueError(f"no label column found among {columns}; name it with --label_column")
    elif label_column not in columns:
        raise ValueError(f"--label_column {label_column!r} is not a column; columns: {columns}")
    if text_column:
        texts = tuple(t.strip() for t in text_column.split(","))
        if len(texts) > 2:
            raise ValueError(f"--text_column takes one column or two (a sentence pair), got {text_column!r}")
        for t in texts:
            if t not in columns:
                raise ValueError(f"--text_column {t!r} is not a column; columns: {columns}")
    else:
        texts = next((c for c in TEXT_CANDIDATES if all(x in columns for x in c)), None)
        if texts is None:
            raise ValueError(f"no text column found among {columns}; name it with --text_column")
    return texts, label_column


@dataclass
class Encoded:
    """A tokenized split: token ids per example and integer labels."""

    input_ids: list
    labels: np.ndarray
    token_type_ids: list | None = None

    def __len__(self):
        return len(self.labels)


def encode(raw, tokenizer, text_columns, label_column, max_length):
    """Tokenize both splits once; map labels (strings or integers) to 0..K-1. Returns (splits, label names)."""
    values = sorted(set(list(raw["train"][label_column])) | set(list(raw["validation"][label_column])), key=str)
    if any(v is None for v in values):
        raise ValueError(f"label column {label_column!r} has missing values")
    if len(values) < 2:
        raise ValueError(f"label column {label_column!r} has only one class ({values[0]!r}); need at least two")
    to_id = {v: i for i, v in enumerate(values)}
    out = {}
    for split in ("train", "validation"):
        ds = raw[split]
        texts = [list(ds[c]) for c in text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out[split] = Encoded(enc["input_ids"], np.array([to_id[v] for v in list(ds[label_column])]),
                             enc.get("token_type_ids"))
    return out, [str(v) for v in values]


def check_train_size(size: int, available: int) -> None:
    if size > available:
        raise ValueError(f"train size {size} is larger than the training split ({available} examples)")
    if size < 1:
        raise ValueError(f"train sizes must be positive, got {size}")


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subsample of ``size`` indices with the class proportions of ``labels``."""
    check_train_size(size, len(labels))
    rng = np.random.RandomState(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * size).astype(int)
    for i in np.argsort(-(counts / counts.sum() * size - quota))[: size - quota.sum()]:
        quota[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


class _Subset(torch.utils.data.Dataset):
    def __init__(self, enc: Encoded, indices):
        self.enc, self.indices = enc, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        item = {"input_ids": self.enc.input_ids[j], "labels": int(self.enc.labels[j])}
        if self.enc.token_type_ids is not None:
            item["token_type_ids"] = self.enc.token_type_ids[j]
        return item


def _collate(pad_id):
    def collate(items):
        longest = max(len(x["input_ids"]) for x in items)
        batch = {"input_ids": torch.full((len(items), longest), pad_id, dtype=torch.long),
                 "attention_mask": torch.zeros((len(items), longest), dtype=torch.long),
                 "labels": torch.tensor([x["labels"] for x in items])}
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = torch.zeros((len(items), longest), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(x["input_ids"])
            batch["attention_mask"][i, :n] = 1
            if "token_type_ids" in x:
                batch["token_type_ids"][i, :n] = torch.tensor(x["token_type_ids"])
        return batch

    return collate


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Random batches of similar length: shuffle, sort within windows of 50 batches, shuffle the batches.

    Padding shrinks while each epoch still sees a fresh random order (the HF Trainer's `group_by_length` idea)."""

    def __init__(self, lengths, batch_size, generator, window=50):
        self.lengths, self.batch_size, self.generator, self.window = list(lengths), batch_size, generator, window

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def eval_loader(enc: Encoded, indices, batch_size, pad_id):
    """Examples sorted by length, so each batch pads little."""
    order = sorted(indices, key=lambda j: len(enc.input_ids[j]))
    return torch.utils.data.DataLoader(_Subset(enc, order), batch_size=batch_size, collate_fn=_collate(pad_id))


# ----------------------------------------------------------------------------------------------- training
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

    @torch.no_grad()
    def __call__(self, accelerator, model, loader) -> dict:
        model.eval()
        losses, preds, refs = [], [], []
        for batch in loader:
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            loss = F.cross_entropy(logits, labels, reduction="none")
            loss, pred, labels = accelerator.gather_for_metrics((loss, logits.argmax(-1), labels))
            losses.append(loss.cpu())
            preds.append(pred.cpu())
            refs.append(labels.cpu())
        losses, preds, refs = torch.cat(losses), torch.cat(preds).numpy(), torch.cat(refs).numpy()
        return {"loss": losses.mean().item(),
                "accuracy": self.accuracy.compute(predictions=preds, references=refs)["accuracy"],
                "f1": self.f1.compute(predictions=preds, references=refs)["f1"],
                "examples": int(len(refs))}


def run(accelerator, base_model, preset, data, train_size, seed, args, evaluator, log=print) -> dict:
    """Fine-tune a fresh copy of ``base_model`` under ``preset``; evaluate both sets every epoch in eval mode."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    indices = stratified_indices(data["train"].labels, train_size, seed)
    set_seed(seed, device_specific=True)  # distinct dropout / drop-path masks on each rank
    model = copy.deepcopy(base_model)
    reset_head(model, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_model(model, preset.reg)
    for w in caught:
        log(f"  note: {w.message}")
    pad_id = args.pad_token_id
    gen = torch.Generator().manual_seed(seed)
    lengths = [len(data["train"].input_ids[j]) for j in indices]
    train_dl = torch.utils.data.DataLoader(
        _Subset(data["train"], indices), collate_fn=_collate(pad_id),
        batch_sampler=LengthGroupedBatches(lengths, args.per_device_train_batch_size, gen))
    fit_dl = eval_loader(data["train"], indices, args.per_device_eval_batch_size, pad_id)
    val_dl = eval_loader(data["validation"], range(len(data["validation"])), args.per_device_eval_batch_size, pad_id)
    # the fused AdamW kernel (CPU and CUDA) is several times faster than the per-tensor loop on the embedding matrix
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, preset.weight_decay), lr=args.learning_rate, fused=fused)
    steps = args.num_train_epochs * math.ceil(len(train_dl) / accelerator.num_processes)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(args.warmup_ratio * steps),
                              num_training_steps=steps)
    model, optimizer, train_dl, fit_dl, val_dl, scheduler = accelerator.prepare(
        model, optimizer, train_dl, fit_dl, val_dl, scheduler)
    epochs, started = [], time.time()
    for epoch in range(args.num_train_epochs):
        model.train()
        total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        for batch in train_dl:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.detach() * len(batch["labels"])
            count += len(batch["labels"])
        running = (accelerator.reduce(total, "sum") / accelerator.reduce(count, "sum")).item()
        fit, val = evaluator(accelerator, model, fit_dl), evaluator(accelerator, model, val_dl)
        record = {"epoch": epoch + 1, "running_loss": running,
                  "train_loss": fit["loss"], "train_accuracy": fit["accuracy"], "train_f1": fit["f1"],
                  "eval_loss": val["loss"], "eval_accuracy": val["accuracy"], "eval_f1": val["f1"],
                  "eval_examples": val["examples"]}
        epochs.append(record)
        log(f"  {preset.name} n={train_size} seed={seed} epoch {epoch + 1}/{args.num_train_epochs}: "
            f"running {running:.3f} | train {fit['loss']:.3f} acc {fit['accuracy']:.3f} | "
            f"val {val['loss']:.3f} acc {val['accuracy']:.3f}")
        if args.with_tracking:
            accelerator.log({f"{preset.name}/n{train_size}/s{seed}/{k}": v for k, v in record.items()},
                            step=epoch + 1)
    accelerator.free_memory()
    return {"preset": preset.name, "train_size": int(train_size), "seed": int(seed),
            "reg": preset.reg.to_dict(), "weight_decay": preset.weight_decay,
            "seconds": round(time.time() - started, 2), "epochs": epochs}


# ----------------------------------------------------------------------------------------------- results
RUNS_FILE = "runs.jsonl"


def read_runs(output_dir: str) -> list[dict]:
    """Finished runs; a line cut short by a crash is ignored (and trimmed by the next append)."""
    path = os.path.join(output_dir, RUNS_FILE)
    if not os.path.exists(path):
        return []
    runs = []
    with open(path) as f:
        for line in f:
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return runs


def append_run(output_dir: str, record: dict) -> None:
    """Append one JSON line in one write, then fsync: a kill loses at most the run in progress."""
    path = os.path.join(output_dir, RUNS_FILE)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:  # drop a partial last line left by a crash mid-write
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            if not tail.endswith(b"\n"):
                os.ftruncate(fd, size - (len(tail) - tail.rfind(b"\n") - 1))
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
