"""`classifier`: dropout on the input of a classification head's Linear layers, where the head has no dropout of its
own (a hard-coded head, or one whose dropout the model's config does not reach)."""

from __future__ import annotations

import torch.nn.functional as F

from ..hooks import Hook, sampling
from ..sites import Site
from ..state import Plan


class InputDropout(Hook):
    """Pre-hook: dropout on a module's first input (a classification head's Linear)."""

    pre = True  # a pre-hook: it may return new inputs

    def __init__(self, p):
        self.p = p  # the rate set_rate_factors moves

    def __call__(self, module, args):
        if not sampling(module) or not args:
            return None  # eval mode: the identity
        return (F.dropout(args[0], self.p, True),) + tuple(args[1:])


def inject(plan: Plan) -> list[Site]:
    """An `InputDropout` on each Linear of the head where the model has no head dropout of its own."""
    rate = plan.knobs.get("classifier")
    if rate is None or plan.natives_by["classifier"]:
        return []
    if not plan.struct.head_linears:
        plan.refuse("classifier", rate, "it has no classification head")
        return []
    for _, linear in plan.struct.head_linears:
        if rate:
            plan.state.hook(linear, InputDropout(rate), knob="classifier")
    return [Site(path + ".<input>", "classifier", rate, None, "injected") for path, _ in plan.struct.head_linears]
