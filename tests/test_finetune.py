"""The fine-tuning comparison: data handling, resume, summaries, and the script end to end on a tiny model."""

import json
import math
import os
import shutil
import statistics
import sys

import numpy as np
import pytest
from harness import ROOT, SCRIPT, args_for, launch, load_script

from hfreg.finetune import data as ftdata
from hfreg.finetune import records, report, stats, tasks
from hfreg.finetune.presets import available, load_preset


def test_presets_load_and_validate(tmp_path):
    assert set(available()) >= {"pretrain-zero", "checkpoint", "classic", "drop-path", "heavy", "weight-decay"}
    for name in available():
        assert load_preset(name).name == name
    assert set(load_preset("pretrain-zero").reg.knob_values().values()) == {0.0}
    assert load_preset("checkpoint").reg.knob_values() == {}
    assert load_preset("weight-decay").weight_decay == 0.1
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("hidden = 1.5\n")
    with pytest.raises(ValueError, match="`hidden` must be a float in \\[0, 1\\)"):
        load_preset(str(bad))


def test_stratified_subsample_is_seeded_and_keeps_proportions():
    labels = np.array([0] * 75 + [1] * 25)
    a, b = ftdata.stratified_indices(labels, 20, 3), ftdata.stratified_indices(labels, 20, 3)
    assert np.array_equal(a, b) and len(set(a)) == 20
    assert (labels[a] == 1).sum() == 5
    assert not np.array_equal(a, ftdata.stratified_indices(labels, 20, 4))
    with pytest.raises(ValueError, match="train size 101 is larger than the training split \\(100"):
        ftdata.stratified_indices(labels, 101, 0)


def test_detect_columns():
    assert ftdata.detect_columns(["text", "label"]) == (("text",), "label")
    assert ftdata.detect_columns(["sentence1", "sentence2", "label", "idx"]) == (("sentence1", "sentence2"), "label")
    assert ftdata.detect_columns(["review", "y"], label_column="y") == (("review",), "y")
    with pytest.raises(ValueError, match="--text_column 'body' is not a column"):
        ftdata.detect_columns(["text", "label"], text_column="body")
    with pytest.raises(ValueError, match="no label column found"):
        ftdata.detect_columns(["text", "stars"])


