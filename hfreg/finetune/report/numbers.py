"""The numbers of a report, from the run records: each run's selected point, the per-cell summaries with their
verdicts and alpha, the controls, the staged stopping rule, the pooled answer per size, power and the
dose-response of a rate sweep."""

from __future__ import annotations

import functools
import math
import os
import statistics
from collections import Counter, defaultdict

from .. import stats, tasks
from ..presets import BASELINE
from ..records import (
    DEFAULT_SELECT_BY,
    SELECT_BY,
    experiment_of,
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


def chosen_runs(runs: list[dict], rates=None, select_by: str = DEFAULT_SELECT_BY) -> dict[int, dict]:
    """{seed: run} of one cell: per seed, the run whose learning rate reaches the best selection score (ties: the
    lower rate, scores rounded to 1e-9 so that equal counts of correct examples tie), chosen on the seed's own
    selection split as its early-stopping point is, so that each seed is one whole replicate of tuning and training
    and a seed's choice never changes as others come in. Among the grid's ``rates`` (its recorded `learning_rates`;
    None: the rates of the cell's own runs) alone; a seed without a run at every one of them is not yet comparable
    and is left out."""
    key, sign = SELECT_BY[select_by]
    rates = set(rates) if rates else {r["learning_rate"] for r in runs}
    by_seed = defaultdict(dict)
    for r in runs:
        if r["learning_rate"] in rates:
            by_seed[r["seed"]][r["learning_rate"]] = r
    return {seed: max(mine.values(), key=lambda r: (round(sign * selected_point(r, select_by)[key], 9),
                                                     -r["learning_rate"]))
            for seed, mine in by_seed.items() if rates <= set(mine)}


def seed_choices(runs: list[dict], select_by: str = DEFAULT_SELECT_BY) -> dict[tuple, dict[int, dict]]:
    """{(experiment, preset, train size): `chosen_runs` of that cell}, among each experiment's recorded
    `learning_rates` (older records: each cell's own): the one reading of which run a seed compares, for the
    verdicts, the test set's terms and the learning curves alike."""
    cells = defaultdict(list)
    for r in runs:
        cells[(experiment_of(r), r["preset"], r["train_size"])].append(r)
    return {cell: chosen_runs(group, (group[0]["experiment"].get("settings") or {}).get("learning_rates"), select_by)
            for cell, group in cells.items()}


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


def _null_arm(runs: list[dict], baseline_runs: list[dict]) -> bool:
    """Whether ``runs`` differ from the baseline's only in an incidental draw (`placebo`: the batch order, its
    ``data_order``), so that the arm's true Δ against it is 0 and any verdict but equivalent or inconclusive is a
    false claim."""
    config = runs[0].get("preset_config") or {}
    if "data_order" not in config or not baseline_runs or any(r.get("preset_config") != config for r in runs):
        return False
    plain = {k: v for k, v in config.items() if k != "data_order"}
    return all(r.get("preset_config") == plain for r in baseline_runs)


def _summarize(runs: list[dict], experiment: str, select_by: str, margins: dict) -> list[dict]:
    cells = defaultdict(list)
    for r in runs:
        cells[(r["preset"], r["train_size"])].append(r)
    order = list(dict.fromkeys(r["preset"] for r in runs))
    settings = runs[0]["experiment"].get("settings", {})
    rates = settings.get("learning_rates")  # older records without it: each cell's own
    picks = seed_choices(runs, select_by)
    chosen = {}
    for cell in cells:
        picked = picks[(experiment, *cell)]
        if picked:  # a cell whose seeds all lack a rate has nothing to compare yet
            counts = Counter(r["learning_rate"] for r in picked.values())
            lr = max(counts, key=lambda x: (counts[x], -x))  # the rate most seeds chose (ties: the lower)
            chosen[cell] = {s: run_values(r, select_by) for s, r in picked.items()}, lr, counts
    cells = {cell: group for cell, group in cells.items() if cell in chosen}
    design = {k: settings["seeds"][k] for k in ("max_seeds", "stage")} \
        if (settings.get("seeds") or {}).get("rule") == "auto" else None
    against = controls(runs)
    task = tasks.of_run(runs[0])
    kind = {} if task is CLASSIFIER else {"problem_type": task.problem_type}  # absent: older summaries match
    records = []
    for (preset, size) in sorted(cells, key=lambda c: (c[1], order.index(c[0]))):
        seeds, lr, counts = chosen[(preset, size)]
        ordered = [seeds[s] for s in sorted(seeds)]
        # several rates: how many seeds chose each (absent with one rate: older summaries match)
        several = len(rates or {r["learning_rate"] for r in cells[(preset, size)]}) > 1
        each = {"learning_rates_chosen": {f"{x:g}": counts[x] for x in sorted(counts)}} if several else {}
        rec = {"experiment": experiment, "preset": preset, "against": BASELINE, "train_size": size,
               "seeds": sorted(seeds), "learning_rate": lr, **each, "select_by": select_by,
               "underfit_runs": sum(v["underfit"] for v in ordered),
               "censored_runs": sum(v["censored"] for v in ordered), "passes": max(v["passes"] for v in ordered),
               "selected_epoch": statistics.fmean(v["selected_epoch"] for v in ordered), "design": design, **kind}
        rec["regime"] = regimes(ordered, rec["underfit_runs"], task)
        if _null_arm(cells[(preset, size)], cells.get((BASELINE, size), [])):
            rec["null_arm"] = True  # absent otherwise: older summaries match
        for comp in COMPARISONS:
            for m in ordered[0][comp]:
                values = [v[comp][m] for v in ordered]
                rec[f"{comp}_{m}"] = statistics.fmean(values)
                rec[f"{comp}_{m}_ci95"] = list(stats.paired(values)["ci95"])
        rows = [rec] + [{**{k: v for k, v in rec.items() if not k.startswith("delta_")}, "against": c}
                        for c in against.get(preset, []) if (c, size) in chosen]
        rec["missing_controls"] = [c for c in against.get(preset, []) if (c, size) not in chosen]
        control = next((c for c in against.get(preset, []) if "@" not in c), BASELINE)
        theirs = [v["passes"] for v in chosen.get((control, size), ({}, None, None))[0].values()] or [1]
        if rec["passes"] > max(theirs) and not any("@" in c for c in against.get(preset, [])):
            rec["missing_controls"].append(f"{control}@{rec['passes'] // max(theirs)}x")  # no arm at its compute
        for row in rows:
            if row["preset"] == row["against"]:
                continue
            base = chosen.get((row["against"], size), ({}, None, None))[0]
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
    from ..presets import load_preset

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
                if design:  # Holm over the column alone knows nothing of the looks: only the verdict's level does
                    d["p_holm"] = float("nan")
                if design and d["n"] < design["max_seeds"] and d["n"] not in stats.looks(**design):
                    # a count between the planned looks (a stage under way, a missing run) decides nothing: the
                    # next look's boundary is computed without it, so a verdict here would spend error twice
                    d["verdict"] = "inconclusive"
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


MODERATOR_ALPHA = stats.ALPHA  # size moderates an arm's effect where the between-sizes test's p is below this


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


def pooled_alpha(cells: list[dict], comp: str, metric: str, m: int, final: bool = False) -> float:
    """A pooled row's level: the column's share over its ``m`` rows (a fixed grid's cell: the share itself). While a
    staged source's cells still plan seeds, at the look each staged cell is read at (its paired seeds), the
    strictest of its cells, so that a pool read while they run spends only what their looks allow; once none does
    (``final``), at the last look's level: the row's final reading, which the spending function keeps for it (at
    its earliest cell's look a pool holding a cell stopped at 15 of 40 seeds would stay at 2.3e-8 for good)."""
    alpha = column_alpha(comp, metric, m)
    key = f"delta_{comp}_{metric}"
    return min([alpha] + [stats.nominal_alpha(r["design"]["max_seeds"] if final else r[key]["n"], alpha,
                                              **r["design"]) for r in cells if r.get("design")])


def pooled(records: list[dict], margins: dict | None = None, final: bool = False) -> list[dict]:
    """Each arm's (preset against the baseline or a control) paired differences over cells (``records`` from one or
    several result directories: every experiment x size is a cell), per comparison and verdict metric:

    * one row per training size, the data sets as fixed strata (`stats.strata`, Welch-Satterthwaite df);
    * one row over all cells (random effects with its prediction interval, `stats.random_effects`) only where there
      are at least 3 cells and size does not moderate the effect (`moderator`, p >= `MODERATOR_ALPHA`); each row
      carries the moderator test, and its cells' weight shares.

    Cell variances include the test set's part (`cell_parts`). The rows of one comparison x metric share the
    column's alpha (Bonferroni over them, look-adjusted for staged sources: `pooled_alpha`; ``final``: no staged
    cell plans seeds any more)."""
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
            for (preset, against), scope, method, cells, mod, moderated in planned:
                alpha = pooled_alpha(cells, comp, metric, len(planned), final)
                y = [r[key]["mean"] for r in cells]
                parts = [cell_parts(r, key) for r in cells]
                pool = stats.strata(y, [a for a, _ in parts], [r[key]["n"] - 1 for r in cells], alpha,
                                    fixed=[b for _, b in parts]) if method == "strata" \
                    else stats.random_effects(y, [a + b for a, b in parts], alpha)
                nan = float("nan")
                rows.append({**kind, "preset": preset, "against": against, "comparison": comp, "metric": metric,
                             "scope": scope, "method": method, "cells": pool["k"],
                             "seeds": sum(r[key]["n"] for r in cells), "delta": pool["delta"], "ci": pool["ci"],
                             "seeds_only": sum("test_set" not in r[key] for r in cells),
                             "ci_equivalence": pool["ci_equivalence"], "df": pool["df"],
                             "prediction_interval": pool.get("prediction_interval", [nan, nan]),
                             "i2": pool.get("i2", nan), "tau": pool.get("tau", nan),
                             "weights": {_cell_name(r): w for r, w in zip(cells, pool["weights"])},
                             "moderator": {**mod, "depends_on_size": moderated},
                             "m": len(planned), "alpha": alpha, "margin": margins[metric],
                             "verdict": stats.verdict(*pool["ci"], higher_is_better=METRICS[metric] > 0,
                                                      eq=pool["ci_equivalence"], margin=margins[metric])})
    return rows


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


def margins_of(records: list[dict]) -> dict:
    """{metric: margin} the records' comparisons were judged against."""
    return {k.split("_", 2)[2]: d["margin"] for r in records for k, d in r.items()
            if k.startswith("delta_") and "margin" in d}


class Sweep(dict):
    """One rate sweep: {preset: rate or factor}, and ``x1_rates``, a factor sweep's ×1 as rates in words
    (``attention 0.1, hidden 0.1, classifier 0.1``), so that a factor reads as a rate; None for a knob's own sweep,
    whose values are rates. A copy made by dict operations (``dict(s)``, ``{**s}``) is a plain dict without it, which
    the words of a factor sweep refuse (`words.sweep_words`)."""

    def __init__(self, points: dict[str, float], x1_rates: str | None = None):
        super().__init__(points)
        self.x1_rates = x1_rates


def sweep_points(runs: list[dict]) -> dict[str, Sweep]:
    """{family: `Sweep`} of the rate sweeps among ``runs`` (``--rates``); a family's rate 0 is the baseline, and a
    factor sweep's factor 1 is its preset itself where the grid ran it (``--presets classic --rates
    classic*0.5,2``: `classic` is ×1). A factor sweep's ×1 rates are any scaled point's, divided by its factor."""
    from ...config import KNOBS

    out: dict[str, dict[str, float]] = defaultdict(dict)
    units, plain = {}, set()
    for r in runs:
        config = r.get("preset_config") or {}
        sweep = config.get("sweep")
        if not sweep:
            plain.add(r["preset"])
            continue
        family, value = sweep["family"], float(sweep["value"])
        out[family][r["preset"]] = value
        if family not in KNOBS and family not in units and value:
            units[family] = ", ".join(f"{k} {config[k] / value:.3g}" for k in KNOBS
                                      if isinstance(config.get(k), (int, float)) and config[k]) or "no rate"
    for family in out:
        if family not in KNOBS and family in plain and 1.0 not in out[family].values():
            out[family][family] = 1.0
    return {family: Sweep({BASELINE: 0.0, **dict(sorted(points.items(), key=lambda kv: kv[1]))}, units.get(family))
            for family, points in out.items()}


def dose_response(records: list[dict], points: dict[str, float], select: str = "early") -> list[dict]:
    """Per training size, what a rate sweep says (the task's primary metric, ``select`` comparison): the rates
    better, worse, trivial (``trivially_better``: those of them on the better side of 0), equivalent to the baseline
    or inconclusive, the rate of the best mean Δ (the highest; a loss's lowest: ``sign``) with its simultaneous
    interval, and the presets not shown worse than another rate (`not_shown_worse`; a rate without an interval yet
    is not shown worse). Presets, not rates, since a preset's ×0
    that keeps its weight decay is not the baseline."""
    primary = tasks.of_rows(records).primary
    key, sign = f"delta_{select}_{primary}", METRICS[primary]  # sign: +1 where higher is better (a loss: -1)
    out = []
    for size in sorted({r["train_size"] for r in records}):
        cells = {r["preset"]: r for r in records if r["train_size"] == size and r["preset"] in points
                 and r.get("against", BASELINE) == BASELINE}
        deltas = {p: c[key] for p, c in cells.items() if key in c and c[key]["n"] >= 2}
        if not deltas:
            continue
        nan = (math.nan, math.nan)
        intervals = {p: tuple(deltas[p]["ci_adjusted"]) if p in deltas else nan for p in cells if p != BASELINE}
        best, kept = sweep_best(points, sign, {p: d["mean"] for p, d in deltas.items()}, intervals)
        by = defaultdict(list)
        for p, d in deltas.items():
            by[d["verdict"]].append(points[p])
        out.append({"train_size": size, "sign": sign, "best": points[best], "best_preset": best,
                    "best_delta": deltas[best]["mean"] if best in deltas else 0.0,
                    "best_ci": list(intervals.get(best, (0.0, 0.0))), "not_worse_than_best": kept,
                    **{v: sorted(by[v]) for v in stats.VERDICTS},
                    # a trivial difference's side: the rates whose mean Δ is on the better side of 0
                    "trivially_better": sorted(points[p] for p, d in deltas.items()
                                               if d["verdict"] == "trivial" and sign * d["mean"] > 0)})
    return out


def sweep_best(points: dict[str, float], sign: int, means: dict, intervals: dict) -> tuple[str, list]:
    """A sweep's best preset at one size — the best mean Δ against the baseline (``sign``: +1 where higher is better,
    -1 for a loss; the baseline is 0, ties to the lower rate) — and the presets not shown worse than another rate
    (`not_shown_worse` over ``intervals``, the baseline's (0, 0) added), by rate with the baseline first."""
    means = {BASELINE: 0.0, **means}
    best = max(means, key=lambda p: (sign * means[p], -points[p]))
    kept = not_shown_worse({BASELINE: (0.0, 0.0), **{p: oriented(ci, sign) for p, ci in intervals.items()}})
    return best, sorted(kept, key=lambda p: (points[p], p != BASELINE))


def oriented(interval, sign: int) -> tuple[float, float]:
    """An interval for Δ turned so that higher is better: as it is for ``sign`` +1, negated for a loss (-1)."""
    lo, hi = interval
    return (lo, hi) if sign > 0 else (-hi, -lo)


def not_shown_worse(intervals: dict) -> list:
    """The presets of a sweep not shown worse than another, from their simultaneous intervals for Δ against the
    baseline, higher is better (``intervals``: {preset: (low, high)}, `oriented`; the baseline's (0, 0), nan where a
    preset has none yet): one is worse than another where its interval lies wholly below the other's. Where every
    interval holds (the column's error control), each such claim is true, so the set holds the best and costs no
    error of its own; it ignores the pairing of two rates by seed, so it says less than a paired comparison that
    would need error of its own."""
    floor = max((lo for lo, _ in intervals.values() if not math.isnan(lo)), default=-math.inf)
    return [p for p, (_, hi) in intervals.items() if math.isnan(hi) or hi >= floor]
