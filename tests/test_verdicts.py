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

from hfreg.finetune import report, stats, tasks

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


def test_a_null_arms_verdict_is_said_to_be_a_false_claim():
    """An arm that differs from the baseline only in an incidental draw (`placebo`: its batch order) has a true Δ of
    0: a verdict other than equivalent or inconclusive on it is said to be a false claim; an arm that changes a rate
    as well, or keeps the baseline's draws, is judged as any other."""
    base = {"attention": 0.0, "hidden": 0.0, "weight_decay": 0.0}
    runs = _cell("pretrain-zero", [0.0] * 10, config=base)
    runs += _cell("placebo", 0.05 + 0.002 * _unit(10, 1), config={**base, "data_order": "redrawn"})
    runs += _cell("shuffled-dropout", 0.05 + 0.002 * _unit(10, 2),
                  config={**base, "hidden": 0.1, "data_order": "redrawn"})
    rows = report.summarize(runs)
    assert [r["preset"] for r in rows if r.get("null_arm")] == ["placebo"]
    words = report.findings(rows).split("In words:")[1]
    (placebo,) = [line for line in words.splitlines() if line.startswith("- `placebo`")]
    assert "better in test accuracy" in placebo and "A false claim: `placebo` differs from `pretrain-zero` only " \
        "in an incidental draw, so its true Δ is 0" in placebo
    assert words.count("A false claim") == 1


def test_the_margin_note_says_what_one_run_resolves_at_each_sizes_baseline():
    """One run's accuracy is known to ±1.96 sqrt(p(1-p)/n): given at the baseline's accuracies, lowest to highest
    over the sizes, not at their mean (0.77 for 0.70 and 0.83 would describe neither size)."""
    from hfreg.finetune.report.findings import margin_reasons

    rows = [{"preset": "pretrain-zero", "early_test_accuracy": a, "test_examples": 1821, "train_size": n}
            for a, n in ((0.70, 64), (0.834, 512))]
    assert "one run's accuracy at the baseline's 0.70–0.83 is known to ±0.017–0.021 (95%)" in margin_reasons(rows)
    assert "one run's accuracy near 0.70 is known to ±0.021 (95%)" in margin_reasons(rows[:1])


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


def test_a_rate_sweep_is_answered_per_size_over_the_data_sets():
    """pooled.md's sweep lines: each rate's pooled Δ with its interval and verdict per size, the rates by verdict,
    the rate of the highest pooled Δ, and ×0 when no rate beats none; read from the pooled rows themselves."""
    from hfreg.finetune.report.pooled_page import pooled_sweep_text

    # at 512 every rate is below none (0.1 by less than the margin, not by a rounding error of a zero mean)
    effects = {"hidden=0.1": {64: 0.0, 512: -0.001}, "hidden=0.3": {64: 0.05, 512: -0.004},
               "hidden=0.6": {64: -0.08, 512: -0.06}}
    records = []
    for i, source in enumerate(("a", "b")):
        for j, size in enumerate((64, 512)):
            runs = _cell("pretrain-zero", [0.0] * 12, size)
            for k, (preset, by_size) in enumerate(effects.items()):
                runs += _cell(preset, by_size[size] + 0.002 * _unit(12, 100 * i + 10 * j + k), size,
                              config={"sweep": {"family": "hidden", "value": float(preset.split("=")[1])}})
            records += [{**r, "source": source} for r in report.summarize(runs)]
    rows = report.pooled(records)
    points = report.sweep_points([{"preset": p, "preset_config": {"sweep": {"family": "hidden", "value": v}}}
                                  for p, v in (("hidden=0.1", 0.1), ("hidden=0.3", 0.3), ("hidden=0.6", 0.6))])
    lines = pooled_sweep_text("hidden", points["hidden"], rows)
    at = {line.split(":")[0]: line for line in lines if line.startswith("- n=")}
    top = _row(rows, "hidden=0.3", "n=64")
    for size in (64, 512):
        for preset, value in points["hidden"].items():
            if preset != "pretrain-zero":
                r = _row(rows, preset, f"n={size}")
                assert f"{value:g} {r['delta']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] {r['verdict']}" \
                    in at[f"- n={size}"]
    assert "equivalent to none at 0.1" in at["- n=64"].lower() and "worse at 0.6; better at 0.3" in at["- n=64"]
    # 0.3 is better, so none (0) is worse than it, and 0.1's interval lies wholly below 0.3's
    assert at["- n=64"].endswith(f"Highest pooled Δ: 0.3 ({top['delta']:+.3f} [{top['ci'][0]:+.3f}, "
                                 f"{top['ci'][1]:+.3f}]); not shown worse than another rate: 0.3.")
    assert _row(rows, "hidden=0.1", "n=64")["ci"][1] < top["ci"][0]
    # at 512 no rate is shown better than none: none stays, and 0.6 (worse than none) goes
    assert "worse at 0.6;" in at["- n=512"] and "Highest pooled Δ: 0, no rate's pooled Δ is above none; not shown " \
        "worse than another rate: 0, " in at["- n=512"] and not at["- n=512"].endswith("0.6.")
    text = report.pooled_text(rows, ["a", "b"], sweeps=points)
    assert text.index("Rate sweep `hidden` over the data sets") < text.index("### n=64")
    # one data set: its pool (the test set counted as a draw) answers "how much" too, the README quoting it
    one = report.pooled([r for r in records if r["source"] == "a"])
    alone = report.pooled_text(one, ["a"], sweeps=points)
    assert "Rate sweep `hidden` pooled (" in alone and "over the data sets" not in alone
    assert alone.index("Rate sweep") < alone.index("### n=64")
    assert "cells)" not in text and "cell)" not in text
    # a rate that one data set lacks pools another set of cells: each rate says how many it has
    fewer = report.pooled([r for r in records if not (r["source"] == "b" and r["preset"] == "hidden=0.6")])
    at = {line.split(":")[0]: line for line in pooled_sweep_text("hidden", points["hidden"], fewer)}
    assert "equivalent (2 cells)" in at["- n=64"] and "worse (1 cell)" in at["- n=64"]
    assert at["- n=64"].endswith("not shown worse than another rate: not said, the rates pool different data sets.")


