"""The layer stack's knobs, which share each layer's state (`LayerState`): `hidden` (dropout on each residual branch's
output), `drop_path` (stochastic depth, Huang et al., 2016, "Deep Networks with Stochastic Depth": a whole branch
dropped per example), `layerdrop` (Fan et al., 2019, "Reducing Transformer Depth on Demand with Structured
Dropout": a whole layer skipped per batch), `embedding` (dropout on the first layer's input, where the model has no
embedding dropout) and `activation` (dropout after the MLP activation, where it has none). Hooks on each layer, its
branch ends and its activations."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..config import KNOB_MODULES
from ..hooks import (
    Hook,
    InputDropout,
    OutputDropout,
    called_directly,
    hidden_arg,
    leads_with_tensor,
    map_first,
    sampling,
)
from ..layers import drop_path_mask, drop_path_rates
from ..sites import Site, stack_key
from ..state import Plan


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
    gradient checkpointing reruns a layer's forward without its hooks on the layer. A branch end whose output is
    not a tensor (nor led by one) cannot take either: said once per class and patch (``told``) at its first forward.
    """

    def __init__(self, state, parts: int = 1, told: set | None = None):
        self.s, self.parts, self.calls, self.mask = state, parts, 0, None
        self.told = told if told is not None else set()

    def __call__(self, module, args, output):
        if not sampling(module):
            return None
        s = self.s
        rate = s.rates[max(s.call, 0)]
        if not leads_with_tensor(output):
            if (s.hidden or rate) and type(module) not in self.told:
                self.told.add(type(module))
                warnings.warn(f"hfreg: `hidden` and `drop_path` cannot act at the output of {type(module).__name__} "
                              f"(a {type(output).__name__}, not a tensor): that branch goes unregularized",
                              UserWarning)
            return None

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


# the knobs whose fields name this module: they act through the layer stack (hooks on layers, branches, activations)
STACK_KNOBS = tuple(k for k, module in KNOB_MODULES.items() if module == __name__.rsplit(".", 1)[-1])
# those applied at branch ends, where hfreg owns them: native sites inside a hooked tower are zeroed for these hooks
OWNED = ("hidden", "drop_path")


def inject(plan: Plan) -> list[Site]:
    """Hooks on each layer and its branch ends and activations; returns the sites they add."""
    model, struct, reg, state = plan.model, plan.struct, plan.reg, plan.state
    knobs, natives_by = plan.knobs, plan.natives_by
    injected: list[Site] = []
    if not struct.layers:
        for knob in STACK_KNOBS:
            if knob in knobs and not natives_by[knob]:
                plan.refuse(knob, knobs[knob], "no stack of residual layers was found")
        return injected
    hidden = knobs.get("hidden") or 0.0
    # a tower with a native site for a knob keeps it; the others (a language model beside a vision tower that has
    # embedding dropout) get the knob injected
    native = {k: {t for n in natives_by[k] for t in n.towers} for k in STACK_KNOBS if k not in OWNED}
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
        # none in the stack; or some layers with an MLP or experts (MoE layers beside dense ones) but none there
        reached = [layer for layer in tower if layer.activations or layer.projections]
        missed = [layer for layer in tower if layer.feeds_forward and not (layer.activations or layer.projections)]
        if activation is not None and (not reached or missed):
            where = f" of {tower[0].path.rsplit('.', 1)[0]}" if len(struct.towers) > 1 else ""
            some = f"{len(missed)} of the {len(tower)} " if reached else "the "
            plan.refuse("activation", activation, "no activation module, nor an MLP output projection to feed, "
                                                   f"was found in {some}layers{where}")
        depth = tower[0].depth
        rates = drop_path_rates(knobs.get("drop_path") or 0.0, depth, reg.drop_path_profile)
        for pos, layer in enumerate(tower):
            own = rates[layer.index:layer.index + layer.calls]
            # a layer whose parent calls its forward directly runs no hook of its own (SqueezeBERT's encoder): what
            # acts at the layer's input or output cannot act there; its branches' hooks still run
            hooked = stack_key(layer.path) not in plan.hookless
            emb = embedding if pos == 0 and hooked else 0.0
            skip = layerdrop if layer.skippable and hooked else 0.0
            if not hooked:
                for knob, rate in (("embedding", embedding if pos == 0 else 0.0), ("layerdrop", layerdrop)):
                    if rate and knob not in warned:
                        warned.add(knob)
                        plan.refuse(knob, rate, called_directly(layer.module))
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
                if "layerdrop" in knobs and t not in native["layerdrop"] and layer.skippable and hooked:
                    injected.append(Site(layer.path, "layerdrop", layerdrop, idx, "injected"))
            if "embedding" in knobs and t not in native["embedding"] and pos == 0 and hooked:
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
                    hook = Branch(s, len(group), told)  # one per branch: its parts share the drop-path draw
                    for _, part in group:
                        state.hook(part, hook)
            if activation is not None:
                for path, act in layer.activations:
                    injected.append(Site(path, "activation", activation, layer.index, "injected"))
                    if activation:
                        state.hook(act, OutputDropout(activation), knob="activation")
                for path, _ in layer.projections:  # no activation module: on the MLP's output projection's input
                    injected.append(Site(path + ".<input>", "activation", activation, layer.index, "injected"))
                    if activation:
                        state.hook_at(model, path, InputDropout(activation), knob="activation")
    if any(layer.calls > 1 for layer in struct.layers):
        state.hook(model, ResetCalls(states))
    for knob in ("hidden", "drop_path"):
        if knob in knobs and not natives_by[knob] and not any(layer.branches for layer in struct.layers):
            plan.refuse(knob, knobs[knob], "no residual branch was found in its layers")
    return injected
