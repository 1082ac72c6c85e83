"""The training-loop methods: R-Drop (function, helper, transformers' Trainer, the harness), layer-wise
learning-rate decay, re-initialising the top layers, their presets, and every knob under DDP."""


import pytest
import torch
import torch.nn.functional as F
from harness import SCRIPT, args_for, launch, load_script
from tiny_models import build, make_inputs

import hfreg
from hfreg import RegularizationConfig as Reg
from hfreg.finetune import records
from hfreg.finetune.prepare import param_groups, reinit_top_layers
from hfreg.finetune.presets import load_preset


def test_rdrop_objective():
    torch.manual_seed(0)
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ce = (F.cross_entropy(a, y) + F.cross_entropy(b, y)) / 2
    assert torch.allclose(hfreg.rdrop_objective(a, b, y, 0.0), ce)
    assert torch.allclose(hfreg.rdrop_objective(a, a, y, 5.0), F.cross_entropy(a, y))  # same predictions: no KL
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl = ((pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)).mean() / 2
    assert torch.allclose(hfreg.rdrop_objective(a, b, y, 2.0), ce + 2.0 * kl, atol=1e-6)
    # token classification: positions labelled -100 are left out
    ignored = torch.tensor([[0, -100], [1, -100]])
    tokens = torch.stack([a[:2], b[:2]], 1)
    assert torch.allclose(hfreg.rdrop_objective(tokens, tokens, ignored, 1.0), F.cross_entropy(a[:2], y[:2]))
    with pytest.raises(ValueError, match="R-Drop's `alpha` must be a float >= 0, got -1"):
        hfreg.rdrop_objective(a, b, y, -1)
    with pytest.raises(ValueError, match=r"got \(6, 3\), \(6, 2\) and labels \(6,\)"):
        hfreg.rdrop_objective(a, b[:, :2], y, 1.0)


def test_rdrop_loss_draws_two_masks_in_one_forward():
    model = build("bert", True)
    hfreg.patch_model(model, Reg(hidden=0.3))
    inputs = {**make_inputs("bert", model.config, head=True), "labels": torch.tensor([0, 1])}
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    model.train()
    loss, logits = hfreg.rdrop_loss(model, inputs, 1.0)
    assert calls == [4] and logits.shape == (2, 3)
    model.eval()  # no dropout: both passes agree, and the loss is the cross-entropy alone
    loss, logits = hfreg.rdrop_loss(model, inputs, 1.0)
    handle.remove()
    assert torch.allclose(loss, F.cross_entropy(logits, inputs["labels"]), atol=1e-6)
    with pytest.raises(ValueError, match="R-Drop needs the batch's `labels`"):
        hfreg.rdrop_loss(model, {"input_ids": inputs["input_ids"]}, 1.0)


def test_rdrop_in_transformers_trainer(tmp_path):
    """The `Trainer` subclass of `hfreg.rdrop`'s docstring, trained for real."""
    from transformers import Trainer, TrainingArguments

    class RDropTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, logits = hfreg.rdrop_loss(model, inputs, alpha=1.0)
            return (loss, {"logits": logits}) if return_outputs else loss

    model = build("bert", True)
    hfreg.patch_model(model, Reg(hidden=0.1, attention=0.1))
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 90, (8,), generator=gen), "labels": i % 3} for i in range(16)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to=[],
                             use_cpu=True, save_strategy="no", logging_steps=1)
    result = RDropTrainer(model=model, args=args, train_dataset=rows).train()
    assert result.global_step == 2 and result.training_loss > 0
    assert list(model.state_dict()) == list(before)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_layerwise_lr_decay_groups():
    model = build("bert", True)  # 2 layers
    groups = param_groups(model, 0.01, llrd=0.5, lr=1.0)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == (0.25, 0.01)
    assert lr_of[id(named["bert.embeddings.LayerNorm.weight"])] == (0.25, 0.0)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == (0.5, 0.01)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.bias"])] == (1.0, 0.0)
    assert lr_of[id(named["bert.pooler.dense.weight"])] == (1.0, 0.01)
    assert lr_of[id(named["classifier.weight"])] == (1.0, 0.01)
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert all("lr" not in g for g in param_groups(model, 0.01))  # off: the optimizer's one rate


