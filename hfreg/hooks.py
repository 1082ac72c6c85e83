"""The hook protocol every knob's hooks follow (`Hook`), the helpers they share and the hooks more than one knob
uses; each knob's own hooks sit in its module of `hfreg.knobs`. A hook is a small callable whose class says when it
runs; one that carries a knob's rate keeps it in ``p`` (the layer stack's hooks: in their shared
`hfreg.knobs.stack.LayerState`) so that `set_rate_factors` can move it during training. In eval mode every hook
passes its input through, unless `hfreg.mc_dropout` marked the module to sample (`SAMPLE_FLAG`).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


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


class OutputDropout(Hook):
    """Dropout on a module's output (activations, a LoRA adapter's identity slot)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, module, args, output):
        return F.dropout(output, self.p, True) if sampling(module) else None


class ModeEnter(Hook):
    """Pre-hook that runs its module's forward under the `TorchFunctionMode` that `mode` gives (None: none)."""

    pre = True

    def __init__(self):
        self.modes = []

    def mode(self, module) -> TorchFunctionMode | None:
        raise NotImplementedError

    def __call__(self, module, args):
        if self.modes:  # an earlier forward of this module never reached its exit hook
            _close_since(self.modes[0])
        mode = self.mode(module)
        if mode is not None:
            mode.__enter__()
            self.modes.append(mode)
            _opened().append((self, mode))


class ModeExit(Hook):
    """Hook of the same module, called even when its forward raises: leave the mode its pre-hook entered."""

    always_call = True

    def __init__(self, enter: ModeEnter):
        self.enter = enter

    def __call__(self, module, args, output):
        if self.enter.modes:
            mode = self.enter.modes.pop()
            mode.__exit__(None, None, None)
            opened = _opened()
            if opened and opened[-1][1] is mode:
                opened.pop()
            self.left(module, mode)

    def left(self, module, mode) -> None:
        """After leaving ``mode``: what it saw may be worth saying."""


# The modes `ModeEnter`s entered and their `ModeExit`s have not left, oldest first, per thread as torch's own mode
# stack is. torch calls an `always_call` hook when a forward raises an Exception, not a KeyboardInterrupt: a forward
# interrupted that way leaves its modes entered (an attention module's `SdpaDropout` would then drop out every later
# attention call, in eval too) until that module's next forward closes them here.
_OPEN = threading.local()


def _opened() -> list:
    if not hasattr(_OPEN, "modes"):
        _OPEN.modes = []
    return _OPEN.modes


def _close_since(mode) -> None:
    """Leave ``mode`` and every mode entered after it, newest first: all were entered inside a forward that ended
    without its exit hooks (modes entered before it belong to outer forwards still running). A mode of another
    thread is not this thread's to close."""
    _close_from(next((i for i, (_, m) in enumerate(_opened()) if m is mode), None))


def _close_from(at: int | None) -> None:
    opened = _opened()
    if at is None:
        return
    for enter, stale in reversed(opened[at:]):
        stale.__exit__(None, None, None)
        enter.modes.remove(stale)
    del opened[at:]


class CloseStale(Hook):
    """Pre-hook on a patched model, its first: before a forward of the model, any mode its `ModeEnter`s (``enters``)
    left open is stale, since none of its modules runs before the model does. Closing them here spares the first
    layers of the next forward a mode an interrupted forward left behind."""

    pre = True

    def __init__(self):
        self.enters = set()  # the patch's `ModeEnter`s, once it has hooked them all

    def __call__(self, module, args):
        opened = _opened()
        if opened and self.enters:
            _close_from(next((i for i, (e, _) in enumerate(opened) if e in self.enters), None))
