"""Data of the overfitting comparison: loading, column detection, tokenizing once, subsets, loaders."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..hub import offline_datasets

DATA_EXTENSIONS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
TEXT_CANDIDATES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"), ("text",),
                   ("sentence",), ("review",), ("content",), ("question1", "question2"))
LABEL_CANDIDATES = ("label", "labels", "class", "target", "sentiment", "category", "score")


# ----------------------------------------------------------------------------------------------- data
def load_raw(dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None, test_file=None,
             train_dir=None, validation_dir=None, test_dir=None):
    """A DatasetDict with ``train``, ``validation`` and, where the data has one, ``test``; the built-in synthetic
    set when nothing is given. A hub data set without validation split uses its test split for validation (MNLI: its
    matched validation and test splits)."""
    from datasets import DatasetDict, load_dataset

    def load(*args, unreachable_host=None, **kwargs):
        try:
            return load_dataset(*args, **kwargs)
        except Exception as e:  # datasets raises many types; the user needs the first line of the reason
            what = dataset_name or ", ".join(sorted(set(kwargs.get("data_files", {}).values())))
            # with the hub's host unreachable, datasets' own "Couldn't reach ...
            # (OfflineModeIsEnabled)" would blame a mode the user never set
            reason = f"not in the local cache, with the hub ({unreachable_host}) unreachable from here" \
                if unreachable_host else str(e).strip().splitlines()[0]
            raise ValueError(f"cannot load {what}: {reason}") from None

    if dataset_name:
        with offline_datasets() as host:
            raw = load(dataset_name, dataset_config_name, unreachable_host=host)
    elif train_dir:  # images, one folder per class (datasets' imagefolder, as run_image_classification.py reads it)
        dirs = {k: v for k, v in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)) if v}
        for split, path in dirs.items():
            if not os.path.isdir(path):
                raise ValueError(f"--{split}_dir {path!r} is not a directory")
        raw = load("imagefolder", data_files={k: os.path.join(v, "**") for k, v in dirs.items()})
    elif train_file:
        files = {"train": train_file}
        files.update({k: v for k, v in (("validation", validation_file), ("test", test_file)) if v})
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
            raise ValueError(f"--train_file, --validation_file and --test_file must have the same format, "
                             f"got {sorted(kinds)}")
        raw = load(kinds.pop(), data_files=files)
    else:
        from .synthetic import make_dataset

        raw = make_dataset()
    if "validation" not in raw and "validation_matched" in raw:  # GLUE's MNLI: the matched splits
        raw = DatasetDict({"train": raw["train"], "validation": raw["validation_matched"],
                           **({"test": raw["test_matched"]} if "test_matched" in raw else {})})
    if "validation" not in raw:
        if "test" not in raw:
            raise ValueError("the data has no validation split: give --validation_file "
                             "(or a dataset with a 'validation' or 'test' split)")
        raw = DatasetDict(train=raw["train"], validation=raw["test"])
    splits = [s for s in ("train", "validation", "test") if s in raw]
    for split in splits:
        if len(raw[split]) == 0:
            raise ValueError(f"the {split} split is empty")
    return DatasetDict({s: raw[s] for s in splits})


def detect_label(columns, label_column=None) -> str:
    """``label_column`` (checked), else the first of `LABEL_CANDIDATES` among ``columns``."""
    columns = list(columns)
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in columns), None)
        if label_column is None:
            raise ValueError(f"no label column found among {columns}; name it with --label_column")
    elif label_column not in columns:
        raise ValueError(f"--label_column {label_column!r} is not a column; columns: {columns}")
    return label_column


def detect_columns(columns, text_column=None, label_column=None) -> tuple[tuple[str, ...], str]:
    columns = list(columns)
    label_column = detect_label(columns, label_column)
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


def content_hash(raw, text_columns, label_column) -> str:
    """sha256 of the columns a run reads, split by split: the same data, wherever it was loaded from."""
    h = hashlib.sha256()
    for split in sorted(raw):
        h.update(split.encode() + b"\0")
        for column in (*text_columns, *([label_column] if label_column else [])):
            values = raw[split].data.column(column).to_pylist()
            if getattr(raw[split].features.get(column), "decode", None) is not None:  # images: their encoded bytes
                for value in values:
                    h.update(value["bytes"] or value["path"].encode())
                h.update(b"\0")
            else:
                h.update(json.dumps(values).encode() + b"\0")
    return h.hexdigest()


@dataclass
class Encoded:
    """A tokenized split: token ids per example and its labels (class ids, or floats for a regression)."""

    input_ids: list
    labels: np.ndarray  # a causal LM's: all 0, the one stratum its subsets are drawn from
    token_type_ids: list | None = None
    targets: list | None = None  # a causal LM's per-token labels (`causal_lm`), which it trains on instead
    images: bool = False  # ``input_ids`` holds images (`images`), each of the same length as far as batching goes

    def __len__(self):
        return len(self.labels)

    def length(self, j) -> int:
        """Example ``j``'s token count (what length-grouped and evaluation batches sort by); 1 for an image."""
        return 1 if self.images else len(self.input_ids[j])


