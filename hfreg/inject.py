"""The patch step: one `RegularizationConfig` rewired into a transformers model by hooks and attribute changes,
given which native sites a small twin showed to be inert (`hfreg.patcher.patch_model` computes that and calls
`apply_spec`; `hfreg.probing` calls `apply_spec` itself, so that probing never re-enters the twin check).

The mechanism, the same for every architecture:
  * native sites an architecture already has (nn.Dropout, float attributes, config keys read in forward) are
    set to the spec's rate for `attention`, `embedding`, `activation`, `classifier` and `layerdrop`;
  * `hidden` and `drop_path` are owned by hfreg: in a tower whose residual branches it hooks, native residual
    dropout and drop-path are zeroed and one forward hook at the end of every branch applies both, so every
    branch gets exactly one of each; native sites outside such towers take the rate in place;
  * a knob that cannot act somewhere warns and records why (`PatchState.refused`); one that can act nowhere leaves
    the model's own sites of it as they were;
  * where an architecture has no native site for a knob, its injector (`INJECTORS`, one per knob) hooks it in
    (stack input for `embedding`, activation modules for `activation`, head Linear inputs for `classifier`, layer
    hooks for `layerdrop`);
  * the knobs no model has natively are injectors too: `heads` on the input of each attention module's output
    projection, `mixout` on the weighted modules of the layers (the mixed weight shadows the parameter for one
    forward), `embedding_noise` on the input embeddings' output.
Hooks and attribute changes never touch parameters, so `state_dict` keys and values stay as they were.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .config import CONFIG_ATTR, KNOBS, RegularizationConfig
from .fast_masks import MasksEnter
from .hooks import (
    AttentionEnter,
    AttentionExit,
    Branch,
    DropHead,
    EmbeddingNoise,
    Hook,
    InputDropout,
    LayerPost,
    LayerPre,
    LayerState,
    MixoutEnter,
    MixoutExit,
    ModeExit,
    OutputDropout,
    PackedLengths,
    ParallelDraw,
    ParallelSkip,
    ResetCalls,
)
from .layers import drop_path_rates
from .sites import Site, Structure, analyze, stack_key
from .state import STATE_ATTR, PatchState, patch_state, unpatch_model, unwrap

# knobs hfreg applies itself at branch ends, after zeroing the native sites
_OWNED = ("hidden", "drop_path")


@dataclass
class Plan:
    """What every injector reads: the model, its structure, the spec and the knobs it sets, each knob's live native
    sites (``natives_by``), and the patch state it records its hooks, sites and refusals in."""

    model: nn.Module
    struct: Structure
    reg: RegularizationConfig
    knobs: dict
    natives_by: dict
    state: PatchState

    def refuse(self, knob: str, rate: float | None, why: str) -> None:
        """``knob`` cannot act somewhere in the model: recorded in the patch state and warned (`PatchState.refuse`)."""
        self.state.refuse(knob, rate, why, self.model)


def apply_spec(model, reg: RegularizationConfig, inert: frozenset[str] = frozenset()) -> PatchState:
    """Apply ``reg`` to the transformers model ``model`` (unwrapped) in place, first undoing an earlier patch.
    ``inert``: native sites known to change nothing in training (path patterns, as `hfreg.probing.inert_sites`
    gives them); decisions to inject look past them. Returns the patch state; a failure undoes everything."""
    unpatch_model(model)
    struct = analyze(model)
    knobs = reg.knob_values()
    state = PatchState(reg, struct)
    object.__setattr__(model, STATE_ATTR, state)  # before the first change: a failure below is undone in full
    try:
        # decisions about injecting look at live sites only: a dead attribute, or one a small twin shows to run
        # without effect (SAM's vision attention under sdpa), regularizes nothing. Inert sites still get the rate:
        # an input the twin's lacks may reach them (a causal LM's cross-attention given encoder states)
        natives_by = {k: [n for n in struct.natives if n.kind == k and not n.dead and stack_key(n.path) not in inert]
                      for k in KNOBS}
        # native residual dropout and drop-path inside a tower with branch hooks give way to hfreg's hooks; the
        # others (a backbone whose stack is not found) act where they are, so the knob still acts
        hooked = {t for t, tower in enumerate(struct.towers) if any(layer.branches for layer in tower)}
        # only for a knob the spec sets: an unset one leaves the model's own sites acting, and listed, as they are
        state.replaced = {n.path for n in struct.natives if n.kind in _OWNED and n.kind in knobs
                          and set(n.towers) & hooked}
        for k in _OWNED:
            natives_by[k] = [n for n in natives_by[k] if n.path not in state.replaced]
        plan = Plan(model, struct, reg, knobs, natives_by, state)
        for _, inject in INJECTORS:
            state.injected += inject(plan)
        if knobs.get("mixout") is not None:  # weights frozen after the patch (`get_peft_model`) hand it on
            state.hook(model, FollowMixout())
        if any(knobs.values()):  # cheaper masks for every dropout of the training forward (no knob: none drawn)
            # the model, each layer and its parts: gradient checkpointing recomputes a layer (or only the inside of
            # its forward) alone, and must draw the same masks again
            parts = [m for x in struct.layers for m in (x.module, *x.module.children())]
            for module in [model, *{id(m): m for m in parts}.values()]:
                enter = state.hook(module, MasksEnter())
                state.hook(module, ModeExit(enter))
        _set_natives(struct, reg, knobs, natives_by, state)
        state.assign(model.config, CONFIG_ATTR, reg.to_dict())
    except BaseException:
        unpatch_model(model)
        raise
    return state


def _set_natives(struct: Structure, reg, knobs, natives_by, state: PatchState) -> None:
    """Put each knob's rate in its native sites: zero where hfreg's hooks replace them or the site is dead (unread,
    or broken when on); sites of `hidden` and `drop_path` that no hook replaces act in place."""
    # drop-path sites acting in place take the depth schedule over their own order, as layers 1..N of N: the
    # first layer's rate is 0 under the linear schedule, and transformers builds no site there (an identity)
    own = [n.path for n in struct.natives if n.kind == "drop_path" and n.path not in state.replaced and not n.dead]
    depth = dict(zip(own, drop_path_rates(knobs.get("drop_path") or 0.0, len(own) + 1, reg.drop_path_profile)[1:]))
    acting = {s.kind for s in state.injected} | {k for k, sites in natives_by.items() if sites}
    # a knob that cannot act anywhere (it warned) leaves its sites as they were: a request it cannot honour must
    # not undo the model's own regularization
    nowhere = {k for k, rate in knobs.items() if rate and k not in acting}
    for n in struct.natives:
        if n.kind not in knobs or n.kind in nowhere:
            continue
        rate = knobs[n.kind]
        if n.path in state.replaced or n.dead:
            rate = 0.0
        elif n.kind == "drop_path":
            rate = depth[n.path]
        state.assign(n.owner, n.attr, rate)
        if n.path not in state.replaced and not n.dead:
            state.live.append((n.owner, n.attr, n.kind, rate))


# knobs that act through the layer stack (hooks on layers, branches and activations)
_LAYER_KNOBS = ("hidden", "drop_path", "layerdrop", "embedding", "activation")


def _inject_layers(plan: Plan) -> list[Site]:
    """Hooks on each layer and its branch ends and activations; returns the sites they add."""
    model, struct, reg, state = plan.model, plan.struct, plan.reg, plan.state
    knobs, natives_by = plan.knobs, plan.natives_by
    injected: list[Site] = []
    if not struct.layers:
        for knob in _LAYER_KNOBS:
            if knob in knobs and not natives_by[knob]:
                plan.refuse(knob, knobs[knob], "no stack of residual layers was found")
        return injected
    hidden = knobs.get("hidden") or 0.0
    # a tower with a native site for a knob keeps it; the others (a language model beside a vision tower that has
    # embedding dropout) get the knob injected
    native = {k: {t for n in natives_by[k] for t in n.towers} for k in ("layerdrop", "embedding", "activation")}
    states, warned, told = [], set(), set()
    for t, tower in enumerate(struct.towers):
        layerdrop = 0.0 if t in native["layerdrop"] else (knobs.get("layerdrop") or 0.0)
        embedding = 0.0 if t in native["embedding"] else (knobs.get("embedding") or 0.0)
        activation = knobs.get("activation") if t not in native["activation"] else None
        if tower[0].parallel:  # no module of the layer's own to feed; skipped through its entries' hooks
            if embedding and "embedding" not in warned:
                warned.add("embedding")
                plan.refuse("embedding", embedding, "its layers are parallel per-index lists joined in forward: "
                                                     "no layer module to take the input of")
            if layerdrop and not tower[0].skippable and "layerdrop" not in warned:
                warned.add("layerdrop")
                plan.refuse("layerdrop", layerdrop, "its layers are parallel per-index lists joined in forward, "
                                                     "beside per-index lists that are neither branches nor norms")
            embedding = 0.0
        if activation is not None and not any(layer.activations for layer in tower):
            where = f" of {tower[0].path.rsplit('.', 1)[0]}" if len(struct.towers) > 1 else ""
            plan.refuse("activation", activation, f"no activation module was found in the layers{where}")
        depth = tower[0].depth
        rates = drop_path_rates(knobs.get("drop_path") or 0.0, depth, reg.drop_path_profile)
        for pos, layer in enumerate(tower):
            own = rates[layer.index:layer.index + layer.calls]
            emb = embedding if pos == 0 else 0.0
            skip = layerdrop if layer.skippable else 0.0
            whole = 0.0 if layer.parallel else skip  # a parallel layer is skipped through its entries' hooks
            s = LayerState(hidden, own, whole, emb, reg.drop_path_mode)
            states.append(s)
            state.live += [(s, "hidden", "hidden", hidden), (s, "rates", "drop_path", tuple(own)),
                           (s, "layerdrop", "layerdrop", whole), (s, "embedding", "embedding", emb)]
            for i, rate in enumerate(own):
                idx = layer.index + i
                if "hidden" in knobs:
                    injected += [Site(p, "hidden", hidden, idx, "injected") for p, _ in layer.branches]
                if "drop_path" in knobs:
                    injected += [Site(p, "drop_path", rate, idx, "injected") for p, _ in layer.branches]
                if "layerdrop" in knobs and t not in native["layerdrop"] and layer.skippable:
                    injected.append(Site(layer.path, "layerdrop", layerdrop, idx, "injected"))
            if "embedding" in knobs and t not in native["embedding"] and pos == 0:
                injected.append(Site(layer.path + ".<input>", "embedding", embedding, None, "injected"))
            if layer.parallel and skip:
                draw = state.hook(layer.module, ParallelDraw(skip), knob="layerdrop")
                for _, part in layer.branches:
                    state.hook(part, ParallelSkip(draw, norm=False))
                for _, norm in layer.norms:
                    state.hook(norm, ParallelSkip(draw, norm=True))
            if emb or whole or any(own):  # batch size for drop-path, input for embedding dropout / LayerDrop
                state.hook(layer.module, LayerPre(s))
            if whole:
                state.hook(layer.module, LayerPost(s, told))
            if hidden or any(own):
                for group in layer.branch_groups():
                    hook = Branch(s, len(group))  # one per branch: its parts share the drop-path draw
                    for _, part in group:
                        state.hook(part, hook)
            if activation is not None:
                for path, act in layer.activations:
                    injected.append(Site(path, "activation", activation, layer.index, "injected"))
                    if activation:
                        state.hook(act, OutputDropout(activation), knob="activation")
    if any(layer.calls > 1 for layer in struct.layers):
        state.hook(model, ResetCalls(states))
    for knob in ("hidden", "drop_path"):
        if knob in knobs and not natives_by[knob] and not any(layer.branches for layer in struct.layers):
            plan.refuse(knob, knobs[knob], "no residual branch was found in its layers")
    return injected


def _inject_classifier(plan: Plan) -> list[Site]:
    """`classifier` dropout where a head has none: on the input of the head's Linear layers."""
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


