"""Regularization presets: short commented TOML files, the `RegularizationConfig` fields plus `weight_decay`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .config import RegularizationConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "presets")
DEFAULT_PRESETS = ("pretrain-zero", "checkpoint", "classic", "drop-path", "heavy", "weight-decay")
BASELINE = "pretrain-zero"


@dataclass(frozen=True)
class Preset:
    name: str
    reg: RegularizationConfig
    weight_decay: float = 0.0


def available() -> list[str]:
    if not os.path.isdir(PRESET_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".toml"))


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (a file in configs/presets/) or by path to a .toml file."""
    path = name_or_path if name_or_path.endswith(".toml") else os.path.join(PRESET_DIR, name_or_path + ".toml")
    if not os.path.isfile(path):
        raise ValueError(f"unknown preset {name_or_path!r}: not a .toml file and not one of {available()}")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"preset {path}: {e}") from None
    weight_decay = data.pop("weight_decay", 0.0)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"preset {path}: `weight_decay` must be a float >= 0, got {weight_decay!r}")
    try:
        reg = RegularizationConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"preset {path}: {e}") from None
    name = os.path.basename(path)[:-5]
    return Preset(name, reg, float(weight_decay))
