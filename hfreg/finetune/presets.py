"""Regularization presets: short commented TOML files, the `RegularizationConfig` fields plus the training-loop
methods: `weight_decay`, `rdrop` (R-Drop's alpha), `llrd` (layer-wise learning-rate decay), `reinit_layers`.

The shipped ones live in the top-level `configs/presets/`, installed as the package data `hfreg.configs`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..config import RENAMED, RegularizationConfig
from ..resources import shipped, shipped_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASELINE = "pretrain-zero"
# the training-loop methods a preset may set, and their values when off; None in a preset: the grid's flag
METHODS = ("rdrop", "llrd", "reinit_layers")
NO_METHODS = {"rdrop": 0.0, "llrd": 1.0, "reinit_layers": 0}
# the harness flag (and `Settings` field) that sets each method for the whole grid
METHOD_FLAGS = {"rdrop_alpha": "rdrop", "llrd": "llrd", "reinit_layers": "reinit_layers"}


_RECORDED = {new: old for old, new in RENAMED.items()}


@dataclass(frozen=True)
class Preset:
    name: str
    reg: RegularizationConfig
    weight_decay: float = 0.0
    sweep: dict | None = None  # a point of a rate sweep: {"family": knob or preset, "value": rate or factor}
    rdrop: float | None = None
    llrd: float | None = None
    reinit_layers: int | None = None

    def contents(self) -> dict:
        """What defines the preset, as recorded with every run."""
        sweep = {"sweep": self.sweep} if self.sweep else {}  # absent for ordinary presets: older records match
        own = {m: getattr(self, m) for m in METHODS if getattr(self, m) is not None}
        # records keep the spec keys they were first written with: digests and prediction files of older runs hold
        spec = {_RECORDED.get(k, k): v for k, v in self.reg.to_dict().items()}
        return {**spec, "weight_decay": self.weight_decay, **own, **sweep}

    def methods(self, settings) -> dict:
        """The training-loop methods in force: the preset's own, else the grid's (`Settings`)."""
        grid = {method: getattr(settings, flag) for flag, method in METHOD_FLAGS.items()}
        return {m: grid[m] if getattr(self, m) is None else getattr(self, m) for m in METHODS}


def check_methods(where: str, rdrop=None, llrd=None, reinit_layers=None) -> None:
    """One-line ValueError naming ``where`` unless each method's value is None or allowed."""
    for name, value, ok, allowed in (
            ("rdrop", rdrop, lambda v: v >= 0, "a float >= 0"),
            ("llrd", llrd, lambda v: 0 < v <= 1, "a float in (0, 1]"),
            ("reinit_layers", reinit_layers, lambda v: v >= 0 and float(v).is_integer(), "an int >= 0")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value)):
            raise ValueError(f"{where}: `{name}` must be {allowed}, got {value!r}")


def sweep_presets(spec: str) -> list[Preset]:
    """The presets of one rate sweep: ``KNOB=r1,r2,...`` (that knob at each rate, every other knob as in the
    baseline; named ``KNOB=r``) or ``PRESET*f1,f2,...`` (every rate of PRESET times each factor, its weight decay
    and schedules kept; named ``PRESET*f``). A point equal to the baseline (rate 0) is the baseline itself."""
    from ..config import KNOBS

    head, sep, values = spec.partition("=") if "=" in spec else spec.partition("*")
    head = head.strip()
    try:
        numbers = list(dict.fromkeys(float(v) for v in values.split(",") if v.strip()))
    except ValueError:
        numbers = []
    if not sep or not numbers or any(v < 0 for v in numbers):
        raise ValueError(f"--rates expects KNOB=r1,r2,... or PRESET*f1,f2,... with numbers >= 0, got {spec!r}")
    base = load_preset(BASELINE)
    out = []
    for v in numbers:
        if sep == "=":
            if head not in KNOBS:
                raise ValueError(f"--rates {spec!r}: unknown knob {head!r}; allowed: {list(KNOBS)}")
            fields = {**base.reg.to_dict(), head: v}
            name, wd, methods = f"{head}={v:g}", base.weight_decay, base
        else:
            preset = load_preset(head)
            fields = preset.reg.to_dict()
            fields.update({k: fields[k] * v for k in KNOBS if isinstance(fields.get(k), (int, float))})
            name, wd, methods = f"{preset.name}*{v:g}", preset.weight_decay, preset
        try:
            reg = RegularizationConfig.from_dict(fields)
        except ValueError as e:
            raise ValueError(f"--rates {spec!r} at {v:g}: {e}") from None
        point = Preset(name, reg, wd, {"family": head, "value": v},
                       **{m: getattr(methods, m) for m in METHODS})
        if {**point.contents(), "sweep": None} != {**base.contents(), "sweep": None}:
            out.append(point)
    return out


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
    methods = {m: data.pop(m) for m in METHODS if m in data}
    check_methods(f"preset {name_or_path}", **methods)
    methods = {m: int(v) if m == "reinit_layers" else float(v) for m, v in methods.items()}
    try:
        reg = RegularizationConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"preset {name_or_path}: {e}") from None
    name = os.path.basename(name_or_path)[:-5] if name_or_path.endswith(".toml") else name_or_path
    return Preset(name, reg, float(weight_decay), **methods)