def _inject_attention(plan: Plan) -> list[Site]:
    """`attention` where a model has no attention-probability dropout (e.g. a hard-coded ``dropout_p=0.0``): the
    rate is handed to PyTorch's `scaled_dot_product_attention` called inside each attention module. Only under the
    sdpa attention implementation; an eager softmax offers nothing to hand it to."""
    model, struct, knobs, natives_by, state = plan.model, plan.struct, plan.knobs, plan.natives_by, plan.state
    rate = knobs.get("attention")
    native = {t for n in natives_by["attention"] for t in n.towers}
    if rate is None or len(native) == len(struct.towers) and natives_by["attention"]:
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


def _inject_adapters(plan: Plan) -> list[Site]:
    """`adapter` dropout where a PEFT adapter has none: a hook on its identity, i.e. on the adapter's input only."""
    struct, knobs, natives_by, state = plan.struct, plan.knobs, plan.natives_by, plan.state
    rate = knobs.get("adapter")
    if rate is None:
        return []
    if not struct.adapter_slots and not natives_by["adapter"]:
        plan.refuse("adapter", rate, "it has no PEFT adapter with a dropout slot (LoRA's `lora_dropout`)")
        return []
    for _, identity, _ in struct.adapter_slots:
        if rate:
            state.hook(identity, OutputDropout(rate), knob="adapter")
    return [Site(path, "adapter", rate, layer, "injected") for path, _, layer in struct.adapter_slots]


