"""`heads`: DropHead (Zhou et al., 2020, "Scheduled DropHead: A Regularization Method for Transformer Models"): whole
attention heads dropped per example, the kept ones scaled by 1/(1-p), at the input of each attention module's output
projection, where the heads sit side by side."""

from __future__ import annotations

from torch import nn

from ..hooks import Hook, sampling
from ..layers import drop_head
from ..sites import Site, calls, is_weighted
from ..state import Plan


class DropHead(Hook):
    """Pre-hook of an attention module's output projection: DropHead on its input, the concatenated heads."""

    pre = True

    def __init__(self, p, heads):
        self.p, self.heads = p, heads

    def __call__(self, module, args):
        if not self.p or not sampling(module) or not args:
            return None
        return (drop_head(args[0], self.p, self.heads, True),) + tuple(args[1:])


# where attention modules keep their head count; the config's keys after them
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "attention_heads", "n_heads_q")


# the names attention modules give their output projection
_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "out", "proj", "to_out", "projection")


def _output_projection(attention: nn.Module) -> tuple[str, nn.Module, int] | None:
    """(relative path, module, input width) of an attention module's output projection: the last weighted module
    named like one, else its last weighted child (not one inside a sub-module of its own, such as DeepSeek V4's
    compressor); PEFT adapters' own layers left out and a wrapped base layer hooked through its wrapper."""
    named, child = None, None
    for name, m in attention.named_modules():
        if "lora_" in name or not is_weighted(m) or isinstance(m, nn.modules.conv._ConvNd):
            continue
        width = m.weight.shape[0] if type(m).__name__ == "Conv1D" else m.weight.shape[-1]
        if name.endswith("base_layer"):
            name = name.removesuffix(".base_layer")
            m = attention.get_submodule(name)
        last = name.rsplit(".", 1)[-1]
        if last in _OUT_NAMES or name.endswith("output.dense"):
            named = (name, m, width)
        if "." not in name:
            child = (name, m, width)
    return named or child


def _count(values) -> int | None:
    """The first positive int among ``values`` (bools are not counts)."""
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)


def _head_width(attention: nn.Module) -> int | None:
    """The width of one head, where the attention module says it."""
    return _count(attention.__dict__.get(a) for a in ("head_dim", "attention_head_size", "head_size", "d_kv"))


def _head_count(attention: nn.Module, config) -> int | None:
    configs = [c for c in (getattr(attention, "config", None), config) if c is not None]
    return _count([m.__dict__.get(a) for m in attention.modules() for a in _HEAD_ATTRS]
                  + [getattr(c, a, None) for c in configs for a in _HEAD_ATTRS + ("encoder_attention_heads",)])


def inject(plan: Plan) -> list[Site]:
    """`heads` (DropHead) at the input of each attention module's output projection, split by the head count."""
    model, struct, knobs, state = plan.model, plan.struct, plan.knobs, plan.state
    rate = knobs.get("heads")
    if rate is None:
        return []
    found, missed, bare, functional = [], [], [], []
    for tower in struct.towers:
        before = len(found)
        for layer in tower:
            found += _heads_of(layer, model.config, missed, functional)
        if len(found) == before and len(struct.towers) > 1:
            bare.append(tower[0].path.rsplit(".", 1)[0])
    if functional:
        plan.refuse("heads", rate, f"the attention of {len(functional)} module(s) (first: {functional[0]}) hands its "
                                    f"output projection's weights to F.multi_head_attention_forward, which never "
                                    f"calls it: no hook there sees the heads")
    if not found:
        if not functional:
            why = "no attention module with an output projection and a head count was found in its layers"
            plan.refuse("heads", rate, why)
        return []
    if bare:  # a tower without such attention (the SSM language model beside a vision tower)
        plan.refuse("heads", rate, f"no attention module with an output projection and a head count was found "
                                    f"in the layers of {', '.join(bare)}")
    if missed:
        plan.refuse("heads", rate, f"the attention of {len(missed)} module(s) (first: {missed[0]}) has no output "
                                    f"projection that splits into its heads")
    for path, _, heads, _ in found:
        if rate:
            state.hook_at(model, path, DropHead(rate, heads), knob="heads")
    return [Site(path + ".<input>", "heads", rate, index, "injected") for path, _, _, index in found]


def _heads_of(layer, config, missed: list, functional: list) -> list:
    """(projection path, projection, head count, layer index) for each attention module of ``layer`` whose output
    projection takes its heads side by side, and is called as a module; the paths of the others go to ``missed``,
    or to ``functional`` where only the call is lacking."""
    found = []
    for path, attention in layer.attentions:
        proj, heads = _output_projection(attention), _head_count(attention, config)
        width = _head_width(attention)
        # its input must be the heads side by side: as wide as heads x head width, where that is known
        if proj is None or heads is None or proj[2] % heads or (width and proj[2] != heads * width):
            missed.append(path)
            continue
        # WavLM hands the projection's weights to F.multi_head_attention_forward: no hook on the module would run
        if calls(type(attention), "multi_head_attention_forward"):
            functional.append(path)
            continue
        found.append((f"{path}.{proj[0]}" if proj[0] else path, proj[1], heads, layer.index))
    return found
