"""The harness's command line, declared once as dataclasses read by `HfArgumentParser`: every flag's default, the
names HF users type, args files, deprecations and one-line errors. Parsing only: no model, no data, nothing run."""

import json
import os
import subprocess
import sys

import pytest
from harness import load_script

from hfreg.finetune import arguments, tracking
from hfreg.finetune.arguments import ComparisonArguments, DataArguments, ModelArguments, RunArguments

# every flag the argparse harness had, with its default (as the sweep reads it); evaluation points rose from 6 to
# at least 10 in all, so 4 epochs now have 3 per epoch
EARLIER_DEFAULTS = {
    "model_name_or_path": None, "dataset_name": None, "dataset_config_name": None, "train_file": None,
    "validation_file": None, "test_file": None, "roles": "auto", "split_seed": 0, "selection_size": 512,
    "text_column": None, "label_column": None, "presets": "pretrain-zero,classic,weight-decay", "rates": [],
    "train_sizes": [64], "seeds": [0, 1, 2, 3], "max_seeds": 40, "seed_stage": 5, "num_train_epochs": 4,
    "min_steps": 48, "select_by": None, "margin": {}, "learning_rate": 2e-4, "max_grad_norm": 1.0,
    "rdrop_alpha": 0.0, "llrd": 1.0, "reinit_layers": 0, "learning_rates": [2e-4], "max_train_eval_samples": 256,
    "evals_per_epoch": 3, "train_batch_size": 16, "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 256, "eval_tokens": None, "peft": "none", "lora_r": 16, "lora_alpha": 32,
    "lora_target_modules": "all-linear", "test_every_point": False, "mc_samples": 0, "lr_scheduler_type": "linear",
    "warmup_ratio": 0.1, "max_seq_length": 128, "max_eval_samples": None, "backend": "local", "ray_address": None,
    "run_cpus": 1.0, "run_gpus": 0.0, "run_retries": 2, "parallel": "run", "output_dir": "runs/default",
    "experiment": "default", "with_tracking": False, "no_plots": False, "threads": None, "cpu": False,
    "mixed_precision": "auto", "auto_seeds": False}
NEW_DEFAULTS = {
    "config_name": None, "tokenizer_name": None, "trust_remote_code": False, "task_name": None, "seed": None,
    "per_device_train_batch_size": None, "max_steps": 0, "warmup_steps": 0, "weight_decay": 0.0,
    "label_smoothing_factor": 0.0, "neftune_noise_alpha": 0.0, "gradient_checkpointing": False,
    "overwrite_output_dir": False, "run_name": None, "report_to": [], "save_strategy": "no", "push_to_hub": False,
    "hub_model_id": None, "problem_type": None}

# one command line using many flags, old and new; the args-file tests write it as a file
COMMAND = ["--model_name_or_path", "some/model", "--train_file", "t.csv", "--validation_file", "v.csv",
           "--presets", "pretrain-zero,classic", "--rates", "hidden=0.1,0.2", "--rates", "classic*2",
           "--train_sizes", "16,32", "--seeds", "0,1", "--learning_rates", "1e-4,2e-4", "--margin",
           "test_accuracy=0.01", "--num_train_epochs", "3", "--min_steps", "0", "--max_seq_length", "64",
           "--test_every_point", "--no_plots", "--per_device_train_batch_size", "8", "--warmup_steps", "2",
           "--label_smoothing_factor", "0.1", "--lr_scheduler_type", "cosine", "--mixed_precision", "no",
           "--roles", "validation-half", "--output_dir", "runs/x", "--learning_rate", "2e-4"]
AS_FILE = {"model_name_or_path": "some/model", "train_file": "t.csv", "validation_file": "v.csv",
           "presets": "pretrain-zero,classic", "rates": ["hidden=0.1,0.2", "classic*2"], "train_sizes": [16, 32],
           "seeds": "0,1", "learning_rates": [1e-4, 2e-4], "margin": {"test_accuracy": 0.01}, "num_train_epochs": 3,
           "min_steps": 0, "max_seq_length": 64, "test_every_point": True, "no_plots": True,
           "per_device_train_batch_size": 8, "warmup_steps": 2, "label_smoothing_factor": 0.1,
           "lr_scheduler_type": "cosine", "mixed_precision": "no", "roles": "validation-half", "output_dir": "runs/x",
           "learning_rate": 2e-4}


def parse(*argv):
    return vars(load_script().parse_args(list(argv)))


