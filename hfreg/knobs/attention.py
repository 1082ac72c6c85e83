"""`attention`: dropout on attention probabilities. Set in the model's own sites where it has them; where it has none
(e.g. a hard-coded ``dropout_p=0.0``), the rate is handed to PyTorch's `scaled_dot_product_attention` called inside
each attention module, under a `TorchFunctionMode` entered for that module's forward."""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..hooks import ModeEnter, ModeExit, sampling
from ..sites import Site
from ..state import Plan


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


def inject(plan: Plan) -> list[Site]:
    """An `AttentionEnter` / `AttentionExit` pair on each attention module of the towers without a native site. Only
    under the sdpa attention implementation; an eager softmax offers nothing to hand the rate to."""
    model, struct, knobs, natives_by, state = plan.model, plan.struct, plan.knobs, plan.natives_by, plan.state
    rate = knobs.get("attention")
    native = {t for n in natives_by["attention"] for t in n.towers}
    if rate is None or (len(native) == len(struct.towers) and natives_by["attention"]):
        return []
    modules = [(path, m, layer.index) for t, tower in enumerate(struct.towers) if t not in native
               for layer in tower for path, m in layer.attentions]
    if not modules and natives_by["attention"]:  # the towers without a site have no attention to hand it to
        return []
    impl = getattr(model.config, "_attn_implementation", None)
    if not modules or impl != "sdpa":
        why = "it has no attention-probability dropout site"
        if natives_by["attention"]:  # it acts in the other towers: name those where it cannot
            stacks = sorted({tower[0].path.rsplit(".", 1)[0] for t, tower in enumerate(struct.towers)
                             if t not in native and any(layer.attentions for layer in tower)})
            why = f"the attention of {', '.join(stacks)} has no attention-probability dropout site"
        if modules:
            why += (f", and its attention implementation is {impl!r}: hfreg injects one only into PyTorch's "
                    f"scaled_dot_product_attention (attn_implementation='sdpa')")
        plan.refuse("attention", rate, why)
        return []
    told: set = set()
    for _, module, _ in modules:
        if rate:
            enter = state.hook(module, AttentionEnter(rate), knob="attention")
            state.hook(module, AttentionExit(enter, told))
    return [Site(path, "attention", rate, index, "injected") for path, _, index in modules]
