"""Which config key a module's rate came from, learnt by building the model rather than read from names.

A copy of the model's config gets a distinct sentinel value in every rate-like key (its name says "drop", or it
is one of `NOISE_KEYS`), in every nested sub-config; the model class is built from it on the meta device (no
memory for weights) and each ``nn.Dropout``'s ``p`` and each float attribute found holding a sentinel names the
key it was built from. `sites` classifies by it; `probing.disable_dropout` switches training noise off with it.
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

from . import cache as disk
from .architectures import NOISE_KEYS
from .config import CONFIG_ATTR

_FIRST, _STEP = 0.0113, 0.0037  # sentinels 0.0113, 0.015, ...: rates no config uses by chance


def config_tree(config, prefix=""):
    """``(path, config)`` for ``config`` and every sub-config nested in it (text, vision, audio...)."""
    yield prefix, config
    for name, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):
            yield from config_tree(value, f"{prefix}{name}.")


def rate_keys(config) -> list[tuple[str, str]]:
    """``(sub-config path, key)`` of every numeric rate-like key in ``config``'s tree."""
    found = []
    for path, cfg in config_tree(config):
        for key, value in vars(cfg).items():
            if ("drop" in key or key in NOISE_KEYS) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                found.append((path, key))
    return found


def with_rates(config, rate):
    """A copy of ``config`` with each rate key set to ``rate(i)`` for the i-th key, and the ``{(value):
    (sub-config path, key)}`` of those it took (a strict config may refuse a float in an int field)."""
    config = copy.deepcopy(config)
    taken = {}
    for i, (path, key) in enumerate(rate_keys(config)):
        cfg = functools.reduce(getattr, [p for p in path.split(".") if p], config)
        try:
            setattr(cfg, key, rate(i))
        except Exception:  # MPT's int-typed `attn_pdrop`: left as it is
            continue
        taken[rate(i)] = (path.rstrip("."), key)
    return config, taken


def _holders(model: nn.Module):
    """``(module path, attribute, value)`` of each dropout module's ``p`` and each numeric attribute."""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            yield path, "p", mod.p
            continue
        for attr, value in vars(mod).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not attr.startswith("_"):
                yield path, attr, value


_CACHE: dict[tuple[type, str], dict] = {}


def _sources(cls: type, config) -> dict[tuple[str, str], tuple[str, str]]:
    twin, sentinel = with_rates(config, lambda i: round(_FIRST + _STEP * i, 6))
    if not sentinel:
        return {}
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = cls(twin)
    except Exception:  # a class that cannot be built from its config alone: nothing learnt, names decide
        return {}
    found = {}
    for path, attr, value in _holders(built):
        hit = sentinel.get(round(float(value), 6))
        if hit is not None:
            found[(path, attr)] = hit
    return found


def config_sources(model: nn.Module) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(module path, attribute): (sub-config path, config key)}`` for each rate holder of ``model`` that its
    class builds from a config key (``attribute`` is ``"p"`` for an ``nn.Dropout``). Empty where the class cannot
    be built from the config alone."""
    return per_config(_CACHE, model, _sources, "sources",
                      encode=lambda found: [[*k, *v] for k, v in found.items()],
                      decode=lambda rows: {(r[0], r[1]): (r[2], r[3]) for r in rows})


def per_config(cache: dict, model: nn.Module, compute, name: str | None = None, encode=None, decode=None):
    """``compute(type(model), model.config)``, kept in ``cache`` per class and config up to its rates (the 64
    newest): ``compute`` must not depend on the rates (it builds with rates of its own). With ``name``, also kept
    on disk across processes (`hfreg.cache`): ``encode`` turns the value into JSON, ``decode`` back."""
    shape, _ = with_rates(model.config, lambda i: 0.0)
    vars(shape).pop(CONFIG_ATTR, None)  # the spec a patch records
    key = (type(model), shape.to_json_string(use_diff=False))
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        path = disk.path_for(name, type(model), key[1]) if name else None
        value = disk.read(path, decode)
        if value is None:
            value = compute(type(model), model.config)
            disk.write(path, encode(value))
        cache[key] = value
    return cache[key]