def test_append_survives_a_torn_last_line(tmp_path):
    records.append_run(tmp_path, {"preset": "a", "train_size": 1, "seed": 0, "evals": []})
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"preset": "b", "train_si')  # a kill -9 in the middle of a write
    assert [r["preset"] for r in records.read_runs(tmp_path)] == ["a"]
    records.append_run(tmp_path, {"preset": "c", "train_size": 1, "seed": 0, "evals": []})
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(x)["preset"] for x in lines] == ["a", "c"]
    # a torn line longer than one read back (a record with 3 MB of evaluation points), and a file that is one
    # torn line alone
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"preset": "d", "evals": [' + "0.5, " * 600_000)
    records.append_run(tmp_path, {"preset": "e", "train_size": 1, "seed": 0, "evals": []})
    assert [r["preset"] for r in records.read_runs(tmp_path)] == ["a", "c", "e"]
    (tmp_path / "runs.jsonl").write_text('{"preset": "f", "tr')
    records.append_run(tmp_path, {"preset": "g", "train_size": 1, "seed": 0, "evals": []})
    assert (tmp_path / "runs.jsonl").read_text().count("\n") == 1
    assert [r["preset"] for r in records.read_runs(tmp_path)] == ["g"]


def test_script_end_to_end_and_resume(tiny_classifier, csv_data, tmp_path, capsys):
    finetune = load_script()
    out = tmp_path / "out"
    assert finetune.main(args_for(tiny_classifier, csv_data, out)) == 0
    runs = records.read_runs(out)
    assert {(r["preset"], r["train_size"], r["seed"]) for r in runs} == {
        (p, n, s) for p in ("pretrain-zero", "classic") for n in (16, 32) for s in (0, 1)}
    metrics = {"loss", "accuracy", "f1"}
    for r in runs:
        # 2 epochs of 1 or 2 steps, 3 evaluations per epoch by default, at most one per step
        assert [p["step"] for p in r["evals"]] == list(range(1, r["steps"] + 1))
        for p in r["evals"]:
            assert {"step", "epoch", "running_loss", "temperature"} <= set(p)
            assert {f"train_{m}" for m in metrics} | {f"selection_{m}" for m in metrics | {"ece", "brier"}} <= set(p)
        assert r["selected_step"] == min(r["evals"], key=lambda p: p["selection_loss"])["step"]
        # the test split where a report can read it: the final point and each selection rule's point
        tested = [p["step"] for p in r["evals"] if "test_loss" in p]
        rules = tasks.TASKS[tasks.CLASSIFICATION].select_by
        readable = {r["evals"][-1]["step"]} | {report.selected_point(r, rule)["step"] for rule in rules}
        assert set(tested) == readable
        for p in r["evals"]:
            assert ({f"test_{m}" for m in metrics | {"ece", "brier"}} | {"test_nll_ts"} <= set(p)) == (
                p["step"] in readable)
        arrays = records.load_predictions(out, r)
        assert arrays["selection_logits"].shape == (len(r["evals"]), 20, 2)  # validation halved: 20 / 20
        assert arrays["test_logits"].shape == (len(tested), 20, 2)
        assert arrays["test_steps"].tolist() == tested
        assert not set(arrays["selection_index"]) & set(arrays["test_index"])
        # the report reads the test split alone: the same arrays, the selection split's left unread
        alone = records.load_predictions(out, r, ("test",))
        assert sorted(alone) == ["steps", "test_index", "test_labels", "test_logits", "test_steps"]
        assert all(np.array_equal(alone[k], arrays[k]) for k in alone)
    summary = json.loads((out / "summary.json").read_text())
    assert {(s["preset"], s["train_size"]) for s in summary} == {(p, n) for p in ("pretrain-zero", "classic")
                                                                  for n in (16, 32)}
    assert (out / "summary.csv").read_text().startswith("experiment,preset,against,train_size")
    assert (out / "findings.md").read_text().startswith("## Findings")
    # zero-dropout runs are deterministic: the same seed gives the same numbers again
    rerun = tmp_path / "rerun"
    finetune.main(args_for(tiny_classifier, csv_data, rerun, "--presets", "pretrain-zero", "--train_sizes", "16",
                           "--seeds", "0"))
    first = next(r for r in runs if (r["preset"], r["train_size"], r["seed"]) == ("pretrain-zero", 16, 0))
    assert records.read_runs(rerun)[0]["evals"] == first["evals"]
    # resume: nothing left to do, nothing appended
    capsys.readouterr()
    finetune.main(args_for(tiny_classifier, csv_data, out))
    assert "8 runs, 8 already done" in capsys.readouterr().out
    assert len(records.read_runs(out)) == 8


def test_test_split_where_read_equals_every_point(tiny_classifier, csv_data, tmp_path):
    """The test split evaluated after training from the weights kept at each rule's point gives the very numbers
    and logits evaluated at that point, and leaves training untouched (a dropout preset: the random stream too)."""
    finetune = load_script()
    runs = {}
    for name, extra in (("read", ()), ("every", ("--test_every_point",))):
        finetune.main(args_for(tiny_classifier, csv_data, tmp_path / name, "--train_sizes", "32", "--seeds", "0",
                               "--num_train_epochs", "4", *extra))
        runs[name] = {r["preset"]: r for r in records.read_runs(tmp_path / name)}
    for preset, every in runs["every"].items():
        read = runs["read"][preset]
        assert all("test_loss" in p for p in every["evals"])
        assert len(every["evals"]) == 8 and sum("test_loss" in p for p in read["evals"]) < 8
        assert any("test_loss" in p for p in read["evals"][:-1])  # one from a copy of the weights, at least
        for p, q in zip(read["evals"], every["evals"]):
            assert p == {k: v for k, v in q.items() if k in p}  # every recorded number, bit for bit
        assert read["selected_step"] == every["selected_step"]
        a, b = records.load_predictions(tmp_path / "read", read), records.load_predictions(tmp_path / "every", every)
        assert np.array_equal(a["selection_logits"], b["selection_logits"])
        assert np.array_equal(a["test_logits"], b["test_logits"][np.isin(b["test_steps"], a["test_steps"])])


def test_scheduled_presets_record_the_rates_in_force(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets",
                                       "classic,early-dropout,late-drop-path", "--train_sizes", "32", "--seeds", "0",
                                       "--num_train_epochs", "5", "--train_batch_size", "8")) == 0
    runs = {r["preset"]: r for r in records.read_runs(out)}
    for p in runs["classic"]["evals"]:
        assert p["rates"] == {"attention": 0.1, "hidden": 0.1, "embedding": 0.0, "activation": 0.0,
                              "classifier": 0.1, "drop_path": 0.0, "layerdrop": 0.0}
    steps = runs["early-dropout"]["steps"]
    assert steps == 20
    for p in runs["early-dropout"]["evals"]:  # the rate in force after each step: on before 20% of steps, then off
        assert p["rates"]["hidden"] == (0.1 if p["step"] < 0.2 * steps else 0.0), p["step"]
    for p in runs["late-drop-path"]["evals"]:
        assert p["rates"]["drop_path"] == (0.0 if p["step"] < 0.2 * steps else 0.1), p["step"]
        assert p["rates"]["hidden"] == 0.0


def test_mc_samples_add_mc_dropout_metrics(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero,heavy",
                                       "--train_sizes", "16", "--seeds", "0", "--mc_samples", "4")) == 0
    runs = {r["preset"]: r for r in records.read_runs(out)}
    assert runs["heavy"]["experiment"]["settings"]["mc_samples"] == 4
    for name, run in runs.items():
        for p in run["evals"]:
            assert {f"mc_{s}_{m}" for s in ("selection", "test") for m in ("loss", "accuracy", "f1", "ece",
                                                                         "brier")} <= set(p)
            assert not any(k.startswith("mc_train") for k in p)
            if name == "pretrain-zero":  # no dropout in force: MC-dropout is the deterministic prediction
                assert p["mc_test_loss"] == pytest.approx(p["test_loss"], abs=1e-5)
    assert any(p["mc_test_loss"] != pytest.approx(p["test_loss"], abs=1e-5) for p in runs["heavy"]["evals"])
    # an experiment's settings differ with and without MC: a resume without it is refused
    with pytest.raises(ValueError, match="mc_samples=4 in the recorded runs"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero",
                                    "--train_sizes", "16", "--seeds", "0"))


def test_report_rebuilds_plots(tiny_classifier, csv_data, tmp_path, capsys):
    finetune = load_script()
    out = tmp_path / "out"
    finetune.main(args_for(tiny_classifier, csv_data, out, "--seeds", "0"))
    os.remove(out / "summary.json")
    from hfreg.cli import main as cli

    assert cli(["report", str(out)]) == 0
    assert (out / "summary.json").exists()
    assert (out / "learning_curves.png").stat().st_size > 1000 and (out / "gap_vs_size.png").stat().st_size > 1000
    # with --out elsewhere, nothing is written beside runs.jsonl and the findings printed are the ones written there
    os.remove(out / "findings.md")
    elsewhere = tmp_path / "elsewhere"
    assert cli(["report", "--no_plots", str(out), "--out", str(elsewhere)]) == 0
    assert not (out / "findings.md").exists() and (elsewhere / "out" / "findings.md").exists()
    assert (elsewhere / "out" / "findings.md").read_text() in capsys.readouterr().out


