"""`--save_strategy`: each run's chosen model kept with its tokenizer and a model card, the weights those of the
point the run kept (their logits are the stored predictions at that point), the regularization spec in its config."""

import csv
import json
import os
import re

import numpy as np
import pytest
from harness import args_for, load_script

from hfreg.finetune import records, report


def _grid(model, data, out, *extra):
    argv = args_for(model, data, out, "--presets", "pretrain-zero,classic", "--train_sizes", "16", "--seeds", "0",
                    "--mixed_precision", "no", "--num_train_epochs", "3", *extra)
    assert load_script().main(argv) == 0
    return {r["preset"]: r for r in records.read_runs(out)}


def _gives_the_stored_logits(path, out, run, step, validation_csv):
    """The model kept in ``path`` gives the selection logits ``run`` stored at ``step`` (up to a shift per example,
    which the softmax ignores and the stored differences drop)."""
    import torch
    from transformers import AutoTokenizer

    import hfreg

    arrays = records.load_predictions(str(out), run)
    stored = arrays["selection_logits"][list(arrays["steps"]).index(step)]
    with open(validation_csv) as f:
        texts = [row["review"] for row in csv.DictReader(f)]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = hfreg.load_regularized(str(path)).eval()
    batch = tokenizer([texts[i] for i in arrays["selection_index"]], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits.numpy()
    return np.allclose(logits[:, 1:] - logits[:, :1], stored[:, 1:] - stored[:, :1], atol=2e-2)


# by default the run's copies of each rule's leading weights serve; with --test_every_point it keeps none, and the
# keeper copies its own
@pytest.mark.parametrize("extra", [(), ("--test_every_point",)])
def test_best_keeps_the_selected_point_with_tokenizer_card_and_spec(tiny_classifier, csv_data, tmp_path, extra):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hfreg

    out = tmp_path / "out"
    runs = _grid(tiny_classifier, csv_data, out, "--save_strategy", "best", *extra)
    for preset, run in runs.items():
        assert run["kept_step"] == report.selected_point(run, "accuracy")["step"]
        path = out / "models" / "default" / preset / f"n16-s0-lr{run['learning_rate']:g}"
        card = (path / "README.md").read_text()
        assert f"# {preset} fine-tune of" in card and "best selection-split accuracy" in card
        assert f"step {run['kept_step']} of {run['steps']}" in card
        config = json.loads((path / "config.json").read_text())
        assert "hfreg" in config  # the spec travels in the config (pretrain-zero's: every knob 0)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer("hi")["input_ids"] == AutoTokenizer.from_pretrained(tiny_classifier)("hi")["input_ids"]
        # the kept weights give the stored selection logits of the kept point, in the class they were saved from
        loaded = hfreg.load_regularized(str(path))
        assert type(loaded) is type(AutoModelForSequenceClassification.from_pretrained(path))
        assert _gives_the_stored_logits(path, out, run, run["kept_step"], csv_data / "validation.csv")


def test_final_keeps_the_last_step_and_no_keeps_nothing(tiny_classifier, csv_data, tmp_path):
    runs = _grid(tiny_classifier, csv_data, tmp_path / "final", "--save_strategy", "final")
    assert all(r["kept_step"] == r["steps"] for r in runs.values())
    runs = _grid(tiny_classifier, csv_data, tmp_path / "none")
    assert not any("kept_step" in r for r in runs.values()) and not (tmp_path / "none" / "models").exists()


def test_saving_with_ray_is_a_one_line_error(tiny_classifier, csv_data, tmp_path):
    with pytest.raises(ValueError, match="^--save_strategy best needs --backend local"):
        load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out", "--save_strategy", "best",
                                    "--backend", "ray"))
    assert not os.path.exists(tmp_path / "out")


class _Hub:
    """The one thing faked: the Hub's API (no network here). Records what would be created and uploaded."""

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, exist_ok=False):
        if self.fail:
            raise ConnectionError("Could not resolve host: huggingface.co")
        self.calls.append(("create", repo_id))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))


def test_push_uploads_each_presets_best_kept_run(tiny_classifier, csv_data, tmp_path, monkeypatch):
    import huggingface_hub

    from hfreg.finetune import keep

    hub = _Hub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    out = tmp_path / "out"
    argv = args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero,classic", "--train_sizes", "16",
                    "--seeds", "0,1", "--mixed_precision", "no", "--save_strategy", "best", "--push_to_hub",
                    "--hub_model_id", "me/sst", "--no_plots")
    assert load_script().main(argv) == 0
    runs = records.read_runs(out)
    best = keep.best_runs(runs, ("selection_accuracy", 1))
    uploads = {c[1]: c[2] for c in hub.calls if c[0] == "upload"}
    assert set(uploads) == {"me/sst-pretrain-zero", "me/sst-classic"}
    for files in uploads.values():
        assert {"README.md", "config.json", "model.safetensors", "tokenizer_config.json"} <= set(files)
    for preset, run in best.items():  # the best kept point's selection score, no better one among the others
        score = next(p for p in run["evals"] if p["step"] == run["kept_step"])["selection_accuracy"]
        assert all(next(p for p in r["evals"] if p["step"] == r["kept_step"])["selection_accuracy"] <= score
                   for r in runs if r["preset"] == preset)
    with pytest.raises(ValueError, match=r"^--push_to_hub: could not upload to 'me/sst-classic' \(Could not resolve"):
        keep.push_best(str(out), [best["classic"]], ("selection_accuracy", 1), "me/sst", api=_Hub(fail=True))


