"""Rate schedules over training: `RateScheduler` moves the rates a patch put in force, one call per optimizer step.

    patch_model(model, RegularizationConfig(hidden=0.1, drop_path=0.1, schedule={"all": "early"}))
    scheduler = RateScheduler(model, total_steps)  # or RateScheduler(model, total_steps, kind="late", cutoff=0.3)
    for batch in loader:
        ...; optimizer.step(); scheduler.step()

Every site of a knob follows its schedule — native modules, float attributes and config keys, injected hooks,
each layer's drop-path rate, LayerDrop — as a factor on the patched rate, so the depth profile of drop-path keeps
its shape. Parameters are never touched, eval mode stays the identity and `unpatch_model` restores the original.
"""

from __future__ import annotations

from .apply import patch_state, set_rate_factors
from .config import KNOBS, RegularizationConfig, Schedule, deprecated


class RateScheduler:
    """Drive the rate schedules of a patched model.

    Args:
        model: a model patched with `patch_model`.
        total_steps: optimizer steps in the whole training run (fractions of training resolve against it).
        kind: one `Schedule` kind for every knob of the spec in force, overriding the spec's own
            (``kind="early", cutoff=0.5``). Without it, the schedules recorded in the spec apply. ``schedule=`` is
            its earlier name (deprecated).
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

    def __init__(self, model, total_steps: int, kind: str | None = None, cutoff: int | float | None = None,
                 direction: str | None = None, *, schedule: str | None = None):
        if schedule is not None:
            deprecated("RateScheduler(schedule=)", "RateScheduler(kind=)")
            kind = schedule
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


def rate_scheduler_callback(**schedule):
    """A `transformers.TrainerCallback` that makes a `RateScheduler` when training begins (total steps from the
    Trainer) and steps it after every optimizer step; a resumed Trainer resumes the schedule.

    Args:
        **schedule: passed on to `RateScheduler` (``kind="late", cutoff=0.3``); none: the spec's own schedules.

    Returns:
        The callback, for ``Trainer(callbacks=[...])``.

    Example:
        >>> import hfreg
        >>> type(hfreg.rate_scheduler_callback(kind="late", cutoff=0.3)).__name__
        'RateSchedulerCallback'
    """
    from transformers import TrainerCallback

    class RateSchedulerCallback(TrainerCallback):
        def __init__(self):
            self.scheduler = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.scheduler = RateScheduler(model, max(int(state.max_steps), 1), **schedule)
            if state.global_step:  # resumed from a checkpoint
                self.scheduler.load_state_dict({"last_step": state.global_step, "total_steps": state.max_steps})

        def on_step_end(self, args, state, control, **kwargs):
            self.scheduler.step()

    return RateSchedulerCallback()
