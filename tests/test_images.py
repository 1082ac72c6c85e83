"""Image classification (`--task image-classification`): an imagefolder (scikit-learn's handwritten digits, real
images) and a tiny random ViT with its image processor; drop-path, the preset this task exists for, acts on it."""

import pytest
from harness import SCRIPT, launch, load_script

from hfreg.finetune import records, report


def _argv(model, root, out, *extra):
    return ["--model_name_or_path", model, "--train_dir", str(root / "train"), "--validation_dir",
            str(root / "validation"), "--test_dir", str(root / "test"), "--presets", "pretrain-zero,drop-path",
            "--train_sizes", "200", "--seeds", "0,1", "--num_train_epochs", "3", "--min_steps", "60",
            "--learning_rate", "3e-3", "--mixed_precision", "no", "--output_dir", str(out), "--no_plots", *extra]


def test_an_image_folder_grid_trains_a_classifier_and_reports_it(tiny_vit, digits, tmp_path):
    out = tmp_path / "out"
    assert load_script().main(_argv(tiny_vit, digits, out, "--save_strategy", "final")) == 0
    runs = records.read_runs(str(out))
    settings = runs[0]["experiment"]["settings"]
    assert settings["task"] == "image-classification" and settings["text_columns"] == ["image"]
    assert settings["labels"] == [str(k) for k in range(10)]  # the folders' names, not the ClassLabel's ids
    assert settings["splits"] == {"train": 300, "validation": 100, "test": 100}
    # it learns the digits from scratch: twice the 0.1 of chance by the end of 60 steps
    assert max(r["evals"][-1]["test_accuracy"] for r in runs) > 0.2
    drop_path = next(r for r in runs if r["preset"] == "drop-path")
    assert drop_path["evals"][0]["rates"]["drop_path"] > 0  # injected into the ViT, which has none of its own
    kept = next((out / "models").rglob("config.json")).parent
    from transformers import AutoConfig, AutoImageProcessor

    assert AutoConfig.from_pretrained(kept).num_labels == 10
    assert AutoImageProcessor.from_pretrained(kept).size == {"height": 16, "width": 16}
    summary = report.summarize(runs)
    assert {"delta_early_test_accuracy", "delta_fixed_test_nll_ts"} <= set(
        next(r for r in summary if r["preset"] == "drop-path"))
    assert "test accuracy" in (out / "findings.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (("--image_column_name", "picture"), "--image_column_name 'picture' is not a column"),
    (("--task", "causal-lm"), "--task causal-lm needs prompt and completion columns"),
    (("--peft", "lora", "--lora_target_modules", "query,value"),
     r"--lora_target_modules query,value: no module of ViTForImageClassification has that name; its linear layers "
     r"are named \['classifier', 'fc1', 'fc2', 'k_proj', 'o_proj', 'q_proj', 'v_proj'\]"),
])
def test_what_an_image_grid_cannot_take_is_one_line(tiny_vit, digits, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        load_script().main(_argv(tiny_vit, digits, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_an_image_that_does_not_decode_is_one_line_before_anything_is_written(tiny_vit, digits, tmp_path):
    import shutil

    root = tmp_path / "digits"
    shutil.copytree(digits, root)
    (root / "validation" / "3" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"the validation split's image .*broken.png does not decode"):
        load_script().main(_argv(tiny_vit, root, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_lora_trains_the_adapters_and_the_new_head_of_an_image_classifier(tiny_vit, digits, tmp_path):
    """peft has no image task type: the head (outside the base model) is named to train beside the adapters."""
    from transformers import AutoModelForImageClassification

    from hfreg.finetune.prepare import lora_task

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    assert lora_task(model, "single_label_classification") == {"modules_to_save": ["classifier"]}
    out = tmp_path / "out"
    argv = _argv(tiny_vit, digits, out, "--peft", "lora", "--lora_target_modules", "q_proj,v_proj", "--presets",
                 "pretrain-zero", "--seeds", "0", "--min_steps", "20", "--learning_rate", "1e-2")
    assert load_script().main(argv) == 0
    (run,) = records.read_runs(str(out))
    assert run["experiment"]["settings"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert run["evals"][-1]["train_loss"] < run["evals"][0]["train_loss"]


def test_an_image_grid_trains_under_data_parallel_processes(tiny_vit, digits, tmp_path):
    """Two processes train one run together (`--parallel data`, gloo): every selection and test image is scored
    once, and the run learns."""
    out = tmp_path / "out"
    argv = _argv(tiny_vit, digits, out)
    argv[argv.index("--presets") + 1], argv[argv.index("--seeds") + 1] = "drop-path", "0"
    argv[argv.index("--min_steps") + 1], argv[argv.index("--train_sizes") + 1] = "12", "64"
    done = launch(SCRIPT, *argv, "--parallel", "data", num_processes=2, quiet=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = records.read_runs(str(out))
    arrays = records.load_predictions(str(out), run)
    assert arrays["selection_logits"].shape[1] == 100 and arrays["test_logits"].shape[1] == 100
    assert sorted(arrays["selection_index"]) == list(range(100))
    assert run["evals"][-1]["train_loss"] < run["evals"][0]["train_loss"]
