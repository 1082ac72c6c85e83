"""The comparison's protocol: data roles, metrics, statistics, early-stopping choice, verdicts."""

import math
import os

import numpy as np
import pytest
from harness import args_for, load_script
from scipy import stats as sps

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


def test_accuracy_and_f1_match_scikit_learn():
    """The harness's own accuracy and macro-F1 (it needs per-example terms, which metric libraries do not give)
    equal scikit-learn's, classes absent from the predictions included."""
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        logits, labels = rng.normal(size=(50, classes)), rng.integers(0, classes, 50)
        logits[:, -1] -= 3  # the last class is rarely predicted, sometimes never
        pred = logits.argmax(-1)
        assert scores.accuracy(logits, labels) == pytest.approx(accuracy_score(labels, pred))
        assert scores.macro_f1(logits, labels) == pytest.approx(f1_score(labels, pred, average="macro"))


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
    assert stats.verdict(-0.01, 0.03, higher_is_better=True) == "inconclusive"
    assert stats.verdict(-0.01, 0.03, True, eq=(-0.005, 0.015), margin=0.02) == "equivalent"
    assert stats.verdict(-0.01, 0.03, True, eq=(-0.005, 0.025), margin=0.02) == "inconclusive"
    # a difference excluded from zero whose equivalence interval lies inside the margin is trivial: one verdict
    assert stats.verdict(0.001, 0.003, True, eq=(0.0015, 0.0025), margin=0.02) == "trivial"
    assert stats.verdict(-0.003, -0.001, True, eq=(-0.0025, -0.0015), margin=0.02) == "trivial"
    assert stats.verdict(0.001, 0.03, True, eq=(0.002, 0.025), margin=0.02) == "better"


def test_identical_differences_decide_only_where_the_sign_test_does():
    """Two seeds each one test example worse: a zero-width interval, and no verdict; ten such seeds decide."""
    two = stats.judge([-0.002, -0.002], 0.02, True, m=6)
    # the interval shown is the one the verdict used: it reaches 0, as the sign-flip test does not exclude it
    assert two["verdict"] == "inconclusive" and two["ci_adjusted"] == [-0.002, 0.0]
    assert stats.judge([-0.002] * 10, 0.02, True, m=6)["ci_adjusted"] == pytest.approx([-0.002, -0.002])
    assert stats.judge([-0.002] * 10, 0.02, True, m=6)["verdict"] == "trivial"  # 2 * 0.5**10 < 0.05 / 6
    assert stats.judge([-0.05] * 10, 0.02, True, m=6)["verdict"] == "worse"
    assert stats.judge([0.0, 0.0], 0.02, True, m=6)["verdict"] == "equivalent"  # the same predictions


def test_tost_matches_two_one_sided_scipy_tests_and_the_interval():
    d = np.array([0.004, -0.003, 0.006, 0.001, -0.002, 0.003, 0.0, 0.002])
    lower = sps.ttest_1samp(d, -0.01, alternative="greater").pvalue
    upper = sps.ttest_1samp(d, 0.01, alternative="less").pvalue
    assert stats.tost_p(d, 0.01) == pytest.approx(max(lower, upper))
    # TOST at alpha rejects exactly when the (1 - 2 alpha) interval lies inside the margin
    lo, hi = stats.interval(d, 1 - 2 * 0.05)
    assert (stats.tost_p(d, 0.01) < 0.05) == (-0.01 < lo and hi < 0.01)


def test_random_effects_against_a_hand_computation():
    y, v = np.array([0.01, -0.02, 0.03, 0.0]), np.array([1e-4, 2e-4, 1e-4, 4e-4])
    w = 1 / v
    fixed = (w * y).sum() / w.sum()
    q = (w * (y - fixed) ** 2).sum()
    tau2 = max(0.0, (q - 3) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    mu = (ws * y).sum() / ws.sum()
    se = np.sqrt(max(1.0, (ws * (y - mu) ** 2).sum() / 3) / ws.sum())
    out = stats.random_effects(y, v)
    assert out["delta"] == pytest.approx(mu) and out["tau"] == pytest.approx(np.sqrt(tau2))
    assert out["ci"] == pytest.approx([mu - sps.t.ppf(0.975, 3) * se, mu + sps.t.ppf(0.975, 3) * se])
    assert out["i2"] == pytest.approx(max(0.0, (q - 3) / q))
    # identical cells: no heterogeneity, and the interval shrinks with the cells' own variance
    same = stats.random_effects([0.01] * 5, [1e-6] * 5)
    assert same["i2"] == 0 and same["tau"] == 0 and same["ci"][0] < 0.01 < same["ci"][1]


def test_random_effects_interval_keeps_its_level_with_few_cells():
    """Over 2,000 simulated pools of 4 heterogeneous cells with true mean 0, the 95% interval misses at most ~5%."""
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(2000):
        v = rng.uniform(1e-5, 4e-4, 4)
        y = rng.normal(0, 0.01, 4) + rng.normal(0, np.sqrt(v))
        lo, hi = stats.random_effects(y, v)["ci"]
        misses += not lo <= 0 <= hi
    assert misses / 2000 <= 0.065


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
        assert [p.get("test_loss") for p in a["evals"]] != [p.get("test_loss") for p in b["evals"]]


def test_unseen_test_labels_are_refused(tiny_classifier, csv_data, tmp_path):
    (csv_data / "odd.csv").write_text('review,sentiment\n"A film.",pos\n"Another.",meh\n')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"the test split has label\(s\) \['meh'\] that the training split does not"):
        load_script().main(args_for(tiny_classifier, csv_data, out, "--test_file", str(csv_data / "odd.csv")))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ the report