def test_rate_sweep_min_steps_and_code_identity(tiny_classifier, csv_data, tmp_path):
    """`--rates` expands into one preset per rate, recorded as such; `--min_steps` stretches small subsets (with the
    evaluation points of the nominal epochs); records carry the code identity; the report speaks of the rates."""
    import json

    out = tmp_path / "out"
    load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero", "--rates",
                                "hidden=0,0.1,0.3", "--train_sizes", "16", "--seeds", "0,1", "--min_steps", "12",
                                "--train_batch_size", "8"))
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted({r["preset"] for r in runs}) == ["hidden=0.1", "hidden=0.3", "pretrain-zero"]
    point = next(r for r in runs if r["preset"] == "hidden=0.3")
    assert point["preset_config"]["sweep"] == {"family": "hidden", "value": 0.3}
    assert point["preset_config"]["hidden"] == 0.3 and point["preset_config"]["attention"] == 0.0
    # 16 examples at batch 8: 2 steps an epoch, 2 epochs = 4 steps, stretched to 12 (6 epochs); the nominal epochs'
    # 2 x 5 points (10 at least by default), which an epoch of 2 steps could not hold, spread over the 12 steps
    assert point["steps"] == 12 and [p["step"] for p in point["evals"]] == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    assert point["experiment"]["settings"]["min_steps"] == 12
    assert point["provenance"]["code"].startswith(("git:", "sha256:"))
    assert "CPU cores" in point["provenance"]["machine"]  # what trained it, recorded with the wall time
    findings = (out / "findings.md").read_text()
    assert f"Trained on {point['provenance']['machine']}: " in findings and " h of run wall time." in findings
    assert "Rate sweep `hidden` (the knob alone, every other as in `pretrain-zero`; test accuracy, early-stopped):" \
        in findings
    # a factor sweep reads as rates: its ×1 from any point's recorded rates over its factor (×0 says nothing)
    scaled = [{"preset": f"classic*{v:g}",
               "preset_config": {"sweep": {"family": "classic", "value": v}, "attention": 0.1 * v, "hidden": 0.1 * v,
                                 "classifier": 0.1 * v, "embedding": 0.0, "weight_decay": 0.01}} for v in (0.0, 0.25)]
    assert report.sweep_points(runs + scaled)["classic"].x1_rates == "attention 0.1, hidden 0.1, classifier 0.1"
    assert "- n=16: equivalent to none at" in findings and "not shown worse than another rate:" in findings
    report.report(str(out))
    assert (out / "dose_response.png").stat().st_size > 1000


