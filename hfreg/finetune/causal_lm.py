"""Instruction tuning of a causal LM (``--task causal-lm``): the data in TRL's formats, the loss on completion tokens
only, and what each evaluation point measures of the completions (`outputs`; their metrics: `scores.lm_scores`).

Formats, one per data set, detected from its columns (`detect_format`):
  * ``prompt`` + ``completion``: the completion's tokens are trained and measured, the prompt's only read;
  * ``messages``: a conversation (a list of ``{"role", "content"}``) through the tokenizer's chat template; the last
    assistant turn is the completion, everything before it the prompt;
  * ``text``: language modelling, every token a completion token.

Each part is tokenized on its own, without special tokens, then joined: ``[BOS] prompt completion [EOS]`` (BOS and EOS
where the tokenizer has them; a tokenizer without EOS ends on its separator token). Where an example is longer than
``--max_seq_length``, the prompt loses its beginning first (its end sits next to the answer), then the completion its
end. One example per row, unless ``--packing`` puts a training batch's examples side by side in one row (`Packed`).
"""

from __future__ import annotations

import numpy as np
import torch

FORMATS = {"prompt-completion": ("prompt", "completion"), "messages": ("messages",), "text": ("text",)}
IGNORE = -100  # the label of a token that is read, not trained: transformers' loss skips it


def detect_format(columns) -> str | None:
    """The TRL format the columns hold (`FORMATS`), or None."""
    columns = set(columns)
    return next((name for name, need in FORMATS.items() if set(need) <= columns), None)


def _ends(tokenizer) -> tuple[list[int], list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return bos, [eos] if eos is not None else []


def _split_messages(tokenizer, messages, where: str) -> tuple[str, str]:
    """(prompt, completion) text of a conversation: the chat template up to the last assistant turn, with the
    generation prompt, and that turn's rendering after it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the data are conversations (`messages`) but the tokenizer has no chat template: give "
                         "--tokenizer_name of one that has, or prompt/completion columns")
    turns = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"]
    if not turns:
        raise ValueError(f"{where}: a conversation without an assistant turn has nothing to train on")
    last = turns[-1]
    prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
    if not whole.startswith(prompt):  # a template that renders history differently once a reply follows
        raise ValueError(f"{where}: the chat template does not render the conversation as its prompt followed by "
                         f"the reply, so the reply's tokens cannot be told apart")
    return prompt, whole[len(prompt):]


def encode_example(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example: the prompt's labels `IGNORE`, the completion's (and EOS) its ids."""
    bos, eos = _ends(tokenizer)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
    room = max_length - len(bos)
    c = c[:max(room, 1)]
    keep = max(room - len(c), 0)  # prompt tokens that fit: its end, next to the answer
    p = p[len(p) - keep:] if keep < len(p) else p
    ids = bos + p + c
    return ids, [IGNORE] * (len(bos) + len(p)) + c


def encode(raw, tokenizer, fmt: str, max_length: int) -> dict:
    """Tokenize every split once: {split: `data.Encoded`} whose ``targets`` are the per-token labels and whose
    ``labels`` are all 0 (one stratum: subsets are drawn at random). A split whose completions are all empty is an
    error."""
    from .data import Encoded

    out = {}
    for split in raw:
        ds = raw[split]
        ids, targets = [], []
        for i, row in enumerate(ds):
            where = f"the {split} split's example {i}"
            if fmt == "messages":
                prompt, completion = _split_messages(tokenizer, row["messages"], where)
            elif fmt == "prompt-completion":
                prompt, completion = row["prompt"], row["completion"]
            else:
                prompt, completion = "", row["text"]
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise ValueError(f"{where}: the prompt and completion must be text, got {type(completion).__name__}")
            x, y = encode_example(tokenizer, prompt, completion, max_length)
            ids.append(x)
            targets.append(y)
        if not any(t != IGNORE for y in targets for t in y):
            raise ValueError(f"the {split} split has no completion tokens")
        out[split] = Encoded(ids, np.zeros(len(ids), dtype=int), None, targets)
    return out


class Collator:
    """Pads a batch of (input ids, labels) on the right: pad id and attention mask 0, labels `IGNORE`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, x in enumerate(items):
            n = len(x["input_ids"])
            ids[row, :n] = torch.tensor(x["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(x["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Packed:
    """Padding-free packing of a training batch: its examples side by side in one row, the position ids restarting
    at 0 at each, no attention mask. transformers reads such position ids as packed sequences and keeps each one's
    attention to itself (a block-diagonal causal mask) where the model keeps no cache (``use_cache=False``, which
    the harness sets when packing), as TRL's ``padding_free`` does; the first label of each example is `IGNORE`, so
    no loss term predicts one example from the one before it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        ids, labels, positions = [], [], []
        for x in items:
            n = len(x["input_ids"])
            ids += list(x["input_ids"])
            labels += [IGNORE, *list(x["labels"])[1:]]
            positions += range(n)
        as_row = lambda v: torch.tensor([v], dtype=torch.long)  # noqa: E731
        return {"input_ids": as_row(ids), "labels": as_row(labels), "position_ids": as_row(positions)}


def outputs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example (rows): the summed NLL of its completion tokens, their count, and 1.0 where every one is the
    greedy choice (teacher-forced), from the model's logits (batch x length x vocabulary) and the labels; float32."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1
    kept = labels != IGNORE
    target = labels.clamp_min(0)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none") * kept
    right = (logits.argmax(-1) == target) | ~kept
    return torch.stack([nll.sum(1), kept.sum(1).float(), right.all(1).float()], dim=1)
