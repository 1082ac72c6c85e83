"""The warning, once per process, that plain transformers loaded a model whose config records an hfreg spec without
applying it.

A patched model's config records its spec (``config.hfreg``), so `save_pretrained` writes it into ``config.json``
and `hfreg.load_regularized` applies it again. transformers keeps that key on load but runs no code of a
checkpoint's choosing (short of ``trust_remote_code``), so the warning can only come from hfreg, and only in a
process that imported it: ``import hfreg`` wraps `PreTrainedModel.from_pretrained` — at once where transformers'
modeling code is already imported, else just after it is (a post-import hook on ``transformers.modeling_utils``;
nothing is imported for it, so ``import hfreg`` stays fast). The wrapper loads exactly as before and then only
reads the loaded model's config. Stdlib only: this module runs at ``import hfreg``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import sys
import threading
import warnings

from .config import CONFIG_ATTR

MODELING = "transformers.modeling_utils"  # where `PreTrainedModel` lives
_local = threading.local()  # .quiet: loads inside `quiet()` (load_regularized); .finding: the finder's own lookup
_told = False  # said already, in this process


def watch() -> None:
    """Wrap `PreTrainedModel.from_pretrained` now, or as soon as transformers' modeling code is imported."""
    module = sys.modules.get(MODELING)
    if module is not None:
        _wrap(module)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


@contextlib.contextmanager
def quiet():
    """Loads inside this block apply the spec themselves (`hfreg.load_regularized`): nothing to say."""
    _local.quiet = getattr(_local, "quiet", 0) + 1
    try:
        yield
    finally:
        _local.quiet -= 1


def _wrap(module) -> None:
    cls = getattr(module, "PreTrainedModel", None)
    original = getattr(cls, "__dict__", {}).get("from_pretrained")
    if not isinstance(original, classmethod) or getattr(original.__func__, "_hfreg_watched", False):
        return
    load = original.__func__

    @functools.wraps(load)
    def from_pretrained(cls, *args, **kwargs):
        loaded = load(cls, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True`: (model, info)
        if not getattr(_local, "quiet", 0):
            tell(model, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return loaded

    from_pretrained._hfreg_watched = True
    cls.from_pretrained = classmethod(from_pretrained)


def tell(model, source) -> None:
    """Warn, the first time in this process, that ``model`` (loaded from ``source``) records a spec and is
    unpatched."""
    global _told
    if _told or getattr(getattr(model, "config", None), CONFIG_ATTR, None) is None:
        return
    _told = True
    warnings.warn(f"hfreg: {source} records an hfreg regularization spec (config.{CONFIG_ATTR}) that plain "
                  f"`from_pretrained` does not apply: {type(model).__name__} is loaded unpatched. Load it with "
                  f"`hfreg.load_regularized(...)`, or call `hfreg.patch_model(model)`, to apply it (said once per "
                  f"process)", UserWarning, stacklevel=3)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.modeling_utils`` through the other finders and has its loader wrap `from_pretrained`
    right after the module has run; then leaves ``sys.meta_path``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != MODELING or getattr(_local, "finding", False):
            return None
        _local.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            _local.finding = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module):
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _wrap(module)

        loader.exec_module = exec_module  # this module's own loader only; its type stays as it was
        return spec
