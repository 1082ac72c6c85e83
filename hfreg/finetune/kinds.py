"""What is fine-tuned (``--task``), as one table: per kind, how its columns are found in the data, what reads its
inputs (a tokenizer or an image processor), how the splits are encoded, which Auto class holds the model and what
collates a batch. What each problem type measures and judges is `tasks`; each kind's data code is its own module
(`data` for text, `images`, `tokens`, `causal_lm`). Adding a kind is its module and a row here.

Where ``--task`` is not given the data choose: the first kind, in `ORDER`, whose columns are there (an image column;
word and tag lists; prompt/completion, messages or text columns without a label column), else text
classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import causal_lm, images, tokens
from . import data as data_mod
from .tasks import CAUSAL_LM, IMAGES, TEXT, TOKENS


@dataclass(frozen=True)
class Kind:
    name: str  # the --task value
    # (raw splits, args, explicit) -> (input columns, label column) where the data are this kind's, else None
    find: Callable
    needs: str  # what an explicit --task needs of the data, for its one-line error
    processor: str  # the transformers Auto class that reads the inputs
    model: str  # the transformers Auto class of the model
    # (raw, processor, input columns, label column, args) -> ({split: data.Encoded}, label names, problem type)
    encode: Callable
    collator: Callable  # processor -> the batch collator (with a ``tokenizer`` attribute: what a kept model saves)
    load: dict  # extra `from_pretrained` arguments of the model


def _images(raw, args, explicit):
    column = images.image_column(raw, args.image_column_name)
    return None if column is None else ((column,), data_mod.detect_label(raw["train"].column_names,
                                                                         args.label_column))


def _tokens(raw, args, explicit):
    found = tokens.detect(raw, args.text_column, args.label_column)
    return None if found is None else ((found[0],), found[1])


def _causal_lm(raw, args, explicit):
    columns = raw["train"].column_names
    fmt = causal_lm.detect_format(columns)
    labelled = args.label_column is not None or any(c in columns for c in data_mod.LABEL_CANDIDATES)
    return None if fmt is None or (labelled and not explicit) else (causal_lm.FORMATS[fmt], None)


def _text(raw, args, explicit):
    return data_mod.detect_columns(raw["train"].column_names, args.text_column, args.label_column)


def _token_collator(tokenizer):
    from transformers import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer)


def _text_collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _lm_encode(raw, tokenizer, inputs, label, args):
    fmt = next(name for name, columns in causal_lm.FORMATS.items() if columns == tuple(inputs))
    return causal_lm.encode(raw, tokenizer, fmt, args.max_seq_length), [], CAUSAL_LM


KINDS = {k.name: k for k in (
    Kind(IMAGES, _images, "an image column", "AutoImageProcessor", "AutoModelForImageClassification",
         lambda raw, proc, inputs, label, args: images.encode(raw, inputs[0], label, args.problem_type),
         images.Collator,
         # a checkpoint's head for other classes (ImageNet's 1,000) is replaced, as run_image_classification does
         {"ignore_mismatched_sizes": True}),
    Kind(TOKENS, _tokens, "a column of word lists (tokens or words, or --text_column) and one of tag lists "
         "(ner_tags, tags, or --label_column)", "AutoTokenizer", "AutoModelForTokenClassification",
         lambda raw, tok, inputs, label, args: (*tokens.encode(raw, tok, inputs[0], label, args.max_seq_length),
                                                TOKENS),
         _token_collator, {}),
    Kind(CAUSAL_LM, _causal_lm, "prompt and completion columns, a messages column or a text column",
         "AutoTokenizer", "AutoModelForCausalLM", _lm_encode, causal_lm.Collator, {}),
    Kind(TEXT, _text, "a text column and a label column", "AutoTokenizer", "AutoModelForSequenceClassification",
         lambda raw, tok, inputs, label, args: data_mod.encode(raw, tok, inputs, label, args.max_seq_length,
                                                               args.problem_type),
         _text_collator, {}),
)}
ORDER = (IMAGES, TOKENS, CAUSAL_LM, TEXT)  # inference: the first kind whose columns the data have


def choose(raw, args) -> tuple[Kind, tuple, str | None]:
    """The kind of fine-tune (``args.task``, else the first in `ORDER` the data fit) and its (input columns, label
    column); one-line ValueError where an explicit ``--task`` finds none of its columns."""
    if args.task is not None:
        kind = KINDS[args.task]
        found = kind.find(raw, args, True)
        if found is None:
            raise ValueError(f"--task {kind.name} needs {kind.needs}; the training split has "
                             f"{raw['train'].column_names}")
        return kind, *found
    for name in ORDER[:-1]:
        found = KINDS[name].find(raw, args, False)
        if found is not None:
            return KINDS[name], *found
    return KINDS[TEXT], *KINDS[TEXT].find(raw, args, False)  # text classification: its columns, or its error
