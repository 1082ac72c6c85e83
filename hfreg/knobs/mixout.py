"""`mixout`: Mixout (Lee et al., 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained Language
Models"): each weight of the chosen layers replaced, with probability p, by its value at patch time, rescaled so that
its expectation is the current weight; with ``mixout_target="zero"``, by zero: DropConnect (Wan et al., 2013). The
mixed weight shadows the parameter for one forward, so `state_dict` and the optimizer see the parameter alone."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from ..hooks import Hook, sampling
from ..layers import mixout
from ..sites import Site, analyze, is_weighted
from ..state import Plan, patch_state, unwrap


@dataclass
class Held:
    """What Mixout keeps in the patch state (`PatchState.held`): the modules whose weights it mixes and the handles of
    its hooks there, which `follow_mixout` moves when those weights freeze."""

    modules: list[nn.Module]
    handles: list = field(default_factory=list)
    enters: list = field(default_factory=list)  # each module's `MixoutEnter`, which holds its target
    trainable: tuple = ()  # which of the model's tensors were trainable when it chose: any change means choosing again


class MixoutEnter(Hook):
    """Pre-hook of a weighted module: for this forward, a mixed weight in the instance ``__dict__`` shadows the
    parameter (attribute lookup finds it before `nn.Module.__getattr__`), so `state_dict` and the optimizer see the
    parameter alone, and gradients reach it through the mix. ``target`` is the weight at patch time."""

    pre = True

    def __init__(self, p, target):
        self.p, self.target = p, target

    def __call__(self, module, args):
        if self.p and sampling(module):
            weight = module._parameters["weight"]
            if self.target.dtype != weight.dtype or self.target.device != weight.device:
                self.target = self.target.to(weight)  # it follows `.to()`, `.half()`, as a buffer would
            module.__dict__["weight"] = mixout(weight, self.target, self.p, True)


class MixoutExit(Hook):
    """Hook of the same module, called even when its forward raises: the parameter shows through again."""

    always_call = True

    def __call__(self, module, args, output):
        module.__dict__.pop("weight", None)


def inject(plan: Plan) -> list[Site]:
    """Mixout on the chosen weights (`mix`), and a model pre-hook that moves it to the weights trainable at each
    forward: weights frozen after the patch (`get_peft_model`) hand it on (`follow_mixout`). A patch that replaces
    one with Mixout keeps its targets (changing a rate mid-training must not move them to the weights as trained)."""
    if plan.knobs.get("mixout") is None:
        return []
    held = plan.before.get("mixout")
    sites = mix(plan, {m: enter.target for m, enter in zip(held.modules, held.enters)} if held else None)
    plan.state.hook(plan.model, FollowMixout())
    return sites


def mix(plan: Plan, targets: dict | None = None) -> list[Site]:
    """`mixout` on the weight of every weighted module of the layers (or of those ``reg.mixout_modules`` names),
    trainable ones only: a frozen weight stays at its target, so mixing it changes nothing. Under PEFT that means
    the adapters' own weights (LoRA's A and B), the base weights being frozen; `follow_mixout` moves it there when
    the adapters come after the patch. DropConnect (``mixout_target="zero"``) drops frozen weights too (under PEFT
    the base weights and the adapters'). ``targets`` (module -> target): those of weights mixed before and still
    trainable, which they keep. A frozen weight's target is let go (under PEFT, a copy of every base weight).
    """
    model, struct, reg, state = plan.model, plan.struct, plan.reg, plan.state
    rate = plan.knobs["mixout"]
    layer_of = {p: layer.index for layer in struct.layers for p in (layer.path, *layer.members)}
    chosen = []
    for name, m in model.named_modules():
        # a frozen weight stays at Mixout's target, so mixing it changes nothing; DropConnect drops it all the same
        if not is_weighted(m) or frozen(m) and (reg.mixout_target != "zero" or not _is_parameter(m)):
            continue
        root = next((p for p in layer_of if name.startswith(p + ".")), None)
        if reg.mixout_modules is not None:
            if any(fnmatch.fnmatchcase(name, pat) for pat in reg.mixout_modules):
                chosen.append((name, m, layer_of.get(root)))
        elif root is not None:
            chosen.append((name, m, layer_of[root]))
    # held even when nothing is chosen: weights unfrozen later are then chosen (`follow_mixout`)
    held = state.held["mixout"] = Held([m for _, m, _ in chosen], trainable=_trainable(model))
    targets = targets or {}
    if not chosen:
        trainable = "" if reg.mixout_target == "zero" else "trainable "
        where = (f"no {trainable}weighted module matches mixout_modules={reg.mixout_modules}"
                 if reg.mixout_modules is not None else f"no {trainable}Linear or convolution was found in its layers")
        plan.refuse("mixout", rate, where)
        return []
    if rate:
        exit_hook, first = MixoutExit(), len(state.handles)
        for _, m, _ in chosen:
            kept = targets.get(m)  # a weight replaced by one of another shape since takes a new target
            if reg.mixout_target == "zero":  # DropConnect: one zero, broadcast, no copy of the weight
                target = m.weight.new_zeros(())
            elif kept is not None and kept.shape == m.weight.shape:
                target = kept
            else:
                target = m.weight.detach().clone()
            enter = state.hook(m, MixoutEnter(rate, target), knob="mixout")
            enter.p = rate * state.factors["mixout"]  # a rate schedule in progress (`follow_mixout`)
            state.hook(m, exit_hook)
            held.enters.append(enter)
        held.handles = state.handles[first:]
    return [Site(name, "mixout", rate, index, "injected") for name, _, index in chosen]


def _trainable(model) -> tuple:
    return tuple(p.requires_grad for p in model.parameters())


def _is_parameter(module) -> bool:
    return isinstance(module._parameters.get("weight"), nn.Parameter)


def frozen(module) -> bool:
    """Whether ``module`` has no trainable weight of its own (Mixout mixes trainable weights only)."""
    weight = module._parameters.get("weight")
    return not isinstance(weight, nn.Parameter) or not weight.requires_grad


class FollowMixout(Hook):
    """Model pre-hook: Mixout follows the trainable weights at each forward (`follow_mixout`)."""

    pre = True

    def __call__(self, module, args):
        follow_mixout(module)


def follow_mixout(model) -> bool:
    """Move Mixout to the weights trainable now where that has changed since it chose. PEFT's `get_peft_model` on a
    patched model freezes the base weights and adds adapters, whose weights then take Mixout (their values now are
    the targets); weights unfrozen later (gradual unfreezing) take it towards their values on unfreezing (the
    pretrained ones where they never trained); weights mixed throughout keep their targets. Called by the patch's
    model pre-hook at every forward and by `inspect_model`; does nothing while the trainable weights stay as they
    were.

    Args:
        model: a model, patched or not (a PEFT wrapper is looked through).

    Returns:
        Whether Mixout moved.
    """
    model = unwrap(model)
    state = patch_state(model)
    held = state.held.get("mixout") if state is not None else None
    if held is None or _trainable(model) == held.trainable:
        return False
    kept = {m: enter.target for m, enter in zip(held.modules, held.enters) if not frozen(m)}
    mixout = {id(h) for h in held.handles}
    for handle in held.handles:
        handle.remove()
    state.handles = [h for h in state.handles if id(h) not in mixout]
    state.live = [e for e in state.live if not isinstance(e[0], MixoutEnter)]  # the targets go with them
    state.injected = [s for s in state.injected if s.kind != "mixout"]
    del state.held["mixout"]
    state.injected += mix(Plan(model, analyze(model), state.reg, state.reg.knob_values(), {}, state), kept)
    return True
