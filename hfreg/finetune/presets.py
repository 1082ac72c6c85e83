"""Regularization presets: short commented TOML files, the `RegularizationConfig` fields plus the training-loop
methods: `weight_decay`, `rdrop` (R-Drop's alpha), `llrd` (layer-wise learning-rate decay), `reinit_layers`; and
what the comparison needs to judge them: `control` (the preset to judge it against besides the baseline),
`data_order` (`placebo`: the batch order re-drawn, nothing else) and `steps_factor` (a run of k times the
optimizer steps: the equal-compute arm of a preset that costs k passes per step, `equal_compute_arms`).

The shipped ones live in the top-level `configs/presets/`, installed as the package data `hfreg.configs`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace

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


# where a preset's training batches take their order from, besides the run's seed: {data_order: offset added to the
# seed}. The generator that orders them keeps a seed's low 32 bits, so 2**31: a re-drawn order is never the run's
# own, and another run's only in a grid whose seeds reach 2**31; the subset, the head and the dropout masks still
# come from the run's seed
DATA_ORDERS = {"redrawn": 2**31}
# forward/backward passes per optimizer step a training-loop method costs while on
METHOD_PASSES = {"rdrop": 2}

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
    control: str | None = None  # the preset it is judged against besides the baseline (None: the baseline alone)
    data_order: str | None = None  # a key of DATA_ORDERS; None: the batch order comes from the run's seed
    steps_factor: int = 1  # trains this many times the grid's optimizer steps

    def contents(self) -> dict:
        """What defines the preset, as recorded with every run."""
        sweep = {"sweep": self.sweep} if self.sweep else {}  # absent for ordinary presets: older records match
        own = {m: getattr(self, m) for m in METHODS if getattr(self, m) is not None}
        # likewise absent where unset, so that the digests of presets made before these fields stay the same
        extra = {k: getattr(self, k) for k in ("control", "data_order") if getattr(self, k) is not None}
        if self.steps_factor != 1:
            extra["steps_factor"] = self.steps_factor
        # records keep the spec keys they were first written with: digests and prediction files of older runs hold
        spec = {_RECORDED.get(k, k): v for k, v in self.reg.to_dict().items()}
        return {**spec, "weight_decay": self.weight_decay, **own, **extra, **sweep}

    def methods(self, settings) -> dict:
        """The training-loop methods in force: the preset's own, else the grid's (`Settings`)."""
        grid = {method: getattr(settings, flag) for flag, method in METHOD_FLAGS.items()}
        return {m: grid[m] if getattr(self, m) is None else getattr(self, m) for m in METHODS}

    def passes(self, settings) -> int:
        """Forward/backward passes per optimizer step under the methods in force (R-Drop runs each batch twice):
        what a step of this preset costs next to one of a preset without such methods. ``settings``: anything with
        the grid's method flags (`Settings`, or the parsed command line)."""
        on = self.methods(settings)
        return max([1] + [n for m, n in METHOD_PASSES.items() if on[m] != NO_METHODS[m]])

    def order_seed(self, seed: int) -> int:
        """The seed of the training batches' order in the run of ``seed``: that seed, or a stream of its own."""
        return seed + DATA_ORDERS.get(self.data_order, 0)


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
        # the batch order and the budget are the preset's; its control is not (a scaled point is judged within
        # its sweep and against the baseline, not against an unscaled control)
        point = Preset(name, reg, wd, {"family": head, "value": v}, **{m: getattr(methods, m) for m in METHODS},
                       data_order=methods.data_order, steps_factor=methods.steps_factor)
        if {**point.contents(), "sweep": None} != {**base.contents(), "sweep": None}:
            out.append(point)
    return out


def check_controls(presets: list[Preset]) -> None:
    """One-line ValueError for a grid holding a preset whose control it lacks: without the control in the same
    grid (same sizes, seeds, settings) the comparison the preset names cannot be made."""
    names = {p.name for p in presets}
    for p in presets:
        if p.control is not None and p.control not in names:
            raise ValueError(f"preset {p.name!r} is judged against its control {p.control!r}: add it to --presets")


