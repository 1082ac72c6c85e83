"""Find where a model regularizes: its layer stacks, residual branches and native dropout sites.

One generic walk over the module tree, steered by the tables in `architectures.py`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import re
import sys
from dataclasses import dataclass, field

from torch import nn

from .architectures import CONFIG_KEYS, FALLBACK_BRANCHES, GENERIC_BRANCHES, GENERIC_RULES, Arch, architecture
from .provenance import config_sources

_ACTIVATION = re.compile(r".*(GELU|Gelu|ReLU|Relu|SiLU|Silu|Swish|Activation|Tanh|Mish|Sigmoid).*")
_ATTENTION_NAME = re.compile(r"self_?attn|self_attention|attn|attention|encoder_attn|cross_?attn|crossattention"
                             r"|SelfAttention|EncDecAttention|LocalSelfAttention|TransientGlobalSelfAttention")
#                              the last four: T5 and its relatives (LongT5's encoder)
_ATTENTION_PATH = re.compile(rf"(^|\.)({_ATTENTION_NAME.pattern})\b")
_MLP = re.compile(r".*(MLP|Mlp|FFN|Ffn|FeedForward)")
_EXPERTS = re.compile(r".*Experts")
# modules that weigh a branch rather than compute its features: an activation there is a router's scores (DeepSeek-V4),
# a gate's (AXK2's gated norm), not an MLP's
_WEIGHING = re.compile(r".*(Router|Gate|Norm)")


# a rate read from the module's config inside forward: `self.config.<...drop...>`
_CONFIG_READ = re.compile(r"self\.config\.(\w*drop\w*)\b")


def _model_classes(cls: type) -> list[type]:
    """``cls`` and the classes it inherits from (mixins included), torch's own left out."""
    return [k for k in cls.__mro__ if k is not object and not k.__module__.startswith("torch.")]


@functools.lru_cache(maxsize=None)
def config_reads(cls: type) -> tuple[str, ...]:
    """Config keys with "drop" in their name that the ``forward`` of ``cls`` (or of a class it inherits it from)
    reads from ``self.config``, found in its source code."""
    keys: set[str] = set()
    for klass in _model_classes(cls):
        if "forward" not in vars(klass):
            continue
        try:
            keys.update(_CONFIG_READ.findall(inspect.getsource(vars(klass)["forward"])))
        except (OSError, TypeError):  # no source (compiled, generated): nothing to learn
            continue
    return tuple(sorted(keys))


@functools.lru_cache(maxsize=None)
def _method_sources(cls: type) -> str:
    """The source of every method of ``cls`` and the classes it inherits from, ``__init__`` left out."""
    parts = []
    for klass in _model_classes(cls):
        for name, fn in vars(klass).items():
            if name != "__init__" and inspect.isfunction(fn):
                try:
                    parts.append(inspect.getsource(fn))
                except (OSError, TypeError):
                    return ""  # source missing: assume everything is read
    return "\n".join(parts)


def calls(cls: type, function: str) -> bool:
    """Whether a method of ``cls`` (``__init__`` left out) calls ``function`` by that name, found in its source code;
    False where the source is missing."""
    return re.search(rf"\b{re.escape(function)}\(", _method_sources(cls)) is not None


def never_read(cls: type, attr: str) -> bool:
    """Whether no method of ``cls`` but ``__init__`` mentions ``self.<attr>``: a rate set and never used."""
    source = _method_sources(cls)
    return bool(source) and re.search(rf"\bself\.{re.escape(attr)}\b", source) is None


@dataclass(frozen=True)
class Site:
    """One place where a knob acts.

    Attributes:
        path: the module path; ``path:attr`` for a float attribute, ``config.key`` for a rate read from the config
            in forward.
        kind: the knob (see `KNOBS`).
        rate: the rate in force.
        layer: the layer index along its stack, None outside the layers.
        source: how the rate is held: ``"module"`` (an ``nn.Dropout``), ``"attribute"`` (a float read in forward),
            ``"config"`` (read from the config in forward) or ``"injected"`` (an hfreg hook).
        config_key: the config key the model built the rate from ("" if none: a constant, or injected). Read as
            ``origin``, its earlier name, with a FutureWarning.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> hfreg.inspect_model(model)[1]
        Site(path='encoder.layer.0.attention.self.dropout', kind='attention', rate=0.1, layer=0, source='module', \
config_key='attention_probs_dropout_prob')
    """

    path: str
    kind: str
    rate: float
    layer: int | None = None
    source: str = "module"  # module | attribute | config | injected
    config_key: str = ""