def test_auto_seeds_run_in_stages_and_stop_decided_cells(tiny_classifier, csv_data, tmp_path):
    """`--seeds auto`: stages of --seed_stage seeds; a cell whose verdicts are all decided at a look gets no more
    seeds (a copy of the baseline under another name is equivalent at once), an undecided one does; the report's
    level is alpha spent over the looks; a restart resumes without duplicates; a report is final only once every
    cell of the launch's plan has stopped."""
    same = tmp_path / "same.toml"
    same.write_text(open(os.path.join(ROOT, "configs", "presets", "pretrain-zero.toml")).read())
    out = tmp_path / "out"
    margins = {"test_accuracy": 0.001, "test_nll_ts": 0.001}
    argv = args_for(tiny_classifier, csv_data, out, "--presets", f"pretrain-zero,{same},heavy", "--seeds", "auto",
                    "--seed_stage", "2", "--max_seeds", "4", "--train_sizes", "16",
                    "--margin", "test_accuracy=0.001,test_nll_ts=0.001")
    load_script().main(argv)
    runs = records.read_runs(str(out))
    seeds = {p: sorted(r["seed"] for r in runs if r["preset"] == p) for p in ("pretrain-zero", "same", "heavy")}
    assert runs[0]["experiment"]["settings"]["seeds"] == {"rule": "auto", "max_seeds": 4, "stage": 2}
    assert seeds["same"] == [0, 1] and seeds["pretrain-zero"] == [0, 1, 2, 3][:len(max(seeds.values(), key=len))]
    first = {r["preset"]: r for r in report.summarize([r for r in runs if r["seed"] < 2], margins=margins)}
    assert first["same"]["delta_early_test_accuracy"]["verdict"] == "equivalent"
    assert report.stop_reason([first["same"]], margins) == "decided"
    # a count between the planned looks (2 and 4) decides nothing: the next look's boundary is computed without it
    base = [r for r in runs if r["preset"] == "pretrain-zero" and r["seed"] < 2]
    base += [dict(r, seed=2) for r in base if r["seed"] == 0]
    twin = {r["preset"]: r for r in report.summarize(base + [dict(r, preset="twin") for r in base],
                                                     margins=margins)}["twin"]["delta_early_test_accuracy"]
    assert twin["n"] == 3 and twin["verdict"] == "inconclusive"
    assert math.isnan(first["same"]["delta_early_test_accuracy"]["p_holm"])  # Holm knows nothing of the looks
    assert seeds["heavy"] == ([0, 1] if report.stop_reason([first["heavy"]], margins) else [0, 1, 2, 3])
    final = {r["preset"]: r for r in report.summarize(runs, margins=margins)}
    d = final["heavy"]["delta_early_test_accuracy"]
    share = report.column_alpha("early", "test_accuracy", d["m"])  # its column's share, Bonferroni
    assert d["alpha"] == pytest.approx(stats.nominal_alpha(d["n"], share, 4, 2)) and d["alpha"] < share
    text = (out / "findings.md").read_text()
    assert "O'Brien–Fleming-type Lan–DeMets function" in text
    # where each cell stands, by the grid's own stopping rule; a report read while a stage runs says what waits
    assert "- n=16, 2 seeds, stopped: decided: `same`" in text
    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("*.md", "summary.*"))
    (partial / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs
                                                if r["preset"] != "heavy" or r["seed"] == 0))
    read_now = report.report(str(partial), make_plots=False)
    assert "- n=16, 1 seed, below the first look (2 seeds), nothing read yet: `heavy`." in read_now
    # ... before its verdict table, where the finished grid's findings do not
    assert read_now.index("**Not final:** 1 of the 2 staged preset × size cells still plan seeds") < read_now.index(
        "| size | arm |")
    assert "Not final" not in text
    # and a pool over it says that its answer is not the design's yet; over the finished grid it does not
    pooled_now = report.report_many([str(partial)], str(tmp_path / "pooled"), make_plots=False)
    assert "**Not final:** 1 of the sources' 2 staged preset × size cells still plan seeds" in pooled_now
    assert "**Answer**" not in pooled_now and "there is no answer" in pooled_now  # no reading at an interim
    # each run records its launch's plan; a planned cell with no runs yet (a size the queue has not reached) holds
    # the reading open too, though every cell that ran has stopped
    assert all(r["plan"] == {"presets": ["pretrain-zero", "same", "heavy"], "train_sizes": [16]} for r in runs)
    done = report.report_many([str(out)], str(tmp_path / "done"), make_plots=False)
    assert "Not final" not in done and "**Answer**" in done
    later = tmp_path / "later"
    shutil.copytree(out, later, ignore=shutil.ignore_patterns("*.md", "summary.*"))
    (later / "runs.jsonl").write_text("".join(json.dumps({**r, "plan": {**r["plan"], "train_sizes": [16, 32]}}) + "\n"
                                              for r in runs))
    read_now = report.report(str(later), make_plots=False)
    assert "- n=32, 0 seeds, planned, not compared yet: `heavy`, `same`." in read_now
    assert "**Not final:** 2 of the 4 staged preset × size cells still plan seeds" in read_now
    assert "**Not final:** 2 of the sources' 4 staged preset × size cells still plan seeds" in report.report_many(
        [str(later)], str(tmp_path / "pooled-later"), make_plots=False)
    # the latest launch's plan counts: a relaunch without size 32 (which made the last run) retires those cells
    (later / "runs.jsonl").write_text("".join(json.dumps({**r, "plan": {**r["plan"], "train_sizes": [16, 32]}}) + "\n"
                                              for r in runs[:-1]) + json.dumps(runs[-1]) + "\n")
    assert "Not final" not in report.report(str(later), make_plots=False)
    assert "Not final" not in report.report_many([str(out)], str(tmp_path / "pooled"), make_plots=False)
    # a pool is read at its cells' strictest look while any plans seeds, and at the last look's level once none
    # does, as read under the margins the grid stopped on: `same` stopped at the first look (2 of 4 seeds)
    def same(*where, **rules):  # the seeds of the look its pooled row is read at
        report.report_many([str(w) for w in where], str(tmp_path / "p"), make_plots=False, **rules)
        row = next(r for r in json.loads((tmp_path / "p" / "pooled.json").read_text()) if r["preset"] == "same"
                   and r["comparison"] == "early" and r["metric"] == "test_accuracy")
        share = report.column_alpha("early", "test_accuracy", row["m"])
        return next(n for n in (2, 4) if row["alpha"] == pytest.approx(stats.nominal_alpha(n, share, 4, 2)))

    assert same(out, margins=margins) == 4 and same(partial, margins=margins) == 2
    assert same(out) == 2  # under other margins than it stopped on, its stages here are not the grid's
    fixed = tmp_path / "fixed"  # the same records as a grid of fixed seeds, whose records cannot say it is complete
    shutil.copytree(out, fixed, ignore=shutil.ignore_patterns("*.md", "summary.*", "pooled.*"))
    (fixed / "runs.jsonl").write_text("".join(json.dumps({**r, "experiment": {**r["experiment"], "settings": {
        k: v for k, v in r["experiment"]["settings"].items() if k != "seeds"}}}) + "\n" for r in runs))
    assert same(out, fixed, margins=margins) == 2
    load_script().main(argv)  # a restart: nothing new, nothing twice
    assert len(records.read_runs(str(out))) == len(runs)
    # the margins it stopped on are recorded; a report under others says so
    assert runs[0]["experiment"]["settings"]["margins"] == {"test_accuracy": 0.001, "test_nll_ts": 0.001}
    assert "margins differ from those the grid stopped on" in report.report(str(out), make_plots=False)
    assert "margins differ" not in report.report(str(out), make_plots=False, margins=margins)
    # likewise the selection rule: the task's own is not recorded (older records match), another is
    assert "select_by" not in runs[0]["experiment"]["settings"]
    said = "the grid stopped on selection by accuracy: its stopping decisions were made on that"
    assert said in report.report(str(out), make_plots=False, margins=margins, select_by="loss")
    assert "the grid stopped on selection by" not in report.report(str(out), make_plots=False, margins=margins)