def one_error(capsys, *argv) -> str:
    """The console entry point's exit status 2 and its one stderr line."""
    capsys.readouterr()
    assert load_script().cli(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("hfreg-finetune: error: ")
    return err[0][len("hfreg-finetune: error: "):]


def test_every_earlier_flag_keeps_its_default_and_the_new_ones_are_off():
    # select_by None is the task's rule, resolved once the data say which task: accuracy for classes, as before
    parsed = parse()
    assert {k: parsed[k] for k in EARLIER_DEFAULTS} == EARLIER_DEFAULTS
    assert {k: parsed[k] for k in NEW_DEFAULTS} == NEW_DEFAULTS
    # one namespace, every dataclass field under its own name
    for group in arguments.GROUPS:
        assert {f for f in group.__dataclass_fields__} <= set(parsed)


def test_flags_are_the_dataclasses_fields():
    groups = (ModelArguments(), DataArguments(), ComparisonArguments(), RunArguments())
    assert [type(g).__name__ for g in groups] == ["ModelArguments", "DataArguments", "ComparisonArguments",
                                                  "RunArguments"]
    for group in arguments.GROUPS:
        for name, f in group.__dataclass_fields__.items():
            assert f.metadata.get("help"), f"--{name} has no help"
    with pytest.raises(ValueError, match="--label_smoothing_factor must be in \\[0, 1\\), got 1"):
        RunArguments(label_smoothing_factor=1.0)  # the dataclasses check themselves, built from Python too


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_an_args_file_equals_the_same_command_line(tmp_path, suffix):
    import yaml

    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(AS_FILE) if suffix == ".json" else yaml.safe_dump(AS_FILE))
    assert parse(str(path)) == parse(*COMMAND)
    assert parse(str(path))["train_batch_size"] == 8 and parse(str(path))["rates"] == ["hidden=0.1,0.2",
                                                                                       "classic*2"]


def test_yaml_numbers_as_yaml_writes_them(tmp_path):
    """YAML 1.1 reads `2e-4` as a string: the flag's type reads it as the command line would."""
    path = tmp_path / "args.yaml"
    path.write_text("learning_rate: 2e-4\nseeds: 0,1\nmax_length: 64\n")
    parsed = parse(str(path))
    assert parsed["learning_rates"] == [2e-4] and parsed["seeds"] == [0, 1] and parsed["max_seq_length"] == 64


def test_args_file_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1e-4, "foo": 1}')
    assert "unknown key(s) ['foo']" in one_error(capsys, str(bad))
    bad.write_text("[1, 2]")
    assert "must hold a mapping of flag names to values, got list" in one_error(capsys, str(bad))
    bad.write_text("{nope")
    assert "is not valid JSON" in one_error(capsys, str(bad))
    assert "does not exist" in one_error(capsys, str(tmp_path / "missing.yaml"))
    ok = tmp_path / "ok.json"
    ok.write_text("{}")
    assert "give it as the only argument" in one_error(capsys, str(ok), "--seeds", "0")


def test_unknown_flags_and_bad_values_are_one_line_without_usage(capsys):
    assert one_error(capsys, "--foo") == "unrecognized arguments: --foo"
    assert one_error(capsys, "--seeds", "0", "--foo", "1") == "unrecognized arguments: --foo 1"
    assert "argument --roles: invalid choice: 'x'" in one_error(capsys, "--roles", "x")
    assert "invalid int value: 'x'" in one_error(capsys, "--num_train_epochs", "x")
    # no abbreviations: --seed is a flag of its own, and a prefix of a flag is not that flag
    assert one_error(capsys, "--train_size", "16") == "unrecognized arguments: --train_size 16"


