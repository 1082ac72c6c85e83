"""A small labelled text data set, generated deterministically: hfreg's built-in default.

It is synthetic: short movie-review-like sentences whose sentiment is carried by a few cue words, with mixed
("... but ...") sentences and 10% flipped labels, so a model can fit the training subset by memorising the
noise — the regime where regularization matters.
"""

from __future__ import annotations

import random

_POS = ["wonderful", "moving", "clever", "delightful", "gripping", "charming", "brilliant", "warm", "funny",
        "beautiful", "sharp", "tender", "thrilling", "honest", "inventive"]
_NEG = ["dull", "clumsy", "tedious", "shallow", "predictable", "bland", "messy", "lifeless", "awkward",
        "boring", "forced", "tired", "hollow", "grating", "muddled"]
_SUBJECTS = ["the film", "this movie", "the story", "the cast", "the script", "the director's latest",
             "the second half", "the soundtrack", "the ending", "the lead performance"]
_VERBS = ["is", "feels", "seems", "turns out", "comes across as", "remains"]
_HEDGES = ["", "rather ", "quite ", "mostly ", "surprisingly ", "at times ", "frankly "]
_FILLER = ["", " overall", " from start to finish", " despite its length", " for a sequel", " in places"]


def make_split(n: int, seed: int, noise: float = 0.1) -> dict[str, list]:
    """``n`` examples as columns ``{"text": [...], "label": [...]}`` (0 negative, 1 positive)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        main, other = (_POS, _NEG) if label else (_NEG, _POS)
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_HEDGES)}{rng.choice(main)}"
        if rng.random() < 0.3:  # a mixed sentence; the final clause carries the label
            text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(other)}, but {text}"
        text += rng.choice(_FILLER) + "."
        if rng.random() < noise:
            label = 1 - label
        texts.append(text[0].upper() + text[1:])
        labels.append(label)
    return {"text": texts, "label": labels}


def make_dataset(train_size: int = 1024, validation_size: int = 96, test_size: int = 384):
    """The default data set as a `datasets.DatasetDict` with ``train``, ``validation`` and ``test`` splits (the
    same noise in each: a model that fits the flipped training labels is confidently wrong on flipped test ones)."""
    from datasets import Dataset, DatasetDict

    return DatasetDict(train=Dataset.from_dict(make_split(train_size, seed=1)),
                       validation=Dataset.from_dict(make_split(validation_size, seed=2)),
                       test=Dataset.from_dict(make_split(test_size, seed=3)))
