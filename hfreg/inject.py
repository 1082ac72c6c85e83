"""The patch step: one `RegularizationConfig` rewired into a transformers model by hooks and attribute changes,
given which native sites a small twin showed to be inert (`hfreg.patcher.patch_model` computes that and calls
`apply_spec`; `hfreg.probing` calls `apply_spec` itself, so that probing never re-enters the twin check).

The mechanism, the same for every architecture:
  * native sites an architecture already has (nn.Dropout, float attributes, config keys read in forward) take the
    spec's rate, except where hfreg owns the knob (`hfreg.knobs.stack.OWNED`: `hidden` and `drop_path`): in a
    tower whose residual branches it hooks, those native sites are zeroed and one hook at each branch end applies
    both, so every branch gets exactly one of each; native sites outside such towers take the rate in place;
  * then every knob's injector (``inject`` in its module of `hfreg.knobs`, which its config field names) hooks the
    knob in where the model has no native site of it, and the knobs no model has natively everywhere they can act;
  * a knob that cannot act somewhere warns and records why (`PatchState.refused`); one that can act nowhere leaves
    the model's own sites of it as they were.
Hooks and attribute changes never touch parameters, so `state_dict` keys and values stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from .config import CONFIG_ATTR, KNOB_MODULES, KNOBS, RegularizationConfig
from .fast_masks import MasksEnter
from .hooks import FollowWrappers, ModeExit
from .knobs.mixout import follow_mixout
from .knobs.stack import OWNED
from .layers import drop_path_rates
from .sites import Inert, Site, Structure, analyze, peft_copies, stack_key
from .state import (
    STATE_ATTR,
    PatchState,
    Plan,
    follow_wrappers,
    patch_state,
    unpatch_model,
    unwrap,
    watch,
)


def apply_spec(model, reg: RegularizationConfig, inert: Inert = Inert(), before: dict | None = None) -> PatchState:
    """Apply ``reg`` to the transformers model ``model`` (unwrapped) in place, first undoing an earlier patch.
    ``inert``: what a small twin shows to change nothing (`hfreg.probing.inert`): decisions to inject look past its
    native sites, and no knob relies on hooks of its layers, which never run. ``before``: what the patch this one
    replaces held (default: the earlier patch's), which some knobs keep (Mixout's targets). Returns the patch
    state; a failure undoes everything."""
    previous = patch_state(model)
    before = before if before is not None else previous.held if previous is not None else {}
    unpatch_model(model)
    struct = analyze(model)
    knobs = reg.knob_values()
    state = PatchState(reg, struct)
    object.__setattr__(model, STATE_ATTR, state)  # before the first change: a failure below is undone in full
    try:
        # decisions about injecting look at live sites only: a dead attribute, or one a small twin shows to run
        # without effect (SAM's vision attention under sdpa), regularizes nothing. Inert sites still get the rate:
        # an input the twin's lacks may reach them (a causal LM's cross-attention given encoder states)
        natives_by = {k: [n for n in struct.natives if n.kind == k and not n.dead
                          and stack_key(n.path) not in inert.sites]
                      for k in KNOBS}
        # native residual dropout and drop-path inside a tower with branch hooks give way to hfreg's hooks; the
        # others (a backbone whose stack is not found) act where they are, so the knob still acts
        hooked = {t for t, tower in enumerate(struct.towers) if any(layer.branches for layer in tower)}
        # only for a knob the spec sets: an unset one leaves the model's own sites acting, and listed, as they are
        state.replaced = {n.path for n in struct.natives if n.kind in OWNED and n.kind in knobs
                          and set(n.towers) & hooked}
        for k in OWNED:
            natives_by[k] = [n for n in natives_by[k] if n.path not in state.replaced]
        plan = Plan(model, struct, reg, knobs, natives_by, state, before, inert.layers)
        for inject in INJECTORS.values():
            state.injected += inject(plan)
        if any(knobs.values()):  # cheaper masks for every dropout of the training forward (no knob: none drawn)
            # the model, each layer and its parts: gradient checkpointing recomputes a layer (or only the inside of
            # its forward) alone, and must draw the same masks again
            parts = [m for x in struct.layers for m in (x.module, *x.module.children())]
            for module in [model, *{id(m): m for m in parts}.values()]:
                enter = state.hook(module, MasksEnter())
                state.hook(module, ModeExit(enter))
        # hooks follow PEFT's wrappers, and rates its copies, from the first forward after `get_peft_model`
        state.hook(model, FollowWrappers())
        _set_natives(struct, reg, knobs, natives_by, state)
        state.assign(model.config, CONFIG_ATTR, reg.to_dict())
        watch(model, state)
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


# each knob module's injector, in the order of the knobs' fields: the order patches hook them
INJECTORS: dict[str, Callable[[Plan], list[Site]]] = {
    module: import_module(f".knobs.{module}", __package__).inject for module in dict.fromkeys(KNOB_MODULES.values())}


def native_sites(model, inert: frozenset[str] = frozenset()) -> list[Site]:
    """Every native site in force (read by forward, not replaced by hfreg's hooks, not inert) and every site a patch
    injected, with the rate in force now."""
    model = unwrap(model)
    follow_mixout(model)
    follow_wrappers(model)
    state = patch_state(model)
    replaced = state.replaced if state else ()
    sites = [Site(n.path, n.kind, n.rate, n.layer, n.source, n.config_key) for n in analyze(model).natives
             if not n.dead and n.path not in replaced and (not inert or stack_key(n.path) not in inert)]
    if state:
        # a copy PEFT made of a module hooked in its wrapper as well (patched after `get_peft_model`) is listed once
        sites += dict.fromkeys(Site(path, s.kind, s.rate * state.factors[s.kind], s.layer, s.source)
                               for s in state.injected for path in _paths_now(model, s.path))
    return sites


def _paths_now(model, path: str) -> list[str]:
    """Where the module of a site recorded at ``path`` is now: where the path goes through a PEFT wrapper that trains
    copies of a module (`modules_to_save`: a head whose Linear the patch hooked, wrapped before or after the patch), a
    path through the wrapper's original and one through each copy, all of which hold the hook
    (`hfreg.state.follow_wrappers`); else ``path``."""
    names, colon, rest = path.partition(":")
    suffix = colon + rest
    if names.endswith(".<input>"):
        names, suffix = names[:-len(".<input>")], ".<input>" + suffix
    found = [("", model)]
    for name in names.split(".") if names else ():
        step = []
        for at, module in found:
            copies = peft_copies(module)
            places = [] if copies is None else [("original_module", module.original_module),
                                                *((f"modules_to_save.{k}", c) for k, c in copies.items())]
            if places and name == "original_module":  # each copy holds the original's hooks (`follow_wrappers`)
                step += [(at + inner, holder) for inner, holder in places]
            elif name in module._modules:
                step.append((at + name, module._modules[name]))
            else:
                step += [(f"{at}{inner}.{name}", holder._modules[name]) for inner, holder in places
                         if name in holder._modules]
        if not step:
            return [path]  # not there now: said where it matters (`mc_dropout`)
        found = [(at + ".", module) for at, module in step]
    return [at[:-1] + suffix for at, _ in found] if names else [path]