def test_a_presets_x0_that_is_not_the_baseline_keeps_its_own_place_in_the_sweep():
    """`classic*0` keeps classic's weight decay, so it is an arm of its own at rate 0: shown worse than none, it
    leaves the set not shown worse than another rate, and none (the best here) stays, named as such."""
    from hfreg.finetune.report.pooled_page import pooled_sweep_text

    def row(preset, delta, ci, verdict):
        return {"scope": "n=64", "comparison": "early", "metric": "test_accuracy", "against": "pretrain-zero",
                "preset": preset, "delta": delta, "ci": list(ci), "verdict": verdict, "cells": 2,
                "weights": {"a/n=64": 0.5, "b/n=64": 0.5}}

    points = report.numbers.Sweep({"pretrain-zero": 0.0, "classic*0": 0.0, "classic": 1.0})
    rows = [row("classic*0", -0.03, (-0.05, -0.01), "worse"), row("classic", -0.004, (-0.008, -0.0005), "trivial")]
    (line,) = [x for x in pooled_sweep_text("classic", points, rows) if x.startswith("- n=64")]
    assert line.endswith("Highest pooled Δ: none, no rate's pooled Δ is above none; not shown worse than another "
                         "rate: none.")
    assert "Worse at ×0; worse but within the margin at ×1." in line  # a trivial difference says its side
    with pytest.raises(TypeError, match="must be a numbers.Sweep"):  # a plain copy would drop its ×1 rates unsaid
        pooled_sweep_text("classic", dict(points), rows)
    # a rate without a pooled row at this size is named apart, not judged
    (line,) = [x for x in pooled_sweep_text("classic", points, rows[:1]) if x.startswith("- n=64")]
    assert line.endswith("not shown worse than another rate: none (×1: no pooled row at this size).")
    # a loss (a causal LM's primary metric): the lowest Δ is the best, and a rate worse than none leaves the set
    loss = [{**row(p, -d, (-hi, -lo), v), "metric": "test_loss", "problem_type": "causal-lm"}
            for p, d, (lo, hi), v in (("classic*0", 0.03, (0.01, 0.05), "better"), ("classic", -0.02, (-0.03, -0.01),
                                                                                   "worse"))]
    (line,) = [x for x in pooled_sweep_text("classic", points, loss) if x.startswith("- n=64")]
    assert line.endswith("Lowest pooled Δ: ×0 (-0.030 [-0.050, -0.010]); not shown worse than another rate: ×0.")
    # one data set's findings name them alike
    from hfreg.finetune.report.findings import sweep_text

    r = {"train_size": 64, "sign": 1, "best": 1.0, "best_preset": "classic", "best_delta": 0.01,
         "best_ci": [-0.01, 0.03], "not_worse_than_best": ["classic", "classic*0", "pretrain-zero"],
         **{v: [] for v in stats.VERDICTS}, "inconclusive": [0.0, 1.0], "trivially_better": []}
    # the verdicts no rate got are left out, not listed "at none"
    assert sweep_text("classic", points, [r])[2] == ("- n=64: inconclusive at ×0, ×1. Highest mean Δ: ×1 (+0.010 "
                                                     "[-0.010, +0.030]), the largest rate swept; not shown worse than "
                                                     "another rate: none, ×0, ×1.")
    trivial = {**r, "inconclusive": [0.0], "trivial": [1.0]}
    said = "- n=64: {} but within the margin at ×1; inconclusive at ×0."
    assert sweep_text("classic", points, [trivial])[2].startswith(said.format("worse"))
    trivial["trivially_better"] = [1.0]
    assert sweep_text("classic", points, [trivial])[2].startswith(said.format("better"))
    # where none has the highest mean, it is said as the pooled lines say it
    r = {**r, "best": 0.0, "best_preset": "pretrain-zero", "best_delta": 0.0, "best_ci": [0.0, 0.0]}
    assert "Highest mean Δ: none, no rate's mean Δ is above none; " in sweep_text("classic", points, [r])[2]