def _run(preset, seed, selection, test_acc, test_loss, lr=1e-4, train_loss=0.1, selection_acc=None, train_acc=0.9,
         size=8, nll_ts=None):
    selection_acc = selection_acc or [0.9] * len(selection)
    nll_ts = nll_ts or test_loss
    evals = [{"step": i + 1, "epoch": (i + 1) / 2, "train_loss": train_loss, "selection_loss": s,
              "selection_accuracy": sa, "selection_f1": sa, "test_accuracy": a, "test_f1": a, "test_loss": t,
              "test_nll_ts": ts, "test_ece": 0.1, "test_brier": 0.2, "train_accuracy": train_acc}
             for i, (s, sa, a, t, ts) in enumerate(zip(selection, selection_acc, test_acc, test_loss, nll_ts))]
    return {"experiment": {"name": "default", "settings": {"labels": ["0", "1"]}}, "preset": preset,
            "train_size": size, "seed": seed, "learning_rate": lr, "selection_majority": 0.5, "evals": evals,
            "selected_step": min(evals, key=lambda p: p["selection_loss"])["step"]}


def test_early_stopped_comparison_uses_the_selection_optimum():
    # the selection loss is lowest at step 2, the test loss at step 3: early stopping must report step 2
    v = report.run_values(_run("classic", 0, [0.6, 0.4, 0.5], [0.7, 0.8, 0.9], [0.6, 0.5, 0.3]), "loss")
    assert v["early"]["test_accuracy"] == 0.8 and v["early"]["test_loss"] == 0.5
    assert v["fixed"]["test_accuracy"] == 0.9 and v["fixed"]["degradation"] == pytest.approx(-0.2)


def test_select_by_accuracy_takes_the_earliest_of_equal_points():
    run = _run("classic", 0, [0.6, 0.4, 0.5, 0.7], [0.7, 0.8, 0.9, 0.95], [0.6, 0.5, 0.3, 0.2],
               selection_acc=[0.7, 0.8, 0.85, 0.85])
    assert report.selected_point(run, "accuracy")["step"] == 3  # 0.85 first at step 3, again at step 4
    assert report.selected_point(run, "loss")["step"] == 2
    assert report.run_values(run, "accuracy")["early"]["test_accuracy"] == 0.9
    with pytest.raises(ValueError, match="select_by must be one of .*got 'nll'"):
        report.summarize([run], "nll")


def test_learning_rate_is_chosen_per_preset_on_the_selection_split():
    runs = [_run("classic", s, [0.5, 0.4], [0.8, 0.8], [0.5, 0.5], lr=1e-4) for s in range(3)]
    runs += [_run("classic", s, [0.5, 0.3], [0.6, 0.6], [0.9, 0.9], lr=2e-4) for s in range(3)]
    runs += [_run("pretrain-zero", s, [0.5, 0.4], [0.7, 0.7], [0.6, 0.6], lr=1e-4) for s in range(3)]
    cells = {r["preset"]: r for r in report.summarize(runs, "loss")}
    # 2e-4 wins on selection loss although its test accuracy is worse: test plays no part in the choice
    assert cells["classic"]["learning_rate"] == 2e-4
    assert cells["classic"]["early_test_accuracy"] == pytest.approx(0.6)


