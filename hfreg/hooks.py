"""The hook protocol every knob's hooks follow (`Hook`), the helpers they share and the hooks more than one knob
uses; each knob's own hooks sit in its module of `hfreg.knobs`. A hook is a small callable whose class says when it
runs; one that carries a knob's rate keeps it in ``p`` (the layer stack's hooks: in their shared
`hfreg.knobs.stack.LayerState`) so that `set_rate_factors` can move it during training. In eval mode every hook
passes its input through, unless `hfreg.mc_dropout` marked the module to sample (`SAMPLE_FLAG`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .state import follow_wrappers


class Hook:
    """Base of every forward hook hfreg registers. The class says how `register` puts it on a module: ``pre``
    (called before the module's forward, it may return new inputs) or after it (it may return a new output);
    ``with_kwargs`` (the keyword inputs too); ``always_call`` (called even when the forward raises, so a hook that
    leaves a state its pre-hook entered always runs). A hook whose rate `set_rate_factors` moves keeps it in ``p``."""

    pre: bool = False
    with_kwargs: bool = False
    always_call: bool = False

    def register(self, module: torch.nn.Module, prepend: bool = False):
        """Register this hook on ``module`` (first among its hooks with ``prepend``); returns the handle."""
        if self.pre:
            return module.register_forward_pre_hook(self, with_kwargs=self.with_kwargs, prepend=prepend)
        return module.register_forward_hook(self, with_kwargs=self.with_kwargs, always_call=self.always_call,
                                            prepend=prepend)


# set on a hooked module by `hfreg.mc_dropout`: its hooks sample in eval mode, the module itself stays in eval mode
SAMPLE_FLAG = "_hfreg_sample"


def sampling(module) -> bool:
    return module.training or module.__dict__.get(SAMPLE_FLAG, False)


def called_directly(layer: torch.nn.Module) -> str:
    """Why a knob acting through hooks on ``layer`` cannot act where its parent calls the layer's ``forward`` itself
    (`hfreg.sites.Inert.layers`)."""
    return f"its {type(layer).__name__} layers are run by calling their forward directly, so no hook on a layer runs"


def leads_with_tensor(output) -> bool:
    """Whether ``output`` is a tensor or a tuple or list led by one: what `map_first` can act on."""
    return isinstance(output, torch.Tensor) or (
        isinstance(output, (tuple, list)) and bool(output) and isinstance(output[0], torch.Tensor))


def map_first(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if leads_with_tensor(output):
        first = [fn(output[0]), *output[1:]]
        return first if isinstance(output, list) else tuple(first)  # OpenAI GPT's blocks return lists
    return output


def hidden_arg(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs.get("hidden_states")


class OutputDropout(Hook):
    """Dropout on a module's output (activation modules, a LoRA adapter's identity slot)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, module, args, output):
        return F.dropout(output, self.p, True) if sampling(module) else None


class InputDropout(Hook):
    """Pre-hook: dropout on a module's first input (a classification head's Linear, an MLP's output projection)."""

    pre = True  # a pre-hook: it may return new inputs

    def __init__(self, p):
        self.p = p  # the rate set_rate_factors moves

    def __call__(self, module, args):
        if not sampling(module) or not args:
            return None  # eval mode: the identity
        return (F.dropout(args[0], self.p, True),) + tuple(args[1:])


class FollowWrappers(Hook):
    """Model pre-hook: followed hooks move to a wrapper put around their module (`follow_wrappers`)."""

    pre = True

    def __call__(self, module, args):
        follow_wrappers(module)


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
