"""`RegularizationConfig`: one regularization spec for any transformer."""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DROP_PATH_PROFILES = ("linear", "uniform")  # how drop-path rates vary over depth
MIXOUT_TARGETS = ("zero",)  # what a dropped weight takes besides its value at patch time (None): DropConnect
# spec keys renamed since they were first written: files and records with the earlier name load unchanged
RENAMED = {"drop_path_schedule": "drop_path_profile"}
DROP_PATH_MODES = ("per_sample", "per_batch")
SCHEDULES = ("constant", "early", "late", "linear")
DIRECTIONS = ("down", "up")
ALL_KNOBS = "all"  # a schedule for every knob the spec sets
CONFIG_NAME = "hfreg_config.json"
# Key under which the spec is recorded inside a transformers config.
CONFIG_ATTR = "hfreg"


def knob(module: str, scale: bool = False, sampling: bool = True, newer: bool = True,
         after_moving: bool = False) -> Any:
    """A knob's field in `RegularizationConfig`, and its row in the table of knobs: None by default (the model as it
    is). ``module``: the module of `hfreg.knobs` that holds its hooks and its injector (the layer stack's five knobs
    share ``stack``); ``scale``: a noise scale >= 0 rather than a probability in [0, 1); ``sampling``: dropout
    sampling, in MC dropout's default (`hfreg.mc.MC_KNOBS`); ``newer``: added after the first release, so left out of
    `to_dict` while None and older specs and records read alike; ``after_moving``: it changes nothing until training
    moves the weights from their values at patch time (Mixout mixes towards them), so `hfreg.probing.probe` moves
    them before it looks."""
    return field(default=None, metadata={"knob": module, "scale": scale, "sampling": sampling, "newer": newer,
                                         "after_moving": after_moving})


