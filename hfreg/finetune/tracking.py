"""Live tracking, the Accelerate way: one tracker run per training run, through Accelerate's own tracker classes,
logged at every evaluation point as the run measures it.

A run is named ``{--run_name or --experiment}/{preset}/n{size}/s{seed}/lr{lr}`` and grouped by the first part
where the tracker has groups (wandb's and trackio's `group`, MLflow's experiment; TensorBoard: one directory per
run under ``OUTPUT_DIR/logs/``, the experiment's runs in one folder). Its configuration is the preset's contents
(``preset/<key>``), the size, seed and learning rate. The process that trains a run logs it, whichever rank it is
(data mode: the main process); Accelerate's trackers log from the main process only unless told otherwise, so each
is told (``main_process_only = False``). `trackers` checks, as the command line is read, that every tracker
asked for is installed.
"""

from __future__ import annotations

import inspect
import json
import numbers
import os

PROJECT = "hfreg"  # the project of trackers that have one (wandb, trackio)
LOGS_DIR = "logs"  # under --output_dir: the trackers that write files (tensorboard, aim)
# the trackers `--report_to` takes (Accelerate's), each checked with `accelerate.utils.is_<name>_available`
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet-ml"}  # pip names where they differ


def tracker_available(name: str) -> bool:
    """Whether the package of Accelerate's tracker ``name`` is installed (`accelerate.utils.is_<name>_available`)."""
    import accelerate.utils

    check = getattr(accelerate.utils, f"is_{name}_available", None)
    return bool(check and check())


def trackers(report_to: str | None, with_tracking: bool) -> list[str]:
    """The trackers every run logs to: ``--report_to``'s (``all``: every one installed), or every one installed
    under ``--with_tracking`` alone; [] for none. A tracker that is unknown or not installed is a one-line error."""
    names = [n.strip() for n in (report_to or "").split(",") if n.strip()]
    if not names:
        names = ["all"] if with_tracking else []
    if names == ["none"]:
        return []
    for name in names:
        if name not in (*TRACKERS, "all"):
            raise ValueError(f"--report_to {name!r} is not a tracker: allowed: all, none or any of {list(TRACKERS)}")
    if "all" in names:
        found = [n for n in TRACKERS if tracker_available(n)]
        if not found:
            raise ValueError(f"--report_to all found no tracker installed: install one of {list(TRACKERS)} "
                             f"(e.g. pip install tensorboard), or leave tracking off")
        return found
    for name in names:
        if not tracker_available(name):
            raise ValueError(f"--report_to {name}: the package {TRACKER_PACKAGES.get(name, name)} is not "
                             f"installed (pip install {TRACKER_PACKAGES.get(name, name)})")
    return list(dict.fromkeys(names))


def run_name(prefix: str, preset: str, train_size: int, seed: int, learning_rate: float) -> str:
    return f"{prefix}/{preset}/n{train_size}/s{seed}/lr{learning_rate:g}"


def point_values(point: dict) -> dict:
    """The numbers of an evaluation point as a tracker logs them: every metric under its record name, the rates in
    force as ``rate/<knob>`` (as `RateScheduler`'s Trainer callback logs them); the step goes as the step."""
    out = {}
    for key, value in point.items():
        if key == "step":
            continue
        if key == "rates" and isinstance(value, dict):
            out.update({f"rate/{knob}": float(rate) for knob, rate in value.items()})
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _scalar(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def _accepts(function, name: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _tracker(kind: str, name: str, group: str, output_dir: str):
    """Accelerate's tracker ``kind`` for one run called ``name`` of the experiment ``group``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[kind]
    logs = os.path.join(output_dir, LOGS_DIR)
    if kind == "tensorboard":
        return cls(name, logs)
    if kind == "wandb":
        return cls(PROJECT, name=name, group=group)
    if kind == "trackio":
        import trackio

        return cls(PROJECT, name=name, **({"group": group} if _accepts(trackio.init, "group") else {}))
    if kind == "mlflow":
        return cls(experiment_name=group, run_name=name)
    # comet_ml, aim, clearml, dvclive, swanlab: as Accelerate makes them, the run's name as their project's
    return cls(name, logs) if cls.requires_logging_directory else cls(name)


class RunTracker:
    """The trackers of one training run: started (with its configuration) on creation, ``log(point)`` at each
    evaluation point, ``finish()`` at its end."""

    def __init__(self, kinds: list[str], output_dir: str, name: str, group: str, config: dict):
        self.trackers = []
        try:
            for kind in kinds:
                tracker = _tracker(kind, name, group, output_dir)
                tracker.main_process_only = False  # this process trains the run: it logs it, whatever its rank
                tracker.start()
                tracker.store_init_configuration({k: _scalar(v) for k, v in config.items()})
                self.trackers.append(tracker)
        except BaseException:
            self.finish()
            raise

    def log(self, point: dict) -> None:
        values = point_values(point)
        for tracker in self.trackers:
            tracker.log(values, step=int(point["step"]))

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def run_config(experiment: str, preset: str, contents: dict, train_size: int, seed: int, learning_rate: float) -> dict:
    """A run's configuration as its tracker run records it."""
    return {"experiment": experiment, "preset": preset, "train_size": train_size, "seed": seed,
            "learning_rate": learning_rate, **{f"preset/{k}": v for k, v in contents.items()}}
