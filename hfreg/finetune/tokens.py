"""Token classification (``--task token-classification``): words with one label each, as transformers'
`run_ner.py` takes them (a ``tokens`` column of word lists and a column of tag lists, ``ner_tags`` or ``tags``),
each word's label on its first sub-token (the others are read, not trained), and what each evaluation point
measures of the words (`outputs`; their metrics: `scores.token_scores`): the NLL and accuracy per word and
seqeval's entity-level micro F1 over IOB2 tags (an entity is a type and its exact span: ``B-X`` starts one, ``I-X``
continues it, and an ``I-X`` that follows no ``X`` starts one, as seqeval's default mode reads it).
"""

from __future__ import annotations

import numpy as np
import torch

WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label")
IGNORE = -100


def detect(raw, text_column: str | None = None, label_column: str | None = None) -> tuple[str, str] | None:
    """(words column, tags column) where the training split holds lists of words and lists of tags; else None."""
    features = raw["train"].features
    first = raw["train"][0] if len(raw["train"]) else {}
    words = text_column or next((c for c in WORD_COLUMNS if c in features), None)
    tags = label_column or next((c for c in TAG_COLUMNS if c in features), None)
    if words is None or tags is None or words not in first or tags not in first:
        return None
    if not isinstance(first[words], list) or not isinstance(first[tags], list):
        return None
    return words, tags


def _tag_names(raw, column: str) -> list[str]:
    feature = raw["train"].features[column]
    inner = getattr(feature, "feature", None)  # a Sequence/List of ClassLabel: its names
    if getattr(inner, "names", None):
        return list(inner.names)
    return sorted({str(t) for row in raw["train"][column] for t in row})


def encode(raw, tokenizer, words: str, tags: str, max_length: int) -> tuple[dict, list[str]]:
    """Tokenize every split once, word-aligned: {split: `data.Encoded`} whose ``targets`` hold each word's tag id on
    its first sub-token and `IGNORE` elsewhere, and whose ``labels`` are all 0 (subsets drawn at random); with the
    tag names."""
    from .data import Encoded

    names = _tag_names(raw, tags)
    to_id = {n: i for i, n in enumerate(names)}
    named = getattr(getattr(raw["train"].features[tags], "feature", None), "names", None)
    out = {}
    for split in raw:
        ds = raw[split]
        enc = tokenizer(list(ds[words]), is_split_into_words=True, truncation=True, max_length=max_length)
        targets = []
        for i, row in enumerate(ds[tags]):
            row = [named[t] if named else str(t) for t in row]
            unknown = [t for t in row if t not in to_id]
            if unknown:
                raise ValueError(f"the {split} split's example {i} has tag {unknown[0]!r}, which the training split "
                                 f"does not have (its tags: {names[:10]})")
            seen, target = set(), []
            for w in enc.word_ids(i):
                target.append(IGNORE if w is None or w in seen else to_id[row[w]])
                seen.add(w)
            targets.append(target)
        out[split] = Encoded(enc["input_ids"], np.zeros(len(ds), dtype=int), enc.get("token_type_ids"), targets)
    return out, names


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The IOB2 entities of one tag sequence, as (type, first word, last word)."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-") if "-" in tag else ("O", "", "")
        if start is not None and (prefix in ("B", "O") or name != kind):
            found.add((kind, start, i - 1))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return found


def reducer(names: list[str]):
    """The per-example outputs of token classification over tag ``names`` (`outputs`, with the names bound)."""

    def reduce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return outputs(logits, labels, names)

    return reduce


def outputs(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Per example (rows, float32): the summed NLL of its words' first sub-tokens, their count, how many are right,
    and of its entities the predicted ones that are gold (true positives), the predicted and the gold."""
    logits = logits.float()
    kept = labels != IGNORE
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none") * kept
    pred = logits.argmax(-1)
    rows = []
    for i in range(len(labels)):
        mask = kept[i]
        gold = [names[t] for t in labels[i][mask].tolist()]
        guess = [names[t] for t in pred[i][mask].tolist()]
        g, p = entities(gold), entities(guess)
        rows.append([float(nll[i].sum()), float(mask.sum()), float(sum(a == b for a, b in zip(gold, guess))),
                     float(len(g & p)), float(len(p)), float(len(g))])
    return torch.tensor(rows, dtype=torch.float32, device=logits.device).reshape(len(labels), 6)
