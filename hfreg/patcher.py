"""Rewire one `RegularizationConfig` into a transformers model: live (`patch_model`) or by config (`patch_config`).

`patch_model` asks `hfreg.probing` what a small twin of the model shows to be inert (native sites without effect,
layers whose own hooks never run), then applies the spec with `hfreg.inject.apply_spec` (where the mechanism is
described). Hooks and attribute changes never touch parameters, so `state_dict` keys and values stay as they were.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from typing import TYPE_CHECKING, Any

from huggingface_hub.errors import StrictDataclassError

from .architectures import CONFIG_KEYS, architecture
from .config import CONFIG_ATTR, RegularizationConfig
from .inject import apply_spec, native_sites
from .probing import inert, inert_sites
from .provenance import config_tree
from .sites import Site
from .state import patch_state, unpatch_model, unwrap
from .unapplied import quiet

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = ["auto_class_for", "inspect_model", "load_regularized", "patch_config", "patch_model"]


def patch_model(model: nn.Module, reg: RegularizationConfig | dict | None = None) -> nn.Module:
    """Apply ``reg`` to ``model`` in place and return it. With no ``reg``, apply the spec recorded in its config.

    Patching again first restores the original, so patching twice equals patching once. Patch before
    `accelerator.prepare` / DDP; under PEFT, patch before or after `get_peft_model`.

    Args:
        model: a transformers model, or a PEFT model around one.
        reg: the spec (a `RegularizationConfig` or its dict); None applies the one recorded in the model's config.

    Returns:
        ``model``, patched in place.

    Raises:
        ValueError: a wrapped (DDP/FSDP) or non-transformers model, a bad spec, or no spec given or recorded.

    Example:
        >>> import hfreg
        >>> from transformers import LlamaConfig, LlamaModel
        >>> model = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
        >>> _ = hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.1, drop_path=0.2))
        >>> sorted({(s.kind, s.layer, s.rate) for s in hfreg.inspect_model(model) if s.kind == "drop_path"})
        [('drop_path', 0, 0.0), ('drop_path', 1, 0.2)]
        >>> _ = hfreg.unpatch_model(model)
        >>> hfreg.is_patched(model)
        False
    """
    outer = model
    model = unwrap(model)
    if reg is None:
        recorded = getattr(model.config, CONFIG_ATTR, None)
        if recorded is None:
            raise ValueError(f"no regularization spec given and none recorded in the config of "
                             f"{type(model).__name__} (see `patch_config`)")
        reg = RegularizationConfig.from_dict(dict(recorded))
    elif isinstance(reg, dict):
        reg = RegularizationConfig.from_dict(reg)
    elif not isinstance(reg, RegularizationConfig):
        raise ValueError(f"`reg` must be a RegularizationConfig, a dict or None, got {type(reg).__name__}")
    previous = patch_state(model)
    unpatch_model(model)  # first: the twin check reads the model's own config, without a recorded spec
    apply_spec(model, reg, inert(model), previous.held if previous is not None else {})
    return outer


def inspect_model(model: nn.Module, verify: bool = True) -> list[Site]:
    """Every site where a knob acts, with the rate in force now and its layer index (None outside layers).

    Native sites that forward never reads are left out; with ``verify``, so are those that a training-mode forward
    of a small twin of the model shows to change nothing (`hfreg.probing.inert_sites`: Falcon's
    ``config.attention_dropout`` under ``parallel_attn``, a causal LM's unused cross-attention).

    Args:
        model: a transformers model, patched or not (a PEFT, DDP, DataParallel, FSDP or `torch.compile` wrapper
            is looked through).
        verify: leave out the sites a small twin shows to be inert (builds and runs the twin once per structure).

    Returns:
        One `Site` per place a knob acts, native sites first, then those a patch injected.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> first = sorted({(s.kind, s.source, s.config_key) for s in hfreg.inspect_model(model)})[:2]
        >>> first
        [('attention', 'module', 'attention_probs_dropout_prob'), ('embedding', 'module', 'hidden_dropout_prob')]
    """
    model = unwrap(model, wrapped=True)
    return native_sites(model, inert_sites(model) if verify else frozenset())


def patch_config(config: PretrainedConfig, reg: RegularizationConfig | dict) -> PretrainedConfig:
    """A new config with each knob's native keys set where the family has them and the whole spec recorded.

    Models built from it honour the native keys in plain transformers; `patch_model(model)` (or
    `load_regularized`) then applies the rest of the spec exactly.

    Args:
        config: a transformers `PretrainedConfig` (nested sub-configs are written too).
        reg: the spec.

    Returns:
        A patched copy; ``config`` itself is unchanged. A key the config class will not take, or the model refuses
        when built, is left as it was, with a warning naming knob and key.

    Raises:
        ValueError: ``reg`` is not a spec, or ``config`` is not a transformers config.

    Example:
        >>> import hfreg, transformers
        >>> config = hfreg.patch_config(transformers.BertConfig(), {"attention": 0.2, "drop_path": 0.1})
        >>> config.attention_probs_dropout_prob, config.hfreg["drop_path"]
        (0.2, 0.1)
    """
    if isinstance(reg, dict):
        reg = RegularizationConfig.from_dict(reg)
    if not isinstance(reg, RegularizationConfig):
        raise ValueError(f"`reg` must be a RegularizationConfig or a dict, got {type(reg).__name__}")
    if not hasattr(config, "to_dict"):
        raise ValueError(f"expected a transformers PretrainedConfig, got {type(config).__name__}")
    config = copy.deepcopy(config)
    for _, cfg in config_tree(config):
        unwritable = architecture(getattr(cfg, "model_type", None)).unwritable
        for knob, rate in reg.knob_values().items():
            for key in CONFIG_KEYS.get(knob, ()):
                if not hasattr(cfg, key) or isinstance(getattr(cfg, key), bool):
                    continue
                why = "its model refuses a non-zero value when built" if key in unwritable and rate else None
                if why is None:
                    try:  # a strict config validates on assignment (LeViT's int `drop_path_rate`, CvT's list)
                        setattr(cfg, key, rate)
                    except (TypeError, ValueError, StrictDataclassError) as e:
                        why = f"the config class does not take {rate!r} there ({str(e).splitlines()[-1].strip()})"
                if why:
                    warnings.warn(f"hfreg: `{knob}`={rate} not written to {type(cfg).__name__}.{key}: {why}; "
                                  f"`patch_model` on the built model applies it", UserWarning, stacklevel=2)
    setattr(config, CONFIG_ATTR, reg.to_dict())
    return config


# Auto classes that map a model type to many of its classes: chosen last, after the task's own
_BROAD = ("AutoModelForPreTraining", "AutoModelForMultimodalLM", "AutoModelForTextEncoding")


@functools.lru_cache(maxsize=None)
def _autos() -> tuple[str, ...]:
    """transformers' Auto model classes by name, `AutoModel` first and the broad ones last."""
    import transformers

    return tuple(sorted((n for n in dir(transformers) if n.startswith("AutoModel")),
                        key=lambda n: (n != "AutoModel", n in _BROAD, n)))


def _held(name: str, model_type: str | None):
    """The class name(s) the Auto class ``name`` maps ``model_type`` to (read without importing a model), a type
    registered with ``AutoModel.register`` included; None where it maps none."""
    import transformers

    mapping = getattr(getattr(transformers, name, None), "_model_mapping", None)
    held = getattr(mapping, "_model_mapping", {}).get(model_type)
    return held or next((m.__name__ for c, m in getattr(mapping, "_extra_content", {}).items()
                         if getattr(c, "model_type", None) == model_type), None)


def type_auto_class(model_type: str | None):
    """The Auto class that builds ``model_type`` when no architecture is named: `AutoModel` (the base model) where it
    maps the type, else the first Auto class with a head that does (a type with heads alone: UperNet); None where
    transformers builds no model of that type (a sub-model's config: SAM's mask decoder)."""
    import transformers

    return next((getattr(transformers, n) for n in _autos() if _held(n, model_type)), None)


@functools.lru_cache(maxsize=None)  # the CLI asks for one config class several times; it scans modules each time
def package_model_class(config_class):
    """The model class built for exactly ``config_class``, for a config no Auto class maps (a sub-model's: SigLIP's
    text model): among its package's modeling modules' classes whose ``config_class`` it is and that have a forward
    of their own, the one named like the config (``FooTextConfig`` -> ``FooTextModel``) if there is one, else the
    first that is not a head; None where there is none (SAM's mask decoder is a plain module) or where the config is
    not transformers' own (remote code)."""
    import importlib
    import inspect
    import pkgutil

    import torch
    from transformers import PreTrainedModel

    if not config_class.__module__.startswith("transformers."):
        return None  # remote code: its `auto_map` names its classes, not whatever its cached modules hold
    package = importlib.import_module(config_class.__module__.rsplit(".", 1)[0])
    classes = []
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        if not info.name.startswith("modeling_"):
            continue
        try:
            mod = importlib.import_module(f"{package.__name__}.{info.name}")
        except ImportError:
            continue
        classes += [c for _, c in inspect.getmembers(mod, inspect.isclass) if issubclass(c, PreTrainedModel)
                    and c.__module__ == mod.__name__ and getattr(c, "config_class", None) is config_class
                    and c.forward is not torch.nn.Module.forward]  # a PreTrainedModel base runs nothing
    named = config_class.__name__.replace("Config", "Model")
    ranked = sorted(classes, key=lambda c: (c.__name__ != named, "For" in c.__name__, c.__name__))
    return ranked[0] if ranked else None


def auto_class_for(config):
    """The transformers class that loads the model ``config`` describes, head included: the Auto class whose
    mapping for ``config.model_type`` holds the first class named in ``config.architectures``
    (``BertForSequenceClassification`` -> ``AutoModelForSequenceClassification``), else that class itself.
    Where the config names none: `AutoModel`, or for a model type that has no base model, only heads (UperNet,
    Depth Anything, ViTPose), the Auto class of its first head, or for a sub-model's config that no Auto class maps,
    the class made for it (`package_model_class`: SigLIP's text model).

    Args:
        config: a transformers `PretrainedConfig`.

    Returns:
        The class to call ``from_pretrained`` (or ``from_config``) on.

    Raises:
        ValueError: the config names architectures that this transformers does not know.

    Example:
        >>> import transformers
        >>> from hfreg.patcher import auto_class_for
        >>> auto_class_for(transformers.BertConfig(architectures=["BertForSequenceClassification"])).__name__
        'AutoModelForSequenceClassification'
        >>> auto_class_for(transformers.BertConfig()).__name__
        'AutoModel'
        >>> auto_class_for(transformers.UperNetConfig()).__name__
        'AutoModelForSemanticSegmentation'
    """
    import transformers

    names = getattr(config, "architectures", None) or []
    model_type = getattr(config, "model_type", None)
    if not names:
        return type_auto_class(model_type) or (model_type and package_model_class(type(config))) \
            or transformers.AutoModel
    for arch in names:
        for name in _autos():
            held = _held(name, model_type) or ()
            if arch == held or (not isinstance(held, str) and arch in held):
                return getattr(transformers, name)
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    raise ValueError(f"the config names architectures {names}, which transformers {transformers.__version__} does "
                     f"not know; pass `auto_class=`")


def model_from_config(config, cls=None):
    """The model ``config`` describes, with fresh weights, built as ``cls`` (default: `auto_class_for`) builds it;
    where that is an Auto class that does not map the config's class (Evolla's config class sits under another
    type name in its mappings), the class made for exactly that config (`package_model_class`), where there is one.

    Example:
        >>> import transformers
        >>> from hfreg.patcher import model_from_config
        >>> type(model_from_config(transformers.BertConfig(num_hidden_layers=1, hidden_size=32,
        ...     num_attention_heads=2, intermediate_size=64))).__name__
        'BertModel'
    """
    cls = cls or auto_class_for(config)
    if cls.__name__.startswith("AutoModel"):
        if type(config) in cls._model_mapping:
            return cls.from_config(config)
        cls = package_model_class(type(config)) or cls  # neither: the Auto class's own error names the config
        if cls.__name__.startswith("AutoModel"):
            return cls.from_config(config)
    return cls(config)


# the loader's keywords that also say where the config comes from (transformers passes them to both)
_WHERE_FROM = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder",
               "trust_remote_code", "code_revision", "gguf_file")