def test_one_data_sets_sweep_of_a_loss_names_its_lowest_rate_the_best():
    """A causal LM's primary metric is its test loss: the rate that lowers it most is the best, and the rate shown
    worse (a higher loss) leaves the set not shown worse than another rate, with none."""
    def run(preset, seed, loss, value):
        point = {"selection_loss": 1.0, "selection_exact_match": 0.5, "selection_perplexity": 2.7,
                 "train_loss": 0.5, "test_loss": loss, "test_exact_match": 0.5, "test_perplexity": 2.7}
        return {"experiment": {"name": "default", "settings": {"problem_type": "causal-lm"}}, "preset": preset,
                "train_size": 64, "seed": seed, "learning_rate": 1e-4, "selected_step": 1,
                "evals": [{**point, "step": i + 1, "epoch": (i + 1) / 2} for i in range(2)],
                **({"preset_config": {"sweep": {"family": "hidden", "value": value}}} if value else {})}

    runs = []
    # 0.2 and 0.4 differ from none by far less than the margin, but surely: trivial, on either side
    arms = (("pretrain-zero", 0, 0.0, 1e-4), ("hidden=0.1", 0.1, -0.05, 3e-3), ("hidden=0.2", 0.2, -0.004, 1e-4),
            ("hidden=0.3", 0.3, 0.06, 3e-3), ("hidden=0.4", 0.4, 0.004, 1e-4))
    for k, (preset, value, effect, sd) in enumerate(arms):
        runs += [run(preset, s, 1.0 + effect + sd * z, value) for s, z in enumerate(_unit(8, k + 1))]
    (row,) = report.dose_response(report.summarize(runs), report.sweep_points(runs)["hidden"])
    assert row["best_preset"] == "hidden=0.1" and row["not_worse_than_best"] == ["hidden=0.1"]
    assert row["better"] == [0.1] and row["worse"] == [0.3] and row["best_ci"][1] < 0
    # a lower loss is the better side: 0.2's trivial difference is better, 0.4's worse
    assert row["trivial"] == [0.2, 0.4] and row["trivially_better"] == [0.2]


def test_pooled_md_warns_where_cells_pool_on_their_seeds_variance_alone():
    """Cells without stored predictions have no test-set terms, and intervals over them cover less than their
    level: pooled.md says how many there are, and says nothing where every cell has its terms."""
    records = _grid({64: -0.09, 256: 0.0, 1024: 0.0})
    text = report.pooled_text(report.pooled(records), ["a", "b"])
    cells = sum(r["cells"] for r in report.pooled(records) if r["comparison"] == "early"
                and r["metric"] == "test_accuracy" and r["scope"] != "all")
    assert f"**Seeds' variance alone:** {cells} of the {cells} cells of the per-size rows" in text
    for r in records:
        for key in [k for k in r if k.startswith("delta_")]:
            r[key]["test_set"] = {"per_seed": 0.0, "examples": 0.0, "disagreements": 1}
    key = "delta_early_test_accuracy"
    half = [dict(r, **{key: {k: v for k, v in r[key].items() if k != "test_set"}})
            if r["train_size"] == 64 and key in r else r for r in records]
    assert "Seeds' variance alone" not in report.pooled_text(report.pooled(records), ["a", "b"])
    assert "Seeds' variance alone:** 2 of the 6 cells" in report.pooled_text(report.pooled(half), ["a", "b"])


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
    # one verdict at every size is not an answer that depends on size, however much the Δ behind it does
    same = [dict(r, verdict="equivalent") if r["metric"] == "test_accuracy" else r for r in rows]
    assert "`heavy`: early-stopped equivalent at every size, by a Δ that differs with size; fixed budget " \
           "equivalent at every size, by a Δ that differs with size." in report.answer(same)


def test_the_answer_comes_from_each_size_even_where_a_row_over_all_cells_decides():
    """No size effect found is not sizes shown alike, and a row over all cells leans on the larger size's cells: the
    answer reads each size's row, and says one verdict once only where every size has it."""
    def row(comp, scope, verdict):
        return {"preset": "classic", "against": "pretrain-zero", "comparison": comp, "metric": "test_accuracy",
                "scope": scope, "verdict": verdict, "margin": 0.02,
                "moderator": {"depends_on_size": False, "p": 0.7}}

    rows = [row(c, s, v) for c in ("early", "fixed")
            for s, v in (("n=64", "inconclusive"), ("n=512", "equivalent"), ("all", "equivalent"))]
    text = report.answer(rows)
    assert "equivalent within ±0.02: `classic`" not in text
    assert "`classic`: early-stopped per size: inconclusive at n=64, equivalent at n=512; fixed budget per size: " \
           "inconclusive at n=64, equivalent at n=512." in text
    alike = [dict(r, verdict="equivalent") for r in rows]
    assert "equivalent within ±0.02: `classic`." in report.answer(alike)