# where attention modules keep their head count; the config's keys after them
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "attention_heads", "n_heads_q")


def _is_weighted(module) -> bool:
    """A module whose ``weight`` parameter is one matrix (or kernel) of a linear map: Linear, transformers'
    Conv1D (GPT-2), convolutions."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D"


# the names attention modules give their output projection
_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "out", "proj", "to_out", "projection")


def _output_projection(attention: nn.Module) -> tuple[str, nn.Module, int] | None:
    """(relative path, module, input width) of an attention module's output projection: the last weighted module
    named like one, else its last weighted child (not one inside a sub-module of its own, such as DeepSeek V4's
    compressor); PEFT adapters' own layers left out and a wrapped base layer hooked through its wrapper."""
    named, child = None, None
    for name, m in attention.named_modules():
        if "lora_" in name or not _is_weighted(m) or isinstance(m, nn.modules.conv._ConvNd):
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


def _inject_heads(plan: Plan) -> list[Site]:
    """`heads` (DropHead) at the input of each attention module's output projection, split by the head count."""
    model, struct, knobs, state = plan.model, plan.struct, plan.knobs, plan.state
    rate = knobs.get("heads")
    if rate is None:
        return []
    found, missed, bare = [], [], []
    for tower in struct.towers:
        before = len(found)
        for layer in tower:
            found += _heads_of(layer, model.config, missed)
        if len(found) == before and len(struct.towers) > 1:
            bare.append(tower[0].path.rsplit(".", 1)[0])
    if not found:
        why = "no attention module with an output projection and a head count was found in its layers"
        plan.refuse("heads", rate, why)
        return []
    if bare:  # a tower without such attention (the SSM language model beside a vision tower)
        plan.refuse("heads", rate, f"no attention module with an output projection and a head count was found "
                                    f"in the layers of {', '.join(bare)}")
    if missed:
        plan.refuse("heads", rate, f"the attention of {len(missed)} module(s) (first: {missed[0]}) has no output "
                                    f"projection that splits into its heads")
    for _, module, heads, _ in found:
        if rate:
            state.hook(module, DropHead(rate, heads), knob="heads")
    return [Site(path + ".<input>", "heads", rate, index, "injected") for path, _, _, index in found]


