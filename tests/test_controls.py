"""The comparison's controls: gradient clipping, the placebo arm (only the batch order re-drawn), a preset's named
control, and the equal-compute arm of a preset that costs more passes per step."""

from types import SimpleNamespace

import pytest
import torch
from harness import args_for, load_script

from hfreg.finetune import prepare, records, training
from hfreg.finetune.presets import DATA_ORDERS, equal_compute_arms, load_preset, sweep_presets

NO_GRID_METHODS = SimpleNamespace(rdrop_alpha=0.0, llrd=1.0, reinit_layers=0)


def test_clipping_changes_training_and_is_recorded_only_when_on(tiny_classifier, csv_data, tmp_path):
    """A norm far below the gradients' (0.01) rescales every step, so the deterministic zero-dropout run moves
    differently; 0 turns clipping off and leaves the experiment's settings as records made before clipping."""
    assert load_script().parse_args([]).max_grad_norm == 1.0  # the HF Trainer's default
    runs = {}
    for norm in ("0", "0.01"):
        out = tmp_path / norm
        assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero",
                                           "--train_sizes", "16", "--seeds", "0", "--max_grad_norm", norm,
                                           "--learning_rate", "5e-3", "--train_batch_size", "4")) == 0
        (runs[norm],) = records.read_runs(out)
    assert "max_grad_norm" not in runs["0"]["experiment"]["settings"]
    assert runs["0.01"]["experiment"]["settings"]["max_grad_norm"] == 0.01
    losses = {norm: [p["running_loss"] for p in r["evals"]] for norm, r in runs.items()}
    assert losses["0"] != losses["0.01"]
    # resuming the unclipped directory with clipping on is another experiment
    with pytest.raises(ValueError, match=r"max_grad_norm=None in the recorded runs, 0.01 now"):
        load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "0", "--presets", "pretrain-zero",
                                    "--train_sizes", "16", "--seeds", "0", "--max_grad_norm", "0.01",
                                    "--learning_rate", "5e-3", "--train_batch_size", "4"))