@dataclass
class NativeSite:
    owner: object  # the nn.Dropout (attr "p"), the module holding a float, or the config
    attr: str
    path: str
    key: str  # "OwnerClass.attribute"
    kind: str
    layer: int | None
    dead: bool
    source: str
    config_key: str = ""  # the config key the rate was built from, where building the model shows one
    module_path: str = ""  # the module that holds the rate, or reads it from its config
    towers: tuple[int, ...] = ()  # the layer towers it regularizes (see `_towers_of`); () for a head
    @property
    def rate(self) -> float:
        return float(getattr(self.owner, self.attr))


@dataclass
class Layer:
    module: nn.Module
    path: str
    index: int  # position in its tower (first virtual index for a shared layer)
    depth: int  # layers in the tower
    calls: int = 1  # times forward runs it (weight-shared layers run several times)
    branches: list[tuple[str, nn.Module]] = field(default_factory=list)
    activations: list[tuple[str, nn.Module]] = field(default_factory=list)
    attentions: list[tuple[str, nn.Module]] = field(default_factory=list)  # outermost attention modules
    # a layer made of the i-th entries of parallel lists (``attentions[i]``, ``ffns[i]``), joined in the model's
    # forward: it has branches but no module of its own to skip or to feed (``module`` is its first branch)
    parallel: bool = False
    members: tuple[str, ...] = ()  # for a parallel layer: the paths of its entries
    # LayerDrop may skip it: not where the layer adds no residual (MobileNetV2's stage heads), nor a parallel layer
    # whose per-index lists are not all branches and norms
    skippable: bool = True
    groups: tuple[int, ...] = ()  # per branch: the branch it is part of (parts summed into one branch share one)
    norms: list[tuple[str, nn.Module]] = field(default_factory=list)  # a parallel layer's per-index norms
    # where the layer has no activation module: its MLPs' output projections, whose input is the activation
    projections: list[tuple[str, nn.Module]] = field(default_factory=list)
    feeds_forward: bool = True  # it holds an MLP or experts (a state-space or attention-only layer of a hybrid not)

    def branch_groups(self) -> list[list[tuple[str, nn.Module]]]:
        """The branch ends grouped by branch (each its own group unless the architecture sums several)."""
        ids = self.groups or tuple(range(len(self.branches)))
        return [[b for b, j in zip(self.branches, ids) if j == g] for g in dict.fromkeys(ids)]


@dataclass
class Structure:
    """What `analyze` finds: the layer towers, the native sites, the head's Linear layers and PEFT adapters'
    dropout slots (identities where an adapter has no dropout)."""

    towers: list[list[Layer]]
    natives: list[NativeSite]
    head_linears: list[tuple[str, nn.Module]]
    adapter_slots: list[tuple[str, nn.Module, int | None]]

    @property
    def layers(self) -> list[Layer]:
        return [layer for tower in self.towers for layer in tower]


@dataclass(frozen=True)
class Inert:
    """What forwards of a small twin show to change nothing (`hfreg.probing.inert`), as path patterns with layer
    indices as ``*`` (`stack_key`): native ``sites`` that run without effect in training (Falcon's attention
    dropout under ``parallel_attn``) and ``layers`` no hook on which runs, since their parent calls their
    ``forward`` directly while their parts run (SqueezeBERT's encoder). Empty: nothing is claimed."""

    sites: frozenset[str] = frozenset()
    layers: frozenset[str] = frozenset()