def test_help_prints_every_flag():
    proc = subprocess.run([sys.executable, "-m", "hfreg.finetune", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""
    for flag in ("--per_device_train_batch_size", "--max_seq_length", "--report_to", "--save_strategy",
                 "--model_name_or_path", "--presets", "--learning_rate"):
        assert flag in proc.stdout
    assert "training:" in proc.stdout and "comparison:" in proc.stdout  # the dataclasses' groups


def test_hf_column_flag_names_are_the_same_settings():
    """run_classification's --text_column_names and --label_column_name, run_ner's --text_column_name: the same
    settings as --text_column and --label_column."""
    ours = arguments.parse(["--text_column", "s1,s2", "--label_column", "y"])
    for argv in (["--text_column_names", "s1,s2", "--label_column_name", "y"],
                 ["--text_column_name", "s1,s2", "--label_column_name", "y"]):
        theirs = arguments.parse(argv)
        assert (theirs.text_column, theirs.label_column) == (ours.text_column, ours.label_column) == ("s1,s2", "y")


def test_deprecated_max_length_still_works_and_says_so(capsys, tmp_path):
    capsys.readouterr()
    assert parse("--max_length", "64") == parse("--max_seq_length", "64")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hfreg-finetune: FutureWarning: --max_length is deprecated, use --max_seq_length (the same "
                   "setting)"]
    assert parse("--max_length=32")["max_seq_length"] == 32
    path = tmp_path / "old.json"
    path.write_text('{"max_length": 48}')
    capsys.readouterr()
    assert parse(str(path))["max_seq_length"] == 48
    assert "--max_length is deprecated" in capsys.readouterr().err


def test_hf_names(monkeypatch):
    assert parse("--seed", "3")["seeds"] == [3]
    assert parse("--task_name", "SST2")["dataset_name"] == "glue"
    assert parse("--task_name", "mnli")["dataset_config_name"] == "mnli"
    # per device: the global batch is per process x accumulation x the processes a run spreads over
    assert parse("--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2")["train_batch_size"] == 16
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse("--per_device_train_batch_size", "8")["train_batch_size"] == 8  # run mode: one process a run
    assert parse("--per_device_train_batch_size", "8", "--parallel", "data")["train_batch_size"] == 32
    assert parse("--train_batch_size", "32", "--parallel", "data")["train_batch_size"] == 32


@pytest.mark.parametrize("argv,message", [
    (["--seed", "1", "--seeds", "0,1"], "give --seeds (several) or --seed (one), not both"),
    (["--train_batch_size", "16", "--per_device_train_batch_size", "8"],
     "give --train_batch_size (global, summed over processes) or --per_device_train_batch_size"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer, got 0"),
    (["--problem_type", "multi_label_classification"], "--problem_type must be one of ['single_label_classification', "
                                                       "'regression'], got 'multi_label_classification'"),
    (["--task_name", "nope"], "--task_name must be a GLUE task"),
    (["--task_name", "sst2", "--dataset_name", "glue"], "give it without --dataset_name"),
    (["--max_steps", "-1"], "--max_steps must be >= 0, got -1"),
    (["--warmup_steps", "-1"], "--warmup_steps must be >= 0, got -1"),
    (["--label_smoothing_factor", "1"], "--label_smoothing_factor must be in [0, 1), got 1"),
    (["--neftune_noise_alpha", "-1"], "--neftune_noise_alpha must be a finite number >= 0, got -1"),
    (["--weight_decay", "-0.1"], "--weight_decay must be a finite number >= 0, got -0.1"),
    (["--max_seq_length", "0"], "--max_seq_length must be a positive integer, got 0"),
    (["--lr_scheduler_type", "nope"], "--lr_scheduler_type must be one of ['linear'"),
    (["--save_strategy", "epoch"], "argument --save_strategy: invalid choice: 'epoch'"),
    (["--hub_model_id", "a/b/c"], "--hub_model_id must be NAME or NAMESPACE/NAME"),
    (["--run_name", "a/b"], "--run_name must be a name of letters"),
    (["--report_to", "nope"], "--report_to 'nope' is not a tracker"),
    (["--margin", "x"], "argument --margin: expected METRIC=VALUE"),
])
def test_bad_values_are_one_line(capsys, argv, message):
    assert message in one_error(capsys, *argv)


def test_report_to_turns_tracking_on_and_checks_the_tracker_first(capsys, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    on = parse("--report_to", "tensorboard")
    assert on["with_tracking"] and on["report_to"] == ["tensorboard"]
    assert parse("--with_tracking", "--report_to", "tensorboard") == on  # the earlier way, the same
    assert "tensorboard" in parse("--with_tracking")["report_to"]  # alone: every installed tracker
    assert parse("--report_to", "none")["with_tracking"] is False
    assert one_error(capsys, "--report_to", "wandb") == \
        "--report_to wandb: the package wandb is not installed (pip install wandb)"
    assert "wandb" in one_error(capsys, "--report_to", "tensorboard,wandb")
    for name in tracking.TRACKERS:
        monkeypatch.setattr(accelerate.utils, f"is_{name}_available", lambda: False)
    assert "--report_to all found no tracker installed" in one_error(capsys, "--report_to", "all")


def test_hub_flags_parse_and_push_needs_a_kept_model_and_a_repository(capsys):
    capsys.readouterr()
    parsed = parse("--save_strategy", "best", "--push_to_hub", "--hub_model_id", "me/my-model")
    assert (parsed["save_strategy"], parsed["push_to_hub"], parsed["hub_model_id"]) == ("best", True, "me/my-model")
    assert capsys.readouterr().err == ""
    for argv in (["--push_to_hub", "--hub_model_id", "me/m"], ["--push_to_hub", "--save_strategy", "best"]):
        with pytest.raises(ValueError, match="^--push_to_hub uploads the models --save_strategy keeps"):
            parse(*argv)


def test_a_missing_model_path_is_one_line_before_anything_is_read(capsys, tmp_path):
    out = tmp_path / "out"
    message = one_error(capsys, "--model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(out))
    assert message.startswith(f"--model_name_or_path '{tmp_path / 'no-model'}' does not exist")
    assert "does not exist" in one_error(capsys, "--tokenizer_name", "./nowhere", "--output_dir", str(out))
    assert not out.exists()


def test_an_unreachable_model_or_dataset_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert one_error(capsys, "--dataset_name", "nobody-here/no-such-data", "--output_dir", str(out)).startswith(
        "cannot load nobody-here/no-such-data")
    assert one_error(capsys, "--model_name_or_path", "nobody-here/no-such-model", "--output_dir", str(out)) \
        .startswith("--model_name_or_path 'nobody-here/no-such-model' cannot be loaded: ")
    assert not out.exists()


def test_offline_a_hub_data_set_comes_from_the_local_cache_at_once(tmp_path, monkeypatch):
    """Where the hub's host cannot be resolved (`.invalid` never is), `--dataset_name` reads datasets' local cache
    without the hub client's retries (some 25 s); one not cached is one line naming the host, not datasets' "offline
    mode is enabled", which the user never set. datasets' own offline switch is as it was afterwards."""
    import glob
    import shutil

    import datasets
    import huggingface_hub.constants as hub

    from hfreg.finetune import data

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    # a cached hub data set, laid out as `load_dataset("someorg/tiny", "sst2")` leaves it: built from a CSV
    (tmp_path / "train.csv").write_text("sentence,label\ngood film,1\nbad film,0\nfine,1\n")
    (tmp_path / "validation.csv").write_text("sentence,label\ndull,0\n")
    datasets.load_dataset("csv", data_files={s: str(tmp_path / f"{s}.csv") for s in ("train", "validation")},
                          cache_dir=str(tmp_path / "csv"))
    (built,) = glob.glob(str(tmp_path / "csv" / "csv" / "*" / "*" / "*" / "dataset_info.json"))
    cached = tmp_path / "cache" / "someorg___tiny" / "sst2" / "0.0.0" / "0"
    shutil.copytree(os.path.dirname(built), cached)
    for split in ("train", "validation"):
        (cached / f"csv-{split}.arrow").rename(cached / f"tiny-{split}.arrow")
    info = json.loads((cached / "dataset_info.json").read_text())
    info.update(config_name="sst2", dataset_name="tiny")
    (cached / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))

    raw = data.load_raw("someorg/tiny", "sst2")
    assert raw["train"]["sentence"] == ["good film", "bad film", "fine"] and raw["validation"]["label"] == [0]
    with pytest.raises(ValueError) as e:
        data.load_raw("someorg/not-cached")
    assert str(e.value) == "cannot load someorg/not-cached: not in the local cache, with the hub (hub.invalid) " \
                           "unreachable from here"
    assert datasets.config.HF_HUB_OFFLINE is False


def test_the_cli_guide_lists_every_flag_as_declared():
    """docs/cli.md's table is the dataclasses' fields, defaults and help, row for row."""
    import dataclasses

    from harness import ROOT

    with open(os.path.join(ROOT, "docs", "cli.md")) as f:
        doc = f.read()
    for group in arguments.GROUPS:
        for f in dataclasses.fields(group):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = "—" if default in (None, [], "") else f"`{default}`"
            flag = " ".join(f"`{a}`" for a in (f"--{f.name}", *f.metadata.get("aliases", ())))
            row = f"| {flag} | {default} | {f.metadata['help'].replace('|', chr(92) + '|')} |"
            assert row in doc, row