def check_rate(name: str, value) -> None:
    """Raise a one-line ValueError unless ``value`` is None or a float in [0, 1)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's floats too, not a tensor
        raise ValueError(f"`{name}` must be a float in [0, 1) or None, got {value!r} ({type(value).__name__})")
    if not (0.0 <= float(value) < 1.0) or math.isnan(value):
        raise ValueError(f"`{name}` must be a float in [0, 1) or None, got {value!r}")


def as_float(value: numbers.Real) -> float:
    """A checked rate as a Python float. A lower-precision float (numpy's ``float32(0.1)``) is read by its shortest
    decimal, the number its user wrote, not its binary expansion (0.10000000149...), which would reach preset
    names and records."""
    if isinstance(value, float):  # Python's, and numpy's float64 (a subclass: stored as Python's)
        return float(value)
    try:
        return float(str(value))
    except ValueError:  # a Fraction prints as 1/10
        return float(value)


def check_scale(name: str, value) -> None:
    """Raise a one-line ValueError unless ``value`` is None or a finite float >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < math.inf:
        raise ValueError(f"`{name}` must be a finite float >= 0 or None, got {value!r}")


def check_knob(name: str, value) -> None:
    """`check_scale` for the knobs in `SCALES`, `check_rate` for the others."""
    (check_scale if name in SCALES else check_rate)(name, value)


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """How a knob's rate moves over training, as a factor on the spec's rate (Liu et al., 2023, "Dropout Reduces
    Underfitting": early dropout helps underfitting models, late dropout / stochastic depth overfitting ones).

    Args:
        kind: ``"constant"`` (the rate throughout), ``"early"`` (the rate until ``cutoff``, then 0), ``"late"``
            (0 until ``cutoff``, then the rate) or ``"linear"`` (a ramp that ends at ``cutoff``).
        cutoff: an int is a number of optimizer steps; a float in [0, 1] a fraction of training.
        direction: for ``"linear"`` only: ``"down"`` goes from the rate to 0 (the paper's linear early dropout),
            ``"up"`` from 0 to the rate (a warm-up).

    Raises:
        ValueError: an unknown kind or direction, or a bad cutoff.

    Example:
        >>> s = Schedule("early", cutoff=0.5)
        >>> factors = [s.factor(step, 10) for step in (0, 4, 5, 9)]
        >>> factors
        [1.0, 1.0, 0.0, 0.0]
    """

    kind: str = "constant"
    cutoff: int | float = 0.5
    direction: str = "down"

    def __post_init__(self):
        check_choice("schedule kind", self.kind, SCHEDULES)
        check_choice("schedule direction", self.direction, DIRECTIONS)
        c = self.cutoff
        if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0 or (isinstance(c, float) and not c <= 1):
            raise ValueError(f"schedule `cutoff` must be an int >= 0 (steps) or a float in [0, 1] (a fraction of "
                             f"training), got {c!r}")

    def check_within(self, total_steps: int, where: str) -> None:
        """One-line ValueError if a cutoff given in steps lies beyond ``total_steps``; ``where`` names it."""
        if self.kind != "constant" and isinstance(self.cutoff, int) and self.cutoff > total_steps:
            raise ValueError(f"{where} schedule's cutoff of {self.cutoff} steps is beyond training ({total_steps} "
                             f"steps); give at most {total_steps}, or a fraction in [0, 1]")

    def cutoff_step(self, total_steps: int) -> int:
        return self.cutoff if isinstance(self.cutoff, int) else round(self.cutoff * total_steps)

    def factor(self, step: int, total_steps: int) -> float:
        """The multiplier on the rate after ``step`` optimizer steps of ``total_steps``."""
        cut = self.cutoff_step(total_steps)
        if self.kind == "constant":
            return 1.0
        if self.kind == "early":
            return 1.0 if step < cut else 0.0
        if self.kind == "late":
            return 0.0 if step < cut else 1.0
        ramp = min(step / cut, 1.0) if cut > 0 else 1.0  # linear: 0 -> 1 over [0, cut]
        return ramp if self.direction == "up" else 1.0 - ramp

    @classmethod
    def from_dict(cls, data) -> "Schedule":
        if isinstance(data, Schedule):
            return data
        if isinstance(data, str):
            return cls(kind=data)
        if not isinstance(data, dict):
            raise ValueError(f"a schedule must be a kind {list(SCHEDULES)} or a mapping, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown schedule option(s) {unknown}; allowed: {[f.name for f in fields(cls)]}")
        return cls(**data)


@dataclass
class RegularizationConfig:
    """Where and how strongly a transformer is regularized.

    Every knob is a rate in [0, 1) (``embedding_noise``: a scale >= 0) or ``None``; ``None`` leaves that knob as
    the model has it.

    Args:
        attention: dropout on attention probabilities, in every self- and cross-attention module.
        hidden: dropout on the output of every residual branch (attention, cross-attention, MLP),
            just before it joins the residual stream. Injected where the architecture has none.
        embedding: dropout on the embedding output.
        activation: dropout after the MLP activation.
        classifier: dropout in classification heads, hard-coded ones included.
        drop_path: stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth") on
            every residual branch, with inverted scaling. The rate of layer i of L is
            ``drop_path * i / (L - 1)`` under the ``"linear"`` schedule (DeiT/timm), ``drop_path``
            everywhere under ``"uniform"``.
        layerdrop: probability of skipping a whole layer per batch (Fan et al., 2019, "Reducing
            Transformer Depth on Demand with Structured Dropout").
        adapter: dropout on the input of PEFT adapters (LoRA and its relatives' ``lora_dropout``): set where the
            adapter has a dropout module, injected where it has none (``lora_dropout=0`` builds an identity).
        heads: DropHead (Zhou et al., 2020, "Scheduled DropHead"): whole attention heads dropped per example, the
            kept ones scaled by 1/(1-p), at the input of each attention module's output projection (the
            concatenated heads).
        mixout: Mixout (Lee et al., 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained
            Language Models"): each weight of the chosen layers replaced, with probability p, by its value at patch
            time (the pretrained one when patched before training), rescaled so that its expectation is the
            current weight.
        embedding_noise: NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
            uniform noise in ``[-a, a]``, ``a = embedding_noise / sqrt(L * d)``, added to the input embeddings (L
            tokens of width d). A scale (the paper's alpha: 5, 10, 15), not a probability.
        mixout_modules: where Mixout acts: glob patterns on module paths (``["*.attention.*"]``); ``None`` means
            every Linear (and convolution) weight inside the transformer layers, the head excluded, as in the
            paper.
        mixout_target: what a dropped weight takes: ``None``, its value at patch time (Mixout); ``"zero"``, zero,
            which makes ``mixout`` DropConnect (Wan et al., 2013, "Regularization of Neural Networks using
            DropConnect") with inverted scaling, as the Mixout paper notes; it keeps no copy of the weights.
        drop_path_profile: how drop-path rates vary over depth: ``"linear"`` (layer i of L gets
            ``drop_path * i / (L - 1)``) or ``"uniform"`` (every layer ``drop_path``). Specs saved under its
            earlier name, ``drop_path_schedule``, load as this.
        drop_path_mode: ``"per_sample"`` (one draw per example) or ``"per_batch"`` (one per batch).
        schedule: rate schedules over training, ``{knob: Schedule}``; the key ``"all"`` covers every knob without
            one of its own. A `RateScheduler` drives them (see `hfreg.schedule`); without one the rates stay put.

    Raises:
        ValueError: a rate outside [0, 1), a negative or infinite scale, an unknown choice or schedule key.

    Example:
        >>> from hfreg import RegularizationConfig
        >>> reg = RegularizationConfig(hidden=0.1, mixout=0.7, schedule={"all": "early"})
        >>> reg.knob_values()
        {'hidden': 0.1, 'mixout': 0.7}
        >>> RegularizationConfig.from_dict(reg.to_dict()) == reg
        True
        >>> RegularizationConfig(hidden=1.5)
        Traceback (most recent call last):
        ValueError: `hidden` must be a float in [0, 1) or None, got 1.5
    """

    # the knobs, in the order tables show them and patches hook them; each names its module in `hfreg.knobs`
    attention: float | None = knob("attention", newer=False)
    hidden: float | None = knob("stack", newer=False)
    embedding: float | None = knob("stack", newer=False)
    activation: float | None = knob("stack", newer=False)
    classifier: float | None = knob("classifier", newer=False)
    drop_path: float | None = knob("stack", newer=False)
    layerdrop: float | None = knob("stack", sampling=False, newer=False)
    adapter: float | None = knob("adapter")
    heads: float | None = knob("heads")
    mixout: float | None = knob("mixout", sampling=False, after_moving=True)
    embedding_noise: float | None = knob("embedding_noise", scale=True, sampling=False)
    # the knobs' options
    mixout_modules: list[str] | None = field(default=None, metadata={"newer": True})
    mixout_target: str | None = field(default=None, metadata={"newer": True})
    drop_path_profile: str = "linear"
    drop_path_mode: str = "per_sample"
    schedule: dict | None = field(default=None, metadata={"newer": True})

    def __post_init__(self):
        for knob in KNOBS:
            value = getattr(self, knob)
            check_knob(knob, value)
            if value is not None:
                setattr(self, knob, as_float(value))
        if self.mixout_modules is not None:
            mods = self.mixout_modules
            if isinstance(mods, str) or not isinstance(mods, (list, tuple)) or not mods \
                    or not all(isinstance(m, str) and m for m in mods):
                raise ValueError(f"`mixout_modules` must be a non-empty list of module-path patterns or None, "
                                 f"got {mods!r}")
            self.mixout_modules = list(mods)
        if self.mixout_target is not None:
            check_choice("mixout_target", self.mixout_target, MIXOUT_TARGETS + (None,))
            if self.mixout is None:
                raise ValueError(f"`mixout_target`={self.mixout_target!r} needs a rate: set `mixout` (DropConnect's "
                                 f"p) too")
        check_choice("drop_path_profile", self.drop_path_profile, DROP_PATH_PROFILES)
        check_choice("drop_path_mode", self.drop_path_mode, DROP_PATH_MODES)
        if self.schedule is not None:
            if not isinstance(self.schedule, dict):
                raise ValueError(f"`schedule` must be a mapping of knob to schedule, got {self.schedule!r}")
            for key in self.schedule:
                check_choice("schedule key", key, (*KNOBS, ALL_KNOBS))
            self.schedule = {k: Schedule.from_dict(v) for k, v in self.schedule.items()} or None

    def schedule_for(self, knob: str) -> Schedule:
        """The schedule in force for ``knob`` (constant where none is given)."""
        sched = self.schedule or {}
        return sched.get(knob) or sched.get(ALL_KNOBS) or Schedule()

    @classmethod
    def zero(cls, **options) -> "RegularizationConfig":
        """The zero-dropout pretraining setting: every knob 0.0 but those ``options`` set, with its other options."""
        return cls(**{**dict.fromkeys(KNOBS, 0.0), **options})

    def knob_values(self) -> dict[str, float]:
        """The knobs that are set (not None), with their values."""
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in _NEWER:
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RegularizationConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a regularization spec must be a mapping, got {type(data).__name__}")
        for old, new in RENAMED.items():
            if old in data and new in data:  # one would silently win
                raise ValueError(f"a spec gives both {old!r} and {new!r}, one setting under its earlier and its "
                                 f"present name: give {new!r} alone")
        data = {RENAMED.get(k, k): v for k, v in data.items()}
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown regularization option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "RegularizationConfig":
        """Load from a directory holding ``hfreg_config.json`` or from a JSON file."""
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path) as f:
            return cls.from_dict(json.load(f))


