"""Which config key a module's rate came from, learnt by building the model rather than read from names.

A copy of the model's config gets a distinct sentinel value in every rate-like key (its name says "drop", or it
is one of `NOISE_KEYS`), in every nested sub-config; the model class is built from it on the meta device (no
memory for weights) and each ``nn.Dropout``'s ``p`` and each float attribute found holding a sentinel names the
key it was built from. `sites` classifies by it; `probing.disable_dropout` switches training noise off with it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings

import torch
from torch import nn

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
    on disk across processes (`disk_cache`): ``encode`` turns the value into JSON, ``decode`` back."""
    shape, _ = with_rates(model.config, lambda i: 0.0)
    vars(shape).pop(CONFIG_ATTR, None)  # the spec a patch records
    key = (type(model), shape.to_json_string(use_diff=False))
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        path = disk_cache(name, type(model), key[1]) if name else None
        value = _read(path, decode)
        if value is None:
            value = compute(type(model), model.config)
            _write(path, encode(value))
        cache[key] = value
    return cache[key]


# ---------------------------------------------------------------------------------------------- the disk cache
CACHE_ENV = "HFREG_CACHE"  # a folder, or "off"; default: $XDG_CACHE_HOME/hfreg (~/.cache/hfreg)


@functools.lru_cache(maxsize=1)
def _code() -> str:
    """What decides the cached verdicts besides the model: hfreg's own source and the library versions."""
    import hashlib
    import os

    import transformers

    h = hashlib.sha256(f"{transformers.__version__} {torch.__version__}".encode())
    package = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def disk_cache(name: str, cls: type, config_json: str) -> str | None:
    """The file holding ``name``'s verdict for ``cls`` built from ``config_json``, or None where the cache is off
    (``HFREG_CACHE=off``). Keyed by a hash of the class, the config, hfreg's source and the transformers and torch
    versions, so an upgrade or an edit never reads a stale verdict."""
    import hashlib
    import os

    root = os.environ.get(CACHE_ENV, "")
    if root.lower() in ("off", "0", "false", "no"):
        return None
    root = root or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hfreg")
    digest = hashlib.sha256(f"{name}\0{cls.__module__}.{cls.__qualname__}\0{config_json}\0{_code()}".encode())
    return os.path.join(root, f"{name}-{digest.hexdigest()[:32]}.json")


def _read(path: str | None, decode):
    import json

    if path is None:
        return None
    try:
        with open(path) as f:
            return decode(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):  # missing, torn or foreign: computed again
        return None


def _write(path: str | None, value) -> None:
    """Written whole under a private name, then renamed: concurrent writers of one verdict each leave a whole
    file, and readers never see half of one. A cache that cannot be written is no error."""
    import json
    import os
    import tempfile

    if path is None:
        return
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:  # no half-written file left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
