"""The patch state and its lifecycle: what a patch did (`PatchState`, kept on the model), and the small API every
other part needs — `unwrap`, `patch_state`, `is_patched`, `unpatch_model`, `set_rate_factors`. The patch itself is
`hfreg.inject.apply_spec`, which hands each knob's injector (`hfreg.knobs`) a `Plan`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .config import KNOBS, RegularizationConfig
from .sites import Site, Structure, base_layer, peft_copies

STATE_ATTR = "_hfreg_patch"  # where a patched model keeps its `PatchState`
_MISSING = object()  # marks an attribute that did not exist before patching
# every table torch keeps a module's forward hooks (or their flags) in, under the hook's handle id
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def _hook_under(module: nn.Module, key: int):
    """The forward (pre-)hook ``module`` holds under handle id ``key``, or None. A deep copy of a hooked module (PEFT's
    `modules_to_save`) holds a copy of each hook under the same id."""
    return module._forward_pre_hooks.get(key, module._forward_hooks.get(key))


def _pop_hook(module: nn.Module, key: int) -> None:
    """Remove the hook ``module`` holds under handle id ``key``, with its flags."""
    for table in _HOOK_TABLES:
        getattr(module, table).pop(key, None)


def _fsdp(model) -> bool:
    """FSDP1's wrapper, or a module FSDP2's `fully_shard` made (its class becomes ``FSDP<Class>``)."""
    if type(model).__name__ == "FullyShardedDataParallel":
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(model, FSDPModule)


def unwrap(model, wrapped: bool = False) -> nn.Module:
    """The transformers model inside a PEFT wrapper; refuse DDP/FSDP-wrapped, compiled and non-transformer models.
    With ``wrapped`` (reading or undoing a patch, not making one) a DDP, DataParallel, FSDP or `torch.compile`
    wrapper is looked through: the model was patched before it was wrapped, as it must be."""
    while True:  # `accelerator.prepare` compiles the DDP wrapper: peel them in any order
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or _fsdp(model):
            if not wrapped:
                raise ValueError(f"cannot patch a {type(model).__name__}-wrapped model: patch before "
                                 f"`accelerator.prepare`")
            if not isinstance(getattr(model, "module", None), nn.Module):  # FSDP2's FSDPModule is the model itself
                break
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            # torch.compile's OptimizedModule. Dynamo does not guard on hooks added after it traced, so a patch made
            # through it could be silently ignored by the compiled graph.
            if not wrapped:
                raise ValueError(f"cannot patch a torch.compile'd model ({type(model).__name__}): patch the model, "
                                 f"then compile it")
            model = model._orig_mod
        else:
            break
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise ValueError(f"expected a transformers PreTrainedModel (an nn.Module with a `.config`), "
                         f"got {type(model).__name__}")
    return model


@dataclass(eq=False)
class Follow:
    """A hook that follows a wrapper put around its module after the patch (`PatchState.hook_at`)."""

    path: str
    parent: nn.Module  # the module holding it, as ``attr``
    attr: str
    module: nn.Module  # the module it hooks (PEFT's base layer, or the trained copy handed back)
    holder: nn.Module  # that module or its wrapper: where the hook sits now
    hook: Callable
    handle: object
    above: list = field(default_factory=list)  # the links above ``parent`` that are watched (`PatchState.hook_at`)
    warned: bool = False  # the place, or one above it, holds something else, and the patch said so


class PatchState:
    """What `hfreg.patch_state(model)` returns: the spec in force (``reg``) and everything a patch did, recorded as
    it goes so that `unpatch_model` can undo a patch that failed halfway: ``restores`` (owner, attribute, old
    value; oldest first), ``handles`` of the hooks it registered, the sites it injected at their base rates, and
    every rate holder it put a knob's rate in (``live``: owner, attribute, knob, base rate), which
    `set_rate_factors` rescales during training; ``held``, what a knob's module keeps for the patch's lifetime
    (knob -> its own record: Mixout's, the modules it mixes and its hooks there, which it moves when they freeze);
    ``struct``, the `Structure` the patch found, and ``refused``, why each knob it could not apply somewhere cannot
    act there. Made by `patch_model`, not by hand.

    Args:
        reg: the spec the patch applies.
        struct: the model's `Structure` as the patch found it.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> state = hfreg.patch_state(hfreg.patch_model(model, hfreg.RegularizationConfig(drop_path=0.1)))
        >>> state.reg.drop_path, sorted({s.kind for s in state.injected})
        (0.1, ['drop_path'])
    """

    def __init__(self, reg: RegularizationConfig, struct: Structure | None = None):
        self.reg = reg
        self.struct = struct  # the model's structure as the patch found it
        self.refused: dict[str, str] = {}  # knob -> why it cannot act somewhere (as the patch warned)
        self.replaced: set[str] = set()  # native `hidden` / `drop_path` sites zeroed for hfreg's branch hooks
        self.restores: list[tuple[object, str, object]] = []
        self.handles: list = []
        self.injected: list[Site] = []
        self.live: list[tuple[object, str, str, object]] = []
        self.factors = {k: 1.0 for k in KNOBS}
        self.mc_outside: dict[str, float] | None = None  # the factors outside every open `hfreg.mc_dropout`
        self.held: dict[str, object] = {}  # knob -> what its module keeps for the patch's lifetime
        self.follows: list[Follow] = []  # hooks that follow a PEFT wrapper put around their module later
        self.copies: set[nn.Module] = set()  # PEFT's copies of patched modules the patch reaches (`_follow_copies`)
        self.hooked: list[nn.Module] = []  # every module a hook of the patch was put on
        # (holder, name, module) from the model down to every module the patch changed or hooked: PEFT wrapping one,
        # or a module around one, changes a link (`follow_wrappers`); set by `watch` when the patch is done
        self.links: list[tuple[nn.Module, str, nn.Module]] = []
        self.copy_counts: list[tuple[nn.Module, int]] = []  # (a wrapper's ModuleDict of copies, how many it held)

    def assign(self, owner: object, attr: str, value: object) -> None:
        self.restores.append((owner, attr, getattr(owner, attr) if hasattr(owner, attr) else _MISSING))
        setattr(owner, attr, value)

    def hook(self, module: nn.Module, hook: Callable, knob: str | None = None) -> Callable:
        """Register ``hook`` (a `hfreg.hooks.Hook`, whose class says how) on ``module``; with ``knob``, its rate
        ``hook.p`` is one that `set_rate_factors` moves."""
        self.handles.append(hook.register(module))
        self.hooked.append(module)
        if knob is not None:
            self.live.append((hook, "p", knob, hook.p))
        return hook

    def hook_at(self, model: nn.Module, path: str, hook: Callable, knob: str | None = None,
                above: bool = False) -> Callable:
        """`hook` the module at ``path`` of ``model`` (or the PEFT wrapper there), where PEFT may wrap it later — a
        projection LoRA targets, a head or the embeddings `modules_to_save` trains: the hook follows the module
        into the wrapper and back out (`follow_wrappers`). With ``above`` (a head's Linear, the embeddings, which
        `modules_to_save` may name a module around), a wrapper put around a module above it is watched for too."""
        module = model.get_submodule(path)
        parent, _, attr = path.rpartition(".")
        self.hook(module, hook, knob)
        links = []
        if above:  # (holder, attribute, module) from the model down to the hooked module's parent
            names = parent.split(".") if parent else []
            for i, name in enumerate(names):
                holder = model.get_submodule(".".join(names[:i]))
                links.append((holder, name, holder._modules[name]))
        self.follows.append(Follow(path, model.get_submodule(parent), attr, base_layer(module), module, hook,
                                   self.handles[-1], links))
        return hook

    def refuse(self, knob: str, rate: float | None, why: str, model: nn.Module) -> None:
        """``knob`` set to ``rate`` cannot act somewhere in ``model``: record why in ``refused`` (what `probe` reads)
        and warn. A rate of 0 (or None) asks for nothing, so nothing is refused."""
        if not rate:
            return
        self.refused[knob] = f"{self.refused[knob]}; {why}" if knob in self.refused else why
        warnings.warn(f"hfreg: `{knob}`={rate} cannot apply to {getattr(model.config, 'model_type', None)} "
                      f"({type(model).__name__}): {why}", UserWarning, stacklevel=4)


@dataclass
class Plan:
    """What every knob's injector (`hfreg.knobs`) reads: the model, its structure, the spec and the knobs it sets,
    each knob's live native sites (``natives_by``), the patch state it records its hooks, sites and refusals in, and
    what the patch this one replaces held (``before``: its `PatchState.held`; Mixout keeps its targets) and the
    layers whose own hooks never run (``hookless``)."""

    model: nn.Module
    struct: Structure
    reg: RegularizationConfig
    knobs: dict
    natives_by: dict
    state: PatchState
    before: dict = field(default_factory=dict)
    hookless: frozenset[str] = frozenset()  # layers no hook on which runs (`hfreg.sites.Inert.layers`)

    def refuse(self, knob: str, rate: float | None, why: str) -> None:
        """``knob`` cannot act somewhere in the model: recorded in the patch state and warned (`PatchState.refuse`)."""
        self.state.refuse(knob, rate, why, self.model)


def unpatch_model(model: nn.Module) -> nn.Module:
    """Remove every hook hfreg added and restore every rate it changed (and release what the patch held, such as
    Mixout's targets).

    Args:
        model: a model, patched or not (a PEFT wrapper is looked through).

    Returns:
        ``model``, as it was before `patch_model`; an unpatched model is returned unchanged.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> before = {k: v.clone() for k, v in model.state_dict().items()}
        >>> _ = hfreg.unpatch_model(hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.3, mixout=0.5)))
        >>> hfreg.is_patched(model), all(v.equal(before[k]) for k, v in model.state_dict().items())
        (False, True)
    """
    outer = model
    model = unwrap(model, wrapped=True)
    if STATE_ATTR not in model.__dict__:
        return outer
    follow_wrappers(model)  # a wrapper PEFT put in since the last forward may hold a copy of a hook: it goes too
    state = model.__dict__.pop(STATE_ATTR)
    for handle in state.handles:
        handle.remove()
    ids = {handle.id for handle in state.handles}  # deep copies of hooked modules keep the hooks' keys (PEFT's)
    for module in model.modules():
        for key in ids & (module._forward_pre_hooks.keys() | module._forward_hooks.keys()):
            if type(_hook_under(module, key)).__module__.startswith("hfreg."):
                _pop_hook(module, key)
    for owner, attr, old in reversed(state.restores):
        if old is _MISSING:
            delattr(owner, attr)
        else:
            setattr(owner, attr, old)
    return outer


def patch_state(model: nn.Module, required: bool = False) -> PatchState | None:
    """The `PatchState` of a patched model (PEFT wrappers looked through).

    Args:
        model: a model, patched or not.
        required: raise instead of returning None.

    Returns:
        Its `PatchState`, or None where it is not patched.

    Raises:
        ValueError: ``required`` and the model is not patched.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> hfreg.patch_state(model) is None
        True
        >>> hfreg.patch_state(hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.1))).reg.hidden
        0.1
    """
    inner = unwrap(model, wrapped=True)
    state = inner.__dict__.get(STATE_ATTR)
    if state is None and required:
        raise ValueError(f"{type(inner).__name__} is not patched: `patch_model` it first")
    return state


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (or the transformers model inside a PEFT wrapper) carries an hfreg patch.

    Args:
        model: any model.

    Returns:
        True between `patch_model` and `unpatch_model`.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> hfreg.is_patched(model), hfreg.is_patched(hfreg.patch_model(model, {"hidden": 0.1}))
        (False, True)
    """
    try:
        return STATE_ATTR in unwrap(model, wrapped=True).__dict__
    except ValueError:  # not a transformers model: hfreg never patches one
        return False