class _Tree:
    """One walk of a model's module tree, in preorder, shared by every phase of `analyze`: what `named_modules`
    gives, the modules found at several paths, and the subtree of any module as its own `named_modules` would
    give it (a contiguous run of the walk)."""

    def __init__(self, model: nn.Module):
        self.walk = list(model.named_modules(remove_duplicate=False))
        seen: set[int] = set()
        self.repeated: set[int] = set()
        self.named: list[tuple[str, nn.Module]] = []
        self.at: dict[str, int] = {}
        for i, (path, mod) in enumerate(self.walk):
            self.at[path] = i
            if id(mod) in seen:
                self.repeated.add(id(mod))
            else:
                seen.add(id(mod))
                self.named.append((path, mod))

    def subtree(self, path: str) -> list[tuple[str, nn.Module]]:
        start = self.at[path]
        prefix, cut = (path + ".", len(path) + 1) if path else ("", 0)
        out, seen = [("", self.walk[start][1])], {id(self.walk[start][1])}
        for j in range(start + 1, len(self.walk)):
            p, mod = self.walk[j]
            if not p.startswith(prefix):
                break
            if id(mod) not in seen:
                seen.add(id(mod))
                out.append((p[cut:], mod))
        return out


def _resolve(block: nn.Module, pattern: str, named=None) -> list[tuple[str, nn.Module]]:
    if "*" not in pattern:
        try:
            return [(pattern, block.get_submodule(pattern))]
        except AttributeError:
            return []
    return [(n, m) for n, m in (named or block.named_modules()) if n and fnmatch.fnmatchcase(n, pattern)
            and n.count(".") == pattern.count(".")]


def _runs_last(hit: tuple[str, nn.Module]) -> tuple[str, nn.Module] | None:
    """The module whose output ends a branch named ``hit``: itself, or for a `ModuleDict` (whose own forward never
    runs; its owner calls the entries in order: BridgeTower's CLIP-style MLP, the one such candidate in transformers
    5.24; a dict of experts would not fit) its last entry; None for a `ModuleList`, whose entries may be branches
    of their own (LongCat-Flash's two attentions) or whole residual blocks (MobileBERT's feed-forward stack): an
    architecture entry says which."""
    path, module = hit
    if isinstance(module, nn.ModuleDict):
        last = next(reversed(module.keys()), None)
        return None if last is None else (f"{path}.{last}", module[last])
    return None if isinstance(module, nn.ModuleList) else hit


def _branch_groups(block: nn.Module, model_type: str | None, named=None) -> list[list[tuple[str, nn.Module]]]:
    """Branch-end modules of one layer, in forward order, grouped by branch: a group of several modules is one
    branch summed from their outputs (an architecture's ``"a+b"``). ``named``: the layer's `named_modules`, if
    already at hand."""
    arch = architecture(model_type)
    if arch.branches:
        groups = []
        for pattern in arch.branches:
            parts = pattern.split("+")
            hits = [hit for part in parts for hit in _resolve(block, part, named)]
            groups += [hits] if len(parts) > 1 else [[hit] for hit in hits]  # each match of a "*" its own branch
        return [g for g in groups if g]
    found = []
    for candidates in GENERIC_BRANCHES:
        for name in candidates:
            hit = [_runs_last(h) for h in _resolve(block, name, named)]
            if hit and all(h is not None for h in hit):
                found += hit
                break
    for pattern in () if found else FALLBACK_BRANCHES:
        found = [(n, m) for n, m in _resolve(block, pattern, named)
                 if not isinstance(m, (nn.ModuleList, nn.ModuleDict))]
        if found:
            break
    return [[hit] for hit in found]


def _module_level(mod: nn.Module, owner: nn.Module) -> bool:
    """Whether ``mod`` is an object held at the top level of a module that defines ``owner``'s class or one it
    inherits from, as such or in a table (XLM's imported ``gelu``, OpenAI GPT's ``ACT_FNS``): shared with every
    model of the process."""
    names = {k.__module__ for k in _model_classes(type(owner))}
    spaces = [vars(sys.modules[n]) for n in names if n in sys.modules]
    return any(v is mod or (isinstance(v, dict) and any(x is mod for x in v.values()))
               for space in spaces for v in space.values())