def test_findings_state_verdicts_from_the_numbers():
    gains = [0.10, 0.12, 0.11, 0.13, 0.12]
    runs = [_run("pretrain-zero", s, [0.5, 0.4, 0.45], [0.6] * 3, [0.7] * 3) for s in range(5)]
    runs += [_run("classic", s, [0.5, 0.4, 0.45], [0.6 + g] * 3, [0.7, 0.7, 0.7 + (s - 2) * 0.1])
             for s, g in enumerate(gains)]
    recs = report.summarize(runs, "loss")
    classic = next(r for r in recs if r["preset"] == "classic")
    assert classic["delta_early_test_accuracy"]["verdict"] == "better"
    assert classic["delta_early_test_nll_ts"]["verdict"] == "equivalent"  # every seed's Δ NLL early is 0
    assert classic["delta_fixed_test_nll_ts"]["verdict"] == "inconclusive"  # -0.2 .. +0.2 around 0 at the end
    assert "verdict" not in classic["delta_fixed_test_loss"]  # raw NLL is calibration: no verdict
    text = report.findings(recs)
    assert "`classic` at 8: better in test accuracy early-stopped (Δ +0.116" in text
    assert "Of 4 verdicts, 2 better, 0 worse, 0 trivial, 1 equivalent, 1 inconclusive." in text
    assert "Margins: test accuracy ±0.02 (a difference most users would act on)" in text


def _cell(preset, deltas, size=8, base=0.7):
    """Runs of one preset whose test accuracy differs from the baseline's by ``deltas`` per seed."""
    return [_run(preset, s, [0.5, 0.4], [base + d] * 2, [0.5, 0.5], size=size) for s, d in enumerate(deltas)]