def test_the_findings_name_the_cells_whose_seeds_mostly_chose_the_edge_of_the_rate_grid():
    def record(preset, size, chosen):
        return {"preset": preset, "against": "pretrain-zero", "train_size": size, "learning_rates_chosen": chosen}

    records = [record("a", 64, {"5e-05": 6, "0.0001": 4}), record("b", 512, {"0.0001": 1, "0.0002": 14}),
               record("c", 512, {"5e-05": 5, "0.0002": 5}), record("d", 64, {"0.0001": 9, "0.0002": 1})]
    text = report.rates_text(records, [5e-05, 0.0001, 0.0002])
    assert "At the grid's edge in over half of a cell's seeds: `a` at 64 (lowest, 5e-05: 6 of 10), `b` at 512 " \
           "(highest, 0.0002: 14 of 15);" in text
    assert "`c`" not in text and "`d`" not in text  # half is not over half; the middle rate is no edge
    assert "edge" not in report.rates_text(records)  # no grid recorded (older records): nothing said


def test_the_other_judged_metric_names_every_pooled_row_it_shows_better_or_worse():
    """Below the answer, one line per judged metric besides the primary one: every pooled row of it with a better or
    worse verdict, both comparisons, over all cells and per size alike — its rows are over all cells where its own
    between-sizes test allows, which need not be where the answer's are; where no row is, it says so."""
    from hfreg.finetune.report.pooled_page import secondary

    def row(preset, against, comp, metric, scope, verdict, **extra):
        return {"preset": preset, "against": against, "comparison": comp, "metric": metric, "scope": scope,
                "verdict": verdict, **extra}

    rows = [row(p, a, c, m, s, "equivalent") for p, a in (("classic", "pretrain-zero"), ("rdrop", "classic"))
            for c in ("early", "fixed") for m in ("test_accuracy", "test_nll_ts") for s in ("n=64", "n=512")]
    lead = "**Test NLL after temperature scaling** (every pooled row of it, both comparisons): "
    assert secondary(rows) == lead + "no row is better or worse."
    changed = {("rdrop", "early", "n=512"): "better", ("rdrop", "fixed", "n=512"): "worse",
               ("classic", "early", "n=64"): "better", ("rdrop", "early", "n=64"): "trivial"}
    rows = [dict(r, verdict=changed.get((r["preset"], r["comparison"], r["scope"]), r["verdict"]))
            if r["metric"] == "test_nll_ts" else r for r in rows]
    # an all-cells row of this metric where the answer reads per size: both it and the size it hides are named
    rows.append(row("classic", "pretrain-zero", "early", "test_nll_ts", "all", "inconclusive"))
    rows.append(row("classic", "pretrain-zero", "fixed", "test_nll_ts", "all", "worse"))
    assert secondary(rows) == lead + ("better: `classic` (early-stopped at n=64), `rdrop` vs `classic` (early-stopped "
                                      "at n=512); worse: `rdrop` vs `classic` (fixed budget at n=512), `classic` "
                                      "(fixed budget over all cells); no other row is better or worse.")
    # the primary endpoint's differences are the answer's, not this line's; a regression's other metric by its name
    assert secondary([r for r in rows if r["metric"] == "test_accuracy"]) == ""
    regression = [row("classic", "pretrain-zero", "early", m, "n=64", v, problem_type="regression")
                  for m, v in (("test_r2", "worse"), ("test_spearman", "worse"))]
    assert secondary(regression) == ("**Test Spearman** (every pooled row of it, both comparisons): worse: "
                                     "`classic` (early-stopped at n=64); no other row is better or worse.")


def test_one_data_set_at_two_sizes_is_answered_at_every_size_with_its_stopping_bias_said():
    """Two cells never pool over all cells, so an arm with one verdict at both sizes under both comparisons heads
    the answer as such; the moderator lines say that two cells give no slope; once every staged cell has stopped,
    the page keeps saying that stopped cells' estimates lean towards the effect that stopped them."""
    records = [r for r in _grid({64: 0.0, 256: 0.0}, sd=0.004) if r["source"] == "a"]
    rows = report.pooled(records)
    assert not any(r["scope"] == "all" for r in rows)
    assert {_row(rows, "heavy", f"n={n}", c)["verdict"] for n in (64, 256) for c in ("early", "fixed")} == {
        "equivalent"}
    stopped = [("default", n, "heavy", 10, "stopped: decided") for n in (64, 256)]
    text = report.pooled_text(rows, ["a"], stages=stopped)
    assert "early-stopped and at a fixed budget alike): equivalent within ±0.02: `heavy`." in text
    assert "slope n/a with fewer than 3 cells: no evidence that size matters" in text
    assert "Size as a moderator (test accuracy, fixed budget), by the same test:" in text
    bias = "a stopped cell's estimate leans towards the effect that stopped it"
    assert bias in text and "**Not final:**" not in text
    waiting = report.pooled_text(rows, ["a"], stages=[stopped[0], ("default", 256, "heavy", 10, "open")])
    assert "**Not final:**" in waiting and bias not in waiting
    assert bias not in report.pooled_text(rows, ["a"])  # a fixed grid: nothing stopped it


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
    # a test set's part is known without seed error: it widens the interval but adds no df penalty
    fixed = stats.strata(y, v, df, alpha=0.05, fixed=[2e-4, 0.0])
    assert fixed["se"] == pytest.approx(math.sqrt(sum(v) + 2e-4) / 2)
    assert fixed["df"] == pytest.approx((sum(v) + 2e-4) ** 2 / (v[0] ** 2 / 9 + v[1] ** 2 / 19))


