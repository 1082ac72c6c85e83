"""The verdict rules on constructed cells with known answers: answers per size where size moderates, no cell ruling
a pool, five outcomes, calibration apart from accuracy, each method against its own control, and seeds that stop
with the error spent over the looks."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from hfreg.finetune import report, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(preset, seed, acc, size=64, nll_ts=0.5, loss=0.5, base=0.7, config=None, passes=None, extra=None):
    """A run with two evaluation points, equal at both, test accuracy ``base + acc``."""
    point = {"selection_loss": 0.4, "selection_accuracy": 0.9, "selection_f1": 0.9, "train_loss": 0.1,
             "train_accuracy": 0.9, "test_accuracy": base + acc, "test_f1": base + acc, "test_loss": loss,
             "test_nll_ts": nll_ts, "test_ece": 0.1, "test_brier": 0.2}
    evals = [{**point, "step": i + 1, "epoch": (i + 1) / 2} for i in range(2)]
    return {"experiment": {"name": "default", "settings": {"labels": ["0", "1"]}}, "preset": preset,
            "train_size": size, "seed": seed, "learning_rate": 1e-4, "selection_majority": 0.5, "evals": evals,
            "selected_step": 1, **({"preset_config": config} if config else {}),
            **({"forward_passes": passes} if passes else {}), **(extra or {})}


def _cell(preset, deltas, size=64, **kw):
    return [_run(preset, s, d, size, **kw) for s, d in enumerate(deltas)]


def _unit(n, seed):
    z = np.random.default_rng(seed).normal(size=n)
    return (z - z.mean()) / z.std(ddof=1)


def _row(rows, preset, scope, comp="early", metric="test_accuracy", against="pretrain-zero"):
    return next(r for r in rows if (r["preset"], r["against"], r["scope"], r["comparison"], r["metric"])
                == (preset, against, scope, comp, metric))


# ------------------------------------------------------------------------------------------------ pooling
def _grid(effects: dict, sd=0.02, seeds=10):
    """Records of two data sets x the sizes in ``effects`` ({size: Δ}) for `heavy`, with the same seeds' noise."""
    records = []
    for source in ("a", "b"):
        for size, effect in effects.items():
            z = _unit(seeds, hash((source, size)) % 1000)
            runs = _cell("pretrain-zero", [0.0] * seeds, size) + _cell("heavy", effect + sd * z, size)
            records += [{**r, "source": source} for r in report.summarize(runs)]
    return records


def test_a_harm_at_one_size_is_answered_per_size_not_averaged_away():
    rows = report.pooled(_grid({64: -0.09, 256: 0.0, 1024: 0.0}))
    early = _row(rows, "heavy", "n=64")
    assert early["moderator"]["depends_on_size"] and early["moderator"]["p"] < 1e-4
    assert early["verdict"] == "worse" and early["method"] == "strata"
    assert _row(rows, "heavy", "n=256")["verdict"] != "worse"
    # no mean over sizes where size matters (the NLL columns, flat here, still pool)
    assert not any(r["scope"] == "all" and r["metric"] == "test_accuracy" for r in rows)
    text = report.answer(rows)
    assert "`heavy`: early-stopped depends on size (worse at n=64" in text


def test_without_a_moderator_three_or_more_cells_pool_with_a_prediction_interval():
    rows = report.pooled(_grid({64: -0.03, 256: -0.03, 1024: -0.03}, sd=0.04))
    overall = _row(rows, "heavy", "all")
    assert overall["method"] == "random-effects" and overall["cells"] == 6 and overall["df"] == 5
    lo, hi = overall["prediction_interval"]
    assert lo <= overall["ci"][0] and overall["ci"][1] <= hi
    assert not overall["moderator"]["depends_on_size"]


def test_strata_against_a_hand_computation():
    y, v, df = [0.01, -0.03], [1e-4, 4e-4], [9, 19]
    out = stats.strata(y, v, df, alpha=0.05)
    se = math.sqrt(sum(v)) / 2
    dof = sum(v) ** 2 / (v[0] ** 2 / 9 + v[1] ** 2 / 19)
    half = sps.t.ppf(0.975, dof) * se
    assert out["delta"] == pytest.approx(-0.01) and out["df"] == pytest.approx(dof)
    assert out["ci"] == pytest.approx([-0.01 - half, -0.01 + half]) and out["weights"] == [0.5, 0.5]