def test_verdicts_on_hand_made_records():
    rng = np.random.default_rng(1)
    runs = _cell("pretrain-zero", [0.0] * 12)
    runs += _cell("classic", rng.normal(0.0, 0.004, 12))  # equivalent: tight around 0
    runs += _cell("heavy", rng.normal(-0.05, 0.01, 12))  # a known difference
    runs += _cell("drop-path", rng.normal(0.0, 0.06, 12))  # inconclusive: too noisy for either
    cells = {r["preset"]: r["delta_early_test_accuracy"] for r in report.summarize(runs)
             if r["preset"] != "pretrain-zero"}
    assert [cells[p]["verdict"] for p in ("classic", "heavy", "drop-path")] == ["equivalent", "worse",
                                                                                "inconclusive"]
    assert {d["margin"] for d in cells.values()} == {0.02}
    # a tighter declared margin turns the equivalent cell inconclusive
    tight = {r["preset"]: r for r in report.summarize(runs, margins={"test_accuracy": 0.002})}
    assert tight["classic"]["delta_early_test_accuracy"]["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="no margin for 'accuracy'"):
        report.summarize(runs, margins={"accuracy": 0.01})
    with pytest.raises(ValueError, match="margin for test_loss must be a positive number, got -1"):
        report.summarize(runs, margins={"test_loss": -1})
    # a real but tiny difference, measured tightly: trivial, not better
    runs += _cell("weight-decay", rng.normal(0.004, 0.0005, 12))
    cells = {r["preset"]: r["delta_early_test_accuracy"] for r in report.summarize(runs)
             if r["preset"] != "pretrain-zero"}
    assert cells["weight-decay"]["verdict"] == "trivial"


def test_pooling_decides_what_single_cells_cannot():
    """Six cells of a small harm (about -0.03, paired SD 0.04, 10 seeds each) on two data sets x three sizes:
    every cell alone is inconclusive, the pooled interval excludes zero, and size is no moderator."""
    z = np.random.default_rng(3).normal(size=10)
    z = (z - z.mean()) / z.std(ddof=1)  # exactly mean 0, SD 1
    records = []
    for i, (source, size) in enumerate((a, n) for a in ("a", "b") for n in (8, 64, 512)):
        harm = -0.028 - 0.001 * i
        runs = _cell("pretrain-zero", [0.0] * 10, size=size) + _cell("classic", harm + 0.04 * z, size=size)
        records += [{**r, "source": source} for r in report.summarize(runs)]
    cells = [r["delta_early_test_accuracy"]["verdict"] for r in records if r["preset"] == "classic"]
    assert cells == ["inconclusive"] * 6
    rows = report.pooled(records)
    overall = next(r for r in rows if r["scope"] == "all" and r["comparison"] == "early"
                   and r["metric"] == "test_accuracy")
    assert overall["verdict"] == "worse" and overall["cells"] == 6 and overall["seeds"] == 60
    assert overall["ci"][1] < 0 and 0 <= overall["i2"] <= 1 and overall["method"] == "random-effects"
    assert overall["prediction_interval"][0] <= overall["ci"][0] and not overall["moderator"]["depends_on_size"]
    assert sum(overall["weights"].values()) == pytest.approx(1) and len(overall["weights"]) == 6
    assert {r["scope"] for r in rows} == {"all", "n=8", "n=64", "n=512"}
    assert {r["method"] for r in rows if r["scope"] != "all"} == {"strata"}


def test_report_pools_several_directories_into_out(tmp_path):
    import json

    dirs = []
    for name, shift in (("a", 0.0), ("b", 0.001)):
        d = tmp_path / name
        d.mkdir()
        runs = _cell("pretrain-zero", [0.0] * 6) + _cell("classic", [shift + 0.002 * (s % 3 - 1) for s in range(6)])
        (d / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
        dirs.append(str(d))
    with pytest.raises(ValueError, match="2 result directories need --out DIR"):
        report.report_many(dirs, make_plots=False)
    text = report.report_many(dirs, str(tmp_path / "pooled"), make_plots=False)
    rows = json.loads((tmp_path / "pooled" / "pooled.json").read_text())
    # two data sets at one size: strata, never random effects over 2 cells
    assert {r["scope"] for r in rows} == {"n=8"}
    row = next(r for r in rows if r["comparison"] == "fixed" and r["metric"] == "test_accuracy")
    assert row["preset"] == "classic" and row["cells"] == 2 and row["verdict"] == "equivalent"
    assert row["method"] == "strata" and row["weights"] == {"a n=8": 0.5, "b n=8": 0.5}
    assert {"preset", "against", "comparison", "metric", "scope", "delta", "ci", "df", "method", "weights",
            "prediction_interval", "moderator", "verdict"} <= set(row)
    assert "equivalent within ±0.02: `classic`" in text
    # with --out nothing is written outside it: each directory's report lies under OUT/<its name>
    assert sorted(os.listdir(tmp_path / "a")) == ["runs.jsonl"]
    pooled_dir = tmp_path / "pooled"
    assert (pooled_dir / "a" / "findings.md").exists() and (pooled_dir / "b" / "summary.json").exists()
    summary = json.loads((tmp_path / "pooled" / "a" / "summary.json").read_text())
    d = next(r for r in summary if r["preset"] == "classic")["delta_fixed_test_accuracy"]
    assert d["verdict"] in stats.VERDICTS and d["margin"] == 0.02 and len(d["deltas"]) == 6


def test_regimes_are_named_from_what_the_runs_measured():
    # memorises (train accuracy 1), test NLL rises after the selected point while accuracy holds: overconfident
    runs = [_run("pretrain-zero", s, [0.5, 0.4, 0.45], [0.8, 0.8, 0.8 + 0.001 * s], [0.5, 0.5, 0.7 + 0.01 * s],
                 train_acc=1.0, nll_ts=[0.5, 0.5, 0.45 + 0.01 * s]) for s in range(5)]
    # test accuracy falls after the selected point beyond noise: overfits
    runs += [_run("classic", s, [0.5, 0.4, 0.45], [0.8, 0.8, 0.7 - 0.01 * s], [0.5, 0.5, 0.6], train_acc=0.95)
             for s in range(5)]
    cells = {r["preset"]: r["regime"] for r in report.summarize(runs, "loss")}
    assert cells == {"pretrain-zero": ["memorises", "overconfident"], "classic": ["overfits"]}


def test_staged_seeds_keep_false_verdicts_at_alpha_and_end_equivalent():
    """One verdict read at each look of a staged grid at its O'Brien-Fleming-type level (2,000 sequential
    experiments each, the paired SD measured on SST-2): a true Δ of 0 gets a false better/worse verdict at most
    alpha of the time, and most experiments with |Δ| <= margin/2 end equivalent, before the last look on average."""
    rng = np.random.default_rng(0)
    sd, margin, stage, max_seeds = 0.025, 0.02, 5, 40

    def experiment(delta):
        d = rng.normal(delta, sd, max_seeds)
        for n in stats.looks(max_seeds, stage):
            verdict = stats.judge(d[:n], margin, True, 1, stats.nominal_alpha(n, stats.ALPHA, max_seeds, stage))
            if verdict["verdict"] != "inconclusive":
                return verdict["verdict"], n
        return "inconclusive", max_seeds

    null = [experiment(0.0)[0] for _ in range(2000)]
    assert sum(v in ("better", "worse") for v in null) / 2000 <= stats.ALPHA
    near = [experiment(rng.uniform(-margin / 2, margin / 2)) for _ in range(2000)]
    assert sum(v == "equivalent" for v, _ in near) / 2000 > 0.5
    assert np.mean([n for _, n in near]) < max_seeds  # stopping early saves seeds