def _weighs(block: nn.Module, name: str, owner: nn.Module, attr: str) -> bool:
    """Whether the activation at ``name`` weighs a branch: it is held by a router, a gate or a norm below the layer
    (MoE routing scores, a gated norm's gate; the layer's own class name is not read: wav2vec2's
    ``...EncoderLayerStableLayerNorm`` is a whole layer), or applied to a parameter of its owner (IDEFICS'
    ``tanh(alpha)`` gates)."""
    parts = name.split(".")
    if any(_WEIGHING.fullmatch(type(block.get_submodule(".".join(parts[:i]))).__name__) for i in range(1, len(parts))):
        return True
    params = dict(owner.named_parameters(recurse=False))
    applied_to = re.findall(rf"self\.{re.escape(attr)}\(\s*self\.(\w+)\s*\)", _method_sources(type(owner)))
    return any(p in params for p in applied_to)


def _activations(block: nn.Module, repeated=frozenset(), named=None) -> list[tuple[str, nn.Module]]:
    """Parameter-free activation modules of a layer. Module-level objects (XLM's ``gelu``) and modules found at
    several paths (one object in every layer often is one) are left out: shared with every other model in the
    process, a hook on them would act on those too. So are those of a router, a gate or a norm, and one applied to
    a parameter (``_weighs``), and modules their owner never calls (Mamba's mixer builds ``self.act`` and applies
    the activation as a function)."""
    acts, seen = [], set()
    for name, mod in named or block.named_modules():
        # the class name first: most modules of a layer are not activations, and the rest costs more
        if not name or not _ACTIVATION.fullmatch(type(mod).__name__) or _ATTENTION_PATH.search(name):
            continue
        if list(mod.children()) or list(mod.parameters(recurse=False)) or id(mod) in seen or id(mod) in repeated:
            continue
        parent, _, attr = name.rpartition(".")
        owner = block.get_submodule(parent)
        if _module_level(mod, owner) or _weighs(block, name, owner, attr):
            continue
        if isinstance(owner, (nn.ModuleList, nn.Sequential, nn.ModuleDict)) or not never_read(type(owner), attr):
            seen.add(id(mod))
            acts.append((name, mod))
    return acts


def base_layer(module: nn.Module) -> nn.Module:
    """The module a PEFT wrapper wraps — a tuner layer's ``get_base_layer()``, a `modules_to_save` wrapper's
    ``original_module`` — or ``module`` itself."""
    if callable(getattr(module, "get_base_layer", None)):
        return module.get_base_layer()
    original = getattr(module, "original_module", None)
    return original if isinstance(original, nn.Module) else module


def peft_copies(module: nn.Module) -> nn.ModuleDict | None:
    """The copies a PEFT `modules_to_save` wrapper trains of its ``original_module``, by adapter name (`add_adapter`
    adds one); None for any other module."""
    copies = module._modules.get("modules_to_save")
    if isinstance(copies, nn.ModuleDict) and isinstance(module._modules.get("original_module"), nn.Module):
        return copies
    return None


def _widths(mod: nn.Module) -> tuple[int, int] | None:
    """A projection's input and output widths: an ``nn.Linear``, or GPT-2's ``Conv1D`` (its weight transposed),
    looked through a PEFT wrapper (whose input both the base layer and the adapter take)."""
    mod = base_layer(mod)
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    if type(mod).__name__ == "Conv1D" and isinstance(getattr(mod, "nx", None), int):
        return mod.nx, mod.nf
    return None


