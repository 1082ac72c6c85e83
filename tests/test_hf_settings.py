"""The HF Trainer's settings the harness takes (label smoothing, max_steps, warm-up steps, weight decay, NEFTune,
gradient checkpointing, a per-device batch), each trained on the tiny model and recorded only where on; a fresh
--output_dir; the run header and the progress bar; live tracking, one tracker run per training run."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from harness import SCRIPT, args_for, launch, load_script

from hfreg.finetune import prepare, records, tracking, training
from hfreg.rdrop import rdrop_objective

ONE = ("--train_sizes", "16", "--seeds", "0", "--train_batch_size", "4", "--learning_rate", "5e-3")
# the experiment's settings as every record made before these flags holds them (args_for: --min_steps 0)
EARLIER_SETTINGS = {"data_sha256", "evals_per_epoch", "label_column", "labels", "learning_rates", "lr_scheduler_type",
                    "max_grad_norm", "max_length", "max_train_eval_samples", "model", "model_config",
                    "num_train_epochs", "parallel", "precision", "roles", "splits", "text_columns", "train_batch_size",
                    "versions", "warmup_ratio"}


def grid(model, data, out, *extra, presets="pretrain-zero"):
    assert load_script().main(args_for(model, data, out, "--presets", presets, *ONE, *extra)) == 0
    return {r["preset"]: r for r in records.read_runs(out)}


def losses(run):
    return [p["running_loss"] for p in run["evals"]]


def test_defaults_record_what_records_always_held_and_a_per_device_batch_resumes(tiny_classifier, csv_data,
                                                                                 tmp_path, capsys):
    out = tmp_path / "out"
    run = grid(tiny_classifier, csv_data, out)["pretrain-zero"]
    assert set(run["experiment"]["settings"]) == EARLIER_SETTINGS  # older directories resume: the same digests
    capsys.readouterr()
    # the same global batch given per device (one process: 4 per forward) is the same experiment: all done
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero",
                                       *[a if a != "--train_batch_size" else "--per_device_train_batch_size"
                                         for a in ONE])) == 0
    assert "1 runs, 1 already done" in capsys.readouterr().out


def test_gradient_accumulation_leaves_each_step_as_it_was(tiny_classifier, csv_data, tmp_path):
    """118 examples at batch 16 are seven steps of 16 and one of 6: split into backward passes of 8 or 4 (the last
    step's of 6, or of 4 and 2), every step holds the same examples (the length grouping works at the step's batch,
    not the pass's) and its gradient is the mean over them (the short last step's too, not a fraction of it), so
    the run is the one without accumulation up to float sums (no dropout: the masks would differ)."""
    def run(accum):
        out = tmp_path / f"accum{accum}"
        return grid(tiny_classifier, csv_data, out, "--train_sizes", "118", "--train_batch_size", "16",
                    "--gradient_accumulation_steps", str(accum), "--threads", "1", "--mixed_precision", "no",
                    "--num_train_epochs", "2")["pretrain-zero"]

    whole = run(1)
    assert whole["steps"] == 16
    for accum in (2, 4):
        split = run(accum)
        assert [p["step"] for p in split["evals"]] == [p["step"] for p in whole["evals"]]
        for a, b in zip(whole["evals"], split["evals"]):
            for k in ("running_loss", "train_loss", "selection_loss", "selection_accuracy"):
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (accum, a["step"], k)


def test_label_smoothing_in_the_loss_and_recorded_only_when_on(tiny_classifier, csv_data, tmp_path):
    plain = grid(tiny_classifier, csv_data, tmp_path / "plain")["pretrain-zero"]
    smooth = grid(tiny_classifier, csv_data, tmp_path / "smooth", "--label_smoothing_factor", "0.2")["pretrain-zero"]
    assert "label_smoothing_factor" not in plain["experiment"]["settings"]
    assert smooth["experiment"]["settings"]["label_smoothing_factor"] == 0.2
    assert losses(plain) != losses(smooth)
    # a smoothed loss cannot fall to 0: its minimum for 2 classes is the entropy of (0.9, 0.1)
    assert min(losses(smooth)) > 0.3


def test_label_smoothing_on_r_drops_two_passes():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64))
    batch = {"input_ids": torch.randint(1, 50, (6, 9)), "labels": torch.tensor([0, 1, 1, 0, 1, 0])}
    y = batch["labels"]
    model.eval()  # no dropout: both passes alike, the KL term 0, the loss the smoothed cross-entropy
    logits = model(input_ids=batch["input_ids"]).logits.float()
    expected = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(training.task_loss(model, batch, 1.0, 0.1), expected, atol=1e-6)
    assert torch.allclose(training.task_loss(model, batch, 0.0, 0.1), expected, atol=1e-6)
    assert training.task_loss(model, batch, 0.0, 0.0) == model(**batch).loss  # off: the model's own loss
    model.train()  # two masks: the package's R-Drop objective with smoothed cross-entropy terms
    torch.manual_seed(1)
    loss = training.task_loss(model, batch, 1.0, 0.1)
    torch.manual_seed(1)
    both = model(input_ids=torch.cat([batch["input_ids"]] * 2)).logits.float()
    a, b = both[:6], both[6:]
    kl_and_ce = rdrop_objective(a, b, y, 1.0)
    ce, smoothed = [(F.cross_entropy(a, y, label_smoothing=s) + F.cross_entropy(b, y, label_smoothing=s)) / 2
                    for s in (0.0, 0.1)]
    assert torch.allclose(loss, kl_and_ce - ce + smoothed, atol=1e-5)


def test_max_steps_overrides_the_epochs(tiny_classifier, csv_data, tmp_path, capsys):
    run = grid(tiny_classifier, csv_data, tmp_path / "out", "--max_steps", "6")["pretrain-zero"]
    # 16 examples at batch 4: 4 steps an epoch; 6 steps end inside the second; 2 epochs' 10 points (5 an epoch, the
    # default for 10 in all) over 6 steps, at most one a step: every step
    assert run["steps"] == 6 and [p["step"] for p in run["evals"]] == [1, 2, 3, 4, 5, 6]
    assert run["experiment"]["settings"]["max_steps"] == 6
    assert "16 examples: 6 steps (--max_steps) in 2 epoch(s) of 4" in capsys.readouterr().out
    long = grid(tiny_classifier, csv_data, tmp_path / "long", "--max_steps", "20")["pretrain-zero"]
    # over 20 steps the 10 points fit, although a nominal epoch of 4 steps could hold only 4 of its 5
    assert long["steps"] == 20 and [p["step"] for p in long["evals"]] == list(range(2, 21, 2))


def test_warmup_steps_override_the_ratio(tiny_classifier, csv_data, tmp_path, monkeypatch):
    import transformers

    warmups, real = [], transformers.get_scheduler

    def spy(name, optimizer, num_warmup_steps=None, num_training_steps=None, **kwargs):
        warmups.append(num_warmup_steps)
        return real(name, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                    **kwargs)

    monkeypatch.setattr(transformers, "get_scheduler", spy)
    ratio = grid(tiny_classifier, csv_data, tmp_path / "ratio", "--num_train_epochs", "5")["pretrain-zero"]
    steps = grid(tiny_classifier, csv_data, tmp_path / "steps", "--num_train_epochs", "5",
                 "--warmup_steps", "7")["pretrain-zero"]
    assert warmups == [2, 7]  # 10% of 20 steps, then the steps given
    assert "warmup_steps" not in ratio["experiment"]["settings"]
    assert steps["experiment"]["settings"]["warmup_steps"] == 7 and losses(ratio) != losses(steps)


def test_weight_decay_for_presets_without_their_own(tiny_classifier, csv_data, tmp_path, monkeypatch):
    decays, real = [], training.param_groups

    def spy(model, weight_decay, *args, **kwargs):
        decays.append(weight_decay)
        return real(model, weight_decay, *args, **kwargs)

    monkeypatch.setattr(training, "param_groups", spy)
    runs = grid(tiny_classifier, csv_data, tmp_path / "out", "--weight_decay", "0.03",
                presets="pretrain-zero,weight-decay")
    assert sorted(decays) == [0.03, 0.1]  # the baseline takes the grid's; weight-decay keeps its 0.1
    assert runs["pretrain-zero"]["experiment"]["settings"]["weight_decay"] == 0.03
    assert runs["pretrain-zero"]["preset_config"]["weight_decay"] == 0.0  # the preset itself is unchanged


def test_neftune_for_presets_without_their_own(tiny_classifier, csv_data, tmp_path):
    plain = grid(tiny_classifier, csv_data, tmp_path / "plain")["pretrain-zero"]
    runs = grid(tiny_classifier, csv_data, tmp_path / "noisy", "--neftune_noise_alpha", "2",
                presets="pretrain-zero,neftune,early-dropout")
    final = {name: r["evals"][-1]["rates"] for name, r in runs.items()}
    assert final["pretrain-zero"]["embedding_noise"] == 2.0
    assert final["neftune"]["embedding_noise"] == 5.0  # its own alpha
    # early-dropout's `all` schedule ends its own knobs early; the grid's noise stays on
    assert final["early-dropout"]["embedding_noise"] == 2.0 and final["early-dropout"]["attention"] == 0.0
    assert runs["pretrain-zero"]["experiment"]["settings"]["neftune_noise_alpha"] == 2.0
    assert "embedding_noise" not in runs["pretrain-zero"]["preset_config"]  # the preset itself is unchanged
    assert losses(plain) != losses(runs["pretrain-zero"])


def test_gradient_checkpointing_trains_the_same_run(tiny_classifier, csv_data, tmp_path, monkeypatch):
    calls, real = [], prepare.enable_checkpointing

    def spy(model):
        calls.append(type(model).__name__)
        real(model)

    monkeypatch.setattr(prepare, "enable_checkpointing", spy)
    fp32 = ("--mixed_precision", "no")
    plain = grid(tiny_classifier, csv_data, tmp_path / "plain", *fp32, presets="classic")["classic"]
    assert calls == []
    ckpt = grid(tiny_classifier, csv_data, tmp_path / "ckpt", *fp32, "--gradient_checkpointing",
                presets="classic")["classic"]
    assert calls == ["BertForSequenceClassification"]
    assert ckpt["experiment"]["settings"]["gradient_checkpointing"] is True
    # activations recomputed under the same dropout masks (torch restores the random state): the same numbers
    assert [{k: v for k, v in p.items()} for p in ckpt["evals"]] == plain["evals"]


def test_overwrite_output_dir_starts_afresh_and_says_what_went(tiny_classifier, csv_data, tmp_path, capsys):
    out = tmp_path / "out"
    grid(tiny_classifier, csv_data, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="made under other settings"):  # without the flag: a resume, refused
        grid(tiny_classifier, csv_data, out, "--num_train_epochs", "3")
    capsys.readouterr()
    runs = grid(tiny_classifier, csv_data, out, "--num_train_epochs", "3", "--overwrite_output_dir")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--overwrite_output_dir")]
    assert said == [f"--overwrite_output_dir: removed runs.jsonl (1 run(s)), predictions/, .claims/, summary.json, "
                    f"summary.csv, findings.md, pooled.json, pooled.md from {out}"]
    assert runs["pretrain-zero"]["experiment"]["settings"]["num_train_epochs"] == 3 and len(runs) == 1
    assert (out / "notes.txt").read_text() == "mine"  # not the harness's: left alone
    assert len(os.listdir(out / "predictions")) == 1


def test_header_and_progress_bar(tiny_classifier, csv_data, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar is drawn
    assert load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out", "--presets", "pretrain-zero",
                                       "--train_sizes", "16", "--seeds", "0", "--min_steps", "48")) == 0
    captured = capsys.readouterr()
    assert ("run preset=pretrain-zero train_size=16 seed=0 learning_rate=0.0002 | 16 examples: 48 epochs to reach "
            "48 steps (--min_steps)") in captured.out
    assert "pretrain-zero n=16 s=0" in captured.err and "48/48" in captured.err and "loss=" in captured.err
    # the evaluation lines stay whole lines of their own
    assert [line for line in captured.out.splitlines() if "step 48/48 (epoch 48)" in line][0].startswith(
        "  pretrain-zero n=16 seed=0 step 48/48")
    assert "grid: 1/1 runs done" in captured.out


def test_tracking_logs_every_point_of_every_run_live(tiny_classifier, csv_data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    real_log, real_predict = tracking.RunTracker.log, training.predict
    monkeypatch.setattr(tracking.RunTracker, "log", lambda self, point: (events.append(("log", point["step"])),
                                                                         real_log(self, point)))
    monkeypatch.setattr(training, "predict", lambda *a, **k: (events.append(("eval", None)), real_predict(*a, **k))[1])
    out = tmp_path / "out"
    runs = grid(tiny_classifier, csv_data, out, "--report_to", "tensorboard", "--run_name", "trial",
                presets="pretrain-zero,early-dropout")
    # each point is logged as it is measured (its training subset and selection split evaluated, the test split
    # at the final point), before the next point's evaluations
    first = runs["pretrain-zero"]["evals"][0]["step"]
    assert events[:3] == [("eval", None), ("eval", None), ("log", first)] and events[3] == ("eval", None)
    for name, run in runs.items():
        logdir = out / "logs" / "trial" / name / "n16" / "s0" / "lr0.005"
        acc = EventAccumulator(str(logdir))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert {"selection_loss", "train_accuracy", "running_loss", "rate/attention"} <= set(tags)
        assert [e.step for e in acc.Scalars("selection_loss")] == [p["step"] for p in run["evals"]]
        assert [e.value for e in acc.Scalars("selection_loss")] == pytest.approx(
            [p["selection_loss"] for p in run["evals"]], rel=1e-6)
        assert [e.value for e in acc.Scalars("rate/attention")] == pytest.approx(
            [p["rates"]["attention"] for p in run["evals"]])
        tested = [p["step"] for p in run["evals"] if "test_accuracy" in p]
        assert sorted({e.step for e in acc.Scalars("test_accuracy")}) == tested
        hparams = [f for _, _, files in os.walk(logdir) for f in files if f == "hparams.yml"]
        assert hparams  # the run's configuration: its preset, size, seed and learning rate


def test_a_missing_tracker_is_one_line_and_nothing_is_written(tiny_classifier, csv_data, tmp_path, capsys,
                                                               monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    out = tmp_path / "out"
    assert load_script().cli(args_for(tiny_classifier, csv_data, out, "--report_to", "wandb")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == ["hfreg-finetune: error: --report_to wandb: the package wandb is not installed "
                      "(pip install wandb)"]
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_each_log_the_runs_they_train(tiny_classifier, csv_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, out, "--report_to", "tensorboard", "--threads", "1"),
                  num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0]" in proc.stdout and "[rank 1]" in proc.stdout
    for run in records.read_runs(out):
        logdir = out / "logs" / tracking.run_name("default", run["preset"], run["train_size"], run["seed"],
                                                  run["learning_rate"])
        acc = EventAccumulator(str(logdir))
        acc.Reload()
        assert [e.step for e in acc.Scalars("selection_accuracy")] == [p["step"] for p in run["evals"]], logdir


def test_tracking_config_and_values_are_what_trackers_take():
    point = {"step": 3, "epoch": 0.5, "running_loss": 0.6, "rates": {"hidden": 0.1}, "selection_accuracy": 0.75}
    assert tracking.point_values(point) == {"epoch": 0.5, "running_loss": 0.6, "rate/hidden": 0.1,
                                            "selection_accuracy": 0.75}
    config = tracking.run_config("default", "early-dropout", {"hidden": 0.1, "schedule": {"all": {"kind": "early"}}},
                                 64, 0, 2e-4)
    assert config["preset/hidden"] == 0.1 and config["train_size"] == 64
    assert json.loads(tracking._scalar(config["preset/schedule"])) == {"all": {"kind": "early"}}


def test_glue_tasks_read_their_splits_and_columns(monkeypatch):
    """--task_name mnli: the matched validation and (unlabelled) test splits; qqp's question pair is detected."""
    import datasets

    from hfreg.finetune import data

    def split(n, label=0):
        return datasets.Dataset.from_dict({"premise": ["a b"] * n, "hypothesis": ["c"] * n, "label": [label] * n})

    mnli = datasets.DatasetDict(train=split(4), validation_matched=split(3), validation_mismatched=split(2),
                                test_matched=split(2, -1), test_mismatched=split(1, -1))
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (seen.append(a), mnli)[1])
    raw = data.load_raw("glue", "mnli")
    assert seen == [("glue", "mnli")]
    assert {s: len(raw[s]) for s in raw} == {"train": 4, "validation": 3, "test": 2}
    assert data.detect_columns(["question1", "question2", "label", "idx"]) == (("question1", "question2"), "label")