def test_each_seed_chooses_its_learning_rate_on_its_own_selection_split(tiny_classifier, csv_data, tmp_path):
    """Several --learning_rates: every seed runs each; each seed's rate is the one its own runs rank first on the
    selection split (as its early-stopping point), whatever the other seeds chose, and the verdicts pair the seeds'
    chosen runs; a seed lacking a rate is not compared yet; the findings say how often each rate was chosen."""
    out = tmp_path / "out"
    load_script().main(args_for(tiny_classifier, csv_data, out, "--train_sizes", "16", "--learning_rates",
                                "1e-4,3e-2", "--seeds", "0,1,2", "--min_steps", "20"))
    runs = records.read_runs(str(out))
    assert len(runs) == 12
    (row,) = [r for r in report.summarize(runs) if r["preset"] == "classic"]
    mine = [r for r in runs if r["preset"] == "classic"]
    picked = report.chosen_runs(mine, [1e-4, 3e-2], "accuracy")
    for seed, run in picked.items():  # the seed's best on selection, its own runs alone
        theirs = [r for r in mine if r["seed"] == seed]
        best = max(report.selected_point(r, "accuracy")["selection_accuracy"] for r in theirs)
        assert report.selected_point(run, "accuracy")["selection_accuracy"] == best
    base = report.chosen_runs([r for r in runs if r["preset"] == "pretrain-zero"], [1e-4, 3e-2], "accuracy")
    early = [report.selected_point(picked[s], "accuracy")["test_accuracy"]
             - report.selected_point(base[s], "accuracy")["test_accuracy"] for s in (0, 1, 2)]
    assert row["seeds"] == [0, 1, 2] and row["delta_early_test_accuracy"]["deltas"] == pytest.approx(early)
    assert sum(row["learning_rates_chosen"].values()) == 3
    # the test set's terms come from the same runs, whichever rate a seed chose: seeds 0 and 1 made to choose 1e-4,
    # seed 2 3e-2 (the cell's lr is 1e-4), each example's difference averages to the compared delta
    from hfreg.finetune.report.writing import paired_differences

    for r in runs:
        if r["preset"] == "classic" and r["learning_rate"] == (3e-2 if r["seed"] == 2 else 1e-4):
            report.selected_point(r, "accuracy")["selection_accuracy"] = 1.0
    (row,) = [r for r in report.summarize(runs) if r["preset"] == "classic"]
    assert row["learning_rate"] == 1e-4 and row["learning_rates_chosen"] == {"0.0001": 2, "0.03": 1}
    found = [c for r, comp, c in paired_differences(str(out), runs, report.summarize(runs), "accuracy")
             if r["preset"] == "classic" and r["against"] == "pretrain-zero" and comp == "early"]
    assert np.asarray(found[0]["test_accuracy"]).mean(axis=0) == pytest.approx(
        row["delta_early_test_accuracy"]["deltas"])
    # a seed with one rate alone (a stage in progress) is left out; the others keep their choices
    partial = [r for r in runs if not (r["seed"] == 2 and r["learning_rate"] == 3e-2)]
    (row,) = [r for r in report.summarize(partial) if r["preset"] == "classic"]
    assert row["seeds"] == [0, 1]
    assert "Learning rates: each seed's is chosen on its own selection split" in (out / "findings.md").read_text()


def test_a_rate_tie_goes_to_the_lower_rate_whatever_the_floats_sum_to():
    """Two rates with as many correct selection examples tie, though their floats differ in the last bit."""
    def run(lr, seed, acc):
        point = {"step": 1, "selection_accuracy": acc, "selection_loss": 0.5}
        return {"preset": "p", "train_size": 8, "seed": seed, "learning_rate": lr, "evals": [point],
                "experiment": {"name": "default", "settings": {"labels": ["0", "1"]}}}

    a, b = [600 / 872, 602 / 872], [601 / 872, 601 / 872]  # 1,202 correct each; the floats' means differ
    assert statistics.fmean(a) > statistics.fmean(b)
    runs = [run(2e-4, 0, sum(a) / 2), run(1e-4, 0, sum(b) / 2)]  # one seed's two runs, summed in two orders
    assert sum(a) / 2 != sum(b) / 2
    assert report.chosen_runs(runs, [1e-4, 2e-4], "accuracy")[0]["learning_rate"] == 1e-4
    # a run at a rate the grid does not record (a stray one) neither takes part nor keeps the seed out
    stray = run(3e-4, 0, 0.99)
    assert report.chosen_runs([*runs, stray], [1e-4, 2e-4], "accuracy")[0]["learning_rate"] == 1e-4
    assert report.chosen_runs([*runs, stray], None, "accuracy")[0]["learning_rate"] == 3e-4  # older: the cell's own


def test_a_staged_grid_records_a_selection_rule_other_than_the_tasks_own(tiny_classifier, csv_data, tmp_path):
    """What a staged grid stops on is part of what it did: a rule other than the task's default is recorded (the
    default is not, so that older records match), and a grid with fixed seeds records none."""
    from hfreg.finetune.experiment import build_experiment
    from hfreg.finetune.sweep import parse_args

    def settings(*extra):
        args = parse_args(args_for(tiny_classifier, csv_data, tmp_path / "out", *extra))
        return build_experiment(args, None).record["settings"]

    assert settings("--seeds", "auto", "--select_by", "loss")["select_by"] == "loss"
    assert "select_by" not in settings("--seeds", "auto", "--select_by", "accuracy")
    assert "select_by" not in settings("--select_by", "loss")
    assert not (tmp_path / "out").exists()


def test_the_findings_say_what_trained_the_runs_and_for_how_long():
    from hfreg.finetune.report.writing import machines

    old = [{"seconds": 1800.0, "provenance": {}}, {"seconds": 5400.0}]
    assert machines(old) == "Trained on machines the records do not name: 2 runs, 2.00 h of run wall time."
    new = [{"seconds": 3600.0, "provenance": {"machine": "cpu X"}}]
    assert machines(old + new) == ("Trained on machines the records do not name: 2 runs, 2.00 h of run wall time; "
                                   "cpu X: 1 run, 1.00 h of run wall time.")
    assert machines([]) == ""