@pytest.fixture(scope="module")
def exported_grid(tiny_classifier, tmp_path_factory):
    """One grid that kept no models (pretrain-zero, classic and the sweep point classic*2; seeds 0 and 1) and the
    data flags that made it, shared by the export tests (none of them writes into it)."""
    from hfreg.finetune.synthetic import make_split

    data = tmp_path_factory.mktemp("export-data")
    for split, n, seed in (("train", 120, 1), ("validation", 40, 2)):
        d = make_split(n, seed)
        lines = ["review,sentiment"] + [f"\"{t}\",{['neg', 'pos'][y]}" for t, y in zip(d["text"], d["label"])]
        (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("export-grid")
    _grid(tiny_classifier, data, out, "--rates", "classic*2", "--seeds", "0,1")
    assert not (out / "models").exists()
    return out, ["--train_file", str(data / "train.csv"), "--validation_file", str(data / "validation.csv")]


def test_export_recreates_a_run_that_was_not_saved_from_its_record(exported_grid, tmp_path, capsys):
    """`hfreg export` trains the recorded run again (a sweep's point: its preset comes from the record), checks the
    rebuilt experiment against the record, and keeps the model whose logits are the stored predictions."""

    from hfreg import cli

    out, data = exported_grid
    path = tmp_path / "kept"
    capsys.readouterr()
    assert cli.main(["export", str(out), "--preset", "classic*2", "--seed", "1", "--out", str(path), *data]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    run = next(r for r in records.read_runs(out) if r["preset"] == "classic*2" and r["seed"] == 1)
    step = report.selected_point(run, "accuracy")["step"]
    assert said.startswith(f"kept step {step} in {path}; the record's run kept step {step};")
    assert float(said.rsplit(": ", 1)[1]) < 1e-4  # the same run, trained again on this machine
    assert "# classic*2 fine-tune of" in (path / "README.md").read_text()
    assert _gives_the_stored_logits(path, out, run, step, data[3])
    assert not (out / "models").exists()  # --out: nothing written into the grid


def test_export_recreates_a_run_of_a_staged_grid(tiny_classifier, csv_data, tmp_path, capsys):
    """How a grid planned and stopped its runs (`--seeds auto`, its margins) is not how one run trains: `hfreg
    export` rebuilds the run without them."""
    from hfreg import cli

    out = tmp_path / "staged"
    _grid(tiny_classifier, csv_data, out, "--presets", "pretrain-zero", "--seeds", "auto", "--seed_stage", "2",
          "--max_seeds", "2", "--learning_rates", "1e-4,5e-3",
          "--margin", "test_accuracy=0.05")
    run = next(r for r in records.read_runs(out) if r["learning_rate"] == 5e-3)
    assert {"seeds", "margins"} <= set(run["experiment"]["settings"])
    capsys.readouterr()
    data = ["--train_file", str(csv_data / "train.csv"), "--validation_file", str(csv_data / "validation.csv")]
    assert cli.main(["export", str(out), "--preset", "pretrain-zero", "--seed", "0", "--learning_rate", "5e-3",
                     "--out", str(tmp_path / "kept"), *data]) == 0, capsys.readouterr().err
    assert float(capsys.readouterr().out.strip().splitlines()[-1].rsplit(": ", 1)[1]) < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--preset", "classic"], r"2 runs of experiment 'default' have preset classic: pick one with --seed \(0, 1\)"),
    (["--preset", "heavy"], "no run of experiment 'default' has preset heavy"),
    (["--preset", "classic", "--seed", "0", "--max_eval_samples", "10"],
     "these flags do not rebuild the run's experiment: data_sha256="),
])
def test_export_says_in_one_line_what_does_not_match(exported_grid, capsys, argv, message):
    from hfreg import cli

    out, data = exported_grid
    capsys.readouterr()
    assert cli.main(["export", str(out), *argv, *data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (out / "models").exists()


def test_data_parallel_keeps_one_model_from_the_main_process(tiny_classifier, csv_data, tmp_path):
    """Two processes train each run together (`--parallel data`, gloo on the CPU): the first process saves the kept
    weights once, and they give the stored predictions of the kept point."""
    from harness import SCRIPT, launch


    out = tmp_path / "out"
    argv = args_for(tiny_classifier, csv_data, out, "--presets", "classic", "--train_sizes", "32", "--seeds", "0",
                    "--mixed_precision", "no", "--parallel", "data", "--save_strategy", "best")
    done = launch(SCRIPT, *argv, num_processes=2, quiet=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = records.read_runs(out)
    assert run["kept_step"] == report.selected_point(run, "accuracy")["step"]
    models = [p for p in (out / "models").rglob("config.json")]
    assert len(models) == 1
    path = models[0].parent
    assert _gives_the_stored_logits(path, out, run, run["kept_step"], csv_data / "validation.csv")
    assert "best selection-split accuracy" in (path / "README.md").read_text()
