"""The regularizers hfreg injects, as plain functions on tensors (the patcher's hooks call them), and drop-path's
depth schedule.

* drop-path / stochastic depth: Huang et al., 2016, "Deep Networks with Stochastic Depth" (arXiv:1603.09382); the
  linear-over-depth schedule follows DeiT (Touvron et al., 2021) and timm;
* DropHead: Zhou et al., 2020, "Scheduled DropHead: A Regularization Method for Transformer Models"
  (arXiv:2004.13342);
* Mixout: Lee et al., 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained Language Models"
  (arXiv:1909.11299);
* NEFTune: Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning" (arXiv:2310.05914).

Each is the identity outside training, and keeps the expectation of its input (NEFTune's noise has mean zero).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import DROP_PATH_MODES, DROP_PATH_PROFILES, check_choice, check_rate, deprecated


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, mode: str = "per_sample",
              batch_size: int | None = None) -> torch.Tensor:
    """Zero whole residual branches with probability ``drop_prob``; scale the kept ones by 1/(1-p).

    Args:
        x: branch output, batch first.
        mode: ``"per_sample"`` draws one keep/drop per example, ``"per_batch"`` one for the batch.
        batch_size: the true batch size when ``x`` folds extra rows into dim 0 (OPT flattens tokens,
            Swin folds windows) — rows ``b * k ... (b + 1) * k - 1`` then share example ``b``'s draw.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    if mode == "per_batch":
        return x * (x.new_empty(()).bernoulli_(keep) / keep)
    rows = x.shape[0]
    batch = batch_size if batch_size and rows % batch_size == 0 else rows
    mask = x.new_empty((batch,) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
    if batch != rows:
        mask = mask.repeat_interleave(rows // batch, dim=0)
    return x * mask


class DropPath(nn.Module):
    """Drop paths (stochastic depth) per sample, for use on a residual branch."""

    def __init__(self, drop_prob: float = 0.0, mode: str = "per_sample"):
        super().__init__()
        check_rate("drop_prob", drop_prob)
        check_choice("mode", mode, DROP_PATH_MODES)
        self.drop_prob = float(drop_prob)
        self.mode = mode

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.mode)

    def extra_repr(self):
        return f"drop_prob={round(self.drop_prob, 3):0.3f}, mode={self.mode}"


def drop_path_rates(drop_path_rate: float, depth: int, profile: str = "linear", *, schedule: str | None = None
                    ) -> list[float]:
    """Per-layer drop-path rates over a stack of ``depth`` layers.

    Args:
        drop_path_rate: the rate of the deepest layer (of every layer under ``"uniform"``).
        depth: the number of layers.
        profile: ``"linear"`` (layer i gets ``drop_path_rate * i / (depth - 1)``, as in Huang et al., 2016) or
            ``"uniform"``. ``schedule=`` is its earlier name (deprecated).

    Returns:
        One rate per layer, shallowest first.

    Raises:
        ValueError: a rate outside [0, 1) or an unknown profile.

    Example:
        >>> drop_path_rates(0.2, 3)
        [0.0, 0.1, 0.2]
    """
    if schedule is not None:
        deprecated("drop_path_rates(schedule=)", "drop_path_rates(profile=)")
        profile = schedule
    check_rate("drop_path_rate", drop_path_rate)
    check_choice("profile", profile, DROP_PATH_PROFILES)
    if profile == "uniform":
        return [float(drop_path_rate)] * depth
    if depth == 1:
        return [float(drop_path_rate)]
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def drop_head(x: torch.Tensor, p: float, heads: int, training: bool = False) -> torch.Tensor:
    """Zero whole attention heads of ``x`` (the concatenated heads, ``(batch, ..., heads * head_dim)``) with
    probability ``p``, one draw per row of dim 0 and head; scale the kept ones by 1/(1-p).

    Raises:
        ValueError: the last dimension of ``x`` is not a multiple of ``heads``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(4)
        >>> y = drop_head(torch.ones(1, 3, 4), p=0.5, heads=2, training=True)  # 2 heads of width 2, 3 tokens
        >>> y[0]
        tensor([[2., 2., 0., 0.],
                [2., 2., 0., 0.],
                [2., 2., 0., 0.]])
    """
    if p == 0.0 or not training:
        return x
    if x.shape[-1] % heads:
        raise ValueError(f"drop_head: the last dimension ({x.shape[-1]}) is not a multiple of heads={heads}")
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 2) + (heads, 1)).bernoulli_(keep).div_(keep)
    return (x.unflatten(-1, (heads, -1)) * mask).flatten(-2)


def mixout(weight: torch.Tensor, target: torch.Tensor, p: float, training: bool = False) -> torch.Tensor:
    """Mixout: each entry of ``weight`` replaced by the one of ``target`` with probability ``p``, as
    ``target + keep * (weight - target) / (1 - p)``, so that its expectation is ``weight``; gradients reach
    ``weight`` through the kept entries. With a zero ``target`` this is DropConnect.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> mixout(torch.full((2, 3), 2.0), torch.ones(2, 3), p=0.5, training=True)  # 1: the target; 3: kept
        tensor([[...]])
    """
    if p == 0.0 or not training:
        return weight
    keep = torch.empty_like(weight).bernoulli_(1.0 - p)
    return torch.addcmul(target, keep, weight - target, value=1.0 / (1.0 - p))


def embedding_noise(x: torch.Tensor, alpha: float, training: bool = False) -> torch.Tensor:
    """NEFTune: add uniform noise in ``[-a, a]`` with ``a = alpha / sqrt(L * d)`` to embeddings ``x`` of shape
    ``(batch, L, d)`` (for other shapes, L * d is every dimension but the first), as transformers'
    ``neftune_noise_alpha`` does."""
    if alpha == 0.0 or not training:
        return x
    bound = alpha / math.sqrt(x[0].numel())
    return x + torch.empty_like(x).uniform_(-bound, bound)
