"""The disk cache of per-config verdicts (which key each rate came from, which sites a small twin shows inert): one
JSON file per verdict, keyed by the model class, its config, hfreg's source and the library versions, so that a new
process skips the meta-device build and the twin's probe, and an upgrade or an edit never reads a stale verdict.
`HFREG_CACHE` names the folder, or turns it off."""

from __future__ import annotations

import contextlib
import functools

import torch

CACHE_ENV = "HFREG_CACHE"  # a folder, or "off"; default: $XDG_CACHE_HOME/hfreg (~/.cache/hfreg)


def _source_files() -> list[str]:
    """hfreg's source files that decide the verdicts, relative to the package: the patcher's, its knobs' included;
    not the fine-tuning harness (`hfreg.finetune`), which reads them."""
    import os

    package = os.path.dirname(os.path.abspath(__file__))
    found = []
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in ("finetune", "__pycache__"))
        found += [os.path.relpath(os.path.join(root, f), package) for f in files if f.endswith(".py")]
    return sorted(found)


@functools.lru_cache(maxsize=1)
def _code() -> str:
    """What decides the cached verdicts besides the model: hfreg's own source and the library versions."""
    import hashlib
    import os

    import transformers

    h = hashlib.sha256(f"{transformers.__version__} {torch.__version__}".encode())
    package = os.path.dirname(os.path.abspath(__file__))
    for name in _source_files():
        with open(os.path.join(package, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def path_for(name: str, cls: type, config_json: str) -> str | None:
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


def read(path: str | None, decode):
    import json

    if path is None:
        return None
    try:
        with open(path) as f:
            return decode(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):  # missing, torn or foreign: computed again
        return None


def write(path: str | None, value) -> None:
    """Written whole under a private name, then renamed (`files.replacing`): concurrent writers of one verdict
    each leave a whole file, and readers never see half of one. A cache that cannot be written is no error."""
    import json
    import os

    from .files import replacing

    if path is None:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with replacing(path) as tmp, open(tmp, "w") as f:
            json.dump(value, f)
