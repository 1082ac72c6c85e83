"""Cheaper dropout on a CPU: while a patched model trains, every dropout of its forward — the model's own modules
and functions and hfreg's hooks alike — draws its mask from 16 random bits per entry (`hfreg.layers.dropout`)
instead of PyTorch's per-entry Bernoulli draws, and attention with a dropout rate is computed as PyTorch's math path
computes it, with such a mask. `HFREG_FAST_MASKS=0` (`hfreg.layers.FAST_MASKS`) turns it off.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import layers
from .hooks import ModeEnter

try:  # what torch.compile's dynamo runs each new frame through, while a compiled call runs: None in eager mode
    from torch._C._dynamo.eval_frame import get_eval_frame_callback as _dynamo_callback
except ImportError:  # a torch without dynamo
    def _dynamo_callback():
        return None


class CpuMasks(TorchFunctionMode):
    """During a patched model's training forward: dropout on CPU tensors with `layers.dropout` masks (16 random
    bits per entry) instead of PyTorch's per-entry Bernoulli draws, for the model's own dropout modules and
    functions and hfreg's alike; attention with a dropout rate computed as PyTorch's math path does (which a rate
    forces on a CPU anyway), softmax then dropout, with such a mask. Expectations are unchanged; rates are taken to
    1/65536. Other devices and dtypes, and in-place dropout, go to PyTorch unchanged."""

    depth = threading.local()  # modes entered and not left, on this thread: one at a time is enough

    def __enter__(self):
        CpuMasks.depth.n = getattr(CpuMasks.depth, "n", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc):
        CpuMasks.depth.n -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            given = {"p": 0.5, "training": True, "inplace": False, **dict(zip(_DROPOUT_ARGS, args)), **kwargs}
            x = given["input"]
            if given["training"] and given["p"] and not given["inplace"] and x.device.type == "cpu":
                return layers.dropout(x, given["p"])
        elif func is F.scaled_dot_product_attention:
            given = {**dict(zip(_SDPA_ARGS, args)), **kwargs}
            q = given["query"]
            if given.get("dropout_p") and q.device.type == "cpu" and q.dtype == torch.float32 \
                    and set(given) <= set(_SDPA_ARGS):
                return attention_with_dropout(**given)
        return func(*args, **kwargs)


_DROPOUT_ARGS = ("input", "p", "training", "inplace")
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def attention_with_dropout(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                            enable_gqa=False):
    """`F.scaled_dot_product_attention` as its math path computes it (a fully masked row gives zeros), with a
    `layers.dropout` on the probabilities."""
    scale = query.size(-1) ** -0.5 if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    scores = (query * scale) @ key.transpose(-2, -1)
    if is_causal:
        causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch._safe_softmax(scores, -1) if hasattr(torch, "_safe_softmax") else \
        torch.softmax(scores, -1).nan_to_num(0.0)
    return layers.dropout(probs, dropout_p) @ value


class MasksEnter(ModeEnter):
    """In training, with `layers.FAST_MASKS`, run the forward of the patched model, a layer or a part under
    `CpuMasks` unless one is running already (the parts' hooks serve gradient checkpointing, which recomputes a
    layer's forward alone, outside the model's)."""

    def mode(self, module):
        # not under torch.compile, traced or run eagerly between its graphs: it compiles PyTorch's own dropout, and a
        # mode entered in a hook breaks the frames it traces next (Llama's forward reads a Size for its inputs' device)
        if layers.FAST_MASKS and module.training and not getattr(CpuMasks.depth, "n", 0) \
                and not torch.compiler.is_compiling() and _dynamo_callback() is None:
            return CpuMasks()
        return None