def test_a_rate_is_worse_than_the_best_only_where_the_simultaneous_intervals_say_so():
    """The set not shown worse than another rate spends no error of its own: a rate leaves it only where its
    interval (against none) lies wholly below another's, so every such claim holds wherever the reported intervals
    do."""
    from hfreg.finetune.report.numbers import not_shown_worse

    # none's interval is (0, 0): a rate shown better than none pushes none out, a rate shown worse goes
    assert not_shown_worse({0: (0.0, 0.0), 1: (0.01, 0.05), 2: (-0.02, 0.02), 3: (-0.09, -0.03)}) == [1, 2]
    # two overlapping intervals keep both, however far apart their means (the pairing by seed is not used)
    assert not_shown_worse({0: (0.0, 0.0), 1: (0.03, 0.2), 2: (0.001, 0.031)}) == [1, 2]
    # a first look that spends no error has infinite intervals, and a cell without one nan: nothing leaves
    inf = float("inf")
    assert not_shown_worse({0: (0.0, 0.0), 1: (-inf, inf), 2: (float("nan"), float("nan"))}) == [0, 1, 2]


def test_dose_response_names_the_best_rate_and_those_not_worse():
    sys.path.insert(0, os.path.dirname(__file__))
    from test_protocol import _run

    from hfreg.finetune import report

    def cell(preset, value, shift, k):
        # differs between presets, and takes many values (deltas of two values face the exact sign-flip test)
        noise = np.random.default_rng(k).normal(0, 0.004, 8)
        return [{**_run(preset, s, [0.5, 0.4], [0.7 + shift + noise[s]] * 2, [0.5, 0.5]),
                 "preset_config": {"sweep": {"family": "hidden", "value": value}} if value else {}}
                for s in range(8)]

    runs = cell("pretrain-zero", 0, 0.0, 0) + cell("hidden=0.1", 0.1, 0.03, 1) + cell("hidden=0.2", 0.2, 0.031, 2)
    runs += cell("hidden=0.5", 0.5, -0.1, 3)
    sweeps = report.sweep_points(runs)
    assert sweeps == {"hidden": {"pretrain-zero": 0.0, "hidden=0.1": 0.1, "hidden=0.2": 0.2, "hidden=0.5": 0.5}}
    (row,) = report.dose_response(report.summarize(runs), sweeps["hidden"])
    assert row["best"] == 0.2 and row["not_worse_than_best"] == ["hidden=0.1", "hidden=0.2"]
    (best,) = [r for r in report.summarize(runs) if r["preset"] == "hidden=0.2"]
    assert row["best_ci"] == best["delta_early_test_accuracy"]["ci_adjusted"]
    assert row["better"] == [0.1, 0.2] and row["worse"] == [0.5]
    # a factor sweep beside its own preset (`--presets classic --rates classic*0.5,2`): classic is its ×1 point,
    # which a knob's sweep (no preset of its name) and a sweep that ran ×1 itself do not get
    factor = [{**r, "preset": r["preset"].replace("hidden=", "classic*"),
               "preset_config": {"sweep": {**r["preset_config"]["sweep"], "family": "classic"}}
               if r["preset_config"] else {}} for r in runs]
    factor += [{**r, "preset": "classic", "preset_config": {}} for r in cell("x", 0, 0.01, 4)]
    assert report.sweep_points(factor)["classic"] == {"pretrain-zero": 0.0, "classic*0.1": 0.1, "classic*0.2": 0.2,
                                                      "classic*0.5": 0.5, "classic": 1.0}
    assert report.sweep_points(runs + cell("hidden", 0, 0.0, 5))["hidden"] == sweeps["hidden"]
    ones = [{**r, "preset": "classic*1", "preset_config": {"sweep": {"family": "classic", "value": 1.0}}}
            for r in cell("x", 0, 0.01, 6)]
    assert "classic" not in report.sweep_points(factor + ones)["classic"]


def test_rates_errors_are_one_line(tiny_classifier, csv_data, tmp_path):
    for spec, message in (("hidden", "--rates expects KNOB=r1,r2,... or PRESET\\*f1,f2,..."),
                          ("nope=0.1", "unknown knob 'nope'"), ("classic*20", "must be a float in \\[0, 1\\)")):
        with pytest.raises(ValueError, match=message):
            load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out", "--rates", spec))
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--train_sizes", "1000"], "train size 1000 is larger than the training split"),
    (["--presets", "pretrain-zero,nope"], "unknown preset 'nope'"),
    (["--label_column", "stars"], "--label_column 'stars' is not a column"),
    (["--text_column", "body"], "--text_column 'body' is not a column"),
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--evals_per_epoch", "0"], "--evals_per_epoch must be a positive integer, got 0"),
    (["--mc_samples", "1"], "--mc_samples must be 0 (off) or >= 2, got 1"),
    (["--ray_address", "127.0.0.1:6379"], "--ray_address needs --backend ray"),
    (["--backend", "ray", "--parallel", "data"], "--backend ray runs each run whole on one worker"),
    (["--backend", "ray", "--run_cpus", "0"], "--run_cpus must be > 0"),
    (["--min_steps", "-1"], "--min_steps must be >= 0, got -1"),
    (["--eval_tokens", "-5"], "--eval_tokens must be >= 0 (0: no token budget), got -5"),
    (["--seeds", "auto", "--seed_stage", "1"], "--seeds auto needs --seed_stage >= 2"),
    (["--margin", "test_accuracy=-0.1"], "the margin for test_accuracy must be a positive number"),
    (["--learning_rates", "1e-4,x"], "--learning_rates must be comma-separated numbers"),
    (["--learning_rates", "1e-4,0"], "--learning_rates must be positive numbers, got '1e-4,0'"),
    (["--learning_rate", "-1"], "--learning_rate must be a positive number, got '-1.0'"),
    (["--roles", "validation"], "--roles validation needs a labelled test split"),
])
def test_bad_input_one_line_nothing_written(tiny_classifier, csv_data, tmp_path, capsys, extra, message):
    """In process (the console entry point, as the script calls it); a real process's exit is tested below."""
    out = tmp_path / "out"
    try:
        rc = load_script().cli([*args_for(tiny_classifier, csv_data, out), *extra])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not datasets' progress
    assert rc == 2
    assert len(errors) == 1 and message in errors[0]
    assert not (out / "runs.jsonl").exists()