def _projections(block: nn.Module, repeated=frozenset(), named=None) -> list[tuple[str, nn.Module]]:
    """The output projection of each outermost MLP-named module of a layer (outside attention): the one projection
    that maps back to the width an earlier-built projection of the same MLP widened from (its output twice as wide
    for a fused gate-and-up projection). Its input is the MLP's activation (times the up projection, for a gated
    MLP: the same for dropout), so dropout there is activation dropout where the activation is applied as a
    function (LFM2), is a module-level object shared by every model (XLM, OpenAI GPT) or has parameters (Apertus'
    xIELU). None where no projection, or more than one, fits (experts held as batched weights: GPT-OSS; an MLP as
    wide or narrower inside than outside, or one whose output projection is built first: telling its input
    projection from its output projection would take the order of calls), nor for a shared expert in a block with
    routed experts (MiniMax-M3), whose dropout would be partial."""
    found: list[tuple[str, nn.Module]] = []
    mlps: list[str] = []
    for name, mod in named or block.named_modules():
        # the block itself may be the MLP (XLM's parallel `ffns` entries)
        if not _MLP.fullmatch(type(mod).__name__) or _ATTENTION_PATH.search(name) \
                or any(m == "" or name.startswith(m + ".") for m in mlps):
            continue
        mlps.append(name)
        # a shared expert in a block with routed experts: dropout there would reach a part of the MLP only
        parent = block.get_submodule(name.rpartition(".")[0]) if name else None
        if parent is not None and any(_EXPERTS.fullmatch(type(m).__name__)
                                      for m in parent.modules() if m is not parent):  # not the experts' own list
            continue
        linears = [(n, m, w) for n, m in mod.named_children() if (w := _widths(m)) and id(m) not in repeated]
        downs = [(n, m) for i, (n, m, (into, out)) in enumerate(linears) if into != out and any(
            up_in == out and up_out > up_in and up_out in (into, 2 * into) for _, _, (up_in, up_out) in linears[:i])]
        if len(downs) == 1:
            found.append((f"{name}.{downs[0][0]}" if name else downs[0][0], downs[0][1]))
    return found


def _feeds_forward(block: nn.Module, named=None) -> bool:
    """Whether a layer holds an MLP-named module or experts outside its attention."""
    return any((_MLP.fullmatch(type(mod).__name__) or _EXPERTS.fullmatch(type(mod).__name__))
               and not _ATTENTION_PATH.search(name) for name, mod in (named or block.named_modules()))


def _attentions(block: nn.Module, named=None) -> list[tuple[str, nn.Module]]:
    """The outermost modules of a layer named like attention (``self_attn``, ``attention``, ``crossattention``…)."""
    found: list[tuple[str, nn.Module]] = []
    for name, mod in named or block.named_modules():
        if name and _ATTENTION_NAME.fullmatch(name.rsplit(".", 1)[-1]) and list(mod.children()) \
                and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, mod))
    return found


