"""R-Drop (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks", arXiv:2106.14448): two forward
passes of one batch under independent dropout masks, the task loss on both plus alpha times the symmetric KL
divergence between their predictions. A training-loop method, not a site: it regularizes through whatever dropout
the model has (hfreg's knobs included) and does nothing without any.

The two passes are one forward of the batch repeated, so that under DDP one forward meets one backward; draws made
once per batch (LayerDrop, drop-path's ``per_batch`` mode) are then shared by the two copies. It costs a forward
and backward of twice the batch. With transformers' `Trainer`::

    class RDropTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, logits = hfreg.rdrop_loss(model, inputs, alpha=1.0)
            return (loss, {"logits": logits}) if return_outputs else loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # transformers' label for positions without a target


def rdrop_objective(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
                    alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(CE_a + CE_b) / 2 + alpha * (KL(P_a‖P_b) + KL(P_b‖P_a)) / 2`` for classification logits ``(..., classes)``
    and integer labels ``(...)`` (sequence or token classification; positions labelled -100 left out), each term a
    mean over the labelled positions.

    Args:
        logits_a: the first pass's logits.
        logits_b: the second pass's (same shape, other dropout masks).
        labels: the labels.
        alpha: the weight of the symmetric KL term, >= 0.
        label_smoothing: label smoothing of both cross-entropy terms (the HF Trainer's ``label_smoothing_factor``).

    Returns:
        The scalar loss.

    Raises:
        ValueError: a negative ``alpha``, or logits and labels whose shapes do not match.

    Example:
        >>> import torch
        >>> logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> rdrop_objective(logits, logits, labels, alpha=1.0)  # the same predictions: cross-entropy alone
        tensor(0.1269)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"R-Drop's `alpha` must be a float >= 0, got {alpha!r}")
    if logits_a.shape != logits_b.shape or logits_a.shape[:-1] != labels.shape:
        raise ValueError(f"R-Drop needs two logits of one shape (..., classes) and labels of shape (...): got "
                         f"{tuple(logits_a.shape)}, {tuple(logits_b.shape)} and labels {tuple(labels.shape)}")
    classes = logits_a.shape[-1]
    keep = labels.reshape(-1) != IGNORE_INDEX
    a, b, y = logits_a.reshape(-1, classes)[keep].float(), logits_b.reshape(-1, classes)[keep].float(), \
        labels.reshape(-1)[keep]
    ce = (F.cross_entropy(a, y, label_smoothing=label_smoothing) +
          F.cross_entropy(b, y, label_smoothing=label_smoothing)) / 2
    if not alpha:
        return ce
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl = (F.kl_div(la, lb, log_target=True, reduction="batchmean") +
          F.kl_div(lb, la, log_target=True, reduction="batchmean")) / 2
    return ce + alpha * kl


def rdrop_loss(model: nn.Module, inputs: dict, alpha: float, label_smoothing: float = 0.0, shift: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The R-Drop loss of ``model`` on one batch (a dict with ``labels``, as transformers' models take it), and the
    first pass's logits. The model must be in training mode for its dropout to draw two different masks.

    Args:
        model: a classifier (of sequences or tokens) or a causal LM, whose output has ``logits``.
        inputs: one batch, with ``labels``.
        alpha: the weight of the symmetric KL term, >= 0.
        label_smoothing: label smoothing of both cross-entropy terms.
        shift: a causal LM's logits at position t predict the token at t + 1: both terms are taken over the
            positions that predict a labelled token, as transformers' causal-LM loss takes them.

    Returns:
        (the loss, the first pass's logits): one forward of the doubled batch.

    Raises:
        ValueError: no ``labels`` in the batch, or a bad ``alpha``.

    Example:
        >>> import torch, hfreg, transformers
        >>> model = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).train()
        >>> loss, logits = hfreg.rdrop_loss(model, {"input_ids": torch.tensor([[101, 2000, 102]]),
        ...                                        "labels": torch.tensor([1])}, alpha=1.0)
        >>> loss.ndim, tuple(logits.shape)
        (0, (1, 2))
    """
    if "labels" not in inputs:
        raise ValueError("R-Drop needs the batch's `labels`")
    labels = inputs["labels"]
    n = labels.shape[0]
    twice = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
             for k, v in inputs.items() if k != "labels"}
    logits = model(**twice).logits
    a, b = logits[:n], logits[n:]
    if shift:
        a, b, labels = a[:, :-1], b[:, :-1], labels[:, 1:]
    return rdrop_objective(a, b, labels, alpha, label_smoothing), logits[:n]