def test_test_set_terms_against_a_crossed_decomposition():
    """Per-example differences d_js = a_j + b_s + e_js: `per_seed` is Var_j(d_js)/N averaged over seeds (McNemar's
    for 0/1 correctness), `examples` recovers sigma_a^2/N, which more seeds do not shrink."""
    rng = np.random.default_rng(0)
    n_ex, n_seeds = 4000, 12
    d = rng.normal(0, 0.3, (n_ex, 1)) + rng.normal(0, 0.02, (1, n_seeds)) + rng.normal(0, 0.5, (n_ex, n_seeds))
    terms = stats.test_set_terms(d)
    assert terms["examples"] * n_ex == pytest.approx(0.09, rel=0.1)
    assert terms["per_seed"] == pytest.approx(d.var(axis=0, ddof=1).mean() / n_ex)
    b, c = 30, 10  # 0/1 correctness: 30 examples only the arm gets right, 10 only its control
    one = np.zeros((400, 1))
    one[:b], one[b:b + c] = 1, -1
    mcnemar = (b + c) / 400 ** 2 - ((b - c) / 400) ** 2 / 400
    assert stats.test_set_terms(one)["per_seed"] == pytest.approx(mcnemar * 400 / 399)
    assert stats.test_set_terms(np.zeros((50, 5))) == {"per_seed": 0.0, "examples": 0.0, "disagreements": 0}


def test_between_sizes_and_prediction_interval_against_hand_computations():
    groups = [[(-0.09, 1e-4), (-0.07, 1e-4)], [(0.0, 1e-4), (0.01, 1e-4)]]
    w = np.full(2, 1e4)
    q_within = sum(float((w * (np.array([m for m, _ in g]) - np.mean([m for m, _ in g])) ** 2).sum()) for g in groups)
    tau2 = max(0.0, (q_within - 2) / (2 * (w.sum() - (w ** 2).sum() / w.sum())))
    se2 = np.array([2 * (1e-4 + tau2) / 4] * 2)
    mu = np.array([-0.08, 0.005])
    q = float(((mu - mu.mean()) ** 2 / se2).sum())
    out = stats.between_sizes(groups)
    assert out["tau_within"] == pytest.approx(math.sqrt(tau2)) and out["q"] == pytest.approx(q)
    assert out["p"] == pytest.approx(sps.chi2.sf(q, 1)) and out["df"] == 1
    y, v = np.array([0.01, -0.02, 0.03, 0.0]), np.array([1e-4, 2e-4, 1e-4, 4e-4])
    pool = stats.random_effects(y, v)
    se = (pool["ci"][1] - pool["delta"]) / sps.t.ppf(0.975, 3)
    half = sps.t.ppf(0.975, 2) * math.sqrt(pool["tau"] ** 2 + se ** 2)
    assert pool["prediction_interval"] == pytest.approx([pool["delta"] - half, pool["delta"] + half])
    assert stats.random_effects([0.01, 0.02], [1e-4, 1e-4])["ci"] == [pytest.approx(float("nan"), nan_ok=True)] * 2


def test_a_spread_between_data_sets_is_not_read_as_an_effect_of_size():
    """Two data sets that differ by 0.04 at every size, the same at each size: the mixed-effects test adds that
    spread to every size's variance and sees no moderator; the fixed-strata test would."""
    groups = [[(-0.02 + 0.001 * i, 2e-5), (0.02 + 0.001 * i, 2e-5)] for i in range(3)]
    assert stats.between_sizes(groups)["p"] > 0.5
    fixed = [[(m, v) for m, v in g] for g in groups]
    mu, se2 = [np.mean([m for m, _ in g]) for g in fixed], [sum(v for _, v in g) / 4 for g in fixed]
    q = sum((m - np.mean(mu)) ** 2 / s2 for m, s2 in zip(mu, se2))
    assert sps.chi2.sf(q, 2) < stats.between_sizes(groups)["p"]


