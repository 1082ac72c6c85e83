"""Rate schedules: the Schedule spec, RateScheduler on every architecture, the Trainer callback."""

import json
import types
import warnings

import pytest
import torch
from tiny_models import TINY, build, first_tensor, make_inputs

import hfreg
from hfreg import RegularizationConfig as Reg
from hfreg import Schedule

CASES = [(m, head) for m in TINY for head in (False, True)]
FULL = dict(attention=0.3, hidden=0.3, embedding=0.3, activation=0.3, classifier=0.3, drop_path=0.3, layerdrop=0.3)


def forward(model, inputs, train, seed=1):
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return first_tensor(model(**inputs)).clone()


def stochastic(model, inputs):
    first = forward(model, inputs, True, 1)
    return any(not torch.equal(first, forward(model, inputs, True, s)) for s in range(2, 8))


@pytest.mark.parametrize("kind,direction,expected", [
    ("constant", "down", [1, 1, 1, 1, 1]),
    ("early", "down", [1, 1, 0, 0, 0]),
    ("late", "down", [0, 0, 1, 1, 1]),
    ("linear", "down", [1, 0.5, 0, 0, 0]),
    ("linear", "up", [0, 0.5, 1, 1, 1]),
])
def test_schedule_factors(kind, direction, expected):
    for cutoff in (2, 0.5):  # 2 steps, or half of 4 steps
        s = Schedule(kind, cutoff, direction)
        assert [s.factor(step, 4) for step in range(5)] == expected


@pytest.mark.parametrize("bad,words", [
    ({"schedule": {"hiden": "early"}}, "schedule key"),
    ({"schedule": {"all": "sometimes"}}, "schedule kind"),
    ({"schedule": {"all": {"kind": "early", "cutoff": 1.5}}}, "cutoff"),
    ({"schedule": {"all": {"kind": "early", "cutoff": -3}}}, "cutoff"),
    ({"schedule": {"all": {"kind": "linear", "direction": "sideways"}}}, "direction"),
    ({"schedule": {"all": {"kind": "early", "start": 3}}}, "unknown schedule option"),
    ({"schedule": "early"}, "mapping"),
])
def test_bad_schedules_are_one_line_value_errors(bad, words):
    with pytest.raises(ValueError, match=words) as e:
        Reg(hidden=0.1, **bad)
    assert "\n" not in str(e.value)


def test_schedule_round_trips_through_dict_file_and_config(tmp_path):
    reg = Reg(hidden=0.1, drop_path=0.2, schedule={"all": "early", "drop_path": {"kind": "late", "cutoff": 30}})
    assert Reg.from_dict(json.loads(json.dumps(reg.to_dict()))) == reg
    assert Reg.from_pretrained(reg.save_pretrained(tmp_path)) == reg
    assert "schedule" not in Reg(hidden=0.1).to_dict()  # specs without schedules read as before
    model = build("bert", head=True)
    model.config = hfreg.patch_config(model.config, reg)
    model.config.save_pretrained(tmp_path / "cfg")
    from transformers import AutoConfig

    hfreg.patch_model(model, dict(AutoConfig.from_pretrained(tmp_path / "cfg").hfreg))
    scheduler = hfreg.RateScheduler(model, 100)
    assert scheduler.schedules["drop_path"] == Schedule("late", 30) and scheduler.schedules["hidden"].kind == "early"
    assert scheduler.rates() == {"hidden": 0.1, "drop_path": 0.0}


@pytest.mark.parametrize("model_type,head", CASES)
def test_invariants_hold_at_every_step(model_type, head):
    """Eval identity, unchanged state_dict, the schedule's effect, and an exact unpatch, step by step."""
    model = build(model_type, head, **({"alibi": True} if model_type == "falcon" else {}))
    inputs = make_inputs(model_type, model.config, head=head)
    eval0, train0 = forward(model, inputs, False), forward(model, inputs, True)
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    hooks0 = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
    spec = {k: v for k, v in FULL.items() if head or k != "classifier"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hfreg.patch_model(model, Reg(**spec))
    scheduler = hfreg.RateScheduler(model, 4, kind="linear", cutoff=2)
    for step, factor in enumerate([1.0, 0.5, 0.0, 0.0]):
        assert scheduler.factors() == {k: factor for k in spec}
        assert torch.equal(forward(model, inputs, False), eval0)
        assert list(model.state_dict()) == list(state0)
        sites = hfreg.inspect_model(model)
        assert all(s.rate <= spec[s.kind] * factor + 1e-9 for s in sites if s.kind in spec), step
        if factor == 0.0:
            assert all(s.rate == 0.0 for s in sites if s.kind in spec)
            assert torch.equal(forward(model, inputs, True, 1), forward(model, inputs, True, 2)), step
        else:
            assert stochastic(model, inputs), step
        scheduler.step()
    hfreg.unpatch_model(model)
    assert torch.equal(forward(model, inputs, True), train0) and torch.equal(forward(model, inputs, False), eval0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state0.items())
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == hooks0


def test_late_schedule_turns_dropout_on_and_per_knob_schedules_differ():
    model = build("llama", head=True)
    inputs = make_inputs("llama", model.config, head=True)
    hfreg.patch_model(model, Reg(hidden=0.3, attention=0.0, schedule={"hidden": {"kind": "late", "cutoff": 0.5}}))
    scheduler = hfreg.RateScheduler(model, 10)
    assert not stochastic(model, inputs)
    for _ in range(5):
        scheduler.step()
    assert stochastic(model, inputs)
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind == "hidden"} == {0.3}
    # a checkpointed scheduler resumes where it was
    again = hfreg.RateScheduler(model, 10)
    assert again.rates()["hidden"] == 0.0
    again.load_state_dict(scheduler.state_dict())
    assert again.rates()["hidden"] == 0.3 and stochastic(model, inputs)