def equal_compute_arms(presets: list[Preset], settings) -> dict[str, tuple[Preset, list[str]]]:
    """The arms that give a costlier preset's control the preset's compute: for a preset whose step costs k times
    its control's (passes per step times `steps_factor`; R-Drop: 2), the control trained for k times the optimizer
    steps, named ``<control>@<k>x``; {name: (arm, the presets of ``presets`` it matches)}. Without them a preset
    that costs more per step is judged against a control that had less compute. A control that is not in
    ``presets`` (the baseline, where the grid lacks it) gets no arm: nothing would be judged against it."""
    by_name = {p.name: p for p in presets}
    arms: dict[str, tuple[Preset, list[str]]] = {}
    for p in presets:
        control = by_name.get(p.control or BASELINE)
        if control is None or control is p:
            continue
        k, rest = divmod(p.passes(settings) * p.steps_factor, control.passes(settings) * control.steps_factor)
        if k < 2 or rest:
            continue
        name = f"{control.name}@{k}x"
        arm = replace(control, name=name, control=None, steps_factor=control.steps_factor * k)
        arms.setdefault(name, (arm, []))[1].append(p.name)
    return arms


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
    name = os.path.basename(name_or_path)[:-5] if name_or_path.endswith(".toml") else name_or_path
    judged = _judging_fields(name_or_path, name, data)
    spec_keys = {f.name for f in fields(RegularizationConfig)} | set(RENAMED)
    unknown = sorted(set(data) - spec_keys)
    if unknown:  # every key a preset may hold, not the spec's alone
        own = [f.name for f in fields(Preset) if f.name not in ("name", "reg", "sweep")]  # `sweep`: grids set it
        allowed = [*sorted(spec_keys - set(RENAMED)), *own]
        raise ValueError(f"preset {name_or_path}: unknown key(s) {unknown}; allowed: {allowed}")
    try:
        reg = RegularizationConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"preset {name_or_path}: {e}") from None
    return Preset(name, reg, float(weight_decay), **methods, **judged)


def from_record(name: str, contents: dict) -> Preset:
    """The preset a run record's ``preset_config`` describes (the inverse of `Preset.contents`: a sweep's point or an
    equal-compute arm as well as a shipped preset); one-line ValueError where the contents do not make one."""
    data = dict(contents)
    fields = {k: data.pop(k) for k in ("sweep", "control", "data_order", "steps_factor", *METHODS) if k in data}
    weight_decay = data.pop("weight_decay", 0.0)
    try:
        reg = RegularizationConfig.from_dict({RENAMED.get(k, k): v for k, v in data.items()})
        preset = Preset(name, reg, float(weight_decay), **fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the record of preset {name!r} does not describe a preset this hfreg makes: "
                         f"{str(e).splitlines()[0]}") from None
    if preset.contents() != contents:
        raise ValueError(f"the record of preset {name!r} does not describe a preset this hfreg makes: it would "
                         f"record {preset.contents()} instead")
    return preset


def _judging_fields(where: str, name: str, data: dict) -> dict:
    """`control`, `data_order` and `steps_factor`, taken out of a preset file's ``data``; one-line ValueError naming
    ``where`` for a value that is not allowed."""
    out = {}
    control = data.pop("control", None)
    if control is not None:
        if control not in available() or control == name:
            raise ValueError(f"preset {where}: `control` {control!r} is not a known preset other than itself; "
                             f"allowed: {[p for p in available() if p != name]}")
        out["control"] = control
    order = data.pop("data_order", None)
    if order is not None:
        if order not in DATA_ORDERS:
            raise ValueError(f"preset {where}: `data_order` must be one of {list(DATA_ORDERS)} (absent: the run's "
                             f"seed), got {order!r}")
        out["data_order"] = order
    factor = data.pop("steps_factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"preset {where}: `steps_factor` must be an int >= 1, got {factor!r}")
    if factor != 1:
        out["steps_factor"] = factor
    return out
