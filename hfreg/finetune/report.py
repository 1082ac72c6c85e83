"""Summaries, findings, tables and plots of the comparison, rebuilt from ``runs.jsonl`` alone (no torch).

Every preset is compared with the zero-dropout baseline, and a preset that names a control (``control`` in its
file: `rdrop` names `classic`) with that control too, and with the control trained at the preset's compute where
the preset costs more passes per step (the ``<control>@<k>x`` arm); paired by seed, on the test split, twice:
  * early-stopped: each run at its evaluation point with the best selection-split score (``select_by``: accuracy,
    macro-F1 or loss; ties go to the earliest point);
  * fixed budget: each run at its final step.
Every evaluation point of a record carries the selection metrics, and the point each ``select_by`` rule picks and
the final one carry the test metrics computed from their predictions, so a report under another ``select_by`` is
recomputed from the records without retraining.
Verdicts (see `stats`): five outcomes, on test accuracy (the primary endpoint) and on temperature-scaled test NLL;
raw NLL and ECE are calibration, reported without a verdict. A regression (`tasks`) is judged on test R² (the
primary endpoint) and Spearman's correlation instead. One alpha per experiment covers every verdict it
reports, at every look of a staged grid. `pooled` answers per training size (data sets as strata) and pools over
sizes only where size does not moderate the effect and there are at least three cells.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import statistics
from collections import defaultdict

import numpy as np

from ..config import KNOBS as KNOB_NAMES
from . import stats, tasks
from .presets import BASELINE
from .records import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL,
    DEFAULT_SELECT_BY,
    SELECT_BY,
    default_model_path,
    experiment_of,
    load_predictions,
    read_runs,
)

COMPARISONS = {"early": "early-stopped", "fixed": "fixed budget"}
CLASSIFIER = tasks.TASKS[tasks.CLASSIFICATION]
# metric -> +1 where higher is better, -1 where lower is better: every task's test metrics, and two of the runs'
METRICS = {**{m: sign for t in tasks.TASKS.values() for m, sign in t.metrics.items()}, "gap": -1, "degradation": -1}
VERDICT_METRICS = CLASSIFIER.verdicts  # what findings.md states a verdict for (a classifier's; `tasks.Task.verdicts`)
# calibration: reported beside the verdicts, never judged (raw NLL also falls when only overconfidence is removed)
CALIBRATION_METRICS = CLASSIFIER.calibration
NAMES = {**CLASSIFIER.names, "gap": "gap (test - train loss)",
         "degradation": "degradation (final - early-stopped test loss)"}
SHORT = {"test_accuracy": "acc", "test_nll_ts": "NLL-TS", "test_r2": "R²", "test_spearman": "Spearman",
         "test_loss": "NLL/token", "test_exact_match": "EM", "test_entity_f1": "entity F1",
         "test_token_accuracy": "word acc"}
# underfit: the selected point's accuracy is within 0.02 of the majority-class rate, or the run's lowest selection
# loss stays within 5% of ln K (a uniform prediction); a regression's selection R² within 0.02 of 0 (the mean)
NEAR_CHANCE_ACCURACY, NEAR_CHANCE_LOSS = 0.02, 0.95
# training settings a grid records only when set, as the findings header names them
RUN_SETTINGS = (("max_steps", "{} optimizer steps a run (--max_steps)"), ("warmup_steps", "{} warm-up steps"),
                ("weight_decay", "weight decay {} for presets without their own"),
                ("label_smoothing_factor", "label smoothing {}"),
                ("neftune_noise_alpha", "NEFTune noise α = {} for presets without their own"),
                ("gradient_checkpointing", "gradient checkpointing"), ("tokenizer", "tokenizer {}"))
MEMORISED = 0.99  # final training accuracy (a regression's R²) at or above this: the run fit its data


def names(task: tasks.Task) -> dict:
    """Every metric's words, the task's own first (a regression's test loss is its MSE)."""
    return {**NAMES, **task.names}


def check_select_by(select_by: str | None, task: tasks.Task | None = None) -> str:
    """``select_by``, or the task's default where None; one-line error for a rule that is not the task's."""
    if select_by is not None and select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {list(SELECT_BY)}, got {select_by!r}")
    if task is None:
        return select_by or DEFAULT_SELECT_BY
    if select_by is None:
        return task.default_select_by
    if select_by not in task.select_by:
        raise ValueError(f"select_by {select_by!r} is not a rule for {task.problem_type} results: one of "
                         f"{list(task.select_by)}")
    return select_by


def selected_point(run: dict, select_by: str = DEFAULT_SELECT_BY) -> dict:
    """The evaluation point with the best selection-split score; ties go to the earliest."""
    key, sign = SELECT_BY[select_by]
    if key not in run["evals"][0]:
        check_select_by(select_by, tasks.of_run(run))  # a rule of another task: one line saying whose
    best = max(sign * p[key] for p in run["evals"])
    return next(p for p in run["evals"] if sign * p[key] == best)


def run_values(run: dict, select_by: str = DEFAULT_SELECT_BY) -> dict:
    """Per-run numbers under both comparisons, and whether the run is underfit."""
    task = tasks.of_run(run)
    evals = run["evals"]
    early = selected_point(run, select_by)
    final = evals[-1]
    out = {}
    for name, point in (("early", early), ("fixed", final)):
        out[name] = {m: point[m] for m in task.metrics}
        out[name]["gap"] = point["test_loss"] - point["train_loss"]
    out["fixed"]["degradation"] = final["test_loss"] - early["test_loss"]
    out["final_fit"] = final.get(task.fit, float("nan"))
    if task is not CLASSIFIER:  # R² or entity F1 within 0.02 of 0 (the mean; all "O"); a causal LM has none
        near_chance = bool(task.chance) and early[task.chance] <= NEAR_CHANCE_ACCURACY
    else:
        classes = len(run["experiment"]["settings"]["labels"])
        near_chance = (early["selection_accuracy"] <= run["selection_majority"] + NEAR_CHANCE_ACCURACY
                       or min(p["selection_loss"] for p in evals) >= NEAR_CHANCE_LOSS * math.log(classes))
    out["underfit"] = near_chance and not out["final_fit"] >= MEMORISED  # a fit run is not underfit
    out["selection_score"] = early[SELECT_BY[select_by][0]]
    out["selected_epoch"] = early["epoch"]
    # the grid censors early stopping where the pick is its first or last point: the best may lie outside it
    out["censored"] = len(evals) > 1 and early["step"] in (evals[0]["step"], final["step"])
    # after the selected point: how test accuracy, NLL and temperature-scaled NLL (`Task.after`) move by the final one
    out["after"] = {m: final[m] - early[m] for m in task.after}
    out["passes"] = run.get("forward_passes", 1)  # absent in older records: one pass per step
    return out


def _choose_rate(runs: list[dict], select_by: str = DEFAULT_SELECT_BY) -> float:
    """The learning rate whose runs reach the best mean selection score (the test split plays no part)."""
    key, sign = SELECT_BY[select_by]
    by_rate = defaultdict(list)
    for r in runs:
        by_rate[r["learning_rate"]].append(sign * selected_point(r, select_by)[key])
    return max(by_rate, key=lambda lr: (statistics.fmean(by_rate[lr]), -lr))


def summarize(runs: list[dict], select_by: str | None = None, margins: dict | None = None) -> list[dict]:
    """One record per experiment x preset x train size (see the module doc). ``select_by`` None: each
    experiment's task's default rule (`tasks.Task.select_by`)."""
    check_select_by(select_by)
    margins = check_margins(margins)
    experiments = list(dict.fromkeys(experiment_of(r) for r in runs))
    out = []
    for name in experiments:
        mine = [r for r in runs if experiment_of(r) == name]
        out += _summarize(mine, name, check_select_by(select_by, tasks.of_run(mine[0])), margins)
    return out


def check_margins(margins: dict | None) -> dict:
    """The declared margins: `stats.MARGINS` updated with ``margins`` (one-line error on an unknown metric or a
    margin that is not a positive number)."""
    out = dict(stats.MARGINS)
    for metric, value in (margins or {}).items():
        if metric not in out:
            raise ValueError(f"no margin for {metric!r}: metrics are {list(out)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"the margin for {metric} must be a positive number, got {value!r}")
        out[metric] = float(value)
    return out


def regimes(ordered: list[dict], underfit_runs: int, task: tasks.Task = CLASSIFIER) -> list[str]:
    """What a cell's runs did, from what they measured (per-seed changes from the selected to the final point,
    t-intervals at 95%): *underfit* (most runs' best selection point near chance without fitting their training
    data), *memorises* (mean final
    training accuracy >= 0.99), *overfits* (test accuracy falls after the selected point beyond noise),
    *overconfident* (test NLL rises after it beyond noise, while accuracy and temperature-scaled NLL do not worsen
    beyond noise). Other tasks read their own metrics (`tasks.Task`: ``fit``, ``overfit`` or the primary); a causal
    LM whose held-out NLL rises while its exact match holds: *loss rises* (its raw NLL moves with confidence too)."""
    out = []
    if underfit_runs * 2 > len(ordered):
        out.append("underfit")
    train = [v["final_fit"] for v in ordered if not math.isnan(v["final_fit"])]
    if train and statistics.fmean(train) >= MEMORISED:
        out.append("memorises")
    ci = {m: stats.paired([v["after"][m] for v in ordered])["ci95"] for m in ordered[0]["after"]}
    metric = task.overfit or task.primary  # a causal LM's exact match: its raw NLL moves with confidence too
    lo, hi = (x * task.metrics[metric] for x in ci[metric])  # + is better
    if max(lo, hi) < 0:
        out.append("overfits")
    elif "test_nll_ts" in ci and ci["test_loss"][0] > 0 and not ci["test_nll_ts"][0] > 0:
        out.append("overconfident")
    elif task.overfit and ci["test_loss"][0] > 0:  # held-out loss rises while the metric holds
        out.append("loss rises")
    return out


def _summarize(runs: list[dict], experiment: str, select_by: str, margins: dict) -> list[dict]:
    cells = defaultdict(list)
    for r in runs:
        cells[(r["preset"], r["train_size"])].append(r)
    order = list(dict.fromkeys(r["preset"] for r in runs))
    chosen = {}
    for cell, group in cells.items():
        lr = _choose_rate(group, select_by)
        chosen[cell] = {r["seed"]: run_values(r, select_by) for r in group if r["learning_rate"] == lr}, lr
    settings = runs[0]["experiment"].get("settings", {})
    design = {k: settings["seeds"][k] for k in ("max_seeds", "stage")} \
        if (settings.get("seeds") or {}).get("rule") == "auto" else None
    against = controls(runs)
    task = tasks.of_run(runs[0])
    kind = {} if task is CLASSIFIER else {"problem_type": task.problem_type}  # absent: older summaries match
    records = []
    for (preset, size) in sorted(cells, key=lambda c: (c[1], order.index(c[0]))):
        seeds, lr = chosen[(preset, size)]
        ordered = [seeds[s] for s in sorted(seeds)]
        rec = {"experiment": experiment, "preset": preset, "against": BASELINE, "train_size": size,
               "seeds": sorted(seeds), "learning_rate": lr, "select_by": select_by,
               "underfit_runs": sum(v["underfit"] for v in ordered),
               "censored_runs": sum(v["censored"] for v in ordered), "passes": max(v["passes"] for v in ordered),
               "selected_epoch": statistics.fmean(v["selected_epoch"] for v in ordered), "design": design, **kind}
        rec["regime"] = regimes(ordered, rec["underfit_runs"], task)
        for comp in COMPARISONS:
            for m in ordered[0][comp]:
                values = [v[comp][m] for v in ordered]
                rec[f"{comp}_{m}"] = statistics.fmean(values)
                rec[f"{comp}_{m}_ci95"] = list(stats.paired(values)["ci95"])
        rows = [rec] + [{**{k: v for k, v in rec.items() if not k.startswith("delta_")}, "against": c}
                        for c in against.get(preset, []) if (c, size) in chosen]
        rec["missing_controls"] = [c for c in against.get(preset, []) if (c, size) not in chosen]
        control = next((c for c in against.get(preset, []) if "@" not in c), BASELINE)
        theirs = [v["passes"] for v in chosen.get((control, size), ({}, None))[0].values()] or [1]
        if rec["passes"] > max(theirs) and not any("@" in c for c in against.get(preset, [])):
            rec["missing_controls"].append(f"{control}@{rec['passes'] // max(theirs)}x")  # no arm at its compute
        for row in rows:
            if row["preset"] == row["against"]:
                continue
            base = chosen.get((row["against"], size), ({}, None))[0]
            paired_seeds = sorted(set(seeds) & set(base))
            if paired_seeds:
                row["paired_seeds"] = paired_seeds
                for comp in COMPARISONS:
                    for m in ordered[0][comp]:
                        deltas = [seeds[s][comp][m] - base[s][comp][m] for s in paired_seeds]
                        row[f"delta_{comp}_{m}"] = {**stats.paired(deltas), "deltas": deltas}
        records += rows
    _adjust(records, margins, design)
    return records


def controls(runs: list[dict]) -> dict[str, list[str]]:
    """{preset: the arms it is judged against besides the baseline}: the control its file names, and the control
    trained at its compute (the arm whose runs say ``equal_compute_for`` it)."""
    out = defaultdict(list)
    for r in runs:
        control = named_control(r["preset"], r.get("preset_config") or {})
        if control and control != BASELINE:
            out[r["preset"]].append(control)
        for preset in r.get("equal_compute_for", []):
            out[preset].append(r["preset"])
    return {p: list(dict.fromkeys(c)) for p, c in out.items()}


@functools.lru_cache(maxsize=64)
def _shipped_control(preset: str) -> tuple[str | None, dict | None]:
    from .presets import load_preset

    try:
        shipped = load_preset(preset)
    except ValueError:
        return None, None
    return shipped.control, {k: v for k, v in shipped.contents().items() if k != "control"}


def named_control(preset: str, config: dict) -> str | None:
    """The control a run's preset names: its record's ``preset_config.control``; for a record made before presets
    named one, the shipped preset's of that name where the record's contents are the shipped preset's."""
    if "control" in config:
        return config["control"]
    control, contents = _shipped_control(preset)
    return control if contents == config else None


def column_alpha(comp: str, metric: str, m: int) -> float:
    """The share of the experiment's alpha one comparison of the column (``comp``, ``metric``) gets, before looks:
    the column's share (`stats.ALPHA_SHARES`) over its ``m`` comparisons (Bonferroni)."""
    return stats.ALPHA * stats.ALPHA_SHARES[(comp, metric)] / max(m, 1)


def _adjust(records: list[dict], margins: dict, design: dict | None) -> None:
    """Per verdict column (comparison x metric): Holm p-values, the simultaneous interval and the equivalence
    interval at the nominal level of the look each comparison is read at, and its verdict. Metrics without a
    verdict (calibration, gap) keep their 95% interval only."""
    for comp in COMPARISONS:
        for metric in tasks.of_rows(records).verdicts:
            key = f"delta_{comp}_{metric}"
            margin = margins[metric]
            family = [r[key] for r in records if key in r]
            m = len(family)
            tested = [d for d in family if d["n"] >= 2]
            for d, p_holm in zip(tested, stats.holm([d["p"] for d in tested])):
                alpha = stats.nominal_alpha(d["n"], column_alpha(comp, metric, m), **(design or {}))
                d.update(m=m, p_holm=p_holm, margin=margin, p_tost=stats.tost_p(d["deltas"], margin), alpha=alpha,
                         **stats.judge(d["deltas"], margin, METRICS[metric] > 0, 1, alpha))
            for d in family:
                if d["n"] < 2:
                    d.update(m=m, p_holm=float("nan"), margin=margin, p_tost=float("nan"), alpha=float("nan"),
                             ci_adjusted=[float("nan")] * 2, ci_equivalence=[float("nan")] * 2,
                             verdict="inconclusive")


def stop_reason(rows: list[dict], margins: dict | None = None) -> str | None:
    """Why a staged grid stops adding seeds to a preset x size cell, from its rows (against the baseline and its
    controls): "decided" once every primary verdict (early-stopped test accuracy; `tasks.Task.primary`) is not
    inconclusive, "futile" once each undecided one could not be decided even at the maximum seeds (`stats.futile`),
    else None."""
    comp, metric = stats.PRIMARY[0], tasks.of_rows(rows).primary
    key = f"delta_{comp}_{metric}"
    margin = check_margins(margins)[metric]
    reasons = []
    for r in rows:
        d = r.get(key)
        if d is None or d["n"] < 2:
            return None
        if d["verdict"] != "inconclusive":
            reasons.append("decided")
            continue
        design = r.get("design")
        if not design:
            return None
        final = stats.nominal_alpha(design["max_seeds"], column_alpha(comp, metric, d["m"]), **design)
        if not stats.futile(d["deltas"], margin, final, design["max_seeds"]):
            return None
        reasons.append("futile")
    return "decided" if reasons and set(reasons) == {"decided"} else ("futile" if reasons else None)


MODERATOR_ALPHA = stats.ALPHA  # size moderates an arm's effect where the meta-regression slope's p is below this


def _arm(r: dict) -> tuple[str, str]:
    return r["preset"], r.get("against", BASELINE)


def _cell_name(r: dict) -> str:
    source = os.path.basename(os.path.normpath(r["source"])) if r.get("source") else r["experiment"]
    return f"{source} n={r['train_size']}"


def cell_parts(r: dict, key: str) -> tuple[float, float]:
    """The sampling variance of a cell's mean paired difference, in two parts: the seeds' (their variance over
    their number, at least what the test set resolves per seed over the seeds, `stats.test_set_terms`' ``per_seed``)
    and the test set's examples' (``examples``: what more seeds do not shrink). Records without stored predictions
    have the first part alone."""
    d = r[key]
    terms = d.get("test_set") or {}
    return max(d["sd"] ** 2, terms.get("per_seed", 0.0)) / d["n"], terms.get("examples", 0.0)


def cell_variance(r: dict, key: str) -> float:
    return sum(cell_parts(r, key))


def moderator(cells: list[dict], key: str) -> dict:
    """Whether training size moderates an arm's effect: the mixed-effects between-sizes test over the sizes' cells
    (`stats.between_sizes`), and the slope per unit of log size (`stats.meta_regression`) for its direction."""
    sizes = sorted({r["train_size"] for r in cells})
    test = stats.between_sizes([[(r[key]["mean"], cell_variance(r, key)) for r in cells if r["train_size"] == n]
                                for n in sizes])
    slope = stats.meta_regression([r[key]["mean"] for r in cells], [cell_variance(r, key) for r in cells],
                                  [math.log(r["train_size"]) for r in cells])
    return {"q_between": test["q"], "df": test["df"], "p": test["p"], "tau_within": test["tau_within"],
            "slope_per_log_size": slope["slope"]}


def pooled_alpha(records: list[dict], comp: str, metric: str, m: int) -> float:
    """A pooled row's level: the column's share over its ``m`` rows, at the last look of the strictest staged grid
    among the sources (a fixed grid: the share itself)."""
    alpha = column_alpha(comp, metric, m)
    designs = [r["design"] for r in records if r.get("design")]
    return min([alpha] + [stats.nominal_alpha(d["max_seeds"], alpha, **d) for d in designs])


def pooled(records: list[dict], margins: dict | None = None) -> list[dict]:
    """Each arm's (preset against the baseline or a control) paired differences over cells (``records`` from one or
    several result directories: every experiment x size is a cell), per comparison and verdict metric:

    * one row per training size, the data sets as fixed strata (`stats.strata`, Welch-Satterthwaite df);
    * one row over all cells (random effects with its prediction interval, `stats.random_effects`) only where there
      are at least 3 cells and size does not moderate the effect (`moderator`, p >= `MODERATOR_ALPHA`); each row
      carries the moderator test, and its cells' weight shares.

    Cell variances include the test set's part (`cell_parts`). The rows of one comparison x metric share the
    column's alpha (Bonferroni over them, look-adjusted for staged sources: `pooled_alpha`)."""
    margins = check_margins(margins)
    task = tasks.of_rows(records)
    kind = {} if task is CLASSIFIER else {"problem_type": task.problem_type}
    rows = []
    arms = list(dict.fromkeys(_arm(r) for r in records if r["preset"] != BASELINE))
    sizes = sorted({r["train_size"] for r in records})
    for comp in COMPARISONS:
        for metric in task.verdicts:
            key = f"delta_{comp}_{metric}"
            planned = []
            for arm in arms:
                cells = [r for r in records if _arm(r) == arm and key in r and r[key]["n"] >= 2]
                if not cells:
                    continue
                mod = moderator(cells, key)
                moderated = not math.isnan(mod["p"]) and mod["p"] < MODERATOR_ALPHA
                for size in sizes:
                    here = [r for r in cells if r["train_size"] == size]
                    if here:
                        planned.append((arm, f"n={size}", "strata", here, mod, moderated))
                if len(cells) >= 3 and not moderated:
                    planned.append((arm, "all", "random-effects", cells, mod, moderated))
            alpha = pooled_alpha(records, comp, metric, len(planned))
            for (preset, against), scope, method, cells, mod, moderated in planned:
                y = [r[key]["mean"] for r in cells]
                parts = [cell_parts(r, key) for r in cells]
                pool = stats.strata(y, [a for a, _ in parts], [r[key]["n"] - 1 for r in cells], alpha,
                                    fixed=[b for _, b in parts]) if method == "strata" \
                    else stats.random_effects(y, [a + b for a, b in parts], alpha)
                nan = float("nan")
                rows.append({**kind, "preset": preset, "against": against, "comparison": comp, "metric": metric,
                             "scope": scope, "method": method, "cells": pool["k"],
                             "seeds": sum(r[key]["n"] for r in cells), "delta": pool["delta"], "ci": pool["ci"],
                             "ci_equivalence": pool["ci_equivalence"], "df": pool["df"],
                             "prediction_interval": pool.get("prediction_interval", [nan, nan]),
                             "i2": pool.get("i2", nan), "tau": pool.get("tau", nan),
                             "weights": {_cell_name(r): w for r, w in zip(cells, pool["weights"])},
                             "moderator": {**mod, "depends_on_size": moderated},
                             "m": len(planned), "alpha": alpha, "margin": margins[metric],
                             "verdict": stats.verdict(*pool["ci"], higher_is_better=METRICS[metric] > 0,
                                                      eq=pool["ci_equivalence"], margin=margins[metric])})
    return rows


def _label(preset: str, against: str) -> str:
    return f"`{preset}`" if against == BASELINE else f"`{preset}` vs `{against}`"


def pooled_table(rows: list[dict], scope: str = "all") -> str:
    """Markdown: one line per arm, Δ test accuracy and Δ temperature-scaled NLL over the cells of ``scope``, both
    comparisons, with the method, degrees of freedom and the largest cell's share of the weight."""
    task = tasks.of_rows(rows)
    said = names(task)
    head = ["arm", "cells", "seeds", "method (df)", "largest weight"] + [
        f"Δ {said[m].replace('test ', '')} ({COMPARISONS[c]})" for c in COMPARISONS for m in task.verdicts]
    if scope == "all":
        head.insert(5, f"prediction interval ({SHORT[task.primary]}, early)")
    out = [head, ["---"] * len(head)]
    for arm in dict.fromkeys((r["preset"], r["against"]) for r in rows):
        mine = {(r["comparison"], r["metric"]): r for r in rows if (r["preset"], r["against"]) == arm
                and r["scope"] == scope}
        if not mine:
            continue
        first = mine.get(("early", task.primary)) or next(iter(mine.values()))
        cells = []
        for c in COMPARISONS:
            for m in task.verdicts:
                r = mine.get((c, m))
                cells.append("-" if r is None else f"{_num(r['delta'], sign=True)} [{_num(r['ci'][0], sign=True)}, "
                             f"{_num(r['ci'][1], sign=True)}] {_short(r['verdict'])}")
        method = "strata" if first["method"] == "strata" else "RE"
        line = [_label(*arm), str(first["cells"]), str(first["seeds"]), f"{method} ({first['df']:.1f})",
                f"{max(first['weights'].values()):.2f}", *cells]
        if scope == "all":
            pi = first["prediction_interval"]
            line.insert(5, f"[{_num(pi[0], sign=True)}, {_num(pi[1], sign=True)}]")
        out.append(line)
    return "\n".join("| " + " | ".join(row) + " |" for row in out)


def arm_answer(rows: list[dict], preset: str, against: str) -> dict:
    """{comparison: verdict text} for one arm's test accuracy (the primary endpoint): the all-cells verdict where
    there is one, else the verdict at each size (marked "depends on size" where the moderator test says so)."""
    primary = tasks.of_rows(rows).primary
    out = {}
    for comp in COMPARISONS:
        mine = [r for r in rows if (r["preset"], r["against"]) == (preset, against) and r["comparison"] == comp
                and r["metric"] == primary]
        if not mine:
            continue
        overall = next((r for r in mine if r["scope"] == "all"), None if len(mine) > 1 else mine[0])
        if overall:  # the all-cells row, or the one size there is
            out[comp] = overall["verdict"]
            continue
        per_size = ", ".join(f"{r['verdict']} at {r['scope']}" for r in mine)
        sizes = {r["verdict"] for r in mine}
        if mine[0]["moderator"]["depends_on_size"]:
            out[comp] = f"depends on size ({per_size})"
        elif len(sizes) == 1 and len(mine) > 1:
            out[comp] = f"{mine[0]['verdict']} at every size"
        else:
            out[comp] = f"per size: {per_size}"
    return out


def answer(rows: list[dict]) -> str:
    """One paragraph from the pooled rows of test accuracy (the primary endpoint): per verdict the arms that get it
    under both comparisons over all cells; then the arms whose answer depends on size or differs between the
    comparisons, in full."""
    task = tasks.of_rows(rows)
    arms = list(dict.fromkeys((r["preset"], r["against"]) for r in rows if r["metric"] == task.primary))
    if not arms:
        return ""
    margin = next(r["margin"] for r in rows if r["metric"] == task.primary)
    same, other = defaultdict(list), []
    for arm in arms:
        said = arm_answer(rows, *arm)
        values = set(said.values())
        if len(said) == len(COMPARISONS) and len(values) == 1 and next(iter(values)) in stats.VERDICTS:
            same[next(iter(values))].append(_label(*arm))
        else:
            other.append(f"{_label(*arm)}: " + "; ".join(f"{COMPARISONS[c]} {v}" for c, v in said.items()))
    words = {"equivalent": f"equivalent within ±{margin:g}", "trivial": f"different but within ±{margin:g}",
             "better": "better", "worse": "worse", "inconclusive": "inconclusive"}
    parts = [f"{words[v]}: {', '.join(same[v])}" for v in stats.VERDICTS if same[v]]
    text = (f"**Answer** ({names(task)[task.primary]}; `preset` against `{BASELINE}`, `preset` vs `control` against "
            f"the control it names; over all cells where size does not moderate the effect, else per size; "
            f"early-stopped and at a fixed budget alike): "
            + ("; ".join(parts) if parts else "no arm gets one verdict over all cells under both comparisons") + ".")
    if other:
        text += "\n\nPer size or per comparison:\n\n" + "\n".join(f"- {o}." for o in other)
    return text


def pooled_text(rows: list[dict], sources: list[str], baseline: str | None = None) -> str:
    """pooled.md: the answer, the table of each training size, the all-cells table, and the moderator tests;
    ``baseline`` says what the baseline means for the sources' model (`baseline_text`)."""
    if not rows:
        return "## Pooled\n\nNo comparison with at least two paired seeds.\n"
    task = tasks.of_rows(rows)
    said = names(task)
    alphas = {(r["comparison"], r["metric"]): r["alpha"] for r in rows}
    lines = ["## Pooled over data sets and sizes", "",
             f"Sources: {', '.join(f'`{s}`' for s in sources)}. Each arm's mean paired Δ (preset − its control: "
             f"`{BASELINE}`, or the control the preset names) per cell (data set × size). **Per size**, the data "
             f"sets are fixed strata: the equal-weight mean of the cell means, its SE from the cells' variances, "
             f"Welch–Satterthwaite df. **Over all cells** (only with ≥ 3 cells and where size does not moderate the "
             f"effect: the between-sizes test below, p ≥ {MODERATOR_ALPHA:g}): "
             f"random effects (DerSimonian–Laird τ², modified Hartung–Knapp interval, t with cells − 1 df) with its "
             f"prediction interval for a new data set and size (t with cells − 2 df). Each cell's variance adds "
             f"what its test set contributes, from the stored predictions of both arms: the seeds' variance at "
             f"least what the test set resolves per seed (McNemar's variance for accuracy), plus the part of each "
             f"example's systematic difference that more seeds do not shrink; the largest cell's share of the "
             f"weight is shown. These rows are a family of their own beside the findings'. Error control: "
             f"α = 0.05 over every row with a verdict, shared by the columns "
             f"({', '.join(f'{COMPARISONS[c]} {said[m]} {stats.ALPHA_SHARES[(c, m)]:.0%}' for c, m in alphas)}), "
             f"Bonferroni over a column's rows, at the last look of a staged grid (nominal levels "
             f"{', '.join(f'{a:.2g}' for a in alphas.values())}). Margins: "
             f"{_margins_text({r['metric']: r['margin'] for r in rows})}. Verdicts: **better** / **worse** (the "
             f"interval excludes 0), *trivial* (it excludes 0 but the equivalence interval lies inside the margin), "
             f"equivalent (the equivalence interval lies inside the margin, the interval contains 0), "
             f"inconclusive. {_calibration_words(task)}A row over one "
             f"cell can be wider than that cell's findings row: the findings judge the cell on its test set, the "
             f"pool also counts the test set as a draw.", "",
             answer(rows), ""] + ([baseline, ""] if baseline else [])
    for scope in dict.fromkeys(r["scope"] for r in rows if r["scope"] != "all"):
        lines += [f"### {scope}", "", pooled_table(rows, scope), ""]
    if any(r["scope"] == "all" for r in rows):
        lines += ["### All cells", "", pooled_table(rows), ""]
    lines += [f"Size as a moderator ({said[task.primary]}, early-stopped): Q_between over the sizes' equal-weight "
              "estimates, with the spread between data sets within a size (τ within) added to every cell's variance, "
              "χ² with sizes − 1 df; the slope of Δ per unit of log size for its direction:", ""]
    for r in rows:
        if r["comparison"] == "early" and r["metric"] == task.primary and r["scope"] == next(
                x["scope"] for x in rows if (x["preset"], x["against"]) == (r["preset"], r["against"])):
            mod = r["moderator"]
            said = "not testable (one size)" if mod["p"] is None or math.isnan(mod["p"]) \
                else (f"Q_between = {mod['q_between']:.1f}, p = {mod['p']:.2g} (df {mod['df']}), slope "
                      f"{_num(mod['slope_per_log_size'], 4, sign=True)}: "
                      + ("**depends on size**" if mod["depends_on_size"] else "no evidence that size matters"))
            lines.append(f"- {_label(r['preset'], r['against'])}: {said}.")
    return "\n".join(lines) + "\n"


def power(records: list[dict], margins: dict | None = None) -> dict:
    """Per comparison (early-stopped, fixed budget), from the median paired SD of Δ test accuracy over the arms
    against the baseline that are not near-copies of it (paired SD under a tenth of the family's median: a preset
    that changes nothing the baseline does): seeds for 80% power to detect Δ = 0.01 and 0.02 (at alpha = 0.05 and at
    the level a verdict of the column is read at: its share of alpha, Bonferroni, the last look of a staged grid),
    and to show equivalence within the margin when the true Δ is 0. A regression: the same for test R²."""
    primary = tasks.of_rows(records).primary
    margin = check_margins(margins)[primary]
    out = {}
    for comp in COMPARISONS:
        key = f"delta_{comp}_{primary}"
        deltas = [r[key] for r in records if r.get(key, {}).get("n", 0) >= 2 and r["against"] == BASELINE]
        if not deltas:
            continue
        everyone = statistics.median(d["sd"] for d in deltas)
        kept = [d for d in deltas if d["sd"] >= 0.1 * everyone]
        sd = statistics.median(d["sd"] for d in kept) if kept else 0.0
        m = deltas[0]["m"]
        design = next((r["design"] for r in records if r.get("design")), None)
        share = column_alpha(comp, primary, m)
        alpha = stats.nominal_alpha(design["max_seeds"], share, **design) if design else share
        out[comp] = {"paired_sd": sd, "family_size": m, "near_copies": len(deltas) - len(kept), "alpha": alpha,
                     "seeds": {f"{delta}": {"alpha_0.05": stats.seeds_for_power(sd, delta),
                                            "alpha_corrected": stats.seeds_for_power(sd, delta, alpha=alpha)}
                               for delta in (0.01, 0.02)},
                     "equivalence": {"margin": margin,
                                     "alpha_corrected": stats.seeds_for_equivalence(sd, margin, alpha)}}
    return out


def sweep_points(runs: list[dict]) -> dict[str, dict[str, float]]:
    """{family: {preset: rate or factor}} of the rate sweeps among ``runs`` (``--rates``); a family's rate 0 is
    the baseline."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in runs:
        sweep = (r.get("preset_config") or {}).get("sweep")
        if sweep:
            out[sweep["family"]][r["preset"]] = float(sweep["value"])
    for family in out:
        out[family] = {BASELINE: 0.0, **dict(sorted(out[family].items(), key=lambda kv: kv[1]))}
    return dict(out)


def dose_response(records: list[dict], points: dict[str, float], select: str = "early") -> list[dict]:
    """Per training size, what a rate sweep says (test accuracy, ``select`` comparison): the rates better, worse,
    equivalent to the baseline or inconclusive, the best rate (highest mean Δ), and the rates not worse than the
    best — those whose paired difference to the best (same seeds) has a simultaneous interval (Bonferroni over the
    other rates) that reaches zero. A regression: test R²."""
    key = f"delta_{select}_{tasks.of_rows(records).primary}"
    out = []
    for size in sorted({r["train_size"] for r in records}):
        cells = {r["preset"]: r for r in records if r["train_size"] == size and r["preset"] in points
                 and r.get("against", BASELINE) == BASELINE}
        deltas = {p: c[key] for p, c in cells.items() if key in c and c[key]["n"] >= 2}
        if not deltas:
            continue
        means = {BASELINE: 0.0, **{p: d["mean"] for p, d in deltas.items()}}
        best = max(means, key=lambda p: (means[p], -points[p]))
        others = [p for p in means if p != best]
        per_seed = {p: dict(zip(cells[p]["paired_seeds"], d["deltas"])) for p, d in deltas.items()}
        per_seed[BASELINE] = {s: 0.0 for v in per_seed.values() for s in v}
        not_worse = [best]
        for p in others:
            seeds = sorted(set(per_seed[p]) & set(per_seed[best]))
            lo, hi = stats.interval([per_seed[p][s] - per_seed[best][s] for s in seeds],
                                    1 - stats.ALPHA / len(others))
            if math.isnan(hi) or hi >= 0:
                not_worse.append(p)
        by = defaultdict(list)
        for p, d in deltas.items():
            by[d["verdict"]].append(points[p])
        out.append({"train_size": size, "best": points[best], "best_delta": means[best],
                    "not_worse_than_best": sorted(points[p] for p in not_worse),
                    **{v: sorted(by[v]) for v in stats.VERDICTS}})
    return out


def sweep_text(family: str, rows: list[dict], metric: str = NAMES["test_accuracy"]) -> list[str]:
    unit = "×" if family not in KNOB_NAMES else ""
    fmt = lambda values: ", ".join(f"{unit}{v:g}" for v in values) or "none"  # noqa: E731
    lines = [f"Rate sweep `{family}` ({'factor on every rate of the preset' if unit else 'the knob alone'}; "
             f"{metric}, early-stopped):", ""]
    for r in rows:
        lines.append(f"- n={r['train_size']}: equivalent to none at {fmt(r['equivalent'])}; worse at "
                     f"{fmt(r['worse'])}; better at {fmt(r['better'])}; trivial at {fmt(r['trivial'])}; "
                     f"inconclusive at {fmt(r['inconclusive'])}. "
                     f"Best {unit}{r['best']:g} (Δ {r['best_delta']:+.3f}); not worse than the best: "
                     f"{fmt(r['not_worse_than_best'])}.")
    return lines + [""]


# ------------------------------------------------------------------------------------------------- text
def _num(x, digits=3, sign=False):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{'+' if sign else ''}.{digits}f}"


def _delta(d) -> str:
    lo, hi = d["ci_adjusted"]
    return f"{_num(d['mean'], sign=True)} [{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def table(records: list[dict]) -> str:
    """Markdown: per arm x size, test accuracy under both comparisons, Δ test accuracy and Δ temperature-scaled NLL
    with their simultaneous intervals and verdicts, raw Δ NLL and Δ ECE as calibration (95% intervals, no verdict),
    the compute per step, and what the cell's runs showed. A regression: test R² and Spearman, no calibration."""
    task = tasks.of_rows(records)
    short = SHORT[task.primary]
    head = ["size", "arm", "seeds", "lr", "passes", "stop epoch", f"{short} (early)", f"{short} (fixed)"]
    head += [f"Δ {SHORT[m]} ({c})" for c in COMPARISONS for m in task.verdicts]
    head += ["Δ NLL, Δ ECE (early)"] if task.calibration else []
    head += ["underfit", "censored", "regime"]
    rows = [head, ["---"] * len(head)]
    for r in records:
        cells = []
        for comp in COMPARISONS:
            for m in task.verdicts:
                d = r.get(f"delta_{comp}_{m}")
                cells.append("-" if d is None else f"{_delta(d)} {_short(d['verdict'])}" if d["n"] >= 2
                             else f"{_num(d['mean'], sign=True)} (one seed)")
        calib = [r.get(f"delta_early_{m}") for m in task.calibration]
        calib = ([] if not task.calibration else ["-"] if None in calib
                 else [", ".join(_num(d["mean"], sign=True) for d in calib)])
        rows.append([str(r["train_size"]), _label(r["preset"], r.get("against", BASELINE)), str(len(r["seeds"])),
                     f"{r['learning_rate']:g}", str(r.get("passes", 1)), _num(r["selected_epoch"], 1),
                     _num(r[f"early_{task.primary}"]), _num(r[f"fixed_{task.primary}"]), *cells, *calib,
                     f"{r['underfit_runs']}/{len(r['seeds'])}", f"{r.get('censored_runs', 0)}/{len(r['seeds'])}",
                     ", ".join(r.get("regime", [])) or "-"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _short(verdict: str) -> str:
    return {"better": "**better**", "worse": "**worse**", "trivial": "*trivial*", "equivalent": "equiv.",
            "inconclusive": "inconcl."}[verdict]


def _margins_of(records: list[dict]) -> dict:
    """{metric: margin} the records' comparisons were judged against."""
    return {k.split("_", 2)[2]: d["margin"] for r in records for k, d in r.items()
            if k.startswith("delta_") and "margin" in d}


def _margins_text(margins: dict, task: tasks.Task = CLASSIFIER) -> str:
    return ", ".join(f"{names(task)[m]} ±{margins[m]:g}" for m in task.verdicts if m in margins)


def _calibration_words(task: tasks.Task, findings: bool = False) -> str:
    if not task.calibration:
        return ""
    return ("Calibration (raw NLL, ECE) is shown without a verdict. " if findings
            else "Raw NLL and ECE are calibration and get no verdict (see the findings). ")


def _copies(n: int) -> str:
    return f" ({n} near-cop{'ies' if n > 1 else 'y'} of the baseline left out)" if n else ""


def margin_reasons(records: list[dict]) -> str:
    """The declared margins with their reasons, and what this experiment's test set resolves beside them."""
    margins = _margins_of(records)
    task = tasks.of_rows(records)
    if task is not CLASSIFIER:
        return "; ".join(f"{names(task)[m]} ±{margins.get(m, stats.MARGINS[m]):g}" for m in task.verdicts) + (
            f" ({task.margin_note})" if task.margin_note else "")
    sizes = sorted({r["test_examples"] for r in records if r.get("test_examples")})
    base = [r["early_test_accuracy"] for r in records if r["preset"] == BASELINE]
    text = [f"test accuracy ±{margins.get('test_accuracy', stats.MARGINS['test_accuracy']):g} (a difference most "
            f"users would act on"]
    if sizes and base:
        p = statistics.fmean(base)
        n = sizes[0]
        text[0] += (f"; this test set has {n} examples: one example is {1 / n:.4f}, and one run's accuracy near "
                    f"{p:.2f} is known to ±{1.96 * math.sqrt(p * (1 - p) / n):.3f} (95%)")
        if 1 / n >= margins.get("test_accuracy", stats.MARGINS["test_accuracy"]):
            text[0] += " — the margin is finer than one test example: use a larger test set or a wider margin"
    text[0] += ")"
    if "test_nll_ts" in margins:
        text.append(f"{NAMES['test_nll_ts']} ±{margins['test_nll_ts']:g} nats (a change of "
                    f"{math.expm1(margins['test_nll_ts']):.0%} in the geometric mean likelihood of the true label; "
                    f"raw NLL also moves with confidence alone, so it gets no verdict)")
    return "; ".join(text)


def baseline_text(pretrained: dict | None) -> str:
    """What the model was pretrained with, from its own config, and what the baseline therefore means."""
    if pretrained is None:
        return (f"`{BASELINE}` sets every dropout knob to 0; the model's own config could not be read here, so "
                f"whether that is its pretraining setting is not known.")
    if not pretrained:
        return f"This checkpoint's config has no dropout: `{BASELINE}` is its pretraining setting."
    said = ", ".join(f"{k} {v:g}" for k, v in pretrained.items())
    return (f"This checkpoint's config has dropout ({said}): `checkpoint` is its pretraining setting and "
            f"`{BASELINE}` removes it, so these verdicts are about removing or changing dropout a model was "
            f"pretrained with; a model pretrained without dropout (most recent LLMs) is not what they measured.")


def findings(records: list[dict], settings: dict | None = None, codes: list[str] | None = None,
             sweeps: dict | None = None, pretrained: dict | None = None) -> str:
    """findings.md for one experiment: the verdict table and its plain-word reading, derived from the numbers.
    ``pretrained``: the model's own dropout per knob (`pretrained_dropout`), for the baseline's description."""
    lines = ["## Findings", ""]
    if settings:
        lines += [f"Model {settings.get('model')}; data roles: {settings.get('roles')}; learning rate(s) "
                  f"{settings.get('learning_rates')}, {settings.get('num_train_epochs')} epochs"
                  f"{', at least ' + str(settings['min_steps']) + ' steps' if settings.get('min_steps') else ''}, "
                  f"batch {settings.get('train_batch_size')}, {settings.get('evals_per_epoch')} evaluations per "
                  f"epoch, gradient clipping "
                  f"{settings['max_grad_norm'] if settings.get('max_grad_norm') else 'off'}"
                  + "".join(f", {text.format(settings[key])}" for key, text in RUN_SETTINGS if settings.get(key))
                  + ".", ""]
    lines += [baseline_text(pretrained), ""]
    if codes and len(codes) > 1:
        lines += [f"Note: these runs were made by {len(codes)} versions of the code ({', '.join(codes)}).", ""]
    if not any(d["n"] >= 2 for r in records for k, d in r.items() if k.startswith("delta_")):
        # a first run with one seed per cell: differences only, nothing to divide an error rate over
        return "\n".join(lines + [
            "One seed per cell: no verdicts (a verdict needs at least two paired seeds; run more with `--seeds`, "
            "or `--seeds auto`). The differences below are single runs.", "", table(records), ""]) + "\n"
    task = tasks.of_rows(records)
    said = names(task)
    first = next((r[f"delta_early_{task.primary}"] for r in records if f"delta_early_{task.primary}" in r), {})
    fam = first.get("m", 0)
    design = next((r["design"] for r in records if r.get("design")), None)
    looks = (f" A staged grid (`--seeds auto`, looks at {', '.join(map(str, stats.looks(**design)))} seeds): each "
             f"column's share is spent over the looks by an O'Brien–Fleming-type Lan–DeMets function, so a verdict's "
             f"level is that of the look it is read at; a cell stops when its primary verdicts are decided or "
             f"cannot be by the last look (futility, non-binding); estimates from a stopped cell lean towards the "
             f"effect that stopped it." if design else "")
    select_by = records[0].get("select_by", task.default_select_by) if records else task.default_select_by
    stopped_on = check_margins((settings or {}).get("margins")) if design else None
    if stopped_on is not None and any(stopped_on[m] != _margins_of(records).get(m, stopped_on[m])
                                      for m in task.verdicts):
        looks += (f" This report's margins differ from those the grid stopped on "
                  f"({_margins_text(stopped_on, task)}): its stopping decisions were made on those.")
    shares = ", ".join(f"{COMPARISONS[c]} {said[m]} {a:.0%}" for (c, m), a in stats.ALPHA_SHARES.items()
                       if m in task.verdicts)
    lines += [f"Each preset against `{BASELINE}`, and a preset that names a control also against it (and against "
              f"the control at its compute, `@kx`), paired by seed, on the test split; early-stopped = each run at "
              f"its best selection-split {select_by} (ties: the earliest point), fixed budget = its final step. "
              f"Error control: α = 0.05 over every verdict below, shared by the columns ({shares}), Bonferroni over "
              f"the {fam} comparison{'s' if fam != 1 else ''} of a column.{looks} Margins: {margin_reasons(records)}. "
              f"Verdicts: **better** / "
              f"**worse**: the interval excludes 0 and the equivalence (TOST) interval is not inside the margin; "
              f"*trivial*: it excludes 0 but the equivalence interval lies inside the margin; equiv. (equivalent): "
              f"the interval contains 0 and the equivalence interval lies inside the margin; inconcl. "
              f"(inconclusive): neither. {_calibration_words(task, findings=True)}Passes = forward/"
              f"backward passes per optimizer step. Underfit = runs whose selected point is near chance without "
              f"fitting their training data; censored = runs whose selected point is the first or last evaluation; "
              f"regime = what the cell's runs measured (see the README).", "", table(records), ""]
    words = []
    for r in records:
        if r["preset"] == BASELINE:
            regime = ", ".join(r.get("regime", []))
            if regime:
                words.append(f"`{BASELINE}` at {r['train_size']}: {regime}.")
            continue
        by = defaultdict(list)
        for comp, label in COMPARISONS.items():
            for m in task.verdicts:
                d = r.get(f"delta_{comp}_{m}")
                if d:
                    by[d["verdict"]].append(f"{said[m]} {label}" + (f" (Δ {_delta(d)})" if d["verdict"] in (
                        "better", "worse", "trivial") else ""))
        text = "; ".join(f"{v} in {', '.join(by[v])}" for v in stats.VERDICTS if by[v])
        if r.get("regime") and r.get("against", BASELINE) == BASELINE:
            text += f" — {', '.join(r['regime'])}"
        cost = f" at {r['passes']}× the passes per step" if r.get("passes", 1) > 1 else ""
        words.append(f"{_label(r['preset'], r.get('against', BASELINE))}{cost} at {r['train_size']}: {text}.")
    lines += ["In words:", ""] + [f"- {w}" for w in words] + [""]
    missing = sorted({(r["preset"], c) for r in records for c in r.get("missing_controls", [])})
    if missing:
        lines += ["Missing controls: " + "; ".join(f"`{p}` is judged against `{c}`, which has no runs here"
                                                   for p, c in missing) + " (a grid made now refuses a missing "
                  "control and adds the equal-compute arm itself).", ""]
    censored = [f"`{r['preset']}` at {r['train_size']} ({r['censored_runs']}/{len(r['seeds'])})" for r in records
                if r.get("against", BASELINE) == BASELINE and r.get("censored_runs", 0) * 2 > len(r["seeds"])]
    if censored:
        lines += [f"Censored: in over half of the runs of {', '.join(censored)} the selected point is the first or "
                  f"last evaluation, so early stopping may have wanted a point the grid does not have (evaluate more "
                  f"often, or train longer).", ""]
    verdicts = [r[f"delta_{c}_{m}"]["verdict"] for r in records for c in COMPARISONS for m in task.verdicts
                if f"delta_{c}_{m}" in r]
    lines.append(f"Of {len(verdicts)} verdicts, " + ", ".join(f"{verdicts.count(v)} {v}" for v in stats.VERDICTS)
                 + ".")
    for family, points in (sweeps or {}).items():
        lines += [""] + sweep_text(family, dose_response(records, points), said[task.primary])
    for comp, pw in power(records, _margins_of(records)).items():
        if pw["paired_sd"] == 0:
            lines += ["", f"Power ({COMPARISONS[comp]}): every paired difference in {said[task.primary]} is zero."]
            continue
        s, copies = pw["seeds"], pw["near_copies"]
        lines += ["", f"Power ({COMPARISONS[comp]}): the median paired SD of Δ {said[task.primary]} is "
                      f"{pw['paired_sd']:.4f}{_copies(copies)}. "
                      f"Detecting Δ = 0.02 with 80% power needs {s['0.02']['alpha_0.05']} seeds at α = 0.05 "
                      f"({s['0.02']['alpha_corrected']} at the level its verdicts are read at, "
                      f"{pw['alpha']:.2g}); Δ = 0.01 "
                      f"needs {s['0.01']['alpha_0.05']} ({s['0.01']['alpha_corrected']}); showing equivalence "
                      f"within ±{pw['equivalence']['margin']:g} when Δ = 0 needs about "
                      f"{pw['equivalence']['alpha_corrected']} at the corrected α."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- files
def _atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", newline="") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _strict(x):
    """JSON without NaN (which strict parsers refuse): an undefined number becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def write_summary(output_dir: str, records: list[dict]) -> None:
    _atomic_write(os.path.join(output_dir, "summary.json"), json.dumps(_strict(records), indent=2) + "\n")
    flat = []
    for r in records:
        row = {}
        for k, v in r.items():
            if isinstance(v, dict):  # a paired comparison: its headline numbers
                for f in ("mean", "p", "p_holm", "p_tost", "d_z", "margin", "verdict"):
                    row[f"{k}_{f}"] = v.get(f)
                for f in ("ci_adjusted", "ci_equivalence"):
                    row[f"{k}_{f}"] = " ".join(map(str, v.get(f, [])))
            else:
                row[k] = " ".join(map(str, v)) if isinstance(v, list) else v
        flat.append(row)
    fields = list(dict.fromkeys(k for r in flat for k in r))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    _atomic_write(os.path.join(output_dir, "summary.csv"), buf.getvalue())


def plot(output_dir: str, runs: list[dict], records: list[dict], suffix: str = "") -> list[str]:
    """Learning curves per preset (training-subset and selection loss, eval mode, mean over seeds at the chosen
    rate, against epochs) and the fixed-budget gap against training-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = {(r["preset"], r["train_size"]): r["learning_rate"] for r in records}
    presets = list(dict.fromkeys(r["preset"] for r in runs))
    sizes = sorted({r["train_size"] for r in runs})
    curves = os.path.join(output_dir, f"learning_curves{suffix}.png")
    cols = min(3, len(presets))
    rows = math.ceil(len(presets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[len(presets):]:
        ax.set_visible(False)
    for ax, preset in zip(axes.flat, presets):
        for i, size in enumerate(sizes):
            group = [r for r in runs if r["preset"] == preset and r["train_size"] == size
                     and r["learning_rate"] == rate.get((preset, size))]
            if not group:
                continue
            n = min(len(r["evals"]) for r in group)
            x = [group[0]["evals"][e]["epoch"] for e in range(n)]
            for key, style in (("train_loss", "--"), ("selection_loss", "-")):
                y = [statistics.fmean(r["evals"][e][key] for r in group) for e in range(n)]
                ax.plot(x, y, style, color=colors[i % len(colors)],
                        label=f"n={size} {'train' if key == 'train_loss' else 'selection'}")
        ax.set_title(preset)
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("loss (eval mode)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    gap = os.path.join(output_dir, f"gap_vs_size{suffix}.png")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for preset in presets:
        recs = sorted((r for r in records if r["preset"] == preset), key=lambda r: r["train_size"])
        err = [[0 if math.isnan(r["fixed_gap_ci95"][0]) else r["fixed_gap"] - r["fixed_gap_ci95"][0] for r in recs],
               [0 if math.isnan(r["fixed_gap_ci95"][1]) else r["fixed_gap_ci95"][1] - r["fixed_gap"] for r in recs]]
        ax.errorbar([r["train_size"] for r in recs], [r["fixed_gap"] for r in recs], yerr=err, marker="o",
                    capsize=3, label=preset)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training-set size")
    ax.set_ylabel("final gap: test loss - train loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(gap, dpi=110)
    plt.close(fig)
    return [curves, gap]


def plot_dose_response(output_dir: str, records: list[dict], sweeps: dict, suffix: str = "") -> str:
    """dose_response.png: per sweep (rows) Δ test accuracy, temperature-scaled NLL and ECE (columns, early-stopped)
    against the rate, one line per training size, with simultaneous intervals (95% ones for ECE, which gets no
    verdict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = tasks.of_rows(records)
    metrics = (*task.verdicts, *(task.calibration[-1:] or ("test_loss",)))
    path = os.path.join(output_dir, f"dose_response{suffix}.png")
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(11, 3.0 * len(sweeps)), squeeze=False)
    for row, (family, points) in zip(axes, sweeps.items()):
        for ax, metric in zip(row, metrics):
            for size in sorted({r["train_size"] for r in records}):
                xs, ys, lo, hi = [0.0], [0.0], [0.0], [0.0]
                for r in records:
                    d = r.get(f"delta_early_{metric}")
                    if r["train_size"] == size and r["preset"] in points and d and d["n"] >= 2 \
                            and r.get("against", BASELINE) == BASELINE:
                        xs.append(points[r["preset"]])
                        ys.append(d["mean"])
                        ci = d.get("ci_adjusted") or d["ci95"]  # calibration has no verdict: its 95% interval
                        lo.append(d["mean"] - ci[0])
                        hi.append(ci[1] - d["mean"])
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.errorbar([xs[i] for i in order], [ys[i] for i in order],
                            yerr=[[lo[i] for i in order], [hi[i] for i in order]], marker="o", capsize=3,
                            label=f"n={size}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(f"{family} {'factor' if family not in KNOB_NAMES else 'rate'}")
            ax.set_ylabel(f"Δ {names(task)[metric]} (early)")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def code_identities(runs: list[dict]) -> list[str]:
    """The code identities of ``runs`` (git commit, or a hash of the installed source), in order of appearance;
    records made before they carried one count as "unrecorded (hfreg VERSION)"."""
    return list(dict.fromkeys(
        r.get("provenance", {}).get("code")
        or f"unrecorded (hfreg {r['experiment'].get('settings', {}).get('versions', {}).get('hfreg', '?')})"
        for r in runs))


def report(output_dir: str, make_plots: bool = True, select_by: str | None = None,
           margins: dict | None = None, pooled_dir: str | None = None) -> str:
    """Rebuild summary.json, summary.csv, findings.md, pooled.json, pooled.md and the plots from
    ``output_dir/runs.jsonl``; return the findings. Each experiment in the directory gets its own section (and,
    beside the default one, its own plot files). ``pooled_dir`` (default ``output_dir``) receives the pooled
    files; `report_many` pools several directories instead."""
    text, records = _report(output_dir, _runs(output_dir), make_plots, select_by, margins)
    write_pooled(pooled_dir or output_dir, records, [output_dir], margins)
    return text


def report_many(output_dirs: list[str], out: str | None = None, make_plots: bool = True,
                select_by: str | None = None, margins: dict | None = None) -> str:
    """`report` each of ``output_dirs``, then pool all their cells into ``out``/pooled.json and pooled.md. With
    ``out``, nothing is written outside it: each directory's summaries, findings and plots go to
    ``out``/<its name>/ (the directory itself where it already lies there); with one directory and no ``out``,
    everything goes into that directory. Returns the pooled text."""
    if len(output_dirs) > 1 and not out:
        raise ValueError(f"{len(output_dirs)} result directories need --out DIR for the pooled files")
    check_select_by(select_by)
    check_margins(margins)
    names = [os.path.basename(os.path.normpath(d)) for d in output_dirs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if out and twice:
        raise ValueError(f"two result directories are named {twice!r}: their reports would share "
                         f"{os.path.join(out, twice)}; rename one or report them separately")
    loaded = {d: _runs(d) for d in output_dirs}  # every directory read and checked before anything is written
    records = [rec for (d, runs), name in zip(loaded.items(), names)
               for rec in _report(d, runs, make_plots, select_by, margins, os.path.join(out, name) if out else d)[1]]
    out = out or output_dirs[0]
    os.makedirs(out, exist_ok=True)
    return write_pooled(out, records, output_dirs, margins)


def write_pooled(out: str, records: list[dict], sources: list[str], margins: dict | None) -> str:
    rows = pooled(records, margins)
    models = list(dict.fromkeys(r.get("model") for r in records if r.get("model")))
    text = pooled_text(rows, sources, baseline_text(pretrained_dropout(models[0])) if len(models) == 1 else None)
    _atomic_write(os.path.join(out, "pooled.json"), json.dumps(_strict(rows), indent=2) + "\n")
    _atomic_write(os.path.join(out, "pooled.md"), text)
    return text


def _runs(output_dir: str) -> tuple[list[dict], int]:
    """The finished runs of ``output_dir`` and how many duplicates were dropped; one-line errors where there are
    none or they predate evaluation points."""
    runs, duplicates = read_runs(output_dir, with_duplicates=True)
    if not runs:
        raise ValueError(f"no finished runs in {os.path.join(output_dir, 'runs.jsonl')}")
    legacy = sum("evals" not in r for r in runs)
    if legacy:
        raise ValueError(f"{legacy} record(s) in {os.path.join(output_dir, 'runs.jsonl')} predate evaluation points "
                         f"and the selection/test roles (they have per-epoch 'epochs'); re-run the grid into a new "
                         f"--output_dir")
    return runs, duplicates


def test_set_terms(output_dir: str, runs: list[dict], records: list[dict], select_by: str) -> None:
    """Add to every comparison of ``records`` what its test set contributes to its variance (`stats.test_set_terms`,
    under ``test_set``), from the stored test predictions of both arms' runs at the compared points (each run's
    selected point early-stopped, its final point at the fixed budget), paired by seed; and ``test_examples``. A
    comparison whose runs lack stored predictions is left as it is."""
    from . import scores

    runs_at = {(experiment_of(r), r["preset"], r["train_size"], r["learning_rate"], r["seed"]): r for r in runs}
    rate = {(r["experiment"], r["preset"], r["train_size"]): r["learning_rate"] for r in records}
    task = tasks.of_rows(records)
    cache: dict = {}

    def per_example(run, comp):
        if id(run) not in cache:
            try:
                cache[id(run)] = load_predictions(output_dir, run) if run.get("predictions") else None
            except (OSError, KeyError, ValueError):
                cache[id(run)] = None
        arrays = cache[id(run)]
        point = selected_point(run, select_by) if comp == "early" else run["evals"][-1]
        if arrays is None or point["step"] not in list(arrays["test_steps"]):
            return None
        logits = arrays["test_logits"][list(arrays["test_steps"]).index(point["step"])]
        return scores.per_example(logits, arrays["test_labels"], point, task.problem_type)

    for r in records:
        if r["preset"] == r["against"] or not r.get("paired_seeds"):
            continue
        keys = [(r["experiment"], p, r["train_size"], rate.get((r["experiment"], p, r["train_size"])))
                for p in (r["preset"], r["against"])]
        for comp in COMPARISONS:
            columns = defaultdict(list)
            for seed in r["paired_seeds"]:
                values = [per_example(run, comp) if run else None for run in (runs_at.get((*k, seed)) for k in keys)]
                if None in values:
                    break
                for m in task.verdicts:
                    columns[m].append(values[0][m] - values[1][m])
            else:
                for m, diffs in columns.items():
                    r[f"delta_{comp}_{m}"]["test_set"] = stats.test_set_terms(np.stack(diffs, axis=1))
                r["test_examples"] = len(diffs[0])


@functools.lru_cache(maxsize=16)
def pretrained_dropout(model: str | None) -> dict | None:
    """{knob: rate} of the dropout a model's own ``config.json`` sets (the config keys of
    `hfreg.architectures.CONFIG_KEYS`; no model is built, torch is not imported), for a model found on this machine:
    the default model or a local directory. None where no config can be read; {} where it sets no dropout."""
    from ..architectures import CONFIG_KEYS

    if not model:
        return None
    try:
        path = default_model_path() if model == DEFAULT_MODEL else model
        with open(os.path.join(path, "config.json") if os.path.isdir(path) else path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    out = {}
    for knob, keys in CONFIG_KEYS.items():
        rate = next((config[k] for k in keys if isinstance(config.get(k), (int, float))), None)
        if rate:
            out[knob] = rate
    return out


def _report(output_dir: str, loaded: tuple[list[dict], int], make_plots: bool, select_by: str,
            margins: dict | None, dest: str | None = None) -> tuple[str, list[dict]]:
    """Summaries, findings and plots of one result directory, written to ``dest`` (default: the directory)."""
    dest = dest or output_dir
    runs, duplicates = loaded
    records = summarize(runs, select_by, margins)
    test_set_terms(output_dir, runs, records, records[0]["select_by"] if records else select_by)
    models = {experiment_of(r): (r["experiment"].get("settings") or {}).get("model") for r in runs}
    for r in records:
        r["source"], r["model"] = output_dir, models.get(r["experiment"])
    os.makedirs(dest, exist_ok=True)
    write_summary(dest, records)
    out = []
    for name in dict.fromkeys(experiment_of(r) for r in runs):
        mine = [r for r in records if r["experiment"] == name]
        theirs = [r for r in runs if experiment_of(r) == name]
        if make_plots:
            plot(dest, theirs, mine, suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        sweeps = sweep_points(theirs)
        if make_plots and sweeps:
            plot_dose_response(dest, mine, sweeps, suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        settings = theirs[0]["experiment"].get("settings") or {}
        text = findings(mine, settings, code_identities(theirs), sweeps, pretrained_dropout(settings.get("model")))
        out.append(text if name == DEFAULT_EXPERIMENT else f"# Experiment {name}\n\n{text}")
    if duplicates:
        out.append(f"note: {duplicates} duplicate record(s) in runs.jsonl were counted once")
    text = "\n".join(out)
    _atomic_write(os.path.join(dest, "findings.md"), text)
    return text, records
