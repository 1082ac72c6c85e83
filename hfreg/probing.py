"""Which knobs act: a dropout-off switch that proves itself, and a probe of every site.

`disable_dropout(model)` applies the all-zero spec, switches off training noise that is not dropout, and checks
that two training-mode passes with different seeds are bit-identical; if not, it raises naming the modules that
still drew random numbers. `probe(model)` turns each site on alone and reports whether the training-mode output
changes, so dead attributes and ignored rates show up; `inert` runs it on a small twin for `patch_model` and
`inspect_model`. For a published config too large to run here, `small_twin(config)` keeps the architecture and
code path with two layers and a narrow width.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .architectures import NOISE_KEYS, NOISE_MODULES
from .config import AFTER_MOVING, KNOBS, RegularizationConfig
from .hooks import ModeEnter, ModeExit
from .inject import apply_spec
from .provenance import config_sources, config_tree, per_config, with_rates
from .sites import Inert, analyze, stack_key
from .state import patch_state, unwrap
from .twin import small_twin

if TYPE_CHECKING:
    pass

# aten ops that draw random numbers; attention kernels are caught by a non-zero `dropout_p` argument instead
_RANDOM = ("bernoulli", "rand", "normal_", "dropout", "multinomial", "uniform", "exponential", "cauchy", "geometric",
           "poisson")


class _RandomOps(TorchDispatchMode):
    """Record ``(module path, aten op)`` for every random op run inside, naming the innermost module."""

    def __init__(self):
        super().__init__()
        self.stack, self.seen = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func._schema.name.split("::")[-1]
        random = any(w in op for w in _RANDOM) and "native_layer_norm" not in op
        for i, a in enumerate(func._schema.arguments):
            if a.name == "dropout_p":
                random = bool(args[i] if i < len(args) else kwargs.get("dropout_p", 0.0))
        if random and (not self.seen or self.seen[-1] != (self.stack[-1] if self.stack else "<model>", op)):
            self.seen.append((self.stack[-1] if self.stack else "<model>", op))
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def tracking(self, model):
        """Name modules by hooks on each one: first in before, last out after, so a random draw in one of the
        module's own hooks is put on that module."""
        def pre(name):
            return lambda module, args: self.stack.append(name)

        def post(module, args, output):
            if self.stack:
                self.stack.pop()

        handles = []
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre(name or "<model>"), prepend=True))
            handles.append(module.register_forward_hook(post, always_call=True))
        try:
            with self:
                yield self
        finally:
            for h in handles:
                h.remove()


# config keys for the width of a speech model's input features, the first found: stacked frames (wav2vec2-BERT's
# 2 x 80), Speech2Text's width per channel, mel bins
_FEATURE_WIDTH = ("feature_projection_input_dim", "input_feat_per_channel", "num_mel_bins")


