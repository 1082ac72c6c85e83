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

`keep_mask` and `dropout` draw masks from 16 random bits per entry (one 64-bit draw gives four entries): on a CPU
several times cheaper than PyTorch's per-entry Bernoulli draws, with the keep probability rounded to 1/65536 and
the kept entries scaled by its exact inverse, so that the expectation is unchanged.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from .config import DROP_PATH_MODES, DROP_PATH_PROFILES, check_choice, check_rate, check_scale

# masks from 16-bit draws for CPU tensors (`keep_mask`); HFREG_FAST_MASKS=0 keeps PyTorch's Bernoulli draws
FAST_MASKS = os.environ.get("HFREG_FAST_MASKS", "1") != "0"
_LEVELS = 1 << 16


def keep_mask(shape, keep: float, device=None) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` whose entries are True independently with probability ``keep`` rounded to a
    multiple of 1/65536 (at least 1/65536), and the exact inverse of that probability (the scale that keeps an
    expectation). Sixteen random bits per entry from the default generator of ``device``, so seeds reproduce it.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> mask, scale = keep_mask((1000, 1000), 0.9)
        >>> round(mask.float().mean().item(), 2), round(scale, 6)
        (0.9, 1.111119)
    """
    level = max(1, min(_LEVELS, round(keep * _LEVELS)))
    if level == _LEVELS:  # keep rounds to 1 (a rate under 1/131072); int16 draws cannot compare with 2**15
        return torch.ones(shape, dtype=torch.bool, device=device), 1.0
    n = math.prod(shape)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    draws = words.view(torch.int16)[:n].view(shape)  # uniform over the 65536 int16 values
    return draws < level - (1 << 15), _LEVELS / level


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with a `keep_mask` (on a CPU several times cheaper than `torch.nn.functional.dropout`,
    whose rate it takes to 1/65536); the identity outside training or at ``p == 0``."""
    check_rate("p", p)
    if not training or p == 0.0:
        return x
    mask, scale = keep_mask(x.shape, 1.0 - p, x.device)
    return torch.where(mask, x * scale, 0.0)


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, mode: str = "per_sample",
              batch_size: int | None = None) -> torch.Tensor:
    """Zero whole residual branches with probability ``drop_prob``; scale the kept ones by 1/(1-p).

    Args:
        x: branch output, batch first.
        drop_prob: the probability of dropping a branch, in [0, 1).
        training: False (eval) returns ``x`` unchanged.
        mode: ``"per_sample"`` draws one keep/drop per example, ``"per_batch"`` one for the batch.
        batch_size: the true batch size when ``x`` folds extra rows into dim 0 (OPT flattens tokens,
            Swin folds windows) — rows ``b * k ... (b + 1) * k - 1`` then share example ``b``'s draw.

    Returns:
        ``x`` with each example's branch zeroed or scaled by 1/(1-p).

    Raises:
        ValueError: ``drop_prob`` outside [0, 1), or an unknown ``mode``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> drop_path(torch.ones(4, 2), 0.5, training=True)
        tensor([[0., 0.],
                [0., 0.],
                [2., 2.],
                [0., 0.]])
    """
    check_rate("drop_prob", drop_prob)  # p = 1 would scale by 1/0
    check_choice("mode", mode, DROP_PATH_MODES)
    if drop_prob == 0.0 or not training:
        return x
    return x * drop_path_mask(x, drop_prob, mode, batch_size)


def drop_path_mask(x: torch.Tensor, drop_prob: float, mode: str = "per_sample", batch_size: int | None = None
                   ) -> torch.Tensor:
    """The scaled keep mask `drop_path` multiplies ``x`` by: 0 or 1/(1-p), broadcastable to ``x``. Several
    modules whose outputs are summed into one branch take the same mask.

    Args:
        x: branch output, batch first (its shape, dtype and device are used).
        drop_prob: the probability of dropping a branch, in [0, 1).
        mode: ``"per_sample"`` or ``"per_batch"``.
        batch_size: the true batch size when ``x`` folds extra rows into dim 0 (see `drop_path`).

    Returns:
        A tensor of shape ``(rows, 1, ..., 1)`` (``()`` per batch).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> drop_path_mask(torch.ones(4, 2), 0.5).flatten()
        tensor([0., 0., 2., 0.])
    """
    keep = 1.0 - drop_prob
    if mode == "per_batch":
        return x.new_empty(()).bernoulli_(keep) / keep
    rows = x.shape[0]
    batch = batch_size if batch_size and rows % batch_size == 0 else rows
    mask = x.new_empty((batch,) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
    if batch != rows:
        mask = mask.repeat_interleave(rows // batch, dim=0)
    return mask


class DropPath(nn.Module):
    """Drop paths (stochastic depth, Huang et al., 2016) per sample, for use on a residual branch; the identity
    in eval mode.

    Args:
        drop_prob: the probability of dropping the branch, in [0, 1).
        mode: ``"per_sample"`` or ``"per_batch"`` (see `drop_path`).

    Example:
        >>> DropPath(0.1)
        DropPath(drop_prob=0.100, mode=per_sample)
        >>> DropPath(0.1).eval()(torch.ones(2, 3)).sum().item()
        6.0
    """

    def __init__(self, drop_prob: float = 0.0, mode: str = "per_sample"):
        super().__init__()
        check_rate("drop_prob", drop_prob)
        check_choice("mode", mode, DROP_PATH_MODES)
        self.drop_prob = float(drop_prob)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.mode)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}, mode={self.mode}"


def drop_path_rates(drop_path_rate: float, depth: int, profile: str = "linear") -> list[float]:
    """Per-layer drop-path rates over a stack of ``depth`` layers.

    Args:
        drop_path_rate: the rate of the deepest layer (of every layer under ``"uniform"``).
        depth: the number of layers.
        profile: ``"linear"`` (layer i gets ``drop_path_rate * i / (depth - 1)``, as in Huang et al., 2016) or
            ``"uniform"``.

    Returns:
        One rate per layer, shallowest first.

    Raises:
        ValueError: a rate outside [0, 1) or an unknown profile.

    Example:
        >>> drop_path_rates(0.2, 3)
        [0.0, 0.1, 0.2]
    """
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

    Args:
        x: attention output before its output projection.
        p: the probability of dropping a head, in [0, 1).
        heads: the number of heads concatenated in the last dimension.
        training: False (eval) returns ``x`` unchanged.

    Returns:
        ``x`` with whole heads zeroed or scaled.

    Raises:
        ValueError: ``p`` outside [0, 1), ``heads`` not an int >= 1, or the last dimension of ``x`` not a multiple of
            ``heads``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(4)
        >>> y = drop_head(torch.ones(1, 3, 4), p=0.5, heads=2, training=True)  # 2 heads of width 2, 3 tokens
        >>> y[0]
        tensor([[2., 2., 0., 0.],
                [2., 2., 0., 0.],
                [2., 2., 0., 0.]])
    """
    check_rate("p", p)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"drop_head: `heads` must be an int >= 1, got {heads!r}")
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

    Args:
        weight: the current weight.
        target: what a dropped entry takes (the weight at patch time).
        p: the probability of replacing an entry, in [0, 1).
        training: False (eval) returns ``weight`` unchanged.

    Returns:
        The mixed weight (a `keep_mask` on a CPU, PyTorch's Bernoulli draws elsewhere).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> mixout(torch.full((2, 3), 2.0), torch.ones(2, 3), p=0.5, training=True)  # 1: the target; 3: kept
        tensor([[...]])
    """
    if p == 0.0 or not training:
        return weight
    if FAST_MASKS and weight.device.type == "cpu":
        mask, scale = keep_mask(weight.shape, 1.0 - p, weight.device)
        return torch.where(mask, target + (weight - target) * scale, target)
    keep = torch.empty_like(weight).bernoulli_(1.0 - p)
    return torch.addcmul(target, keep, weight - target, value=1.0 / (1.0 - p))


def embedding_noise(x: torch.Tensor, alpha: float, training: bool = False, lengths: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """NEFTune: add uniform noise in ``[-a, a]`` with ``a = alpha / sqrt(L * d)`` to embeddings ``x`` of shape
    ``(batch, L, d)`` (for other shapes, L * d is every dimension but the first), as transformers'
    ``neftune_noise_alpha`` does.

    Args:
        x: input embeddings, batch first.
        alpha: the noise scale (the paper's 5, 10, 15), >= 0.
        training: False (eval) returns ``x`` unchanged.
        lengths: for rows that pack several sequences (`packed_lengths`), the length of the sequence each position
            belongs to, ``(batch, L)``: each sequence's noise is bounded by ``alpha / sqrt(its length * d)``, as if
            it were alone in its row.

    Returns:
        ``x`` plus the noise.

    Raises:
        ValueError: ``alpha`` negative or not finite.

    Example:
        >>> y = embedding_noise(torch.zeros(1, 4, 25), alpha=5.0, training=True)  # bound 5 / sqrt(4 * 25) = 0.5
        >>> bool(y.abs().max() <= 0.5), bool(y.abs().max() > 0)
        (True, True)
    """
    check_scale("alpha", alpha)
    if alpha == 0.0 or not training:
        return x
    if lengths is None:
        bound = alpha / math.sqrt(x[0].numel())
        return x + torch.empty_like(x).uniform_(-bound, bound)
    bound = alpha / torch.sqrt(lengths.to(x.dtype) * x[0, 0].numel())
    return x + torch.empty_like(x).uniform_(-1.0, 1.0) * bound.reshape(*bound.shape, *[1] * (x.dim() - 2))


def packed_lengths(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """For rows that pack several sequences (position ids restarting at 0 at each, ``(batch, L)``), the length of
    the sequence each position belongs to; None where no row holds more than one sequence.

    Example:
        >>> packed_lengths(torch.tensor([[0, 1, 2, 0, 1]])).tolist()
        [[3, 3, 3, 2, 2]]
    """
    if position_ids is None or position_ids.dim() != 2:
        return None
    starts = position_ids == 0
    if int(starts.sum(-1).max()) <= 1:
        return None
    which = starts.long().cumsum(-1)  # 1-based index of each position's sequence in its row
    counts = torch.zeros(which.shape[0], which.shape[1] + 1, dtype=torch.long, device=which.device)
    counts.scatter_add_(1, which, torch.ones_like(which))
    return counts.gather(1, which)