def _unlabelled(values) -> bool:
    """A split whose labels are all missing or negative (GLUE's hidden test labels are -1)."""
    return all(v is None or (isinstance(v, (int, float)) and v < 0) for v in values)


def encode(raw, tokenizer, text_columns, label_column, max_length, problem_type: str | None = None):
    """Tokenize every split once and map its labels (`label_ids`). A test split without labels is dropped. Returns
    (splits, label names, problem type)."""
    ids, names, problem_type = label_ids(raw, label_column, problem_type)
    out = {}
    for split in ids:
        texts = [list(raw[split][c]) for c in text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out[split] = Encoded(enc["input_ids"], ids[split], enc.get("token_type_ids"))
    return out, names, problem_type


def label_ids(raw, label_column, problem_type: str | None = None) -> tuple[dict, list, str]:
    """Every labelled split's labels: classification (strings or integers) as 0..K-1, the classes of the training
    split; regression (`tasks.infer_problem_type`: float labels, or ``problem_type``) as float32. A test split
    without labels is left out. Returns ({split: labels}, label names, problem type); a regressor's one "label" is
    the label column's name."""
    from .tasks import REGRESSION, infer_problem_type

    labels = {s: list(raw[s][label_column]) for s in raw}
    if "test" in labels and _unlabelled(labels["test"]):
        del labels["test"]
    if any(v is None for split in labels for v in labels[split]):
        split = next(s for s in labels if any(v is None for v in labels[s]))
        raise ValueError(f"label column {label_column!r} has missing values in the {split} split")
    problem_type = infer_problem_type(labels["train"], problem_type)
    if problem_type == REGRESSION:
        for split, values in labels.items():
            bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if bad is not None:
                raise ValueError(f"--problem_type regression needs numeric labels: the {split} split's "
                                 f"{label_column!r} has {bad!r}")
        if len(set(labels["train"])) < 2:
            raise ValueError(f"label column {label_column!r} has one value ({labels['train'][0]!r}); a regression "
                             f"needs at least two")
        return ({split: np.asarray(values, dtype=np.float32) for split, values in labels.items()}, [label_column],
                problem_type)
    feature = raw["train"].features.get(label_column)
    named = getattr(feature, "names", None)  # a ClassLabel (an imagefolder's folders): its names, not its ids
    values = sorted(set(labels["train"]), key=str)
    if len(values) < 2:
        raise ValueError(f"label column {label_column!r} has only one class ({values[0]!r}); need at least two")
    for split in labels:
        unseen = sorted(set(labels[split]) - set(values), key=str)
        if unseen:
            raise ValueError(f"the {split} split has label(s) {unseen[:5]} that the training split does not "
                             f"have (its classes: {values[:10]})")
    to_id = {v: i for i, v in enumerate(values)}
    names = [named[v] if named else str(v) for v in values]
    return {split: np.array([to_id[v] for v in labels[split]]) for split in labels}, names, problem_type


ROLES = ("auto", "validation", "validation-half", "train-pool")


@dataclass(frozen=True)
class Roles:
    """Which examples play which part. Training subsets are drawn from ``pool`` (indices into the train split);
    the evaluation point is chosen on ``selection``; ``test`` only reports. Each is (split name, indices)."""

    pool: np.ndarray
    selection: tuple
    test: tuple
    description: str


def assign_roles(data: dict, mode: str = "auto", split_seed: int = 0, selection_size: int = 512) -> Roles:
    """Three roles that never share an example, fixed across presets and seeds (``split_seed`` alone decides).

    validation       select on the validation split, report on the test split (needs one)
    validation-half  a stratified half of the validation split selects, the other half reports
    train-pool       ``selection_size`` examples of the training split, never trained on, select; the test
                     split (else the validation split) reports
    auto             validation when there is a labelled test split, else validation-half
    """
    if mode not in ROLES:
        raise ValueError(f"--roles must be one of {list(ROLES)}, got {mode!r}")
    if mode == "auto":
        mode = "validation" if "test" in data else "validation-half"
    train = np.arange(len(data["train"]))
    if mode == "validation":
        if "test" not in data:
            raise ValueError("--roles validation needs a labelled test split: give --test_file")
        val, test = np.arange(len(data["validation"])), np.arange(len(data["test"]))
        return Roles(train, ("validation", val), ("test", test),
                     f"selection = validation split ({len(val)}), test = test split ({len(test)})")
    if mode == "validation-half":
        labels = data["validation"].labels
        classes, counts = np.unique(strata(labels), return_counts=True)
        if counts.min() < 2:
            raise ValueError(f"the validation split is too small to be halved stratified: class "
                             f"{int(classes[counts.argmin()])} has {counts.min()} example(s), each needs 2")
        sel = stratified_indices(labels, len(labels) // 2, split_seed)
        test = np.setdiff1d(np.arange(len(labels)), sel)
        return Roles(train, ("validation", sel), ("validation", test),
                     f"selection = a stratified half of the validation split ({len(sel)}, seed {split_seed}), "
                     f"test = the other half ({len(test)})")
    labels = data["train"].labels
    n_classes = len(np.unique(strata(labels)))
    if not n_classes <= selection_size < len(labels):
        raise ValueError(f"--selection_size must be at least the number of classes ({n_classes}) and smaller than "
                         f"the training split ({len(labels)}), got {selection_size}")
    sel = stratified_indices(labels, selection_size, split_seed)
    test_split = "test" if "test" in data else "validation"
    test = np.arange(len(data[test_split]))
    return Roles(np.setdiff1d(train, sel), ("train", sel), (test_split, test),
                 f"selection = {len(sel)} training examples outside every subset (seed {split_seed}), "
                 f"test = {test_split} split ({len(test)})")


def subset_indices(data: dict, roles: Roles, size: int, seed: int) -> np.ndarray:
    """The seeded, stratified training subset of ``size`` examples, drawn from the training pool."""
    return roles.pool[stratified_indices(data["train"].labels[roles.pool], size, seed)]


def check_train_size(size: int, available: int) -> None:
    if size > available:
        raise ValueError(f"train size {size} is larger than the training split ({available} examples)")
    if size < 1:
        raise ValueError(f"train sizes must be positive, got {size}")


STRATA = 5  # float labels are stratified by their quintiles


def strata(labels: np.ndarray) -> np.ndarray:
    """The strata of ``labels``: the classes themselves, or for float labels their `STRATA` quantile bins (so a
    regression's subsets span its label range as a classifier's span its classes)."""
    if labels.dtype.kind != "f":
        return labels
    edges = np.quantile(labels, np.linspace(0, 1, STRATA + 1)[1:-1])
    return np.searchsorted(edges, labels, side="right")


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subsample of ``size`` indices with the class proportions of ``labels`` (see `strata`)."""
    check_train_size(size, len(labels))
    labels = strata(labels)
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
        item = {"input_ids": self.enc.input_ids[j],  # token ids, or an image; labels: a class id, a float target, or
                # a causal LM's token labels
                "labels": self.enc.labels[j].item() if self.enc.targets is None else self.enc.targets[j]}
        if self.enc.token_type_ids is not None:
            item["token_type_ids"] = self.enc.token_type_ids[j]
        return item


def train_loader(enc: Encoded, indices, batch_size: int, seed: int, collate, step_batch: int | None = None):
    """Seeded random batches of similar length (transformers' length grouping): less padding, fresh order. The
    order is grouped at ``step_batch`` (an optimizer step's examples, default ``batch_size``), so that with
    gradient accumulation each step's micro-batches hold the examples of the step without it."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [enc.length(j) for j in indices]
    sampler = LengthGroupedSampler(step_batch or batch_size, lengths=lengths,
                                   generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(_Subset(enc, indices), batch_size=batch_size, sampler=sampler,
                                       collate_fn=collate)


def by_length(enc: Encoded, indices) -> list[int]:
    """``indices`` sorted by token count, so that evaluation batches pad little."""
    return sorted((int(j) for j in indices), key=enc.length)


def eval_batches(lengths, batch_size: int, tokens: int = 0) -> list[list[int]]:
    """Consecutive batches of positions ``0..len(lengths)-1`` (lengths ascending, see `by_length`): at most
    ``batch_size`` examples, and with ``tokens`` > 0 at most that many padded tokens (examples × the batch's longest)
    where more than one example fits. Small batches of long sequences keep activations in cache; many short ones
    keep the matrix products large."""
    batches, cur, longest = [], [], 0
    for i, n in enumerate(lengths):
        longest = max(longest, n)
        if cur and (len(cur) == batch_size or (tokens and (len(cur) + 1) * longest > tokens)):
            batches.append(cur)
            cur, longest = [], n
        cur.append(i)
    return batches + [cur] if cur else batches


def split_batch_size(batch_size: int, examples: int, ranks: int) -> int:
    """An evaluation batch that data mode splits across ``ranks``: at most the split's ``examples`` (rounded up to
    the ranks), since Accelerate fills a short batch with repeated examples that every rank computes (a causal LM's
    batch of 170 over 24 examples: 85 rows a rank, 12 of them needed)."""
    return min(batch_size, -(-examples // ranks) * ranks)


def eval_loader(enc: Encoded, order, batch_size: int, collate, tokens: int = 0):
    """The examples ``order`` (see `by_length`) in that order, in batches of `eval_batches`. Each iteration of a
    DataLoader draws a seed from its generator: an evaluation loader has its own, so that the training's random
    stream (its dropout masks) does not depend on how often, or on which splits, evaluation runs."""
    own = torch.Generator()
    if not tokens:  # a plain batch size, which Accelerate can split across ranks
        return torch.utils.data.DataLoader(_Subset(enc, order), batch_size=batch_size, collate_fn=collate,
                                           generator=own)
    batches = eval_batches([enc.length(j) for j in order], batch_size, tokens)
    return torch.utils.data.DataLoader(_Subset(enc, order), batch_sampler=batches, collate_fn=collate,
                                       generator=own)