def set_rate_factors(model: nn.Module, factors: dict[str, float]) -> None:
    """Put ``factor × the patched rate`` in force for each knob of ``factors`` (e.g. ``{"hidden": 0.0}``), at every
    site the patch set or injected; the other knobs keep theirs. `unpatch_model` still restores the original.
    This is what `hfreg.RateScheduler` calls once per optimizer step.

    Args:
        model: a patched model.
        factors: ``{knob: factor}``, each factor in [0, 1].

    Returns:
        None; the rates change in place.

    Raises:
        ValueError: the model is not patched, a knob is unknown, or a factor lies outside [0, 1].

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> _ = hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.2))
        >>> hfreg.set_rate_factors(model, {"hidden": 0.5})
        >>> sorted({s.rate for s in hfreg.inspect_model(model, verify=False) if s.kind == "hidden"})
        [0.1]
    """
    state = patch_state(model, required=True)
    for knob, f in factors.items():
        if knob not in KNOBS:
            raise ValueError(f"unknown knob {knob!r}; allowed: {list(KNOBS)}")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ValueError(f"the factor for `{knob}` must be a float in [0, 1], got {f!r}")
    follow_wrappers(model)  # the copies PEFT made since the patch (`modules_to_save`) take the rates too
    for owner, attr, knob, base in state.live:
        if knob in factors:
            f = float(factors[knob])
            setattr(owner, attr, [r * f for r in base] if isinstance(base, tuple) else base * f)
    state.factors.update({k: float(f) for k, f in factors.items()})


