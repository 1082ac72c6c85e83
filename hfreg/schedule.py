"""Rate schedules over training: `RateScheduler` moves the rates a patch put in force, one call per optimizer step.

    patch_model(model, RegularizationConfig(hidden=0.1, drop_path=0.1, schedule={"all": "early"}))
    scheduler = RateScheduler(model, total_steps)  # or RateScheduler(model, total_steps, kind="late", cutoff=0.3)
    for batch in loader:
        ...; optimizer.step(); scheduler.step()

    Trainer(..., callbacks=[RateSchedulerCallback()])  # the same in transformers' Trainer, rates logged as rate/<knob>

Every site of a knob follows its schedule — native modules, float attributes and config keys, injected hooks,
each layer's drop-path rate, LayerDrop — as a factor on the patched rate, so the depth profile of drop-path keeps
its shape. Parameters are never touched, eval mode stays the identity and `unpatch_model` restores the original.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .config import KNOBS, RegularizationConfig, Schedule
from .state import patch_state, set_rate_factors

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainerControl, TrainerState, TrainingArguments


class RateScheduler:
    """Drive the rate schedules of a patched model.

    Args:
        model: a model patched with `patch_model`.
        total_steps: optimizer steps in the whole training run (fractions of training resolve against it).
        kind: one `Schedule` kind for every knob of the spec in force, overriding the spec's own
            (``kind="early", cutoff=0.5``). Without it, the schedules recorded in the spec apply.
        cutoff: that schedule's cutoff (see `Schedule`).
        direction: that schedule's direction (see `Schedule`).

    Raises:
        ValueError: the model is not patched, ``total_steps`` is not a positive int, ``cutoff`` or ``direction``
            come without ``kind``, or a cutoff in steps lies beyond ``total_steps``.

    Example:
        >>> import hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64))
        >>> _ = hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.1, attention=0.1))
        >>> scheduler = hfreg.RateScheduler(model, total_steps=100, kind="early", cutoff=0.5)
        >>> for _ in range(60):
        ...     scheduler.step()
        >>> scheduler.rates()
        {'attention': 0.0, 'hidden': 0.0}
    """

    def __init__(self, model: nn.Module, total_steps: int, kind: str | None = None, cutoff: int | float | None = None,
                 direction: str | None = None):
        state = patch_state(model, required=True)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be an int >= 1, got {total_steps!r}")
        reg: RegularizationConfig = state.reg
        if kind is None and (cutoff is not None or direction is not None):
            raise ValueError("`cutoff` and `direction` need `kind` (e.g. kind='early', cutoff=0.5)")
        if kind is not None:
            options = {k: v for k, v in (("cutoff", cutoff), ("direction", direction)) if v is not None}
            one = Schedule(kind=kind, **options)
            self.schedules = {k: one for k in reg.knob_values()}
        else:
            self.schedules = {k: reg.schedule_for(k) for k in reg.knob_values()}
        for knob, s in self.schedules.items():
            s.check_within(total_steps, f"the `{knob}`")
        self.model, self.total_steps, self.last_step = model, total_steps, 0
        self._apply()

    def factors(self) -> dict[str, float]:
        """Each scheduled knob's multiplier now."""
        return {k: s.factor(self.last_step, self.total_steps) for k, s in self.schedules.items()}

    def rates(self) -> dict[str, float]:
        """Each knob's nominal rate in force now (for drop-path, the deepest layer's under the linear profile)."""
        reg = patch_state(self.model, required=True).reg
        return {k: getattr(reg, k) * f for k, f in self.factors().items()}

    def step(self) -> None:
        """Call once after each optimizer step."""
        self.last_step += 1
        self._apply()

    def _apply(self):
        set_rate_factors(self.model, self.factors())

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.last_step, self.total_steps = int(state["last_step"]), int(state["total_steps"])
        self._apply()

    def __repr__(self):
        kinds = ", ".join(f"{k}={s.kind}" for k, s in self.schedules.items() if k in KNOBS)
        return f"RateScheduler(step {self.last_step}/{self.total_steps}: {kinds})"


class RateSchedulerCallback(TrainerCallback):
    """A `transformers.TrainerCallback` that drives the rate schedules of a patched model in a `Trainer`: it makes a
    `RateScheduler` when training begins (total steps from the Trainer; a resumed Trainer resumes the schedule at
    its step), steps it after every optimizer step, and adds the rates in force then to every log as
    ``rate/<knob>`` (`RateScheduler.rates`), so they reach ``trainer.state.log_history`` and the loggers.

    transformers runs the ``report_to`` integrations' callbacks before those passed as ``callbacks=``, so they log
    a dict that this callback has not yet added to. To send the rates to them too, put it first:
    ``trainer.callback_handler.callbacks.insert(0, RateSchedulerCallback(...))``.

    Args:
        kind: one `Schedule` kind for every knob, as in `RateScheduler`; None: the spec's own schedules.
        cutoff: that schedule's cutoff (see `Schedule`).
        direction: that schedule's direction (see `Schedule`).
        log_rates: add ``rate/<knob>`` to the logs.

    Raises:
        ValueError: an unknown kind or direction, a bad cutoff, or ``cutoff``/``direction`` without ``kind``; when
            training begins, a model that is not patched.

    Example:
        >>> import hfreg
        >>> callback = hfreg.RateSchedulerCallback(kind="late", cutoff=0.3)  # Trainer(..., callbacks=[callback])
        >>> callback.scheduler is None  # made when training begins
        True
    """

    def __init__(self, kind: str | None = None, cutoff: int | float | None = None, direction: str | None = None,
                 *, log_rates: bool = True):
        options = {k: v for k, v in (("cutoff", cutoff), ("direction", direction)) if v is not None}
        if kind is not None:
            Schedule(kind=kind, **options)  # a bad one fails here, not in training
        elif options:
            raise ValueError("`cutoff` and `direction` need `kind` (e.g. kind='early', cutoff=0.5)")
        self.options = {"kind": kind, "cutoff": cutoff, "direction": direction}
        self.log_rates = log_rates
        self.scheduler: RateScheduler | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        self.scheduler = RateScheduler(model, max(int(state.max_steps), 1), **self.options)
        if state.global_step:  # resumed from a checkpoint
            self.scheduler.load_state_dict({"last_step": state.global_step, "total_steps": state.max_steps})

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs: Any) -> None:
        if not self.log_rates or self.scheduler is None or logs is None:
            return
        rates = {f"rate/{knob}": rate for knob, rate in self.scheduler.rates().items()}
        last = state.log_history[-1] if state.log_history else None
        # the Trainer has put this log in the history already (a copy, with the step): add the rates there too
        if isinstance(last, dict) and last.get("step") == state.global_step and set(logs) <= set(last):
            last.update(rates)
        logs.update(rates)


def rate_scheduler_callback(**schedule: Any) -> RateSchedulerCallback:
    """A `RateSchedulerCallback`: ``rate_scheduler_callback(kind="late")`` is ``RateSchedulerCallback(kind="late")``.

    Args:
        **schedule: passed on to `RateSchedulerCallback` (``kind="late", cutoff=0.3``); none: the spec's own
            schedules.

    Returns:
        The callback, for ``Trainer(callbacks=[...])``.

    Example:
        >>> import hfreg
        >>> type(hfreg.rate_scheduler_callback(kind="late", cutoff=0.3)).__name__
        'RateSchedulerCallback'
    """
    return RateSchedulerCallback(**schedule)
