"""`adapter`: dropout on the input of PEFT adapters (LoRA's ``lora_dropout``). A native site where the adapter has a
dropout module; where it has none (``lora_dropout=0`` builds an identity), a hook on that identity, i.e. on the
adapter's input only."""

from __future__ import annotations

from ..hooks import OutputDropout
from ..sites import Site
from ..state import Plan


def inject(plan: Plan) -> list[Site]:
    rate = plan.knobs.get("adapter")
    if rate is None:
        return []
    if not plan.struct.adapter_slots and not plan.natives_by["adapter"]:
        plan.refuse("adapter", rate, "it has no PEFT adapter with a dropout slot (LoRA's `lora_dropout`)")
        return []
    for _, identity, _ in plan.struct.adapter_slots:
        if rate:
            plan.state.hook(identity, OutputDropout(rate), knob="adapter")
    return [Site(path, "adapter", rate, layer, "injected") for path, _, layer in plan.struct.adapter_slots]