def follow_wrappers(model) -> bool:
    """Move each followed hook (`PatchState.hook_at`: a head's or an MLP's output projection, the input embeddings)
    to the module at its place now, where that is a PEFT wrapper of the module it hooks or what such a wrapper gave
    back: `get_peft_model` after the patch wraps a LoRA target, whose input both the base layer and the adapter
    take, or puts a `modules_to_save` head in a wrapper that trains a deep copy of it (hooks and all: the copy's
    copy of the hook goes, so the wrapper's input is dropped once); `merge_and_unload` puts the base layer, or the
    trained copy, back. Then the patch reaches every other copy PEFT trains of a module it changed
    (`_follow_copies`). Called by the patch's model pre-hook at every forward, by `inspect_model`,
    `set_rate_factors` and `unpatch_model`: one identity check per link down to what the patch changed
    (`watch`) while nothing has moved, a walk over the modules once something has. Something else put in
    the place, or around it, keeps no hook of the patch: warned once. Returns whether a hook moved."""
    root = unwrap(model, wrapped=True)
    state = root.__dict__.get(STATE_ATTR)
    if state is None or (all(holder._modules.get(name) is module for holder, name, module in state.links)
                         and all(len(copies._modules) == n for copies, n in state.copy_counts)):
        return False
    moved = False
    for f in state.follows:
        for i, (holder, name, module) in enumerate(f.above):
            now = holder._modules.get(name)
            if now is module or f.warned:
                continue
            if now is not None and any(_hook_under(m, f.handle.id) is not None for m in now.modules()):
                f.above[i] = (holder, name, now)  # PEFT's wrapper of a module around it, or the copy it gave back:
                continue  # their copies of the hook are the hook again (`_follow_copies`)
            f.warned = True
            warnings.warn(f"hfreg: a module around {f.path!r} was replaced after the patch by a "
                          f"{type(now).__name__}, which holds none of its hooks: patch the model again to "
                          f"regularize it", UserWarning, stacklevel=2)
        now = f.parent._modules.get(f.attr)
        if now is f.holder or now is None:
            continue
        inner = base_layer(now)
        if inner is not f.module and not any(m is inner for m in f.holder.modules()):
            if not f.warned:
                f.warned = True
                warnings.warn(f"hfreg: {f.attr!r} of {type(f.parent).__name__} was replaced by a "
                              f"{type(now).__name__} after the patch, which holds none of its hooks: patch the "
                              f"model again to regularize it", UserWarning, stacklevel=2)
            continue
        f.module = inner  # the same module, or what its wrapper gave back (the trained copy)
        f.handle.remove()
        for sub in now.modules():  # deep copies made while the hook sat on the module (PEFT's modules_to_save)
            if type(_hook_under(sub, f.handle.id)) is type(f.hook):
                _pop_hook(sub, f.handle.id)
        # first among its new module's hooks, as it was first on the module when the patch put it there
        new = f.hook.register(now, prepend=True)
        state.handles = [new if h is f.handle else h for h in state.handles]
        state.hooked.append(now)
        f.holder, f.handle = now, new
        moved = True
    _follow_copies(root, state)
    watch(root, state)
    return moved