def probe_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> dict:
    """A small deterministic input batch for ``model``, from its main input name and config: token ids, with images
    beside them where its forward needs both (a dual encoder such as CLIP); images, audio or features where those
    are its main input. Images have the size the config names (or its vision tower's, its backbone's, its
    encoder's), 32 x 32 where none does; a video model's clips the frames its config names; log-mel features in the
    layout the forward takes (Whisper's mel-first, else a short clip frames-first), waveforms with a channel axis
    where the forward needs one (audio codecs): one eval pass per model class tells.

    Args:
        model: a transformers model (a PEFT wrapper is looked through).
        batch: examples in the batch.
        length: tokens (or frames, patches) per example.

    Returns:
        A dict for ``model(**inputs)`` on the model's device, the same on every call.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> inputs = hfreg.probe_inputs(model)
        >>> tuple(inputs["input_ids"].shape), inputs["use_cache"]
        ((2, 8), False)
    """
    model = unwrap(model)
    cfg, name = model.config, getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    text_cfg = getattr(cfg, "text_config", None) or cfg
    vocab = getattr(text_cfg, "vocab_size", None) or 100
    ids = torch.randint(min(3, vocab - 1), min(vocab, 100), (batch, length), generator=g)

    def pixels():
        vision = getattr(cfg, "vision_config", None) or cfg
        if getattr(vision, "image_size", None) is None:  # a head on a backbone (ViTPose), an encoder-decoder's encoder
            vision = next((c for c in (getattr(cfg, k, None) for k in ("backbone_config", "encoder"))
                           if getattr(c, "image_size", None) is not None), vision)
        size = getattr(vision, "image_size", None) or 32
        height, width = (size, size) if isinstance(size, int) else (size[0], size[-1])  # ViTPose's is 256 x 192
        # a video model's frames: as many as its config names (VideoMAE's position table is sized for them)
        frames = next((c.num_frames for c in (vision, cfg) if isinstance(getattr(c, "num_frames", None), int)),
                      4 if name == "pixel_values_videos" else None)
        return torch.randn(batch, *([frames] if frames else []), getattr(vision, "num_channels", 3), height, width,
                           generator=g)

    signature = inspect.signature(model.forward).parameters
    if name in ("pixel_values", "pixel_values_videos"):
        inputs = {name: pixels()}
        if hasattr(cfg, "text_config"):  # dual encoders (and Kosmos-2, which has no image-token key) take both
            inputs["input_ids"] = ids
    elif name == "input_ids" and "pixel_values" in signature and _pairs_text_with_images(cfg, signature):
        inputs = {"input_ids": ids, "pixel_values": pixels()}
    elif name == "input_values":
        # ~50 frames after the convolutional feature extractor (1 s of 16 kHz audio for wav2vec2's strides): room
        # for SpecAugment masks, and no quadratic attention over thousands of frames in a narrow test config
        stride = math.prod(getattr(cfg, "conv_stride", None) or (320,))
        inputs = {"input_values": torch.randn(batch, 50 * stride, generator=g)}
    elif name == "input_features":  # log-mel features: as wide as the config (or its audio encoder's) says
        mel = next((getattr(c, k) for c in (cfg, *vars(cfg).values()) for k in _FEATURE_WIDTH
                    if isinstance(getattr(c, k, None), int)), 80)
        frames = 2 * getattr(cfg, "max_source_positions", 1500)
        inputs = {"input_features": torch.randn(batch, mel, frames, generator=g)}
    elif name == "input_ids":
        inputs = {"input_ids": ids}
    else:
        raise ValueError(f"cannot make probe inputs for {type(model).__name__} (main input {name!r}); pass inputs=")
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = ids[:, :4]
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "use_cache" in signature:
        inputs["use_cache"] = False  # one training-style pass: no cache to build (hybrid SSM caches refuse it)
    if name in _LAYOUTS:
        inputs[name] = _layout(model, inputs, name)
    return inputs


# a main input whose layout the config does not tell, in the layouts tried, in order; the first the model runs on is
# kept per model class. Log-mel features: Whisper takes (batch, mel, frames), the Conformer encoders (Parakeet) and
# Speech2Text (batch, frames, mel) and any length, not Whisper's padded window: 4 s of 10 ms frames keep their
# attention small (wav2vec2-BERT's window is 10,000). Waveforms: (batch, samples), or with a channel axis (audio
# codecs: EnCodec, DAC, Mimi)
_LAYOUTS = {"input_features": (lambda x: x, lambda x: x[:, :, :400].transpose(1, 2).contiguous()),
            "input_values": (lambda x: x, lambda x: x.unsqueeze(1))}
_LEARNED: dict[tuple[type, str], int] = {}


def _layout(model, inputs, name: str) -> torch.Tensor:
    """``inputs[name]`` in the first of its `_LAYOUTS` that ``model`` runs on in eval mode (one pass per layout tried,
    the first time a model class is seen); where none runs, the first, so that the caller sees its error."""
    key = (type(model), name)
    if key not in _LEARNED:
        for i, layout in enumerate(_LAYOUTS[name]):
            if _runs(model, {**inputs, name: layout(inputs[name])}):
                _LEARNED[key] = i
                break
    return _LAYOUTS[name][_LEARNED.get(key, 0)](inputs[name])


def _rng_devices(inputs) -> list[int]:
    """The CUDA devices the inputs are on, whose random state a forked pass must leave as it was."""
    return sorted({torch.cuda.current_device() if v.device.index is None else v.device.index
                   for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_cuda})


