"""The comparison's protocol: data roles, metrics, statistics, early-stopping choice, verdicts."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness import args_for, load_script
from hfreg.finetune import data, records, report, scores, stats

# ------------------------------------------------------------------------------------------------ metrics
LOGITS = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]))
LABELS = np.array([0, 1, 1, 0])


def test_calibration_metrics_against_hand_computed_values():
    # probabilities of the true class: 0.9, 0.4, 0.7, 0.2
    assert scores.nll(LOGITS, LABELS) == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7)
                                                         + math.log(0.2)) / 4)
    assert scores.accuracy(LOGITS, LABELS) == 0.5
    # Brier: sum over classes of (p - onehot)^2 = 2 (1 - p_true)^2 for two classes
    assert scores.brier(LOGITS, LABELS) == pytest.approx(2 * (0.1 ** 2 + 0.6 ** 2 + 0.3 ** 2 + 0.8 ** 2) / 4)
    # ECE, 15 equal bins: confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (wrong), one per bin
    assert scores.ece(LOGITS, LABELS) == pytest.approx((0.1 + 0.6 + 0.3 + 0.8) / 4)
    # two bins: (0, 0.5] empty, (0.5, 1] holds all four: |accuracy 0.5 - mean confidence 0.75|
    assert scores.ece(LOGITS, LABELS, bins=2) == pytest.approx(0.25)


def test_accuracy_and_f1_match_the_evaluate_metrics_hfreg_ships():
    from hfreg import metrics

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    pred = logits.argmax(-1)
    assert scores.accuracy(logits, labels) == pytest.approx(
        metrics.load("accuracy").compute(predictions=pred, references=labels)["accuracy"])
    assert scores.macro_f1(logits, labels) == pytest.approx(
        metrics.load("f1").compute(predictions=pred, references=labels, average="macro")["f1"])


def test_temperature_scaling_fits_the_overconfidence_away():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(2000, 2)) * 2
    labels = np.array([rng.choice(2, p=np.exp(scores.log_softmax(z))) for z in true])
    assert scores.fit_temperature(true * 3, labels) == pytest.approx(3.0, rel=0.15)
    assert scores.nll(true * 3 / scores.fit_temperature(true * 3, labels), labels) < scores.nll(true * 3, labels)


# ------------------------------------------------------------------------------------------------ statistics
def test_paired_interval_and_p_value_match_scipy():
    d = [0.02, 0.05, -0.01, 0.04, 0.03]
    out = stats.paired(d)
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(d), scale=sps.sem(d))
    assert out["ci95"] == pytest.approx((lo, hi))
    assert out["p"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert out["d_z"] == pytest.approx(np.mean(d) / np.std(d, ddof=1))


def test_holm_against_known_values():
    # Holm (1979) on four p-values, by hand: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 with running max
    assert stats.holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, float("nan"), 0.001]) == pytest.approx([0.5, float("nan"), 0.002], nan_ok=True)


def test_power_against_known_values():
    # one-sample / paired t-test, two-sided alpha 0.05, 80% power: d = 1 needs 10, d = 0.5 needs 34 (G*Power)
    assert stats.seeds_for_power(sd=1.0, delta=1.0) == 10
    assert stats.seeds_for_power(sd=0.02, delta=0.01) == 34
    assert stats.seeds_for_power(sd=1.0, delta=1.0, alpha=0.05 / 10) > 10


def test_verdicts_follow_the_interval():
    assert stats.verdict(0.01, 0.03, higher_is_better=True) == "better"
    assert stats.verdict(0.01, 0.03, higher_is_better=False) == "worse"
    assert stats.verdict(-0.03, -0.01, higher_is_better=False) == "better"
    assert stats.verdict(-0.01, 0.03, higher_is_better=True) == "no detectable difference"


# ------------------------------------------------------------------------------------------------ roles
def _encoded(labels):
    return data.Encoded([[1] * (1 + i % 5) for i in range(len(labels))], np.asarray(labels))


def test_roles_never_share_an_example():
    d = {"train": _encoded([0, 1] * 100), "validation": _encoded([0, 1] * 30)}
    half = data.assign_roles(d, "auto")
    assert half.selection[0] == half.test[0] == "validation"
    assert not set(half.selection[1]) & set(half.test[1]) and len(half.selection[1]) == 30
    pool = data.assign_roles(d, "train-pool", selection_size=40)
    assert pool.selection[0] == "train" and not set(pool.selection[1]) & set(pool.pool)
    for seed in range(5):
        assert not set(data.subset_indices(d, pool, 64, seed)) & set(pool.selection[1])
    d["test"] = _encoded([0, 1] * 10)
    assert data.assign_roles(d, "auto").test == ("test", pytest.approx(np.arange(20)))


def test_role_errors_are_one_line():
    d = {"train": _encoded([0, 1] * 10), "validation": _encoded([0, 0, 0, 1])}
    with pytest.raises(ValueError, match="too small to be halved stratified: class 1 has 1 example"):
        data.assign_roles(d, "validation-half")
    with pytest.raises(ValueError, match="--selection_size must be at least the number of classes"):
        data.assign_roles(d, "train-pool", selection_size=1)


def test_a_test_example_cannot_influence_selection(tiny_classifier, csv_data, tmp_path):
    """Two grids that differ only in their test split's labels: training, selection metrics and the chosen
    steps are identical; only the test metrics move."""
    train = (csv_data / "train.csv").read_text().splitlines()
    (csv_data / "test.csv").write_text("\n".join(train[:41]) + "\n")
    flipped = [train[0]] + [line.rsplit(",", 1)[0] + "," + {"pos": "neg", "neg": "pos"}[line.rsplit(",", 1)[1]]
                            for line in train[1:41]]
    (csv_data / "test_flipped.csv").write_text("\n".join(flipped) + "\n")
    outs = []
    for name in ("test.csv", "test_flipped.csv"):
        out = tmp_path / f"out-{name}"
        load_script().main(args_for(tiny_classifier, csv_data, out, "--test_file", str(csv_data / name),
                                    "--presets", "classic", "--seeds", "0", "--num_train_epochs", "3",
                                    "--learning_rate", "2e-3"))
        outs.append({records.run_key(r)[1:]: r for r in records.read_runs(out)})
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        a, b = outs[0][key], outs[1][key]
        assert a["selected_step"] == b["selected_step"]
        not_test = lambda p: {k: v for k, v in p.items() if not k.startswith("test_")}  # noqa: E731
        assert [not_test(p) for p in a["evals"]] == [not_test(p) for p in b["evals"]]
        assert [p["test_loss"] for p in a["evals"]] != [p["test_loss"] for p in b["evals"]]


def test_unseen_test_labels_are_refused(tiny_classifier, csv_data, tmp_path):
    (csv_data / "odd.csv").write_text('review,sentiment\n"A film.",pos\n"Another.",meh\n')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"the test split has label\(s\) \['meh'\] that the training split does not"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--test_file", str(csv_data / "odd.csv")))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ the report
def _run(preset, seed, selection, test_acc, test_loss, lr=1e-4, train_loss=0.1):
    evals = [{"step": i + 1, "epoch": (i + 1) / 2, "train_loss": train_loss, "selection_loss": s,
              "selection_accuracy": 0.9, "test_accuracy": a, "test_f1": a, "test_loss": t, "test_nll_ts": t,
              "test_ece": 0.1, "test_brier": 0.2}
             for i, (s, a, t) in enumerate(zip(selection, test_acc, test_loss))]
    return {"experiment": {"name": "default", "settings": {"labels": ["0", "1"]}}, "preset": preset,
            "train_size": 8, "seed": seed, "learning_rate": lr, "selection_majority": 0.5, "evals": evals,
            "selected_step": min(evals, key=lambda p: p["selection_loss"])["step"]}


def test_early_stopped_comparison_uses_the_selection_optimum():
    # the selection loss is lowest at step 2, the test loss at step 3: early stopping must report step 2
    v = report.run_values(_run("classic", 0, [0.6, 0.4, 0.5], [0.7, 0.8, 0.9], [0.6, 0.5, 0.3]))
    assert v["early"]["test_accuracy"] == 0.8 and v["early"]["test_loss"] == 0.5
    assert v["fixed"]["test_accuracy"] == 0.9 and v["fixed"]["degradation"] == pytest.approx(-0.2)


def test_learning_rate_is_chosen_per_preset_on_the_selection_split():
    runs = [_run("classic", s, [0.5, 0.4], [0.8, 0.8], [0.5, 0.5], lr=1e-4) for s in range(3)]
    runs += [_run("classic", s, [0.5, 0.3], [0.6, 0.6], [0.9, 0.9], lr=2e-4) for s in range(3)]
    runs += [_run("pretrain-zero", s, [0.5, 0.4], [0.7, 0.7], [0.6, 0.6], lr=1e-4) for s in range(3)]
    cells = {r["preset"]: r for r in report.summarize(runs)}
    # 2e-4 wins on selection loss although its test accuracy is worse: test plays no part in the choice
    assert cells["classic"]["learning_rate"] == 2e-4
    assert cells["classic"]["early_test_accuracy"] == pytest.approx(0.6)


def test_findings_state_verdicts_from_the_numbers():
    gains = [0.10, 0.12, 0.11, 0.13, 0.12]
    runs = [_run("pretrain-zero", s, [0.5, 0.4], [0.6, 0.6], [0.7, 0.7]) for s in range(5)]
    runs += [_run("classic", s, [0.5, 0.4], [0.6 + g, 0.6 + g], [0.7, 0.7 + (s - 2) * 0.1])
             for s, g in enumerate(gains)]
    recs = report.summarize(runs)
    classic = next(r for r in recs if r["preset"] == "classic")
    assert classic["delta_early_test_accuracy"]["verdict"] == "better"
    assert classic["delta_early_test_loss"]["verdict"] == "no detectable difference"
    text = report.findings(recs)
    assert "`classic` at 8: better test accuracy early-stopped (Δ +0.116" in text
    assert "Of 4 verdicts, 2 say better, 0 worse, 2 no detectable difference." in text