def test_drop_path_profile_keeps_its_shape():
    model = build("llama")
    hfreg.patch_model(model, Reg(drop_path=0.4, drop_path_profile="linear"))
    hfreg.RateScheduler(model, 4, kind="linear", cutoff=4).step()  # factor 0.75
    rates = sorted({(s.layer, round(s.rate, 6)) for s in hfreg.inspect_model(model) if s.kind == "drop_path"})
    depth = model.config.num_hidden_layers
    assert rates == [(i, round(0.4 * 0.75 * i / (depth - 1), 6)) for i in range(depth)]


def test_rate_scheduler_errors():
    model = build("bert")
    with pytest.raises(ValueError, match="not patched"):
        hfreg.RateScheduler(model, 10)
    hfreg.patch_model(model, Reg(hidden=0.1))
    for kwargs, words in [({"total_steps": 0}, "total_steps"), ({"total_steps": 5, "cutoff": 2}, "need `kind`"),
                          ({"total_steps": 5, "kind": "never"}, "schedule kind"),
                          ({"total_steps": 5, "kind": "early", "cutoff": 6},
                           "cutoff of 6 steps is beyond training")]:
        with pytest.raises(ValueError, match=words):
            hfreg.RateScheduler(model, **kwargs)
    with pytest.raises(ValueError, match="factor"):
        hfreg.set_rate_factors(model, {"hidden": 1.5})
    with pytest.raises(ValueError, match="unknown knob"):
        hfreg.set_rate_factors(model, {"dropout": 0.5})


def test_trainer_callback_steps_the_schedule(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = hfreg.patch_model(build("llama", head=True), Reg(hidden=0.2, attention=0.1))
    callback = hfreg.rate_scheduler_callback(kind="early", cutoff=0.5)
    ids = torch.randint(3, 100, (16, 8), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": [i % 3 for i in range(16)]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert callback.scheduler.last_step == 8 and callback.scheduler.rates() == {"hidden": 0.0, "attention": 0.0}
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind in ("hidden", "attention")} == {0.0}
    # resumed training picks up the step count from the Trainer's state
    fresh = hfreg.rate_scheduler_callback(kind="early", cutoff=0.5)
    fresh.on_train_begin(None, types.SimpleNamespace(max_steps=8, global_step=2), None, model=model)
    assert fresh.scheduler.rates() == {"hidden": 0.2, "attention": 0.1}


def test_rate_scheduler_callback_class_logs_the_rates_in_force(tmp_path):
    """A real Trainer, 8 steps, a log every step: the rates follow the schedule, and each log carries them, in
    `state.log_history` and in the logs the callbacks after it receive."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Seen(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    model = hfreg.patch_model(build("llama", head=True), Reg(hidden=0.2, drop_path=0.1, attention=0.1))
    callback, seen = hfreg.RateSchedulerCallback(kind="linear", cutoff=4), Seen()  # 1 -> 0 over steps 0..4
    assert isinstance(callback, TrainerCallback)
    ids = torch.randint(3, 100, (16, 8), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": [i % 3 for i in range(16)]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_strategy="steps",
                             logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, seen])
    trainer.train()
    logged = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    assert sorted(logged) == list(range(1, 9))
    for step, entry in logged.items():  # the rates in force after that step
        factor = max(0.0, 1 - step / 4)
        assert entry["rate/hidden"] == pytest.approx(0.2 * factor), step
        assert entry["rate/drop_path"] == pytest.approx(0.1 * factor) and "rate/attention" in entry
    assert [e["rate/hidden"] for e in seen.logs if "loss" in e] == [logged[s]["rate/hidden"] for s in sorted(logged)]
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind in ("hidden", "drop_path", "attention")} == {0.0}
    assert isinstance(hfreg.rate_scheduler_callback(kind="early"), hfreg.RateSchedulerCallback)
    quiet = hfreg.RateSchedulerCallback(log_rates=False)
    quiet.on_train_begin(None, types.SimpleNamespace(max_steps=8, global_step=0), None, model=model)
    logs = {"loss": 1.0}
    quiet.on_log(None, types.SimpleNamespace(log_history=[], global_step=0), None, logs=logs)
    assert logs == {"loss": 1.0}


@pytest.mark.parametrize("kwargs,words", [({"kind": "never"}, "schedule kind"), ({"cutoff": 2}, "need `kind`"),
                                          ({"kind": "early", "cutoff": -1}, "cutoff")])
def test_rate_scheduler_callback_refuses_a_bad_schedule_at_once(kwargs, words):
    with pytest.raises(ValueError, match=words):
        hfreg.RateSchedulerCallback(**kwargs)
