"""Files hfreg ships: the top-level `configs/` tree (presets, published model configs), installed as the
package data `hfreg.configs` and found through `importlib.resources`, in a checkout and after `pip install`; a
checkout used without installing (on ``PYTHONPATH`` alone) reads the tree beside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder(kind: str):
    try:
        return resources.files("hfreg.configs") / kind
    except ModuleNotFoundError:  # not installed: `hfreg.configs` is only the build's name for configs/
        return Path(__file__).resolve().parent.parent / "configs" / kind


def shipped(kind: str, filename: str):
    """The resource ``configs/<kind>/<filename>``, or None where hfreg ships no such file."""
    if "/" in filename or "\\" in filename:
        return None
    path = _folder(kind) / filename
    return path if path.is_file() else None


def shipped_names(kind: str, suffix: str) -> list[str]:
    """The stems of the files hfreg ships in ``configs/<kind>/``."""
    folder = _folder(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))