_KNOB_FIELDS = [f for f in fields(RegularizationConfig) if "knob" in f.metadata]
# The canonical knobs, in the order tables show them.
KNOBS = tuple(f.name for f in _KNOB_FIELDS)
# knob -> its module in `hfreg.knobs`
KNOB_MODULES = {f.name: f.metadata["knob"] for f in _KNOB_FIELDS}
# knobs whose value is a noise scale >= 0, not a probability in [0, 1)
SCALES = tuple(f.name for f in _KNOB_FIELDS if f.metadata["scale"])
# knobs that are dropout sampling (MC dropout's default)
SAMPLING = tuple(f.name for f in _KNOB_FIELDS if f.metadata["sampling"])
# knobs that change nothing until training moves the weights from their values at patch time
AFTER_MOVING = tuple(f.name for f in _KNOB_FIELDS if f.metadata["after_moving"])
# fields added after the first release: left out of `to_dict` while None, so older specs and records read alike
_NEWER = tuple(f.name for f in fields(RegularizationConfig) if f.metadata.get("newer"))


def field_help(name: str) -> str:
    """The first sentence of ``name``'s entry under Args in `RegularizationConfig`'s docstring: one description of
    each field, for the command line's help as for the docs."""
    entry, lines = [], (RegularizationConfig.__doc__ or "").split("Args:", 1)[-1].split("Raises:", 1)[0].splitlines()
    for line in lines:
        if line.startswith(f"        {name}: "):
            entry = [line.split(": ", 1)[1]]
        elif entry and line.startswith("            "):
            entry.append(line.strip())
        elif entry:
            break
    text = " ".join(entry).replace("``", "")  # plain text: reST's literals read as quotes on a terminal
    return text.split(". ", 1)[0].rstrip(".")