def test_a_near_copy_cell_is_weighted_by_what_its_test_set_resolves():
    """Five noisy cells and one where the preset changes little (paired SD 6e-5 over 10 seeds, 4 of 500 test
    examples differing per seed): its variance is at least its McNemar variance over its seeds, not its seeds'
    spread alone, and every cell's share of the weight is reported."""
    records = []
    for i, size in enumerate((16, 64, 256)):
        for source in ("a", "b"):
            sd = 6e-5 if (source, size) == ("a", 64) else 0.03
            runs = _cell("pretrain-zero", [0.0] * 10, size) + _cell("weight-decay",
                                                                     0.01 * (i - 1) + sd * _unit(10, i), size)
            for r in report.summarize(runs):
                for key in [k for k in r if k.startswith("delta_")]:
                    r[key]["test_set"] = {"per_seed": 4 / 500 ** 2, "examples": 1e-6, "disagreements": 40}
                records.append({**r, "source": source})
    near = next(r for r in records if r["source"] == "a" and r["train_size"] == 64 and r["preset"] != "pretrain-zero")
    assert report.cell_variance(near, "delta_early_test_accuracy") == pytest.approx(4 / 500 ** 2 / 10 + 1e-6)
    overall = _row(report.pooled(records), "weight-decay", "all")
    seeds_only = [{**r, **{k: {**v, "test_set": None} for k, v in r.items() if k.startswith("delta_")}}
                  for r in records]
    alone = _row(report.pooled(seeds_only), "weight-decay", "all")
    assert len(overall["weights"]) == 6 and max(overall["weights"].values()) < max(alone["weights"].values())
    assert alone["weights"]["a n=64"] > 0.99


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
        report.numbers._adjust([r], report.check_margins(None), design)
        return r

    z = _unit(10, 3)
    assert report.stop_reason([row(0.0005 * z)]) == "decided"  # equivalent already
    assert report.stop_reason([row(-0.15 + 0.01 * z)]) == "decided"  # a large harm
    assert report.stop_reason([row(0.02 + 0.2 * z)]) is None  # futility waits for half the seeds
    z20 = _unit(20, 3)
    assert report.stop_reason([row(0.02 + 0.2 * z20)]) == "futile"  # SD 0.2: nothing decides by 40 seeds
    assert report.stop_reason([row(0.01 + 0.03 * z)]) is None  # could still be decided: go on
    # the findings say where each cell stands by that rule: stopped, open, or between looks while a stage runs
    from hfreg.finetune.report.findings import _stage_lines
    from hfreg.finetune.report.stages import cell_stages

    cells = {"equal": row(0.0005 * z), "open": row(0.01 + 0.03 * z), "running": row(0.01 + 0.03 * _unit(7, 3)),
             "futile": row(0.02 + 0.2 * z20), "new": row(0.01 + 0.03 * _unit(3, 3)),
             "past": row(0.01 + 0.2 * _unit(41, 3)), "unpaired": {"preset": "unpaired", "design": design}}
    for name, r in cells.items():
        r.update(preset=name, train_size=64)
    # the baseline ran on to 15 seeds at 512 without this undecided cell: the grid stopped it at 10
    cells["reopened"] = {**row(0.01 + 0.03 * z), "preset": "reopened", "train_size": 512}
    bases = [{"preset": "pretrain-zero", "train_size": n, "design": design, "seeds": list(range(k))}
             for n, k in ((64, 41), (512, 15))]
    bases[0]["seeds"] = list(range(10))  # at 64 the baseline is where the open cell is: its next stage is due
    rows = [*bases, *cells.values()]
    assert _stage_lines(cell_stages(rows), tasks.of_rows(list(cells.values())[:1])) == [
        "Stages (the grid's stopping rule read under this report's margins and selection rule; the paired seeds of "
        "each cell's primary comparison, early-stopped test accuracy):", "",
        "- n=64, 0 seeds, below the first look (5 seeds), nothing read yet: `unpaired`.",
        "- n=64, 3 seeds, below the first look (5 seeds), nothing read yet: `new`.",
        "- n=64, 7 seeds, between looks, its stage to 10 seeds not complete: `running`.",
        "- n=64, 10 seeds, open, the next stage takes it to 15 seeds: `open`.",
        "- n=64, 10 seeds, stopped: decided: `equal`.",
        "- n=64, 20 seeds, stopped: futile: `futile`.",
        "- n=64, 41 seeds, at the last look: `past`.",
        "- n=512, 10 seeds, stopped here by the grid, inconclusive as read now: `reopened`."]


def test_the_next_stage_is_decided_from_the_stages_done_alone():
    """A grid resumed in the middle of stage 2 (or a process that looks later than another) holds some of that
    stage's runs: the next stage is still what the finished stage decided, not what the partial one would."""
    from hfreg.finetune.grid import next_cells

    staged = {"seeds": {"rule": "auto", "max_seeds": 4, "stage": 2}, "labels": ["0", "1"]}
    runs = _cell("pretrain-zero", [0.0] * 4) + _cell("same", [0.0, 0.0, 0.3, 0.3])
    runs += _cell("rdrop", [0.0, 0.0], config={"control": "classic"}) + _cell("classic", [0.0, 0.0])
    for r in runs:
        r["experiment"] = {"name": "default", "settings": staged}
    first = [r for r in runs if r["seed"] < 2]
    assert next_cells(runs, "default", [0, 1], None, None) == next_cells(first, "default", [0, 1], None, None)
    assert next_cells(first, "default", [0, 1], None, None) == (set(), set())  # all equivalent at the first look
    undecided, cells = next_cells(runs, "default", [0, 1, 2, 3], None, None)
    assert undecided == {("same", 64)} and cells == {("same", 64), ("pretrain-zero", 64)}
    assert next_cells(runs, "other", [0, 1, 2, 3], None, None) == (set(), set())  # another experiment's runs