def watch(model: nn.Module, state: PatchState) -> None:
    """Record what `follow_wrappers` checks at each forward: ``state.links``, (holder, name, module) for every link
    from ``model`` down to a module the patch changed (its rates, as `restores` and `live` hold them) or hooked, and
    ``state.copy_counts``, how many copies each PEFT wrapper on those paths trains (`add_adapter` adds one)."""
    ids = {id(m) for m in state.hooked}
    ids |= {id(owner) for owner, *_ in (*state.restores, *state.live) if isinstance(owner, nn.Module)}
    links, counts = {}, {}
    for path, module in model.named_modules():
        if path and id(module) in ids:
            holder = model
            for name in path.split("."):
                links[id(holder), name] = (holder, name, holder._modules[name])
                holder = holder._modules[name]
                copies = peft_copies(holder)
                if copies is not None:
                    counts[id(copies)] = (copies, len(copies._modules))
    state.links, state.copy_counts = list(links.values()), list(counts.values())


def _copied(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(module, copy) for each copy of a module that a PEFT wrapper in ``model`` trains in its place
    (`modules_to_save`: a deep copy made when the wrapper was put in, hooks and rates as they were then)."""
    if "peft" not in sys.modules:  # only PEFT puts such wrappers in
        return []
    return [(wrapper.original_module, copy) for wrapper in model.modules()
            for copy in (peft_copies(wrapper) or {}).values()]


def _follow_copies(model: nn.Module, state: PatchState) -> None:
    """Extend the patch to each copy PEFT trains of a module it changed (`modules_to_save` names a module, and the
    patch came first: RoBERTa's classification head with its own dropout, a head Linear inside ResNet's
    `Sequential` head): the copy's rates move with `set_rate_factors` and go back with `unpatch_model`, and each
    copy of a hook is the patch's hook again, so what moves its rate moves the copy's. Once per copy."""
    ids = {handle.id for handle in state.handles}
    for module, copy in _copied(model):
        if copy in state.copies:
            continue
        state.copies.add(copy)
        names = {id(m): name for name, m in module.named_modules(remove_duplicate=False)}
        for owner, attr, old in list(state.restores):
            if id(owner) in names:
                state.restores.append((copy.get_submodule(names[id(owner)]), attr, old))
        for owner, attr, knob, base in list(state.live):
            if id(owner) in names:
                state.live.append((copy.get_submodule(names[id(owner)]), attr, knob, base))
        for name, sub in module.named_modules():
            twin = copy.get_submodule(name)
            for mine, theirs in ((sub._forward_pre_hooks, twin._forward_pre_hooks),
                                 (sub._forward_hooks, twin._forward_hooks)):
                for key in ids & mine.keys() & theirs.keys():
                    theirs[key] = mine[key]  # in place: the copy's hooks keep their order