def test_bad_input_under_accelerate_launch(tiny_classifier, csv_data, tmp_path):
    """`make finetune` launches with `accelerate launch -q`: the script's one line, no launcher traceback."""
    out = tmp_path / "out"
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, out, "--presets", "nope"), num_processes=1,
                  quiet=True)
    assert proc.returncode != 0
    assert "unknown preset 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "runs.jsonl").exists()


def test_bad_data_files(tiny_classifier, csv_data, tmp_path):
    finetune = load_script()
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\nfine film,1\ngood film,1\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("review,sentiment\n")
    cases = [(["--train_file", str(tmp_path / "missing.csv")], "does not exist"),
             (["--train_file", str(one_class), "--validation_file", str(one_class), "--train_sizes", "1"],
              "has only one class"),
             (["--train_file", str(csv_data / "train.csv"), "--validation_file", str(empty)],
              "cannot load .*empty.csv.*no data"),
             (["--train_file", str(tmp_path / "x.txt")], "does not exist"),
             (["--train_file", str(csv_data / "train.csv"), "--validation_file", str(one_class)], "cannot load")]
    for extra, message in cases:
        argv = args_for(tiny_classifier, csv_data, tmp_path / "out") + extra
        with pytest.raises(ValueError, match=message):
            finetune.main(argv)
    assert not (tmp_path / "out" / "runs.jsonl").exists()


def test_model_that_cannot_classify(csv_data, tmp_path):
    from tiny_models import build

    path = tmp_path / "vision"
    build("vit").save_pretrained(path)
    with pytest.raises(ValueError):
        load_script().main(args_for(str(path), csv_data, tmp_path / "out"))
    assert not (tmp_path / "out" / "runs.jsonl").exists()


