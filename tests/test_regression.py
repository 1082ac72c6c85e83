"""Regression: float labels make a one-output, MSE-trained model, judged on test R² and Spearman (`tasks`), as
`run_glue` switches on a float label column; what cannot apply to it says so in one line."""

import os

import numpy as np
import pytest
from harness import args_for, load_script

from hfreg.finetune import records, report, scores, tasks
from hfreg.finetune.data import strata, stratified_indices


@pytest.fixture
def score_data(tmp_path):
    """The synthetic task's texts with a float score (the class plus noise): a regression CSV."""
    from hfreg.finetune.synthetic import make_split

    rng = np.random.default_rng(0)
    for split, n, seed in (("train", 120, 1), ("validation", 40, 2)):
        d = make_split(n, seed)
        lines = ["review,score"] + [f"\"{t}\",{y + 0.3 * rng.standard_normal():.3f}"
                                    for t, y in zip(d["text"], d["label"])]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_problem_type_is_inferred_as_run_glue_does():
    assert tasks.infer_problem_type([0.5, 1.0, 3.2]) == tasks.REGRESSION
    assert tasks.infer_problem_type([0, 1, 1]) == tasks.CLASSIFICATION
    assert tasks.infer_problem_type(["pos", "neg"]) == tasks.CLASSIFICATION
    assert tasks.infer_problem_type([True, False]) == tasks.CLASSIFICATION
    assert tasks.infer_problem_type([0, 1, 4], "regression") == tasks.REGRESSION
    with pytest.raises(ValueError, match=r"--problem_type must be one of .*'multi_label'"):
        tasks.infer_problem_type([0, 1], "multi_label")


def test_regression_scores_match_scipy_and_their_per_example_terms_average_to_them():
    from scipy import stats

    rng = np.random.default_rng(1)
    labels = rng.normal(size=300).astype(np.float32)
    outputs = (0.7 * labels + 0.5 * rng.normal(size=300))[:, None]
    got = scores.regression_scores(outputs, labels)
    assert got["loss"] == pytest.approx(np.mean((outputs[:, 0] - labels) ** 2), rel=1e-6)
    assert got["r2"] == pytest.approx(1 - got["loss"] / labels.var(), rel=1e-6)
    assert got["pearson"] == pytest.approx(stats.pearsonr(outputs[:, 0], labels)[0], abs=1e-6)
    assert got["spearman"] == pytest.approx(stats.spearmanr(outputs[:, 0], labels)[0], abs=1e-6)
    terms = scores.per_example(outputs, labels, {}, tasks.REGRESSION)
    assert terms["test_r2"].mean() == pytest.approx(got["r2"], abs=1e-6)
    assert terms["test_spearman"].mean() == pytest.approx(got["spearman"], abs=1e-6)
    # the terms' variance / N is rho's sampling variance, and that of two arms' difference the difference's: close
    # to their variance over fresh test sets drawn from one population (Pearson's influence on the ranks, which
    # treats them as fixed numbers, gives 0.82 of it for one arm here)
    rng, draws, estimates = np.random.default_rng(0), [], []
    for _ in range(800):
        y = rng.normal(size=300)
        a = y + 0.3 * rng.normal(size=300)
        b = a + 0.3 * rng.normal(size=300)
        ta, tb = (scores.per_example(x[:, None], y, {}, tasks.REGRESSION)["test_spearman"] for x in (a, b))
        draws.append((stats.spearmanr(a, y)[0], stats.spearmanr(a, y)[0] - stats.spearmanr(b, y)[0]))
        estimates.append((ta.var() / 300, (ta - tb).var() / 300))
    assert np.mean(estimates, axis=0) / np.var(draws, axis=0) == pytest.approx([1.0, 1.0], abs=0.1)
    assert scores.regression_scores(np.ones((300, 1)), labels)["spearman"] == 0.0  # constant outputs rank nothing


