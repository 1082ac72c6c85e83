"""`classifier`: dropout on the input of a classification head's Linear layers, where the head has no dropout of its
own (a hard-coded head, or one whose dropout the model's config does not reach)."""

from __future__ import annotations

from ..hooks import InputDropout
from ..sites import Site
from ..state import Plan


def inject(plan: Plan) -> list[Site]:
    """An `InputDropout` on each Linear of the head where the model has no head dropout of its own."""
    rate = plan.knobs.get("classifier")
    if rate is None or plan.natives_by["classifier"]:
        return []
    if not plan.struct.head_linears:
        plan.refuse("classifier", rate, "it has no classification head")
        return []
    for path, _ in plan.struct.head_linears:
        if rate:  # PEFT's sequence-classification task trains a copy of the head (`modules_to_save`): it follows
            plan.state.hook_at(plan.model, path, InputDropout(rate), knob="classifier", above=True)
    return [Site(path + ".<input>", "classifier", rate, None, "injected") for path, _ in plan.struct.head_linears]