def test_with_tracking_logs_through_accelerate(tiny_classifier, csv_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tracked"
    load_script().main(args_for(tiny_classifier, csv_data, out, "--seeds", "0", "--train_sizes", "16",
                                "--with_tracking", "--report_to", "tensorboard"))
    assert any("events.out.tfevents" in f for _, _, files in os.walk(out) for f in files)


def test_decoder_llm_without_pad_token(tmp_path, csv_data, minilm_path):
    """A Llama-style classifier whose tokenizer has no pad token: padding falls back to EOS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    path = tmp_path / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.eos_token = "[SEP]"
    tok.pad_token = None
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    LlamaModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    out = tmp_path / "out"
    assert load_script().main(args_for(str(path), csv_data, out, "--presets", "drop-path", "--seeds", "0")) == 0
    runs = records.read_runs(out)
    assert len(runs) == 2 and all(len(r["evals"]) == r["steps"] for r in runs)


@pytest.mark.parametrize("model_kind", ["tiny-llama", "minilm"])
def test_peft_lora_fine_tuning(tmp_path, csv_data, minilm_path, tiny_classifier, model_kind):
    """--peft lora on a decoder LLM and on the real MiniLM: the records say so, and `adapter` acts."""
    pytest.importorskip("peft")
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    path = tiny_classifier
    if model_kind == "tiny-llama":
        path = tmp_path / "tiny-llama"
        tok = AutoTokenizer.from_pretrained(minilm_path)
        config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
        LlamaModel(config).save_pretrained(path)
        tok.save_pretrained(path)
    elif model_kind == "minilm":
        path = minilm_path
    out = tmp_path / "out"
    assert load_script().main(args_for(str(path), csv_data, out, "--presets", "pretrain-zero,adapter-dropout",
                                       "--train_sizes", "16", "--seeds", "0", "--peft", "lora", "--lora_r", "4",
                                       "--max_eval_samples", "16")) == 0
    runs = {r["preset"]: r for r in records.read_runs(out)}
    assert runs["pretrain-zero"]["experiment"]["settings"]["lora"] == {"r": 4, "lora_alpha": 32,
                                                                      "target_modules": "all-linear"}
    assert all(p["rates"]["adapter"] == 0.1 for p in runs["adapter-dropout"]["evals"])
    assert runs["pretrain-zero"]["evals"][-1]["train_loss"] != runs["adapter-dropout"]["evals"][-1]["train_loss"]


def test_schedule_cutoff_beyond_training_is_refused_before_anything_is_written(tiny_classifier, csv_data, tmp_path):
    preset = tmp_path / "late.toml"
    preset.write_text('hidden = 0.1\nschedule = { all = { kind = "late", cutoff = 500 } }\n')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="cutoff of 500 steps is beyond training"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", str(preset)))
    assert not out.exists()


def test_peft_bad_input(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--lora_r must be a positive integer, got 0"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--peft", "lora", "--lora_r", "0"))
    assert not out.exists()


def test_predictions_are_compact_and_both_layouts_are_read(tmp_path):
    """Prediction files hold float16 logit differences (byte planes, LZMA), every published one too (the earlier
    grids' rewritten by benchmarks/compact_predictions.py from float32): they give the recorded accuracy at every
    point and the NLL within 1e-3; a file in the earlier float32 layout still loads, and compacts to under a quarter
    of its bytes."""
    import glob
    import zipfile

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from compact_predictions import check

    for name in glob.glob(os.path.join(ROOT, "docs", "results", "*", "predictions", "*.npz")):
        with zipfile.ZipFile(name) as z:  # every published grid's files: no float32 logits left
            assert not [m for m in z.namelist() if m.endswith("_logits.npy")], name
    results = os.path.join(ROOT, "docs", "results", "rt-polarity")
    for i, r in enumerate(records.read_runs(results)[:12]):
        with np.load(os.path.join(results, r["predictions"])) as f:
            assert "test_logit_diffs" in f.files and "test_logits" not in f.files
        arrays = records.load_predictions(results, r)
        check(r, arrays)  # the recorded accuracy at every point, the NLL within 1e-3
        noisy = {k: v + np.float32(1e-3) * np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
                 if k.endswith("_logits") else v for k, v in arrays.items()}  # float32 values, as trained
        np.savez_compressed(tmp_path / f"old{i}.npz", **noisy)  # the earlier layout
        old = records.load_predictions(str(tmp_path), {"predictions": f"old{i}.npz"})
        assert old["test_logits"].dtype == np.float32 and np.array_equal(old["test_logits"], noisy["test_logits"])
        rel = records._save_predictions(str(tmp_path), ("x", i), old)
        assert os.path.getsize(tmp_path / rel) <= os.path.getsize(tmp_path / f"old{i}.npz") / 4


def test_eval_batches_respect_the_token_budget_and_keep_order():
    lengths = [3, 4, 4, 5, 9, 9, 20, 40]
    batches = ftdata.eval_batches(lengths, batch_size=3, tokens=16)
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 16)
    assert batches[-1] == [7]  # longer than the budget: alone, never dropped
    assert ftdata.eval_batches(lengths, batch_size=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_a_data_parallel_evaluation_batch_is_no_larger_than_its_split():
    """Data mode splits each batch across ranks (`split_batches`), and Accelerate fills a short batch with repeated
    examples: a causal LM's batch of 170 over a 24-example split gave each of 2 ranks 85 rows to compute, 12 of them
    needed. Capped at the split (rounded up to the ranks), each rank computes its own 12, and every example once."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    def rows(batch_size, n=24, ranks=2):
        batches = BatchSampler(SequentialSampler(range(n)), batch_size, drop_last=False)
        return [[i for b in BatchSamplerShard(batches, ranks, rank, split_batches=True) for i in b]
                for rank in range(ranks)]

    assert [len(r) for r in rows(170)] == [85, 85]  # the waste, as Accelerate makes it
    capped = rows(ftdata.split_batch_size(170, 24, 2))
    assert [len(r) for r in capped] == [12, 12] and sorted(capped[0] + capped[1]) == list(range(24))
    assert ftdata.split_batch_size(170, 25, 2) == 26 and ftdata.split_batch_size(16, 25, 2) == 16
    assert ftdata.split_batch_size(170, 24, 1) == 24


def test_eval_token_budget_leaves_fp32_metrics_unchanged(tiny_classifier, csv_data, tmp_path):
    """Token-budget evaluation batches give every recorded metric of plain batches (fp32) to 1e-5."""
    runs = {}
    for budget in ("0", "48"):
        out = tmp_path / budget
        assert load_script().main(args_for(tiny_classifier, csv_data, out, "--presets", "pretrain-zero",
                                           "--train_sizes", "16", "--seeds", "0", "--mixed_precision", "no",
                                           "--eval_tokens", budget)) == 0
        runs[budget] = records.read_runs(str(out))[0]
    a, b = runs["0"], runs["48"]
    assert a["selected_step"] == b["selected_step"]
    for x, y in zip(a["evals"], b["evals"]):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= 1e-5, k


def test_eval_tokens_default_by_precision():
    from hfreg.finetune import experiment

    assert experiment.eval_tokens(None, "no") == experiment.EVAL_TOKENS and experiment.eval_tokens(None, "bf16") == 0
    assert experiment.eval_tokens(0, "no") == 0 and experiment.eval_tokens(512, "bf16") == 512


def test_no_selection_predictions_stores_the_test_outputs_alone_and_reports_the_same(tiny_classifier, csv_data,
                                                                                     tmp_path):
    """--no_selection_predictions stores the test split's outputs alone: the same arrays a run stores by default
    less the selection split's, the report reads the same numbers from either, and compare_select_by.py, which
    needs the selection split's, says so and exits 2."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import compare_select_by

    out = {flag: tmp_path / (flag or "default") for flag in ("", "--no_selection_predictions")}
    for flag, d in out.items():
        assert load_script().main(args_for(tiny_classifier, csv_data, d, "--train_sizes", "16", "--min_steps", "12",
                                           *([flag] if flag else []))) == 0
    (full, d_full), (lean, d_lean) = ((records.read_runs(str(d)), d) for d in out.values())
    for a, b in zip(full, lean):
        assert records.run_key(a) == records.run_key(b) and a["evals"] == b["evals"]
        with np.load(d_full / a["predictions"]) as f, np.load(d_lean / b["predictions"]) as g:
            assert "selection_logit_diffs" in f.files and sorted(g.files) == sorted(
                k for k in f.files if not k.startswith("selection_"))
            assert all(np.array_equal(f[k], g[k]) for k in g.files)

    def numbers(d):  # what the report wrote, less where from and the run times
        rows = json.loads((d / "summary.json").read_text())
        return [{k: v for k, v in r.items() if k != "source" and "seconds" not in k} for r in rows]

    assert numbers(out[""]) == numbers(out["--no_selection_predictions"])
    assert compare_select_by.main([str(out[""])]) == 0
    assert compare_select_by.main([str(out["--no_selection_predictions"])]) == 2
