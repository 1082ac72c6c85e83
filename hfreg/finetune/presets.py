"""Regularization presets: short commented TOML files, the `RegularizationConfig` fields plus `weight_decay`.

The shipped ones live in the top-level `configs/presets/`, installed as the package data `hfreg.configs`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..config import RegularizationConfig
from ..resources import shipped, shipped_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASELINE = "pretrain-zero"


@dataclass(frozen=True)
class Preset:
    name: str
    reg: RegularizationConfig
    weight_decay: float = 0.0

    def contents(self) -> dict:
        """What defines the preset, as recorded with every run."""
        return {**self.reg.to_dict(), "weight_decay": self.weight_decay}


def available() -> list[str]:
    return shipped_names("presets", ".toml")


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (a file in configs/presets/) or by path to a .toml file."""
    if name_or_path.endswith(".toml"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"preset file {name_or_path!r} does not exist")
        with open(name_or_path, "rb") as f:
            text = f.read()
    else:
        resource = shipped("presets", name_or_path + ".toml")
        if resource is None:
            raise ValueError(f"unknown preset {name_or_path!r}: not a .toml file and not one of {available()}")
        text = resource.read_bytes()
    try:
        data = tomllib.loads(text.decode())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"preset {name_or_path}: {e}") from None
    weight_decay = data.pop("weight_decay", 0.0)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"preset {name_or_path}: `weight_decay` must be a float >= 0, got {weight_decay!r}")
    try:
        reg = RegularizationConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"preset {name_or_path}: {e}") from None
    name = os.path.basename(name_or_path)[:-5] if name_or_path.endswith(".toml") else name_or_path
    return Preset(name, reg, float(weight_decay))