def test_reinit_top_layers_redraws_them_and_the_pooler_only():
    model = build("bert", True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    assert reinit_top_layers(model, 1) == ["encoder.layer.1", "pooler"]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "bert.encoder.layer.1.attention.self.query.weight" in changed and "bert.pooler.dense.weight" in changed
    assert not any(k.startswith(("bert.encoder.layer.0.", "bert.embeddings.", "classifier")) for k in changed)
    assert torch.equal(after["bert.encoder.layer.1.output.LayerNorm.weight"],
                       torch.ones_like(after["bert.encoder.layer.1.output.LayerNorm.weight"]))
    again = build("bert", True)
    torch.manual_seed(0)
    reinit_top_layers(again, 1)
    redrawn = again.state_dict()
    assert all(torch.equal(redrawn[k], after[k]) for k in changed)  # seeded: reproducible


def test_method_presets_and_their_errors(tmp_path):
    assert load_preset("rdrop").rdrop == 1.0 and load_preset("rdrop").reg.hidden == 0.1
    strong = load_preset("strong-baseline")
    assert (strong.llrd, strong.reinit_layers, strong.weight_decay) == (0.9, 1, 0.01)
    assert load_preset("mixout").reg.mixout == 0.7 and load_preset("drophead").reg.heads == 0.1
    assert load_preset("neftune").reg.embedding_noise == 5.0
    assert (load_preset("dropconnect").reg.mixout, load_preset("dropconnect").reg.mixout_target) == (0.1, "zero")
    assert "rdrop" not in load_preset("classic").contents()  # older records match
    for text, message in (("rdrop = -1\n", "`rdrop` must be a float >= 0, got -1"),
                          ("llrd = 0\n", "`llrd` must be a float in (0, 1], got 0"),
                          ("reinit_layers = 1.5\n", "`reinit_layers` must be an int >= 0, got 1.5")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            load_preset(str(bad))
    bad.write_text("weight_decy = 0.01\n")  # a misspelt key: every key a preset may hold is named
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weight_decy'\]; allowed: .*'weight_decay', 'rdrop', "
                                         r"'llrd', 'reinit_layers', 'control', 'data_order', 'steps_factor'\]"):
        load_preset(str(bad))


def test_method_presets_sweep_by_factor():
    from hfreg.finetune.presets import sweep_presets

    points = sweep_presets("drophead*0.5,2")
    assert [(p.name, p.reg.heads) for p in points] == [("drophead*0.5", 0.05), ("drophead*2", 0.2)]
    rdrop = sweep_presets("rdrop*0.5")[0]  # the dropout R-Drop acts through is scaled; its alpha is kept
    assert (rdrop.reg.hidden, rdrop.rdrop) == (0.05, 1.0)
    assert sweep_presets("neftune*2")[0].reg.embedding_noise == 10.0
    with pytest.raises(ValueError, match=r"--rates 'mixout\*2' at 2: `mixout` must be a float in \[0, 1\)"):
        sweep_presets("mixout*2")


def test_harness_runs_the_new_methods_and_records_them(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets",
                                       "pretrain-zero,classic,rdrop,strong-baseline,mixout,drophead,neftune,"
                                       "dropconnect",
                                       "--train_sizes", "16", "--seeds", "0", "--llrd", "0.8")) == 0
    runs = {r["preset"]: r for r in records.read_runs(out)}
    assert runs["rdrop"]["forward_passes"] == 2 and runs["rdrop"]["methods"]["rdrop"] == 1.0
    assert runs["strong-baseline"]["methods"] == {"rdrop": 0.0, "llrd": 0.9, "reinit_layers": 1}
    assert runs["strong-baseline"]["reinitialised"] == ["encoder.layer.1", "pooler"]
    # the grid's flag holds for every preset without its own value, and is recorded with the experiment
    assert runs["mixout"]["methods"]["llrd"] == 0.8 and runs["pretrain-zero"]["forward_passes"] == 1
    assert runs["pretrain-zero"]["experiment"]["settings"]["llrd"] == 0.8
    assert runs["dropconnect"]["preset_config"]["mixout_target"] == "zero"  # DropConnect: Mixout towards zero
    assert "mixout_target" not in runs["mixout"]["preset_config"]  # older records' digests stay


@pytest.mark.parametrize("extra,message", [
    (["--llrd", "0"], "--llrd in (0, 1]"), (["--rdrop_alpha", "-1"], "--rdrop_alpha must be >= 0"),
    (["--reinit_layers", "-2"], "--reinit_layers >= 0")])
def test_method_flags_bad_input(tiny_classifier, csv_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out", *extra))
    assert not (tmp_path / "out" / "runs.jsonl").exists()


@pytest.mark.slow
def test_every_knob_and_method_under_data_parallel(tiny_classifier, csv_data, tmp_path):
    """DDP over 2 CPU processes: LayerDrop and drop-path skip or scale whole branches, Mixout shadows weights,
    R-Drop doubles the batch; no "unused parameters" failure, the run is recorded once, and every evaluated example
    is gathered once."""
    every = tmp_path / "every.toml"
    every.write_text("attention = 0.1\nhidden = 0.1\nembedding = 0.1\nactivation = 0.1\nclassifier = 0.1\n"
                     "drop_path = 0.2\nlayerdrop = 0.3\nheads = 0.1\nmixout = 0.5\nembedding_noise = 5.0\n"
                     "rdrop = 0.5\nllrd = 0.9\nreinit_layers = 1\n")
    out = tmp_path / "ddp"
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, out, "--presets", str(every), "--train_sizes", "32",
                                    "--seeds", "0", "--parallel", "data", "--num_train_epochs", "3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = records.read_runs(out)
    assert [r["preset"] for r in runs] == ["every"] and runs[0]["forward_passes"] == 2
    assert runs[0]["experiment"]["settings"]["parallel"] == "data"
    arrays = records.load_predictions(out, runs[0])  # 40 validation examples, halved: each gathered once
    assert arrays["selection_logits"].shape[1:] == arrays["test_logits"].shape[1:] == (20, 2)