def test_boundaries_spend_alpha_as_the_obrien_fleming_type_function_says():
    # at the first look the boundary is the spending function's own quantile; two equal looks: c2 from the table
    first = stats._boundaries((0.5, 1.0), 0.05)
    assert first[0] == pytest.approx(sps.norm.isf(stats.spent(0.5, 0.05) / 2), abs=2e-3)
    assert first[1] == pytest.approx(1.977, abs=0.01)
    levels = [stats.nominal_alpha(n, 0.05, 40, 5) for n in stats.looks(40, 5)]
    assert levels == sorted(levels) and levels[-1] < 0.05 and levels[0] < 1e-5
    # a count between planned looks spends what its own information fraction allows: stricter than the next look
    assert stats.nominal_alpha(7, 0.05, 40, 5) < stats.nominal_alpha(10, 0.05, 40, 5)
    assert stats.nominal_alpha(7, 0.05) == 0.05  # a fixed grid: one look
    # a first look that spends (nearly) nothing decides nothing, even on identical differences: no nan interval
    first = stats.nominal_alpha(5, report.column_alpha("early", "test_accuracy", 32), 40, 5)
    assert first < 1e-100 and stats.interval(np.zeros(5), 1 - first) == (-math.inf, math.inf)
    assert stats.judge(np.zeros(5), 0.02, True, 1, first)["verdict"] == "inconclusive"


def test_the_fast_t_and_normal_laws_equal_scipy_stats_bit_for_bit():
    """`stats.t_ppf` & co. call the special functions scipy.stats wraps: the verdicts may not move by a bit."""
    for df in (1, 2, 4, 9, 39, 123.4, 1e6):
        for q in (1e-9, 0.0003, 0.025, 0.5, 0.9, 0.975, 0.9997, 1 - 1e-9):
            assert stats.t_ppf(q, df) == float(sps.t.ppf(q, df))
        for x in (-7.5, -2.1, -0.3, 0.0, 0.4, 2.6, 9.0):
            assert stats.t_cdf(x, df) == float(sps.t.cdf(x, df)) and stats.t_sf(x, df) == float(sps.t.sf(x, df))
    for x in (-9.0, -3.3, -1e-3, 0.0, 0.7, 4.2):
        assert stats.norm_cdf(x) == float(sps.norm.cdf(x)) and stats.norm_cdf(-x) == float(sps.norm.sf(x))
    for q in (1e-12, 0.001, 0.5, 0.975, 1 - 1e-12):
        assert stats.norm_ppf(q) == float(sps.norm.ppf(q))