@functools.lru_cache(maxsize=None)
def _loader_keywords() -> frozenset[str]:
    """The keywords ``from_pretrained`` keeps for itself rather than the config: its parameters and the ones it pops
    from ``**kwargs``, read from this transformers' own source, so that a version's new ones are known too."""
    import inspect
    import re

    from transformers import PreTrainedModel

    load = PreTrainedModel.from_pretrained
    names = set(inspect.signature(load).parameters) | set(_WHERE_FROM)
    try:
        names |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(load)))
    except (OSError, TypeError):  # no source: the parameters alone
        pass
    return frozenset(names - {"pretrained_model_name_or_path", "model_args", "config", "kwargs"})


def load_regularized(pretrained_model_name_or_path: str | os.PathLike, reg: RegularizationConfig | dict | None = None,
                     auto_class: type | None = None, **kwargs: Any) -> nn.Module | tuple[nn.Module, dict]:
    """Load a model and apply ``reg`` (or the spec recorded in its config) in one call.

    A model patched and saved with `save_pretrained` records its spec in ``config.json`` (``"hfreg"``): this loads
    it back patched with that spec, which plain ``from_pretrained`` does not (it loads the model unpatched, and
    says so once per process where hfreg is imported). (`RegularizationConfig.from_pretrained` loads a spec alone;
    this loads a model.)

    Args:
        pretrained_model_name_or_path: a hub id or a local directory, as transformers takes it.
        reg: the spec to apply; None applies the one recorded in the checkpoint's config, if any.
        auto_class: the transformers class to load with; default `auto_class_for` the config: the Auto class of
            its ``architectures`` (so a classification head is kept), `AutoModel` where it names none.
        **kwargs: as ``auto_class.from_pretrained`` takes them: its own (``dtype``, ``revision``, ...), and config
            attributes (``num_labels``), which go to the config as transformers sends them; ``config`` a config,
            or the hub id or directory to read one from.

    Returns:
        The loaded model, patched where a spec was given or recorded (with ``output_loading_info=True``, the model
        and its loading info, as transformers returns them).

    Raises:
        ValueError: a bad spec, or architectures this transformers does not know (pass ``auto_class``).

    Example:
        >>> import tempfile, hfreg, transformers
        >>> folder = tempfile.mkdtemp()
        >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                                  intermediate_size=64)
        >>> transformers.BertForSequenceClassification(config).save_pretrained(folder)
        >>> model = hfreg.load_regularized(folder, {"hidden": 0.2})
        >>> type(model).__name__, hfreg.patch_state(model).reg.hidden
        ('BertForSequenceClassification', 0.2)
    """
    from transformers import AutoConfig

    config = kwargs.pop("config", None)
    if config is None or isinstance(config, (str, os.PathLike)):
        # read as from_pretrained reads it: from ``config`` where it names one, else from the model's own place, with
        # where-from keywords and the config's own settings (num_labels)
        where = {k: kwargs[k] for k in _WHERE_FROM if k in kwargs}
        loader = _loader_keywords()
        config, unused = AutoConfig.from_pretrained(
            pretrained_model_name_or_path if config is None else config, return_unused_kwargs=True, **where,
            **{k: v for k, v in kwargs.items() if k not in loader})
        kwargs = {**{k: v for k, v in kwargs.items() if k in loader}, **unused}
    auto_class = auto_class or auto_class_for(config)
    if reg is not None:
        config = patch_config(config, reg)
    with quiet():
        loaded = auto_class.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
    model = loaded[0] if kwargs.get("output_loading_info") else loaded  # (model, loading info), as transformers gives
    if getattr(model.config, CONFIG_ATTR, None) is not None:
        patch_model(model)
    return loaded