def test_between_sizes_and_prediction_interval_against_hand_computations():
    y, se = np.array([-0.09, 0.0, -0.01]), np.array([0.01, 0.008, 0.009])
    w = 1 / se ** 2
    q = (w * (y - (w * y).sum() / w.sum()) ** 2).sum()
    out = stats.between_sizes(y, se)
    assert out["q"] == pytest.approx(q) and out["p"] == pytest.approx(sps.chi2.sf(q, 2)) and out["df"] == 2
    y, v = np.array([0.01, -0.02, 0.03, 0.0]), np.array([1e-4, 2e-4, 1e-4, 4e-4])
    pool = stats.random_effects(y, v)
    se = (pool["ci"][1] - pool["delta"]) / sps.t.ppf(0.975, 3)
    half = sps.t.ppf(0.975, 2) * math.sqrt(pool["tau"] ** 2 + se ** 2)
    assert pool["prediction_interval"] == pytest.approx([pool["delta"] - half, pool["delta"] + half])
    assert stats.random_effects([0.01, 0.02], [1e-4, 1e-4])["ci"] == [pytest.approx(float("nan"), nan_ok=True)] * 2


def test_a_near_copy_cell_does_not_rule_the_pool():
    """Five noisy cells and one where the preset changes nothing (paired SD 6e-5): unfloored, that cell would take
    nearly all the weight; floored at its test set's resolution, no cell takes more than half."""
    records = []
    for i, size in enumerate((16, 64, 256)):
        for source in ("a", "b"):
            sd = 6e-5 if (source, size) == ("a", 64) else 0.03
            runs = _cell("pretrain-zero", [0.0] * 10, size) + _cell("weight-decay",
                                                                     0.01 * (i - 1) + sd * _unit(10, i), size)
            records += [{**r, "source": source, "resolution": {"test_accuracy": 0.8 * 0.2 / 500,
                                                               "test_nll_ts": 0.16 / 500}}
                        for r in report.summarize(runs)]
    overall = _row(report.pooled(records), "weight-decay", "all")
    assert max(overall["weights"].values()) < 0.5
    unfloored = report.pooled([{**r, "resolution": None} for r in records])
    assert max(_row(unfloored, "weight-decay", "all")["weights"].values()) > 0.9


# ------------------------------------------------------------------------------------------------ verdicts
def test_a_calibration_only_nll_change_gets_no_verdict():
    """Raw NLL falls by 0.3 (overconfidence removed) while accuracy and temperature-scaled NLL stay: no 'better'."""
    z = _unit(10, 0)
    runs = _cell("pretrain-zero", [0.0] * 10, loss=0.9)
    runs += [_run("heavy", s, 0.001 * z[s], loss=0.6 + 0.01 * z[s], nll_ts=0.5 + 0.001 * z[s]) for s in range(10)]
    heavy = next(r for r in report.summarize(runs) if r["preset"] == "heavy")
    assert heavy["delta_early_test_loss"]["mean"] == pytest.approx(-0.3)
    assert "verdict" not in heavy["delta_early_test_loss"]
    assert heavy["delta_early_test_nll_ts"]["verdict"] == "equivalent"
    assert heavy["delta_early_test_accuracy"]["verdict"] == "equivalent"


def test_a_method_is_judged_against_its_control_and_at_equal_compute():
    """R-Drop = classic dropout + a consistency term at 2 passes a step: better than the baseline only because
    classic is; against classic (and classic at twice the steps) it is not."""
    z = _unit(12, 1)
    runs = _cell("pretrain-zero", [0.0] * 12)
    runs += _cell("classic", 0.03 + 0.01 * z)
    runs += _cell("classic@2x", 0.03 + 0.01 * z, extra={"equal_compute_for": ["rdrop"]})
    runs += _cell("rdrop", 0.031 + 0.01 * z + 0.004 * _unit(12, 2), config={"control": "classic"}, passes=2)
    rows = {(r["preset"], r["against"]): r for r in report.summarize(runs)}
    assert rows[("rdrop", "pretrain-zero")]["delta_early_test_accuracy"]["verdict"] == "better"
    for control in ("classic", "classic@2x"):
        assert rows[("rdrop", control)]["delta_early_test_accuracy"]["verdict"] in ("equivalent", "inconclusive")
    assert rows[("rdrop", "classic")]["passes"] == 2
    text = report.findings(list(rows.values()))
    assert "`rdrop` vs `classic` at 2× the passes per step at 64:" in text
    # the control missing from the directory: said, not silently dropped
    alone = [r for r in runs if not r["preset"].startswith("classic")]
    assert "`rdrop` is judged against `classic`, which has no runs here" in report.findings(report.summarize(alone))