def _runs(model, inputs) -> bool:
    """Whether ``model`` runs on ``inputs`` in eval mode; every module's mode and the random state are left as they
    were (a frozen part kept in eval mode stays so; MC dropout's modules stay in training mode)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=_rng_devices(inputs)), torch.no_grad():
            model.eval()(**inputs)
        return True
    except Exception:  # any error: the caller tries its other layout
        return False
    finally:
        for m, training in modes:
            m.training = training


def _pairs_text_with_images(cfg, signature) -> bool:
    """A model whose text input comes with images, which its forward needs: a dual encoder (CLIP, ALIGN: a text and
    a vision config, and no image token, which a vision-language model places its images at), or one whose
    ``pixel_values`` has no default."""
    dual = hasattr(cfg, "text_config") and hasattr(cfg, "vision_config") and not any(
        hasattr(cfg, k) for k in ("image_token_id", "image_token_index"))
    return dual or signature["pixel_values"].default is inspect.Parameter.empty


def _train_output(model, inputs, seed):
    model.train()
    with torch.random.fork_rng(devices=_rng_devices(inputs)), torch.no_grad():
        torch.manual_seed(seed)
        out = model(**inputs)
    return [v.detach().clone() for v in _output_tensors(out)]


def _output_tensors(out) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, a ModelOutput or tuple, nested tuples included (a backbone's
    ``feature_maps``)."""
    if isinstance(out, torch.Tensor):
        return [out]
    values = out.values() if hasattr(out, "values") else out if isinstance(out, (tuple, list)) else ()
    return [t for v in values for t in _output_tensors(v)]


