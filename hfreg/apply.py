"""The apply step: one `RegularizationConfig` rewired into a transformers model by hooks and attribute changes,
given which native sites a small twin showed to be inert (`hfreg.patcher.patch_model` computes that and calls
`apply_spec`; `hfreg.probing` calls `apply_spec` itself, so that probing never re-enters the twin check).

The mechanism, the same for every architecture:
  * native sites an architecture already has (nn.Dropout, float attributes, config keys read in forward) are
    set to the spec's rate for `attention`, `embedding`, `activation`, `classifier` and `layerdrop`;
  * `hidden` and `drop_path` are owned by hfreg: in a tower whose residual branches it hooks, native residual
    dropout and drop-path are zeroed and one forward hook at the end of every branch applies both, so every
    branch gets exactly one of each; native sites outside such towers take the rate in place;
  * a knob that cannot act anywhere warns and leaves the model's own sites of it as they were;
  * where an architecture has no native site for a knob, a hook injects it (stack input for `embedding`,
    activation modules for `activation`, head Linear inputs for `classifier`, layer hooks for `layerdrop`);
  * the knobs no model has natively are hooks too: `heads` on the input of each attention module's output
    projection, `mixout` on the weighted modules of the layers (the mixed weight shadows the parameter for one
    forward), `embedding_noise` on the input embeddings' output.
Hooks and attribute changes never touch parameters, so `state_dict` keys and values stay as they were.
"""

from __future__ import annotations

import fnmatch
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import layers
from .config import CONFIG_ATTR, KNOBS, RegularizationConfig
from .layers import drop_head, drop_path_mask, drop_path_rates, embedding_noise, mixout
from .sites import Site, Structure, analyze, stack_key

_STATE = "_hfreg_patch"
_MISSING = object()  # marks an attribute that did not exist before patching
# knobs hfreg applies itself at branch ends, after zeroing the native sites
_OWNED = ("hidden", "drop_path")