def test_stopping_on_the_primary_endpoint_and_for_futility():
    design = {"max_seeds": 40, "stage": 5}

    def row(deltas):
        r = {"preset": "classic", "against": "pretrain-zero", "design": design}
        for c in report.COMPARISONS:
            for m in report.VERDICT_METRICS:
                r[f"delta_{c}_{m}"] = {**stats.paired(deltas), "deltas": list(deltas)}
        report._adjust([r], report.check_margins(None), design)
        return r

    z = _unit(10, 3)
    assert report.stop_reason([row(0.0005 * z)]) == "decided"  # equivalent already
    assert report.stop_reason([row(-0.15 + 0.01 * z)]) == "decided"  # a large harm
    assert report.stop_reason([row(0.02 + 0.2 * z)]) == "futile"  # SD 0.2: nothing decides by 40 seeds
    assert report.stop_reason([row(0.01 + 0.03 * z)]) is None  # could still be decided: go on


def test_boundaries_spend_alpha_as_the_obrien_fleming_type_function_says():
    # at the first look the boundary is the spending function's own quantile; two equal looks: c2 from the table
    first = stats._boundaries((0.5, 1.0), 0.05)
    assert first[0] == pytest.approx(sps.norm.isf(stats.spent(0.5, 0.05) / 2), abs=2e-3)
    assert first[1] == pytest.approx(1.977, abs=0.01)
    levels = [stats.nominal_alpha(n, 0.05, 40, 5) for n in stats.looks(40, 5)]
    assert levels == sorted(levels) and levels[-1] < 0.05 and levels[0] < 1e-5
    assert stats.nominal_alpha(7, 0.05, 40, 5) == stats.nominal_alpha(10, 0.05, 40, 5)  # next planned look
    assert stats.nominal_alpha(7, 0.05) == 0.05  # a fixed grid: one look


def test_the_sequential_benchmark_keeps_the_family_wise_error(tmp_path):
    """`benchmarks/sequential.py` on a constructed grid (4 arms, noise of the published cells' size): its last line
    is the JSON the docs quote, and its FWER is within Monte-Carlo error of at most 0.05."""
    rng = np.random.default_rng(0)
    runs = []
    for size in (64, 512):
        runs += _cell("pretrain-zero", [0.0] * 8, size)
        for p in ("classic", "drop-path", "heavy", "weight-decay"):
            runs += [_run(p, s, rng.normal(0, 0.025), size, nll_ts=0.5 + rng.normal(0, 0.03)) for s in range(8)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sequential.py"), str(tmp_path),
                           "--sims", "60"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"fwer", "stopped_before_max", "mean_seeds"} <= set(out) and out["cells"] == 8
    assert out["fwer"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 60)
    assert out["stopped_before_max"] > 0.5 and out["mean_seeds"] < 40


def test_bad_margins_are_one_line_errors():
    runs = _cell("pretrain-zero", [0.0] * 3) + _cell("classic", [0.01, 0.0, -0.01])
    with pytest.raises(ValueError, match=r"^the margin for test_nll_ts must be a positive number, got 0$"):
        report.summarize(runs, margins={"test_nll_ts": 0})


def test_a_one_seed_grid_reads_right():
    """A first run with one seed per cell: differences, no verdicts, no division by zero."""
    runs = _cell("pretrain-zero", [0.0]) + _cell("classic", [0.01])
    text = report.findings(report.summarize(runs))
    assert "One seed per cell: no verdicts" in text and "+0.010 (one seed)" in text
    assert "Bonferroni" not in text and "/0" not in text and "Margins: ." not in text


def test_report_with_out_writes_only_under_it(tmp_path):
    for parent in ("x", "y"):
        (tmp_path / parent / "same").mkdir(parents=True)
        runs = _cell("pretrain-zero", [0.0] * 3) + _cell("classic", [0.01, 0.0, -0.01])
        (tmp_path / parent / "same" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    dirs = [str(tmp_path / "x" / "same"), str(tmp_path / "y" / "same")]
    with pytest.raises(ValueError, match="two result directories are named 'same'"):
        report.report_many(dirs, str(tmp_path / "out"), make_plots=False)
    assert not (tmp_path / "out").exists()