def _move_weights(model, scale: float, seed: int = 0) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Move every trainable floating-point weight by seeded N(0, scale) noise, as training moves weights away from
    their values at patch time (what the knobs of `config.AFTER_MOVING` need, Mixout's mixing target); returns
    (parameter, old value) pairs to put back."""
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    saved = [(p, p.detach().clone()) for p in params]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen).to(p) * scale)
    return saved


def _acts_once_moved(model, inputs) -> bool:
    """Whether two seeds give different training outputs once the trainable weights have moved away from their
    values at patch time, as training moves them (restored afterwards)."""
    saved = _move_weights(model, 0.05)
    try:
        return not _same(_train_output(model, inputs, 1), _train_output(model, inputs, 2))
    finally:
        with torch.no_grad():
            for p, old in saved:
                p.copy_(old)


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# draws per site: one may drop nothing (LayerDrop at 0.5 over a twin's 2 layers keeps both a quarter of the time)
_DRAWS = 5


def _acts(model, inputs, base) -> bool:
    """Whether any of `_DRAWS` seeds gives a training output other than ``base`` (all off)."""
    return any(not _same(base, _train_output(model, inputs, seed)) for seed in range(1, _DRAWS + 1))


class EvalForward:
    """A module's own forward as in eval mode, its children keeping theirs: the context `EvalEnter` enters."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.was, self.module.training = self.module.training, False

    def __exit__(self, *exc):
        self.module.training = self.was


class EvalEnter(ModeEnter):
    """Pre-hook: its module's own forward runs as in eval mode (`ModeExit` leaves it), for noise a module draws with
    no switch of its own (`NOISE_MODULES`)."""

    def mode(self, module) -> EvalForward:
        return EvalForward(module)


def _switch_off_noise(model) -> None:
    """Set each `NOISE_KEYS` key in the config tree, and each module attribute built from one, to its off value, and
    run each `NOISE_MODULES` module as in eval mode, through the patch state so that `unpatch_model` restores them."""
    state = patch_state(model, required=True)
    sources = config_sources(model)  # before the config changes
    for _, cfg in config_tree(model.config):
        for key, (_, off) in NOISE_KEYS.items():
            if key in vars(cfg) and getattr(cfg, key) not in (off, None):
                state.assign(cfg, key, off)
    for (path, attr), (_, key) in sources.items():
        if key in NOISE_KEYS:
            state.assign(model.get_submodule(path), attr, NOISE_KEYS[key][1])
    for module in model.modules():
        if type(module).__name__ in NOISE_MODULES:
            state.hook(module, ModeExit(state.hook(module, EvalEnter())))


def disable_dropout(model: nn.Module, inputs: dict | None = None, noise: bool = True) -> nn.Module:
    """Turn every dropout-like knob off (the all-zero spec) and, with ``noise``, the training noise no knob governs
    (`NOISE_KEYS`: SpecAugment masks, MoE jitter...; `NOISE_MODULES`, noise with no switch, whose modules then run
    their own forward as in eval mode), and prove it: two training-mode passes with different seeds
    must be bit-identical.

    Args:
        model: a transformers model.
        inputs: a batch for the check; None builds one (`probe_inputs`).
        noise: also turn off the training noise of `NOISE_KEYS` and `NOISE_MODULES`.

    Returns:
        ``model``, patched (`unpatch_model` undoes it, noise included).

    Raises:
        RuntimeError: naming the modules that still draw random numbers.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> _ = hfreg.disable_dropout(model)
        >>> {s.rate for s in hfreg.inspect_model(model, verify=False)}
        {0.0}
    """
    inner = unwrap(model)
    was_training = inner.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_spec(inner, RegularizationConfig.zero(), inert(inner))
    if noise:
        _switch_off_noise(inner)
    inputs = inputs if inputs is not None else probe_inputs(inner)
    try:
        first = _train_output(model, inputs, 0)
        if not _same(first, _train_output(model, inputs, 1)):
            with _RandomOps().tracking(inner) as ops:
                _train_output(model, inputs, 1)
            where = ", ".join(f"{path} ({op})" for path, op in ops.seen[:8]) or \
                "no torch random op: the randomness comes from outside torch (e.g. numpy)"
            raise RuntimeError(f"hfreg: training is still random after disable_dropout on "
                               f"{type(inner).__name__}: {where}")
    finally:
        inner.train(was_training)
    return model


@dataclass(frozen=True)
class Probe:
    """Whether turning one native site on (or, for ``source="hfreg"``, one whole knob through `patch_model`) changes
    training-mode output: one row of `probe`'s answer (its fields are described beside them below).

    Example: see `probe`.
    """

    path: str  # the site's path; "*" for a whole knob
    kind: str
    rate: float  # the rate the model had there before probing
    source: str  # module | attribute | config, or hfreg (the fields shared with `Site`, in its order)
    acts: bool
    dead: bool = False  # what the static analysis expected: a site it knows forward never reads
    note: str = ""  # for a knob: why it cannot apply somewhere (`PatchState.refused`)
    # the module holding (or reading) the rate ran, or a layer around it ran and passed it by: with ``acts`` False,
    # the site is inert; a site in a part the inputs never reach (a vision tower fed text) proves nothing
    exercised: bool = True


def _called(model, inputs, train: bool = True) -> set[str]:
    """Paths of the modules a training-mode (or, without ``train``, an eval-mode) forward runs ("" for the model)."""
    called: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: called.add(name))
               for name, m in model.named_modules()]
    try:
        if train:
            _train_output(model, inputs, 0)
        else:
            _runs(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return called


def probe(model: nn.Module, inputs: dict | None = None, rate: float = 0.5, patched: bool = True) -> list[Probe]:
    """Turn each native site on alone at ``rate`` (every other site and the training noise off), then, with
    ``patched``, each knob through `patch_model`, and report whether the training-mode output changes. Works on a
    copy: ``model`` is left as it was.

    Args:
        model: the model to probe (a small twin, from `small_twin`, for a large one).
        inputs: one batch for ``model(**inputs)``; None builds a generic one (`probe_inputs`).
        rate: the rate each site or knob is turned on at; 0 turns none on (a null control: nothing should act).
        patched: also probe each knob as `patch_model` applies it.

    Returns:
        One `Probe` per native site, then (with ``patched``) one per knob with path ``"*"``.

    Raises:
        ValueError: ``rate`` outside [0, 1). (0 is a null control: no site or knob should act.)
        RuntimeError: the model trains randomly with every knob off (`disable_dropout` names what draws).

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> rows = hfreg.probe(model, patched=False)
        >>> sorted({(r.kind, r.acts) for r in rows})
        [('attention', True), ('embedding', True), ('hidden', True)]
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"probe's rate must lie in [0, 1), the rate a site is turned on at: got {rate!r}")
    # the knobs act as `patch_model` would apply them: past what a twin shows inert (the twin itself is
    # probed unpatched, so this never re-enters)
    twin = inert(model) if patched else Inert()
    model = copy.deepcopy(unwrap(model))
    inputs = inputs if inputs is not None else probe_inputs(model)
    struct = analyze(model)
    natives = struct.natives
    called = _called(model, inputs)
    ran_layers = [p for layer in struct.layers for p in (layer.path, *layer.members) if p in called]
    published = {(id(n.owner), n.attr): n.rate for n in natives}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_spec(model, RegularizationConfig.zero(), twin)
    _switch_off_noise(model)
    base = _train_output(model, inputs, 0)
    if not _same(base, _train_output(model, inputs, 1)):
        raise RuntimeError(f"hfreg: {type(model).__name__} trains randomly with every knob off; "
                           f"`disable_dropout` names what still draws random numbers")
    results = []
    for n in natives:
        old = getattr(n.owner, n.attr)
        setattr(n.owner, n.attr, rate)
        try:
            acts = _acts(model, inputs, base)
        except Exception:  # a rate the forward cannot take is a site that does not work
            acts = False
        setattr(n.owner, n.attr, old)
        exercised = n.module_path in called or any(n.module_path.startswith(p + ".") for p in ran_layers)
        results.append(Probe(n.path, n.kind, published[(id(n.owner), n.attr)], n.source, acts, n.dead,
                             exercised=exercised))
    for knob in KNOBS if patched else ():
        spec = RegularizationConfig(**{**RegularizationConfig.zero().knob_values(), knob: rate})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = apply_spec(model, spec, twin)
        _switch_off_noise(model)  # a new spec starts from the unpatched model, its noise back on
        if knob in AFTER_MOVING:  # a weight mixed with its own value at patch time is unchanged (Mixout proper)
            acts = _acts_once_moved(model, inputs)
        else:
            acts = _acts(model, inputs, base)
        note = state.refused.get(knob, "")
        results.append(Probe("*", knob, 0.0, "hfreg", acts, note=note))
    return results


_INERT: dict[tuple[type, str], Inert] = {}


def inert(model) -> Inert:
    """What a small twin of ``model``'s class and config (`small_twin`) shows to change nothing in training: the
    native sites `probe` finds exercised yet without effect, and the layers whose own hooks never run while their
    parts do (their parent calls ``forward`` directly). Empty where no twin can be built and run: nothing is then
    claimed. Cached per class and config, on disk too."""
    return per_config(_INERT, unwrap(model), _inert, "inert",
                      encode=lambda v: {"sites": sorted(v.sites), "layers": sorted(v.layers)},
                      decode=lambda d: Inert(frozenset(d["sites"]), frozenset(d["layers"])))


def inert_sites(model) -> frozenset[str]:
    """Native sites of ``model`` that change nothing in training (`inert`), as path patterns with layer indices as
    ``*`` (``h.*.attn:dropout``)."""
    return inert(model).sites


def _inert(cls, config) -> Inert:
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            # every rate non-zero, so that each site the model can have exists (not an Identity for a 0.0)
            twin = cls(with_rates(small_twin(config), lambda i: 0.1)[0])
            inputs = probe_inputs(twin)
            results = probe(twin, inputs, patched=False)  # unpatched: its patches need no twin of their own
            called = _called(twin, inputs, train=False)  # every layer runs in eval (none skipped), and no dropout
    except Exception:  # no twin to run (a class that needs more than its config, inputs no generic batch fits)
        return Inert()
    acting = {stack_key(r.path) for r in results if r.acts or not r.exercised}
    # a layer that did not run while something inside it did: its parent called its forward, not the layer
    hookless = {stack_key(layer.path) for layer in analyze(twin).layers
                if not layer.parallel and layer.path not in called
                and any(p.startswith(layer.path + ".") for p in called)}
    return Inert(frozenset(stack_key(r.path) for r in results if not r.acts) - acting, frozenset(hookless))