def is_weighted(module: nn.Module) -> bool:
    """A module whose ``weight`` parameter is one matrix (or kernel) of a linear map: Linear, transformers'
    Conv1D (GPT-2), convolutions."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D"


def stack_key(path: str) -> str:
    return re.sub(r"\.\d+(?=[.:]|$)", ".*", path)


def analyze(model: nn.Module) -> Structure:
    """Walk ``model`` (a transformers PreTrainedModel) and describe its regularization structure, in three phases:
    layer towers, then where heads begin, then native sites (which need both to classify what they find)."""
    arch = architecture(getattr(model.config, "model_type", None))
    unused: set[str] = set()
    tree = _Tree(model)
    towers = _towers(model, arch, unused, tree)
    layer_of = {path: layer for tower in towers for layer in tower for path in (layer.path, *layer.members)}
    head_roots = _head_roots(model, layer_of, tree)
    natives, head_linears, adapter_slots = _native_sites(model, arch, layer_of, head_roots, tree)
    for n in natives:  # the module holding the rate, or reading it from its config
        n.towers = () if n.module_path.split(".")[0] in head_roots else _towers_of(n.module_path, towers)
        n.dead = n.dead or n.path in unused
    return Structure(towers, natives, head_linears, adapter_slots)


def _towers_of(path: str, towers: list[list[Layer]]) -> tuple[int, ...]:
    """The towers a site at ``path`` (or read by the module at ``path``) belongs to: the one holding it, else
    those whose stack shares the longest path prefix with it (``vision_tower.embeddings.dropout`` belongs to the
    stack ``vision_tower.encoder.layer``, a model-level ``drop`` to every stack under the model, BERT's
    ``embeddings.dropout`` to its one stack)."""
    parts = path.split(".") if path else []
    best, hits = -1, []
    for t, tower in enumerate(towers):
        for layer in tower:
            for p in (layer.path, *layer.members):
                if path == p or path.startswith(p + "."):
                    return (t,)
        stack = tower[0].path.split(".")[:-1]
        shared = next((i for i, (a, b) in enumerate(zip(parts, stack)) if a != b), min(len(parts), len(stack)))
        if shared > best:
            best, hits = shared, [t]
        elif shared == best:
            hits.append(t)
    if best == 0 and len(towers) > 1 and len(parts) > 1:
        return ()  # inside a part of a composite model that has no stack of its own (an audio tokenizer's LSTM)
    return tuple(hits)


def _attribute(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _towers(model: nn.Module, arch: Arch, unused: set[str], tree: _Tree) -> list[list[Layer]]:
    """Layer stacks: ModuleLists whose layers have residual branches; stacks that differ only by an index (Swin,
    ConvNeXt stages) chain into one tower, so that depth schedules run over the whole tower. Adds to ``unused``
    the dropout modules that layers without a residual (by the architecture's flag) never call."""
    model_type = getattr(model.config, "model_type", None)
    repeated = tree.repeated
    stacks: dict[str, list[tuple[str, nn.Module]]] = {}
    claimed: list[str] = []
    for path, mod in tree.named:
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        if any(path.startswith(c + ".") for c in claimed):
            continue
        first = f"{path}.0" if path else "0"  # not a path where a Sequential names its entries
        if not _branch_groups(mod[0], model_type, tree.subtree(first) if first in tree.at else None):
            continue
        claimed.append(path)
        stacks.setdefault(stack_key(path), []).extend((f"{path}.{i}", m) for i, m in enumerate(mod))
    towers: list[list[Layer]] = []
    for members in stacks.values():
        shared = arch.shared_depth
        depth, calls = len(members), 1
        if shared:  # one layer run several times (ALBERT): each call is a virtual layer of its own
            depth = int(getattr(model.config, shared))
            calls = max(1, depth // len(members))
        tower = []
        for i, (path, mod) in enumerate(members):
            named = tree.subtree(path) if path in tree.at else None
            groups = _branch_groups(mod, model_type, named)
            # a layer with no residual: by the architecture's flag, or (where the table names the branch ends) one
            # that has none of them (LeViT's subsampling attention between its residual layers)
            residual = (arch.residual_flag is None or bool(_attribute(mod, arch.residual_flag))) \
                and (bool(groups) or not arch.branches)
            if not residual:  # a dropout ending the branch guards the residual add: without one, never called
                unused.update(f"{path}.{n}" for g in groups for n, m in g
                              if isinstance(m, nn.modules.dropout._DropoutNd))
                groups = []
            acts = _activations(mod, repeated, named)
            layer = Layer(mod, path, i * calls, depth, calls, [hit for g in groups for hit in g], acts,
                          projections=[] if acts else _projections(mod, repeated, named), skippable=residual,
                          groups=tuple(j for j, g in enumerate(groups) for _ in g),
                          feeds_forward=bool(acts) or _feeds_forward(mod, named))
            layer.branches = [(f"{path}.{n}", m) for n, m in layer.branches]
            layer.activations = [(f"{path}.{n}", m) for n, m in layer.activations]
            layer.projections = [(f"{path}.{n}", m) for n, m in layer.projections]
            layer.attentions = [(f"{path}.{n}", m) for n, m in _attentions(mod, named)]
            tower.append(layer)
        towers.append(tower)
    towers += _parallel_towers(tree, claimed, repeated)
    return towers


# config keys whose name tells the knob of a rate built from them; `hidden` keys ("dropout", "hidden_dropout_prob")
# feed embeddings, residual branches and heads alike, so where the rate sits decides instead
_KEY_KNOB = {key: knob for knob, keys in reversed(CONFIG_KEYS.items()) if knob != "hidden" for key in keys}

_BRANCH_LIST = re.compile(r".*(Attention|FFN|FeedForward|MLP|Mlp)")


def _parallel_towers(tree: _Tree, claimed: list[str], repeated) -> list[list[Layer]]:
    """Layers held as parallel per-index lists under one parent (XLM, FlauBERT: ``attentions``, ``layer_norm1``,
    ``ffns``, ``layer_norm2``), the residual adds written in the parent's forward. The branch ends are the
    entries of the lists whose modules are attention or feed-forward blocks: their outputs join the stream."""
    towers = []
    for parent_path, parent in tree.named:
        if any(parent_path == c or parent_path.startswith(c + ".") for c in claimed):
            continue
        lists = [(n, m) for n, m in parent.named_children() if isinstance(m, nn.ModuleList) and len(m)]
        branch_lists = [(n, m) for n, m in lists if all(_BRANCH_LIST.fullmatch(type(x).__name__) for x in m)]
        if len(branch_lists) < 2 or len({len(m) for _, m in branch_lists}) != 1:
            continue
        prefix = f"{parent_path}." if parent_path else ""
        depth = len(branch_lists[0][1])
        # the other lists of that length: each index's norms (a skipped layer passes through them), or else
        # something unknown, and then no layer can be skipped
        others = [(n, m) for n, m in lists if len(m) == depth and (n, m) not in branch_lists]
        norm_lists = others if all("Norm" in type(x).__name__ for _, m in others for x in m) else None
        tower = []
        for i in range(depth):
            branches = [(f"{prefix}{n}.{i}", m[i]) for n, m in branch_lists]
            acts = [(f"{p}.{a}", am) for p, b in branches for a, am in _activations(b, repeated)]
            projs = [] if acts else [(f"{p}.{d}", dm) for p, b in branches for d, dm in _projections(b, repeated)]
            attn = [(p, b) for p, b in branches if "Attention" in type(b).__name__]
            norms = [(f"{prefix}{n}.{i}", m[i]) for n, m in norm_lists] if norm_lists is not None else None
            tower.append(Layer(branches[0][1], branches[0][0], i, depth, 1, branches, acts, attn, parallel=True,
                               members=tuple(p for p, _ in branches), skippable=norms is not None,
                               norms=norms or [], projections=projs,
                               feeds_forward=bool(acts) or any(_feeds_forward(b) for _, b in branches)))
        claimed += [f"{prefix}{n}" for n, _ in branch_lists]
        towers.append(tower)
    return towers


def _head_roots(model: nn.Module, layer_of: dict, tree: _Tree) -> list[str]:
    """Top-level children that are heads. Heads sit outside `base_model`; a task model without one
    (CLIPForImageClassification) has its head in the top-level children that hold no layer stack."""
    base = getattr(model, "base_model", model)
    base_path = next((n for n, m in tree.named if m is base), "")
    if base_path:
        return [n for n, _ in model.named_children() if n != base_path]
    if "For" in type(model).__name__:
        return [n for n, _ in model.named_children() if not any(p.startswith(n + ".") for p in layer_of)]
    return []


def _native_sites(model: nn.Module, arch: Arch, layer_of: dict, head_roots: list[str], tree: _Tree):
    """nn.Dropout children and float ``*drop*`` attributes, classified by the architecture's rules and then by
    where they sit; rates read from the config in forward; the head's Linear layers; PEFT adapters' slots."""
    config = model.config

    def where(path: str) -> tuple[str, int | None]:
        parts = path.split(".")
        for i in range(len(parts), 0, -1):
            hit = layer_of.get(".".join(parts[:i]))
            if hit is not None:
                return "block", hit.index
        if parts[0] in head_roots:
            return "head", None
        return "base", None

    rules = arch.rules + GENERIC_RULES
    dead = set(arch.dead) | set(arch.broken)  # a broken site is treated as dead, and held at 0 by the patch
    dead |= {k for k, flag in arch.dead_unless.items() if not getattr(config, flag, False)}
    sources = config_sources(model)

    @functools.cache  # the same key in every layer: match the rules once
    def classify(key: str, loc: str, source: str | None, module: bool = False) -> str:
        """The table's and the name rules' knob, else the knob of the config key ``source`` the rate comes from,
        else the knob of where it sits."""
        for pattern, knob in rules:
            if re.fullmatch(pattern, key):
                return knob
        knob = _KEY_KNOB.get(source)
        # an attention key means attention-probability dropout only for a rate handed to the attention function;
        # an nn.Dropout built from it may sit on the attention block's output (ModernBERT's out_drop)
        if knob and not (knob == "attention" and module):
            return knob
        return {"block": "hidden", "base": "embedding", "head": "classifier"}[loc]

    natives: list[NativeSite] = []
    head_linears: list[tuple[str, nn.Module]] = []
    adapter_slots: list[tuple[str, nn.Module, int | None]] = []
    for path, mod in tree.named:
        if path.endswith(".lora_dropout") and isinstance(mod, nn.ModuleDict):
            # PEFT keeps one module per adapter: nn.Dropout, or nn.Identity when the adapter has no dropout
            for name, child in mod.items():
                cpath, clayer = f"{path}.{name}", where(path)[1]
                if isinstance(child, nn.modules.dropout._DropoutNd):
                    natives.append(NativeSite(child, "p", cpath, "lora_dropout", "adapter", clayer, False, "module"))
                elif isinstance(child, nn.Identity):
                    adapter_slots.append((cpath, child, clayer))
            continue
        if "lora_" in path:
            continue  # the rest of an adapter holds no dropout of the model's own
        owner_cls = type(mod).__name__
        if path and isinstance(base_layer(mod), nn.Linear) and where(path)[0] == "head" \
                and not any(path.startswith(w + ".") for w, _ in head_linears):
            # a PEFT wrapper of a head Linear (a LoRA layer, the copy `modules_to_save` trains) is the Linear: what
            # it holds, a copy made from it later (`add_adapter`) included, takes its input through it
            head_linears.append((path, mod))
        for name, child in mod._modules.items():
            if isinstance(child, nn.modules.dropout._DropoutNd) and "lora_" not in name:
                cpath = f"{path}.{name}" if path else name
                key, (cloc, clayer) = f"{owner_cls}.{name}", where(cpath)
                unread = key in dead or never_read(type(mod), name)
                config_key = sources.get((cpath, "p"), ("", ""))[1]
                natives.append(NativeSite(child, "p", cpath, key, classify(key, cloc, config_key, True), clayer,
                                          unread, "module", config_key, cpath))
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            continue
        for attr, value in vars(mod).items():
            if "drop" in attr and isinstance(value, (float, int)) and not isinstance(value, bool):
                loc, layer = where(path)
                key = f"{owner_cls}.{attr}"
                if key in arch.not_dropout:
                    continue
                unread = key in dead or never_read(type(mod), attr)
                config_key = sources.get((path, attr), ("", ""))[1]
                natives.append(NativeSite(mod, attr, f"{path}:{attr}", key, classify(key, loc, config_key), layer,
                                          unread, "attribute", config_key, path))
    natives += _config_read_sites(config, arch, tree, where, classify)
    return natives, head_linears, adapter_slots


def _config_read_sites(config, arch: Arch, tree: _Tree, where, classify) -> list[NativeSite]:
    """Rates read from a config in forward: the table says which knob where the name and place cannot; the rest
    are found in the forward code of the model's own module classes (each config key once)."""
    sites, seen = [], set()
    for key, knob in arch.forward_config.items():
        if hasattr(config, key):
            seen.add((id(config), key))
            sites.append(NativeSite(config, key, f"config.{key}", f"config.{key}", knob, None, False, "config", key))
    for path, mod in tree.named:
        cfg = getattr(mod, "config", None)
        for key in config_reads(type(mod)) if cfg is not None else ():
            value = getattr(cfg, key, None)
            if (id(cfg), key) in seen or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            seen.add((id(cfg), key))
            name = f"config.{key}" if cfg is config else f"{path}.config.{key}"
            loc, _ = where(path)
            sites.append(NativeSite(cfg, key, name, f"config.{key}", classify(f"config.{key}", loc, key), None,
                                    False, "config", key, path))
    return sites
