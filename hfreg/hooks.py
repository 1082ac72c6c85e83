"""The forward hooks a patch registers (`hfreg.inject.apply_spec` decides where). Each is a small callable whose
class says when it runs (`Hook`); the ones that carry a knob's rate keep it in ``p`` (or, for a layer's hooks, in
their shared `LayerState`) so that `set_rate_factors` can move it during training. In eval mode every hook passes
its input through, unless `hfreg.mc_dropout` marked the module to sample (`SAMPLE_FLAG`).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .layers import drop_head, drop_path_mask, embedding_noise, mixout, packed_lengths


class Hook:
    """Base of every forward hook hfreg registers. The class says how `PatchState.hook` registers it: ``pre`` (called
    before the module's forward, it may return new inputs) or after it (it may return a new output);
    ``with_kwargs`` (the keyword inputs too); ``always_call`` (called even when the forward raises, so a hook that
    leaves a state its pre-hook entered always runs). A hook whose rate `set_rate_factors` moves keeps it in ``p``."""

    pre: bool = False
    with_kwargs: bool = False
    always_call: bool = False


# set on a hooked module by `hfreg.mc_dropout`: its hooks sample in eval mode, the module itself stays in eval mode
SAMPLE_FLAG = "_hfreg_sample"


def sampling(module) -> bool:
    return module.training or module.__dict__.get(SAMPLE_FLAG, False)


def map_first(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        first = [fn(output[0]), *output[1:]]
        return first if isinstance(output, list) else tuple(first)  # OpenAI GPT's blocks return lists
    return output


def hidden_arg(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs.get("hidden_states")


class LayerState:
    """Per-layer state shared by a layer's hooks. The protocol, per forward of the layer:

    * `ResetCalls` (model pre-hook, weight-shared layers only) sets ``call = -1`` for every layer;
    * `LayerPre` (layer pre-hook) advances ``call`` (the virtual layer of a shared layer), sets ``batch`` from
      the hidden states, applies ``embedding`` dropout to the first layer's input and, under ``layerdrop``, sets
      ``skip`` to the input to return instead of the layer's output;
    * `Branch` (hook at each residual branch end) reads ``hidden``, ``rates[call]``, ``mode`` and ``batch``;
    * `LayerPost` (layer hook) reads and clears ``skip``.

    ``hidden``, ``rates``, ``layerdrop`` and ``embedding`` are the rates in force (`set_rate_factors` moves them).
    """

    def __init__(self, hidden, drop_path_rates, layerdrop, embedding, mode):
        self.hidden, self.rates, self.layerdrop, self.embedding, self.mode = (
            hidden, drop_path_rates, layerdrop, embedding, mode)
        self.call, self.batch, self.skip = -1, None, None


class LayerPre(Hook):
    """Layer pre-hook of the `LayerState` protocol: the layer's call, batch size, embedding dropout, LayerDrop's
    draw."""

    pre = True
    with_kwargs = True

    def __init__(self, state):
        self.s = state

    def __call__(self, module, args, kwargs):
        s = self.s
        s.call = (s.call + 1) % len(s.rates)
        hs = hidden_arg(args, kwargs)
        if hs is None:
            return None
        s.batch = hs.shape[0]
        if not sampling(module):
            return None
        if s.embedding and s.call == 0:
            hs = F.dropout(hs, s.embedding, True)
            if args and isinstance(args[0], torch.Tensor):
                args = (hs,) + tuple(args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hs}
        if s.layerdrop and torch.rand(()) < s.layerdrop:
            s.skip = hs
        return args, kwargs


class LayerPost(Hook):
    """Returns the layer's input instead of its output when `LayerPre` drew a skip. A layer that changes the shape
    (the first block of a Hiera or BiT stage) cannot be skipped: it runs, said once per class and patch
    (``told``), at its first refused skip, since only running it shows the shapes."""

    with_kwargs = True

    def __init__(self, state, told: set):
        self.s, self.told = state, told

    def __call__(self, module, args, kwargs, output):
        skipped, self.s.skip = self.s.skip, None
        if skipped is None:
            return None

        def skip(out):
            if out.shape == skipped.shape:
                return skipped
            if type(module) not in self.told:
                self.told.add(type(module))
                warnings.warn(f"hfreg: `layerdrop`={self.s.layerdrop} cannot skip {type(module).__name__} layers "
                              f"that change the hidden states' shape (a stage's first block), so those always run",
                              UserWarning)
            return out

        return map_first(output, skip)


class Branch(Hook):
    """Hook at a branch end: hidden dropout and drop-path on its output. One instance serves every part of a
    branch summed from several modules (GraniteMoeHybrid's experts and shared MLP): the first part's call draws the
    drop-path mask, the others' reuse it. Counting calls, not forwards, keeps the draws where they were when
    gradient checkpointing reruns a layer's forward without its hooks on the layer."""

    def __init__(self, state, parts: int = 1):
        self.s, self.parts, self.calls, self.mask = state, parts, 0, None

    def __call__(self, module, args, output):
        if not sampling(module):
            return None
        s = self.s
        rate = s.rates[max(s.call, 0)]

        def regularize(x):
            if s.hidden:
                x = F.dropout(x, s.hidden, True)
            if rate:
                if self.calls % self.parts == 0:
                    self.mask = drop_path_mask(x, rate, s.mode, s.batch)
                self.calls += 1
                x = x * self.mask
            return x

        return map_first(output, regularize)


class ParallelDraw(Hook):
    """LayerDrop for a layer made of the i-th entries of parallel lists (XLM): the pre-hook of its first entry draws
    whether the layer is skipped in this forward; `ParallelSkip` hooks then make its branches add nothing (zeros)
    and its norms pass their input through, so the residual stream goes past the layer unchanged."""

    pre = True

    def __init__(self, p):
        self.p, self.skipped = p, False

    def __call__(self, module, args):
        self.skipped = bool(self.p and sampling(module) and torch.rand(()) < self.p)


class ParallelSkip(Hook):
    """Hook of a parallel layer's branch (zeros) or norm (its input) while `ParallelDraw` skips the layer."""

    def __init__(self, draw: ParallelDraw, norm: bool):
        self.draw, self.norm = draw, norm

    def __call__(self, module, args, output):
        if not self.draw.skipped:
            return None
        return args[0] if self.norm else map_first(output, torch.zeros_like)


class ResetCalls(Hook):
    """Model pre-hook for weight-shared layers: each forward starts their call count again."""

    pre = True

    def __init__(self, states):
        self.states = states

    def __call__(self, module, args):
        for s in self.states:
            s.call = -1


class OutputDropout(Hook):
    """Dropout on a module's output (activations, a LoRA adapter's identity slot)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, module, args, output):
        return F.dropout(output, self.p, True) if sampling(module) else None


class InputDropout(Hook):
    """Pre-hook: dropout on a module's first input (a classification head's Linear)."""

    pre = True

    def __init__(self, p):
        self.p = p

    def __call__(self, module, args):
        if not sampling(module) or not args:
            return None
        return (F.dropout(args[0], self.p, True),) + tuple(args[1:])


class DropHead(Hook):
    """Pre-hook of an attention module's output projection: DropHead on its input, the concatenated heads."""

    pre = True

    def __init__(self, p, heads):
        self.p, self.heads = p, heads

    def __call__(self, module, args):
        if not self.p or not sampling(module) or not args:
            return None
        return (drop_head(args[0], self.p, self.heads, True),) + tuple(args[1:])


class MixoutEnter(Hook):
    """Pre-hook of a weighted module: for this forward, a mixed weight in the instance ``__dict__`` shadows the
    parameter (attribute lookup finds it before `nn.Module.__getattr__`), so `state_dict` and the optimizer see the
    parameter alone, and gradients reach it through the mix. ``target`` is the weight at patch time."""

    pre = True

    def __init__(self, p, target):
        self.p, self.target = p, target

    def __call__(self, module, args):
        if self.p and sampling(module):
            module.__dict__["weight"] = mixout(module._parameters["weight"], self.target, self.p, True)


class MixoutExit(Hook):
    """Hook of the same module, called even when its forward raises: the parameter shows through again."""

    always_call = True

    def __call__(self, module, args, output):
        module.__dict__.pop("weight", None)


class PackedLengths(Hook):
    """Model pre-hook: where the forward's position ids pack several sequences into a row, the length of each
    position's sequence (`packed_lengths`), which `EmbeddingNoise` scales NEFTune by; None otherwise."""

    pre = True
    with_kwargs = True

    def __init__(self):
        self.lengths = None

    def __call__(self, module, args, kwargs):
        self.lengths = packed_lengths(kwargs.get("position_ids"))


class EmbeddingNoise(Hook):
    """NEFTune on an embedding module's output, or (``pre``) on the hidden states a tower's first layer takes; per
    packed sequence where ``packed`` (a `PackedLengths`) saw packed rows in this forward."""

    def __init__(self, p, pre=False, packed: PackedLengths | None = None):
        self.p = p  # NEFTune's alpha, named as the rates are so that `set_rate_factors` moves it
        self.pre = self.with_kwargs = pre
        self.packed = packed

    def noise(self, x):
        lengths = self.packed.lengths if self.packed is not None else None
        fits = lengths is not None and x.dim() >= 3 and tuple(lengths.shape) == tuple(x.shape[:2])
        return embedding_noise(x, self.p, True, lengths if fits else None)

    def __call__(self, module, args, *rest):
        if not self.p or not sampling(module):
            return None
        if not self.pre:
            return map_first(rest[-1], self.noise)
        kwargs = rest[0]
        if args and isinstance(args[0], torch.Tensor):
            return (self.noise(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": self.noise(kwargs["hidden_states"])}
        return None



class SdpaDropout(TorchFunctionMode):
    """Inside one attention module: give PyTorch's fused attention a dropout rate where the model passes none."""

    def __init__(self, p):
        super().__init__()
        self.p, self.calls = p, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            if len(args) > 4:  # dropout_p passed by position
                args = (*args[:4], args[4] or self.p, *args[5:])
            elif not kwargs.get("dropout_p"):
                kwargs = {**kwargs, "dropout_p": self.p}
        return func(*args, **kwargs)


class ModeEnter(Hook):
    """Pre-hook that runs its module's forward under the `TorchFunctionMode` that `mode` gives (None: none)."""

    pre = True

    def __init__(self):
        self.modes = []

    def mode(self, module) -> TorchFunctionMode | None:
        raise NotImplementedError

    def __call__(self, module, args):
        mode = self.mode(module)
        if mode is not None:
            mode.__enter__()
            self.modes.append(mode)


class ModeExit(Hook):
    """Hook of the same module, called even when its forward raises: leave the mode its pre-hook entered."""

    always_call = True

    def __init__(self, enter: ModeEnter):
        self.enter = enter

    def __call__(self, module, args, output):
        if self.enter.modes:
            mode = self.enter.modes.pop()
            mode.__exit__(None, None, None)
            self.left(module, mode)

    def left(self, module, mode) -> None:
        """After leaving ``mode``: what it saw may be worth saying."""


class AttentionEnter(ModeEnter):
    """In training, run an attention module's forward under `SdpaDropout`."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def mode(self, module):
        return SdpaDropout(self.p) if self.p and sampling(module) else None


class AttentionExit(ModeExit):
    """A module that ran without calling `scaled_dot_product_attention` (linear attention, a recurrent mixer) gets
    nothing: said once per module class and patch (``told``), at its first such forward, since only running it
    tells."""

    def __init__(self, enter: AttentionEnter, told: set):
        super().__init__(enter)
        self.told = told

    def left(self, module, mode):
        if not mode.calls and type(module) not in self.told:
            self.told.add(type(module))
            warnings.warn(f"hfreg: `attention`={mode.p} cannot apply to {type(module).__name__}: it computed "
                          f"attention without scaled_dot_product_attention, where hfreg injects it", UserWarning)