def test_the_pooling_benchmark_stages_cells_as_the_grid_does():
    """A cell of `benchmarks/pooling_coverage.py --max_seeds` keeps the seeds of the first look the harness's rule
    stops it at: a large harm at the second look (the first spends almost nothing), noise without effect only at
    the end or by futility."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import pooling_coverage
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    design, margins = {"max_seeds": 40, "stage": 5}, report.check_margins(None)
    z = np.concatenate([_unit(10, 3)] * 4)
    assert pooling_coverage.stopped_at(-0.15 + 0.01 * z, design, 32, margins) == 10
    assert pooling_coverage.stopped_at(0.0005 * z, design, 32, margins) == 10  # equivalent
    noisy = pooling_coverage.stopped_at(0.01 + 0.2 * z, design, 32, margins)
    assert noisy == 20  # futility from half the seeds on
    rng = np.random.default_rng(0)
    cell = {"n": 8, "N": 872, "size": 64, "sd": 0.02, "per_seed": 0.0002, "examples": 1e-5}
    staged = {"design": design, "comparisons": 32, "margins": margins}
    seeds = {pooling_coverage.draw(cell, 0.0, rng, staged)[pooling_coverage.KEY]["n"] for _ in range(20)}
    assert seeds <= set(stats.looks(40, 5)) and len(seeds) > 1
    assert pooling_coverage.draw(cell, 0.0, rng)[pooling_coverage.KEY]["n"] == 8  # unstaged: the cell's own seeds
    # one arm at one size of a published grid, one spread: the rows it asked for, the JSON line last
    sst2 = os.path.join(ROOT, "docs", "results", "sst2")
    run = [sys.executable, os.path.join(ROOT, "benchmarks", "pooling_coverage.py"), sst2, "--sims", "3"]
    proc = subprocess.run(run + ["--arms", "classic", "--sizes", "1024", "--taus", "0", "--level", "0.99"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| classic |")]
    assert len(rows) == 4 and all(r.startswith("| classic | 1 | 0 | 0 |") for r in rows)  # near-copy x terms
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["measured_strata"] == 2 and summary["nominal"] == 0.99
    proc = subprocess.run(run + ["--arms", "nope"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--arms 'nope'" in proc.stderr
    proc = subprocess.run(run + ["--level", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "0 < --level < 1" in proc.stderr


def test_the_sequential_benchmark_keeps_the_family_wise_error(tmp_path):
    """`benchmarks/sequential.py` on a constructed grid (4 presets, one judged against its control too; noise of the
    published cells' size): its last line
    is the JSON the docs quote, and its FWER is within Monte-Carlo error of at most 0.05."""
    rng = np.random.default_rng(0)
    runs = []
    for size in (64, 512):
        runs += _cell("pretrain-zero", [0.0] * 8, size)
        for p in ("classic", "drop-path", "heavy", "rdrop"):  # rdrop: also against its control, classic
            runs += [_run(p, s, rng.normal(0, 0.025), size, nll_ts=0.5 + rng.normal(0, 0.03),
                          config={"control": "classic"} if p == "rdrop" else None) for s in range(8)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sequential.py"), str(tmp_path),
                           "--sims", "60"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"fwer", "stopped_before_max", "mean_seeds"} <= set(out) and out["cells"] == 8  # preset x size
    assert out["fwer"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 60)
    assert out["stopped_before_max"] > 0.5 and out["mean_seeds"] < 40


def test_futility_never_stops_a_cell_whose_every_final_mean_decides():
    """Where the last look's difference interval is narrower than the margin's room (margin - eq > diff), every final
    mean gives a verdict (better, worse, trivial or equivalent): futility must not stop such a cell, wherever its
    mean lies. Where it is wider, a mean between the regions with a large spread does stop."""
    alpha = 0.05 / 32
    for sd in (0.005, 0.01, 0.015):  # at 40 seeds: diff + eq < 0.02
        se = sd / math.sqrt(40)
        assert stats.t_ppf(1 - alpha / 2, 39) * se + stats.t_ppf(1 - alpha, 39) * se < 0.02
        for mean in np.linspace(-0.05, 0.05, 21):
            assert not stats.futile(mean + sd * _unit(20, 1), 0.02, alpha, 40), (sd, mean)
    assert stats.futile(0.02 + 0.2 * _unit(20, 3), 0.02, alpha, 40)


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


def test_the_findings_header_names_the_training_settings_a_grid_set():
    runs = _cell("pretrain-zero", [0.0] * 3) + _cell("classic", [0.01, 0.0, -0.01])
    settings = {"model": "m", "roles": "r", "learning_rates": [1e-4], "num_train_epochs": 3, "train_batch_size": 16,
                "evals_per_epoch": 4, "max_grad_norm": 1.0, "max_steps": 60, "label_smoothing_factor": 0.1}
    header = report.findings(report.summarize(runs), settings).splitlines()[2]
    assert header.endswith("gradient clipping 1.0, 60 optimizer steps a run (--max_steps), label smoothing 0.1.")
    assert "NEFTune" not in header and "warm-up" not in header  # not set: not said


def test_the_shared_test_set_correlation_of_two_sizes_is_measured_from_the_stored_predictions():
    """benchmarks/shared_test_set.py on a published grid: one correlation per arm and pair of sizes, each the
    covariance of the two cells' per-example mean differences over the test set's size, over the geometric mean of
    the cells' variances as pooling uses them; and docs/comparison.md quotes what it measures there."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import shared_test_set

    from hfreg.finetune.records import read_runs
    from hfreg.finetune.report.writing import paired_differences

    d = os.path.join(ROOT, "docs", "results", "rt-polarity")
    rows = shared_test_set.correlations(d)
    assert rows and all(-1 <= r["correlation"] <= 1 for r in rows)
    assert {tuple(r["sizes"]) for r in rows if r["arm"] == "heavy"} == {(64, 256), (64, 1024), (256, 1024)}
    runs = read_runs(d)
    records = report.summarize(runs)
    report.test_set_terms(d, runs, records, "accuracy")
    cells = {r["train_size"]: (diffs["test_accuracy"], r)
             for r, comp, diffs in paired_differences(d, runs, records, "accuracy")
             if comp == "early" and r["preset"] == "heavy" and r["against"] == "pretrain-zero"}
    (x, a), (y, b) = cells[256], cells[1024]
    assert x.shape[1] == a["delta_early_test_accuracy"]["n"]  # examples x seeds
    by_hand = np.cov(x.mean(axis=1), y.mean(axis=1))[0, 1] / len(x) / math.sqrt(
        report.cell_variance(a, "delta_early_test_accuracy") * report.cell_variance(b, "delta_early_test_accuracy"))
    (row,) = [r for r in rows if r["arm"] == "heavy" and r["sizes"] == [256, 1024]]
    assert row["correlation"] == pytest.approx(by_hand)
    with open(os.path.join(ROOT, "docs", "comparison.md")) as f:
        docs = " ".join(f.read().split())
    assert f"heavy at 256 and 1,024 examples: {row['correlation']:+.2f}" in docs