def test_float_labels_are_sampled_across_their_range():
    labels = np.linspace(0, 1, 100, dtype=np.float32)
    assert sorted(np.unique(strata(labels), return_counts=True)[1]) == [20] * 5
    picked = labels[stratified_indices(labels, 10, seed=0)]
    assert sorted(np.unique(strata(labels)[np.searchsorted(labels, picked)], return_counts=True)[1]) == [2] * 5


def test_a_float_label_grid_trains_a_regressor_and_is_judged_on_r2_and_spearman(tiny_classifier, score_data,
                                                                                 tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "out"
    argv = args_for(tiny_classifier, score_data, out, "--train_sizes", "32", "--mixed_precision", "no",
                    "--save_strategy", "final")
    assert load_script().main(argv) == 0
    runs = records.read_runs(str(out))
    assert {r["experiment"]["settings"]["problem_type"] for r in runs} == {"regression"}
    point = runs[0]["evals"][-1]
    assert {"selection_r2", "selection_spearman", "test_r2", "test_spearman", "test_loss"} <= set(point)
    assert "temperature" not in point and "selection_accuracy" not in point
    kept = out / "models" / "default" / "classic" / f"n32-s0-lr{runs[0]['learning_rate']:g}"
    config = AutoConfig.from_pretrained(kept)
    assert config.num_labels == 1 and config.problem_type == "regression"
    arrays = records.load_predictions(str(out), runs[0])
    assert arrays["test_logits"].shape[-1] == 1 and arrays["test_labels"].dtype.kind == "f"
    # the stored outputs are the values themselves (a classifier's logits are stored as differences): the
    # report recomputes the recorded test metrics from them
    final = runs[0]["evals"][-1]
    again = scores.regression_scores(arrays["test_logits"][-1], arrays["test_labels"])
    assert again["r2"] == pytest.approx(final["test_r2"], abs=1e-5)
    assert again["spearman"] == pytest.approx(final["test_spearman"], abs=1e-5)

    summary = report.summarize(runs)
    classic = next(r for r in summary if r["preset"] == "classic")
    assert classic["select_by"] == "loss" and classic["problem_type"] == "regression"
    assert {"delta_early_test_r2", "delta_fixed_test_spearman"} <= set(classic)
    assert classic["delta_early_test_r2"]["verdict"] in ("better", "worse", "trivial", "equivalent", "inconclusive")
    text = (out / "findings.md").read_text()
    assert "test R²" in text and "test Spearman" in text and "accuracy" not in text and "NLL" not in text
    assert "| R² (early) |" in text
    pooled = (out / "pooled.md").read_text()
    assert "**Answer** (test R²" in pooled
    # the test set's part of each comparison's variance, from the stored outputs
    terms = report.summarize(runs)
    report.test_set_terms(str(out), runs, terms, "loss")
    assert "test_set" in next(r for r in terms if r["preset"] == "classic")["delta_early_test_spearman"]
    with pytest.raises(ValueError, match="select_by 'accuracy' is not a rule for regression results"):
        report.summarize(runs, "accuracy")


@pytest.mark.parametrize("extra, message", [
    (("--presets", "pretrain-zero,classic,rdrop"), r"preset rdrop \(R-Drop\) act\(s\) on class probabilities"),
    (("--label_smoothing_factor", "0.1"), "--label_smoothing_factor 0.1 act"),
    (("--select_by", "accuracy"), "select_by 'accuracy' is not a rule for regression"),
])
def test_what_needs_classes_is_refused_for_a_regression_in_one_line(tiny_classifier, score_data, tmp_path, extra,
                                                                     message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        load_script().main(args_for(tiny_classifier, score_data, out, *extra))
    assert not os.path.exists(out / "runs.jsonl")


def test_problem_type_regression_needs_numeric_labels(tiny_classifier, csv_data, tmp_path):
    with pytest.raises(ValueError, match=r"--problem_type regression needs numeric labels: the train split's "
                                         r"'sentiment' has 'neg'"):
        load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out", "--problem_type", "regression"))