def test_run_mode_clips_fp16_gradients_after_unscaling_them():
    """Under fp16 the loss is scaled (65536 at first): clipping the scaled gradients would leave them 65536 times
    below the norm once the step unscales them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale((model(torch.randn(8, 4)) * 100).pow(2).mean()).backward()
    training._clip(model, optimizer, scaler, 0.5)
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]) == pytest.approx(0.5, rel=1e-4)
    before = model.weight.detach().clone()
    scaler.step(optimizer)  # the step takes the gradients as unscaled already
    assert not torch.equal(model.weight, before)


def test_negative_max_grad_norm_is_one_line(tiny_classifier, csv_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert load_script().cli(args_for(tiny_classifier, csv_data, out, "--max_grad_norm", "-1")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == ["hfreg-finetune: error: --max_grad_norm must be >= 0 (0: no clipping), got -1"]
    assert not out.exists()


def test_placebo_redraws_the_batch_order_and_nothing_else(tiny_classifier, csv_data, tmp_path, monkeypatch):
    placebo, baseline = load_preset("placebo"), load_preset("pretrain-zero")
    assert placebo.reg == baseline.reg and placebo.weight_decay == baseline.weight_decay
    assert placebo.order_seed(3) == 3 + DATA_ORDERS["redrawn"] and baseline.order_seed(3) == 3
    assert "data_order" not in baseline.contents()  # older records' digests hold
    seen = {"subset": [], "order": [], "head": []}
    real_loader, real_head = training.train_loader, prepare.reset_head

    def loader(enc, indices, batch_size, seed, collate, step_batch=None):
        twin = real_loader(enc, indices, batch_size, seed, collate, step_batch)  # its order leaves the run's alone
        seen["subset"].append(sorted(int(i) for i in indices))
        seen["order"].append([int(indices[i]) for i in twin.sampler])
        return real_loader(enc, indices, batch_size, seed, collate, step_batch)

    def head(model, seed):
        real_head(model, seed)
        seen["head"].append(model.classifier.weight.detach().clone())

    monkeypatch.setattr(training, "train_loader", loader)
    monkeypatch.setattr(prepare, "reset_head", head)
    out = tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero,placebo",
                                       "--train_sizes", "16", "--seeds", "0", "--train_batch_size", "4")) == 0
    runs = {r["preset"]: r for r in records.read_runs(out)}
    assert runs["placebo"]["preset_config"]["data_order"] == "redrawn"
    assert seen["subset"][0] == seen["subset"][1]  # the same examples
    assert torch.equal(seen["head"][0], seen["head"][1])  # the same head
    assert seen["order"][0] != seen["order"][1]  # drawn in another order
    assert [p["running_loss"] for p in runs["placebo"]["evals"]] != \
        [p["running_loss"] for p in runs["pretrain-zero"]["evals"]]


def test_control_and_passes_of_presets(tmp_path):
    rdrop, classic = load_preset("rdrop"), load_preset("classic")
    assert rdrop.control == "classic" and rdrop.contents()["control"] == "classic"
    assert classic.control is None and "control" not in classic.contents()
    assert (rdrop.passes(NO_GRID_METHODS), classic.passes(NO_GRID_METHODS)) == (2, 1)
    grid_rdrop = SimpleNamespace(rdrop_alpha=0.5, llrd=1.0, reinit_layers=0)
    assert classic.passes(grid_rdrop) == 2  # the grid's --rdrop_alpha counts where the preset sets none
    assert sweep_presets("rdrop*0.5")[0].control is None  # a sweep point is judged within its sweep
    for text, message in (('control = "nope"\n', "`control` 'nope' is not a known preset other than itself"),
                          ('data_order = "shuffled"\n', "`data_order` must be one of ['redrawn']"),
                          ("steps_factor = 0\n", "`steps_factor` must be an int >= 1, got 0")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_preset(str(bad))


def test_equal_compute_arms_match_the_cost_per_step():
    presets = [load_preset(p) for p in ("pretrain-zero", "classic", "rdrop")]
    arms = equal_compute_arms(presets, NO_GRID_METHODS)
    assert list(arms) == ["classic@2x"] and arms["classic@2x"][1] == ["rdrop"]
    arm = arms["classic@2x"][0]
    assert arm.reg == presets[1].reg and arm.steps_factor == 2 and arm.passes(NO_GRID_METHODS) == 1
    assert arm.contents() == {**presets[1].contents(), "steps_factor": 2}
    # R-Drop for the whole grid: every preset pays two passes, so none needs an arm
    assert equal_compute_arms(presets, SimpleNamespace(rdrop_alpha=1.0, llrd=1.0, reinit_layers=0)) == {}
    # a sweep's points are judged against the baseline: its arm, shared by the points of one cost
    points = sweep_presets("rdrop*0.5,1")
    arms = equal_compute_arms([presets[0], *points], NO_GRID_METHODS)
    assert {k: v[1] for k, v in arms.items()} == {"pretrain-zero@2x": ["rdrop*0.5", "rdrop*1"]}
    assert equal_compute_arms(points, NO_GRID_METHODS) == {}  # no baseline in the grid: nothing to judge against


def test_grid_trains_the_control_at_equal_compute(tiny_classifier, csv_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero,classic,rdrop",
                                       "--train_sizes", "16", "--seeds", "0", "--train_batch_size", "8")) == 0
    assert "presets: pretrain-zero, classic, rdrop, classic@2x (equal compute for rdrop)" in capsys.readouterr().out
    runs = {r["preset"]: r for r in records.read_runs(out)}
    assert set(runs) == {"pretrain-zero", "classic", "rdrop", "classic@2x"}
    arm, classic, rdrop = runs["classic@2x"], runs["classic"], runs["rdrop"]
    assert arm["steps"] == 2 * classic["steps"] == 2 * rdrop["steps"]  # 2 epochs of 2 steps, doubled
    assert arm["preset_config"] == {**classic["preset_config"], "steps_factor": 2}
    assert arm["equal_compute_for"] == ["rdrop"] and "equal_compute_for" not in classic
    assert rdrop["preset_config"]["control"] == "classic"
    assert (rdrop["forward_passes"], classic["forward_passes"], arm["forward_passes"]) == (2, 1, 1)
    # its control's evaluation points, spread over the whole run
    assert [p["step"] for p in arm["evals"]] == [2 * p["step"] for p in classic["evals"]]


def test_a_preset_without_its_control_is_refused_before_training(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="preset 'rdrop' is judged against its control 'classic': add it to "
                                         "--presets"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero,rdrop"))
    assert not out.exists()