def _heads_of(layer, config, missed: list) -> list:
    """(projection path, projection, head count, layer index) for each attention module of ``layer`` whose output
    projection takes its heads side by side; the paths of the others go to ``missed``."""
    found = []
    for path, attention in layer.attentions:
        proj, heads = _output_projection(attention), _head_count(attention, config)
        width = _head_width(attention)
        # its input must be the heads side by side: as wide as heads x head width, where that is known
        if proj is None or heads is None or proj[2] % heads or (width and proj[2] != heads * width):
            missed.append(path)
            continue
        found.append((f"{path}.{proj[0]}" if proj[0] else path, proj[1], heads, layer.index))
    return found


def _inject_mixout(plan: Plan) -> list[Site]:
    """`mixout` on the weight of every weighted module of the layers (or of those ``reg.mixout_modules`` names),
    trainable ones only: a frozen weight stays at its target, so mixing it changes nothing. Under PEFT that means
    the adapters' own weights (LoRA's A and B), the base weights being frozen; `follow_mixout` moves it there when
    the adapters come after the patch."""
    model, struct, reg, knobs, state = plan.model, plan.struct, plan.reg, plan.knobs, plan.state
    rate = knobs.get("mixout")
    if rate is None:
        return []
    layer_of = {p: layer.index for layer in struct.layers for p in (layer.path, *layer.members)}
    chosen = []
    for name, m in model.named_modules():
        if not _is_weighted(m) or _frozen(m):
            continue
        root = next((p for p in layer_of if name.startswith(p + ".")), None)
        if reg.mixout_modules is not None:
            if any(fnmatch.fnmatchcase(name, pat) for pat in reg.mixout_modules):
                chosen.append((name, m, layer_of.get(root)))
        elif root is not None:
            chosen.append((name, m, layer_of[root]))
    if not chosen:
        where = (f"no trainable weighted module matches mixout_modules={reg.mixout_modules}"
                 if reg.mixout_modules is not None else "no trainable Linear or convolution was found in its layers")
        plan.refuse("mixout", rate, where)
        return []
    state.mixed = [m for _, m, _ in chosen]
    if rate:
        exit_hook, first = MixoutExit(), len(state.handles)
        for _, m, _ in chosen:
            enter = state.hook(m, MixoutEnter(rate, m.weight.detach().clone()), knob="mixout")
            enter.p = rate * state.factors["mixout"]  # a rate schedule in progress (`follow_mixout`)
            state.hook(m, exit_hook)
        state.mixout_handles = state.handles[first:]
    return [Site(name, "mixout", rate, index, "injected") for name, _, index in chosen]