def unwrap(model) -> nn.Module:
    """The transformers model inside a PEFT wrapper; refuse DDP/FSDP-wrapped and non-transformer models."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or type(model).__name__ in (
            "FullyShardedDataParallel", "FSDPModule"):
        raise ValueError(f"cannot patch a {type(model).__name__}-wrapped model: patch before `accelerator.prepare`")
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise ValueError(f"expected a transformers PreTrainedModel (an nn.Module with a `.config`), "
                         f"got {type(model).__name__}")
    return model


class _Hook:
    """Base of every hook hfreg registers, so `unpatch_model` can find and remove exactly those."""


# set on a hooked module by `hfreg.mc_dropout`: its hooks sample in eval mode, the module itself stays in eval mode
SAMPLE_FLAG = "_hfreg_sample"


def _sampling(module) -> bool:
    return module.training or module.__dict__.get(SAMPLE_FLAG, False)


def _map_first(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        first = [fn(output[0]), *output[1:]]
        return first if isinstance(output, list) else tuple(first)  # OpenAI GPT's blocks return lists
    return output


def _hidden_arg(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs.get("hidden_states")


class _LayerState:
    """Per-layer state shared by a layer's hooks. The protocol, per forward of the layer:

    * `_ResetCalls` (model pre-hook, weight-shared layers only) sets ``call = -1`` for every layer;
    * `_LayerPre` (layer pre-hook) advances ``call`` (the virtual layer of a shared layer), sets ``batch`` from
      the hidden states, applies ``embedding`` dropout to the first layer's input and, under ``layerdrop``, sets
      ``skip`` to the input to return instead of the layer's output;
    * `_Branch` (hook at each residual branch end) reads ``hidden``, ``rates[call]``, ``mode`` and ``batch``;
    * `_LayerPost` (layer hook) reads and clears ``skip``.

    ``hidden``, ``rates``, ``layerdrop`` and ``embedding`` are the rates in force (`set_rate_factors` moves them).
    """

    def __init__(self, hidden, drop_path_rates, layerdrop, embedding, mode):
        self.hidden, self.rates, self.layerdrop, self.embedding, self.mode = (
            hidden, drop_path_rates, layerdrop, embedding, mode)
        self.call, self.batch, self.skip = -1, None, None


class _LayerPre(_Hook):
    def __init__(self, state):
        self.s = state

    def __call__(self, module, args, kwargs):
        s = self.s
        s.call = (s.call + 1) % len(s.rates)
        hs = _hidden_arg(args, kwargs)
        if hs is None:
            return None
        s.batch = hs.shape[0]
        if not _sampling(module):
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


class _LayerPost(_Hook):
    """Returns the layer's input instead of its output when `_LayerPre` drew a skip. A layer that changes the shape
    (the first block of a Hiera or BiT stage) cannot be skipped: it runs, said once per class and patch
    (``told``), at its first refused skip, since only running it shows the shapes."""

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

        return _map_first(output, skip)


class _Branch(_Hook):
    """Hook at a branch end: hidden dropout and drop-path on its output. One instance serves every part of a
    branch summed from several modules (GraniteMoeHybrid's experts and shared MLP): the first part's call draws the
    drop-path mask, the others' reuse it. Counting calls, not forwards, keeps the draws where they were when
    gradient checkpointing reruns a layer's forward without its hooks on the layer."""

    def __init__(self, state, parts: int = 1):
        self.s, self.parts, self.calls, self.mask = state, parts, 0, None

    def __call__(self, module, args, output):
        if not _sampling(module):
            return None
        s = self.s
        rate = s.rates[max(s.call, 0)]

        def regularize(x):
            if s.hidden:
                x = F.dropout(x, s.hidden, True)
            if rate:
                if self.calls % self.parts == 0:
                    self.mask = drop_path_mask(x, rate, s.mode, s.batch)
                self.calls += 1
                x = x * self.mask
            return x

        return _map_first(output, regularize)


class _ParallelDraw(_Hook):
    """LayerDrop for a layer made of the i-th entries of parallel lists (XLM): the pre-hook of its first entry draws
    whether the layer is skipped in this forward; `_ParallelSkip` hooks then make its branches add nothing (zeros)
    and its norms pass their input through, so the residual stream goes past the layer unchanged."""

    def __init__(self, p):
        self.p, self.skipped = p, False

    def __call__(self, module, args):
        self.skipped = bool(self.p and _sampling(module) and torch.rand(()) < self.p)


class _ParallelSkip(_Hook):
    def __init__(self, draw: _ParallelDraw, norm: bool):
        self.draw, self.norm = draw, norm

    def __call__(self, module, args, output):
        if not self.draw.skipped:
            return None
        return args[0] if self.norm else _map_first(output, torch.zeros_like)


class _ResetCalls(_Hook):
    def __init__(self, states):
        self.states = states

    def __call__(self, module, args):
        for s in self.states:
            s.call = -1


class _OutputDropout(_Hook):
    def __init__(self, p):
        self.p = p

    def __call__(self, module, args, output):
        return F.dropout(output, self.p, True) if _sampling(module) else None


class _InputDropout(_Hook):
    def __init__(self, p):
        self.p = p

    def __call__(self, module, args):
        if not _sampling(module) or not args:
            return None
        return (F.dropout(args[0], self.p, True),) + tuple(args[1:])


class _DropHead(_Hook):
    """Pre-hook of an attention module's output projection: DropHead on its input, the concatenated heads."""

    def __init__(self, p, heads):
        self.p, self.heads = p, heads

    def __call__(self, module, args):
        if not self.p or not _sampling(module) or not args:
            return None
        return (drop_head(args[0], self.p, self.heads, True),) + tuple(args[1:])


class _MixoutEnter(_Hook):
    """Pre-hook of a weighted module: for this forward, a mixed weight in the instance ``__dict__`` shadows the
    parameter (attribute lookup finds it before `nn.Module.__getattr__`), so `state_dict` and the optimizer see the
    parameter alone, and gradients reach it through the mix. ``target`` is the weight at patch time."""

    def __init__(self, p, target):
        self.p, self.target = p, target

    def __call__(self, module, args):
        if self.p and _sampling(module):
            module.__dict__["weight"] = mixout(module._parameters["weight"], self.target, self.p, True)


class _MixoutExit(_Hook):
    """Hook of the same module, called even when its forward raises: the parameter shows through again."""

    def __call__(self, module, args, output):
        module.__dict__.pop("weight", None)


class _EmbeddingNoise(_Hook):
    """NEFTune on an embedding module's output, or (``pre``) on the hidden states a tower's first layer takes."""

    def __init__(self, p, pre=False):
        self.p, self.pre = p, pre  # p: NEFTune's alpha, named as the rates are so that `set_rate_factors` moves it

    def __call__(self, module, args, *rest):
        if not self.p or not _sampling(module):
            return None
        if not self.pre:
            return _map_first(rest[-1], lambda x: embedding_noise(x, self.p, True))
        kwargs = rest[0]
        if args and isinstance(args[0], torch.Tensor):
            return (embedding_noise(args[0], self.p, True), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": embedding_noise(kwargs["hidden_states"], self.p, True)}
        return None


class _SdpaDropout(TorchFunctionMode):
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


class _ModeEnter(_Hook):
    """Pre-hook that runs its module's forward under the `TorchFunctionMode` that `mode` gives (None: none)."""

    def __init__(self):
        self.modes = []

    def mode(self, module) -> TorchFunctionMode | None:
        raise NotImplementedError

    def __call__(self, module, args):
        mode = self.mode(module)
        if mode is not None:
            mode.__enter__()
            self.modes.append(mode)


class _ModeExit(_Hook):
    """Hook of the same module, called even when its forward raises: leave the mode its pre-hook entered."""

    def __init__(self, enter: _ModeEnter):
        self.enter = enter

    def __call__(self, module, args, output):
        if self.enter.modes:
            mode = self.enter.modes.pop()
            mode.__exit__(None, None, None)
            self.left(module, mode)

    def left(self, module, mode) -> None:
        """After leaving ``mode``: what it saw may be worth saying."""


class _AttentionEnter(_ModeEnter):
    """In training, run an attention module's forward under `_SdpaDropout`."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def mode(self, module):
        return _SdpaDropout(self.p) if self.p and _sampling(module) else None


class _AttentionExit(_ModeExit):
    """A module that ran without calling `scaled_dot_product_attention` (linear attention, a recurrent mixer) gets
    nothing: said once per module class and patch (``told``), at its first such forward, since only running it
    tells."""

    def __init__(self, enter: _AttentionEnter, told: set):
        super().__init__(enter)
        self.told = told

    def left(self, module, mode):
        if not mode.calls and type(module) not in self.told:
            self.told.add(type(module))
            warnings.warn(f"hfreg: `attention`={mode.p} cannot apply to {type(module).__name__}: it computed "
                          f"attention without scaled_dot_product_attention, where hfreg injects it", UserWarning)


class _CpuMasks(TorchFunctionMode):
    """During a patched model's training forward: dropout on CPU tensors with `layers.dropout` masks (16 random
    bits per entry) instead of PyTorch's per-entry Bernoulli draws, for the model's own dropout modules and
    functions and hfreg's alike; attention with a dropout rate computed as PyTorch's math path does (which a rate
    forces on a CPU anyway), softmax then dropout, with such a mask. Expectations are unchanged; rates are taken to
    1/65536. Other devices and dtypes, and in-place dropout, go to PyTorch unchanged."""

    depth = threading.local()  # modes entered and not left, on this thread: one at a time is enough

    def __enter__(self):
        _CpuMasks.depth.n = getattr(_CpuMasks.depth, "n", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc):
        _CpuMasks.depth.n -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            given = {"p": 0.5, "training": True, "inplace": False, **dict(zip(_DROPOUT_ARGS, args)), **kwargs}
            x = given["input"]
            if given["training"] and given["p"] and not given["inplace"] and x.device.type == "cpu":
                return layers.dropout(x, given["p"])
        elif func is F.scaled_dot_product_attention:
            given = {**dict(zip(_SDPA_ARGS, args)), **kwargs}
            q = given["query"]
            if given.get("dropout_p") and q.device.type == "cpu" and q.dtype == torch.float32 \
                    and set(given) <= set(_SDPA_ARGS):
                return _attention_with_dropout(**given)
        return func(*args, **kwargs)


_DROPOUT_ARGS = ("input", "p", "training", "inplace")
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _attention_with_dropout(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                            enable_gqa=False):
    """`F.scaled_dot_product_attention` as its math path computes it (a fully masked row gives zeros), with a
    `layers.dropout` on the probabilities."""
    scale = query.size(-1) ** -0.5 if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    scores = (query * scale) @ key.transpose(-2, -1)
    if is_causal:
        causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch._safe_softmax(scores, -1) if hasattr(torch, "_safe_softmax") else \
        torch.softmax(scores, -1).nan_to_num(0.0)
    return layers.dropout(probs, dropout_p) @ value


class _MasksEnter(_ModeEnter):
    """In training, with `layers.FAST_MASKS`, run the forward of the patched model, a layer or a part under
    `_CpuMasks` unless one is running already (the parts' hooks serve gradient checkpointing, which recomputes a
    layer's forward alone, outside the model's)."""

    def mode(self, module):
        if layers.FAST_MASKS and module.training and not getattr(_CpuMasks.depth, "n", 0):
            return _CpuMasks()
        return None


class PatchState:
    """What `hfreg.patch_state(model)` returns: the spec in force (``reg``) and everything a patch did, recorded as
    it goes so that `unpatch_model` can undo a patch that failed halfway: ``restores`` (owner, attribute, old
    value; oldest first), ``handles`` of the hooks it registered, the sites it injected at their base rates, and
    every rate holder it put a knob's rate in (``live``: owner, attribute, knob, base rate), which
    `set_rate_factors` rescales during training, and the modules whose weights Mixout mixes (``mixed``) with the
    handles of its hooks there (``mixout_handles``), which `follow_mixout` moves. Made by `patch_model`, not by
    hand.

    Args:
        reg: the spec the patch applies.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> state = hfreg.patch_state(hfreg.patch_model(model, hfreg.RegularizationConfig(drop_path=0.1)))
        >>> state.reg.drop_path, sorted({s.kind for s in state.injected})
        (0.1, ['drop_path'])
    """

    def __init__(self, reg):
        self.reg = reg
        self.replaced: set[str] = set()  # native `hidden` / `drop_path` sites zeroed for hfreg's branch hooks
        self.restores: list[tuple[object, str, object]] = []
        self.handles: list = []
        self.injected: list[Site] = []
        self.live: list[tuple[object, str, str, object]] = []
        self.factors = {k: 1.0 for k in KNOBS}
        self.mixed: list[nn.Module] = []
        self.mixout_handles: list = []

    def assign(self, owner, attr, value):
        self.restores.append((owner, attr, getattr(owner, attr) if hasattr(owner, attr) else _MISSING))
        setattr(owner, attr, value)

    def hook(self, module, hook, pre=False, knob=None, **kwargs):
        """Register ``hook``; with ``knob``, its rate ``hook.p`` is one that `set_rate_factors` moves."""
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self.handles.append(register(hook, **kwargs))
        if knob is not None:
            self.live.append((hook, "p", knob, hook.p))
        return hook


def _warn(knob, rate, model, why):
    if rate:
        warnings.warn(f"hfreg: `{knob}`={rate} cannot apply to {getattr(model.config, 'model_type', None)} "
                      f"({type(model).__name__}): {why}", UserWarning, stacklevel=3)


def apply_spec(model, reg: RegularizationConfig, inert: frozenset[str] = frozenset()) -> PatchState:
    """Apply ``reg`` to the transformers model ``model`` (unwrapped) in place, first undoing an earlier patch.
    ``inert``: native sites known to change nothing in training (path patterns, as `hfreg.probing.inert_sites`
    gives them); decisions to inject look past them. Returns the patch state; a failure undoes everything."""
    unpatch_model(model)
    struct = analyze(model)
    knobs = reg.knob_values()
    state = PatchState(reg)
    object.__setattr__(model, _STATE, state)  # before the first change: a failure below is undone in full
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
        state.injected += _inject_layers(model, struct, reg, knobs, natives_by, state)
        state.injected += _inject_classifier(model, struct, knobs, natives_by, state)
        state.injected += _inject_adapters(model, struct, knobs, natives_by, state)
        state.injected += _inject_attention(model, struct, knobs, natives_by, state)
        state.injected += _inject_heads(model, struct, knobs, state)
        state.injected += _inject_mixout(model, struct, reg, knobs, state)
        if knobs.get("mixout") is not None:  # weights frozen after the patch (`get_peft_model`) hand it on
            state.hook(model, _FollowMixout(), pre=True)
        state.injected += _inject_embedding_noise(model, struct, knobs, state)
        if any(knobs.values()):  # cheaper masks for every dropout of the training forward (no knob: none drawn)
            # the model, each layer and its parts: gradient checkpointing recomputes a layer (or only the inside of
            # its forward) alone, and must draw the same masks again
            parts = [m for x in struct.layers for m in (x.module, *x.module.children())]
            for module in [model, *{id(m): m for m in parts}.values()]:
                enter = state.hook(module, _MasksEnter(), pre=True)
                state.hook(module, _ModeExit(enter), always_call=True)
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
    refused = {k for k, rate in knobs.items() if rate and k not in acting}
    for n in struct.natives:
        if n.kind not in knobs or n.kind in refused:
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


def _inject_layers(model, struct: Structure, reg, knobs, natives_by, state: PatchState) -> list[Site]:
    """Hooks on each layer and its branch ends and activations; returns the sites they add."""
    injected: list[Site] = []
    if not struct.layers:
        for knob in _LAYER_KNOBS:
            if knob in knobs and not natives_by[knob]:
                _warn(knob, knobs[knob], model, "no stack of residual layers was found")
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
                _warn("embedding", embedding, model, "its layers are parallel per-index lists joined in forward: "
                                                     "no layer module to take the input of")
            if layerdrop and not tower[0].skippable and "layerdrop" not in warned:
                warned.add("layerdrop")
                _warn("layerdrop", layerdrop, model, "its layers are parallel per-index lists joined in forward, "
                                                     "beside per-index lists that are neither branches nor norms")
            embedding = 0.0
        if activation is not None and not any(layer.activations for layer in tower):
            where = f" of {tower[0].path.rsplit('.', 1)[0]}" if len(struct.towers) > 1 else ""
            _warn("activation", activation, model, f"no activation module was found in the layers{where}")
        depth = tower[0].depth
        rates = drop_path_rates(knobs.get("drop_path") or 0.0, depth, reg.drop_path_profile)
        for pos, layer in enumerate(tower):
            own = rates[layer.index:layer.index + layer.calls]
            emb = embedding if pos == 0 else 0.0
            skip = layerdrop if layer.skippable else 0.0
            whole = 0.0 if layer.parallel else skip  # a parallel layer is skipped through its entries' hooks
            s = _LayerState(hidden, own, whole, emb, reg.drop_path_mode)
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
                draw = state.hook(layer.module, _ParallelDraw(skip), pre=True, knob="layerdrop")
                for _, part in layer.branches:
                    state.hook(part, _ParallelSkip(draw, norm=False))
                for _, norm in layer.norms:
                    state.hook(norm, _ParallelSkip(draw, norm=True))
            if emb or whole or any(own):  # batch size for drop-path, input for embedding dropout / LayerDrop
                state.hook(layer.module, _LayerPre(s), pre=True, with_kwargs=True)
            if whole:
                state.hook(layer.module, _LayerPost(s, told), with_kwargs=True)
            if hidden or any(own):
                for group in layer.branch_groups():
                    hook = _Branch(s, len(group))  # one per branch: its parts share the drop-path draw
                    for _, part in group:
                        state.hook(part, hook)
            if activation is not None:
                for path, act in layer.activations:
                    injected.append(Site(path, "activation", activation, layer.index, "injected"))
                    if activation:
                        state.hook(act, _OutputDropout(activation), knob="activation")
    if any(layer.calls > 1 for layer in struct.layers):
        state.hook(model, _ResetCalls(states), pre=True)
    for knob in ("hidden", "drop_path"):
        if knob in knobs and not natives_by[knob] and not any(layer.branches for layer in struct.layers):
            _warn(knob, knobs[knob], model, "no residual branch was found in its layers")
    return injected


def _inject_classifier(model, struct: Structure, knobs, natives_by, state: PatchState) -> list[Site]:
    """`classifier` dropout where a head has none: on the input of the head's Linear layers."""
    rate = knobs.get("classifier")
    if rate is None or natives_by["classifier"]:
        return []
    if not struct.head_linears:
        _warn("classifier", rate, model, "it has no classification head")
        return []
    for _, linear in struct.head_linears:
        if rate:
            state.hook(linear, _InputDropout(rate), pre=True, knob="classifier")
    return [Site(path + ".<input>", "classifier", rate, None, "injected") for path, _ in struct.head_linears]


def _inject_attention(model, struct: Structure, knobs, natives_by, state: PatchState) -> list[Site]:
    """`attention` where a model has no attention-probability dropout (e.g. a hard-coded ``dropout_p=0.0``): the
    rate is handed to PyTorch's `scaled_dot_product_attention` called inside each attention module. Only under the
    sdpa attention implementation; an eager softmax offers nothing to hand it to."""
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
        _warn("attention", rate, model, why)
        return []
    told: set = set()
    for _, module, _ in modules:
        if rate:
            enter = state.hook(module, _AttentionEnter(rate), pre=True, knob="attention")
            state.hook(module, _AttentionExit(enter, told), always_call=True)
    return [Site(path, "attention", rate, index, "injected") for path, _, index in modules]


def _inject_adapters(model, struct: Structure, knobs, natives_by, state: PatchState) -> list[Site]:
    """`adapter` dropout where a PEFT adapter has none: a hook on its identity, i.e. on the adapter's input only."""
    rate = knobs.get("adapter")
    if rate is None:
        return []
    if not struct.adapter_slots and not natives_by["adapter"]:
        _warn("adapter", rate, model, "it has no PEFT adapter with a dropout slot (LoRA's `lora_dropout`)")
        return []
    for _, identity, _ in struct.adapter_slots:
        if rate:
            state.hook(identity, _OutputDropout(rate), knob="adapter")
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


def _inject_heads(model, struct: Structure, knobs, state: PatchState) -> list[Site]:
    """`heads` (DropHead) at the input of each attention module's output projection, split by the head count."""
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
        _warn("heads", rate, model, why)
        return []
    if bare:  # a tower without such attention (the SSM language model beside a vision tower)
        _warn("heads", rate, model, f"no attention module with an output projection and a head count was found "
                                    f"in the layers of {', '.join(bare)}")
    if missed:
        _warn("heads", rate, model, f"the attention of {len(missed)} module(s) (first: {missed[0]}) has no output "
                                    f"projection that splits into its heads")
    for _, module, heads, _ in found:
        if rate:
            state.hook(module, _DropHead(rate, heads), pre=True, knob="heads")
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


def _inject_mixout(model, struct: Structure, reg, knobs, state: PatchState) -> list[Site]:
    """`mixout` on the weight of every weighted module of the layers (or of those ``reg.mixout_modules`` names),
    trainable ones only: a frozen weight stays at its target, so mixing it changes nothing. Under PEFT that means
    the adapters' own weights (LoRA's A and B), the base weights being frozen; `follow_mixout` moves it there when
    the adapters come after the patch."""
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
        _warn("mixout", rate, model, where)
        return []
    state.mixed = [m for _, m, _ in chosen]
    if rate:
        exit_hook, first = _MixoutExit(), len(state.handles)
        for _, m, _ in chosen:
            enter = state.hook(m, _MixoutEnter(rate, m.weight.detach().clone()), pre=True, knob="mixout")
            enter.p = rate * state.factors["mixout"]  # a rate schedule in progress (`follow_mixout`)
            state.hook(m, exit_hook, always_call=True)
        state.mixout_handles = state.handles[first:]
    return [Site(name, "mixout", rate, index, "injected") for name, _, index in chosen]


def _frozen(module) -> bool:
    """Whether ``module`` has no trainable weight of its own (Mixout mixes trainable weights only)."""
    weight = module._parameters.get("weight")
    return not isinstance(weight, nn.Parameter) or not weight.requires_grad


class _FollowMixout(_Hook):
    """Model pre-hook: Mixout follows the trainable weights at each forward (`follow_mixout`)."""

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
    state.live = [e for e in state.live if not isinstance(e[0], _MixoutEnter)]  # the targets go with them
    state.injected = [s for s in state.injected if s.kind != "mixout"]
    state.mixed, state.mixout_handles = [], []
    state.injected += _inject_mixout(model, analyze(model), state.reg, state.reg.knob_values(), state)
    return True


def _inject_embedding_noise(model, struct: Structure, knobs, state: PatchState) -> list[Site]:
    """`embedding_noise` (NEFTune) on the output of the model's input embeddings and of every module that shares
    their weight: BART's and T5's encoder and decoder run their own ``embed_tokens`` tied to ``shared`` (a hook on
    ``get_input_embeddings()`` alone, as in transformers' `Trainer`, never fires there). A model without input
    embeddings (speech, convolutional and two-tower models) gets it on the input of each tower's first layer."""
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
        _warn("embedding_noise", alpha, model, "it has neither input embeddings (`get_input_embeddings`) nor a "
                                               "layer stack whose input could take it")
        return []
    for _, m, pre in found:
        if alpha:
            state.hook(m, _EmbeddingNoise(alpha, pre), pre=pre, with_kwargs=pre, knob="embedding_noise")
    return [Site(n, "embedding_noise", alpha, None, "injected") for n, _, _ in found]


def unpatch_model(model):
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
    model = unwrap(model)
    state = model.__dict__.pop(_STATE, None)
    if state is None:
        return outer
    for handle in state.handles:
        handle.remove()
    for owner, attr, old in reversed(state.restores):
        if old is _MISSING:
            delattr(owner, attr)
        else:
            setattr(owner, attr, old)
    return outer


def patch_state(model, required: bool = False) -> PatchState | None:
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
    inner = unwrap(model)
    state = inner.__dict__.get(_STATE)
    if state is None and required:
        raise ValueError(f"{type(inner).__name__} is not patched: `patch_model` it first")
    return state


def is_patched(model) -> bool:
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
    return _STATE in unwrap(model).__dict__


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


def set_rate_factors(model, factors: dict[str, float]) -> None:
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
    for owner, attr, knob, base in state.live:
        if knob in factors:
            f = float(factors[knob])
            setattr(owner, attr, [r * f for r in base] if isinstance(base, tuple) else base * f)
    state.factors.update({k: float(f) for k, f in factors.items()})