def _frozen(module) -> bool:
    """Whether ``module`` has no trainable weight of its own (Mixout mixes trainable weights only)."""
    weight = module._parameters.get("weight")
    return not isinstance(weight, nn.Parameter) or not weight.requires_grad


class FollowMixout(Hook):
    """Model pre-hook: Mixout follows the trainable weights at each forward (`follow_mixout`)."""

    pre = True

    def __call__(self, module, args):
        follow_mixout(module)


def follow_mixout(model) -> bool:
    """Move Mixout to the weights trainable now where weights it mixes have been frozen since the patch — PEFT's
    `get_peft_model` on a patched model freezes the base weights and adds adapters, whose weights then take Mixout
    (their values now are the targets). Called by the patch's model pre-hook at every forward and by
    `inspect_model`; does nothing while no mixed weight is frozen.

    Args:
        model: a model, patched or not (a PEFT wrapper is looked through).

    Returns:
        Whether Mixout moved.
    """
    model = unwrap(model)
    state = patch_state(model)
    if state is None or not any(_frozen(m) for m in state.mixed):
        return False
    mixout = {id(h) for h in state.mixout_handles}
    for handle in state.mixout_handles:
        handle.remove()
    state.handles = [h for h in state.handles if id(h) not in mixout]
    state.live = [e for e in state.live if not isinstance(e[0], MixoutEnter)]  # the targets go with them
    state.injected = [s for s in state.injected if s.kind != "mixout"]
    state.mixed, state.mixout_handles = [], []
    state.injected += _inject_mixout(Plan(model, analyze(model), state.reg, state.reg.knob_values(), {}, state))
    return True


def _inject_embedding_noise(plan: Plan) -> list[Site]:
    """`embedding_noise` (NEFTune) on the output of the model's input embeddings and of every module that shares
    their weight: BART's and T5's encoder and decoder run their own ``embed_tokens`` tied to ``shared`` (a hook on
    ``get_input_embeddings()`` alone, as in transformers' `Trainer`, never fires there). A model without input
    embeddings (speech, convolutional and two-tower models) gets it on the input of each tower's first layer."""
    model, struct, knobs, state = plan.model, plan.struct, plan.knobs, plan.state
    alpha = knobs.get("embedding_noise")
    if alpha is None:
        return []
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    weight = getattr(emb, "weight", None) if isinstance(emb, nn.Module) else None
    found = [(n, m, False) for n, m in model.named_modules()
             if m is emb or (weight is not None and getattr(m, "weight", None) is weight and not _is_weighted(m))]
    if not found:
        found = [(tower[0].path + ".<input>", tower[0].module, True) for tower in struct.towers
                 if not tower[0].parallel and tower[0].calls == 1]
    if not found:
        plan.refuse("embedding_noise", alpha, "it has neither input embeddings (`get_input_embeddings`) nor a "
                                               "layer stack whose input could take it")
        return []
    packed = state.hook(model, PackedLengths()) if alpha else None  # NEFTune per packed sequence
    for _, m, pre in found:
        if alpha:
            state.hook(m, EmbeddingNoise(alpha, pre, packed), knob="embedding_noise")
    return [Site(n, "embedding_noise", alpha, None, "injected") for n, _, _ in found]


# one injector per knob, in the order they hook; the layer stack's five knobs share one, since their hooks share each
# layer's state (`hfreg.hooks.LayerState`)
INJECTORS: tuple[tuple[tuple[str, ...], Callable[[Plan], list[Site]]], ...] = (
    (_LAYER_KNOBS, _inject_layers),
    (("classifier",), _inject_classifier),
    (("adapter",), _inject_adapters),
    (("attention",), _inject_attention),
    (("heads",), _inject_heads),
    (("mixout",), _inject_mixout),
    (("embedding_noise",), _inject_embedding_noise),
)


def native_sites(model, inert: frozenset[str] = frozenset()) -> list[Site]:
    """Every native site in force (read by forward, not replaced by hfreg's hooks, not inert) and every site a patch
    injected, with the rate in force now."""
    model = unwrap(model)
    follow_mixout(model)
    state = patch_state(model)
    replaced = state.replaced if state else ()
    sites = [Site(n.path, n.kind, n.rate, n.layer, n.source, n.config_key) for n in analyze(model).natives
             if not n.dead and n.path not in replaced and (not inert or stack_key(n.path) not in inert)]
    if state:
        sites += [Site(s.path, s.kind, s.rate * state.factors[s.kind], s.layer, s.source) for s in state.injected]
    return sites
