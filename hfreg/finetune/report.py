"""Summaries, findings, tables and plots of the comparison, rebuilt from ``runs.jsonl`` alone (no torch).

Every preset is compared with the zero-dropout baseline, paired by seed, on the test split, twice:
  * early-stopped: each run at its evaluation point with the best selection-split score (``select_by``: accuracy,
    macro-F1 or loss; ties go to the earliest point);
  * fixed budget: each run at its final step.
Every evaluation point of a record carries the selection metrics, and the point each ``select_by`` rule picks and
the final one carry the test metrics computed from their predictions, so a report under another ``select_by`` is
recomputed from the records without retraining.
Per table (one experiment, one comparison, one metric) the m preset x size comparisons form one family, judged
four ways against a declared margin (see `stats`): better, worse, equivalent or inconclusive. `pooled` pools each
preset's paired differences across cells (sizes, data sets) with a random-effects model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import defaultdict

from ..config import KNOBS as KNOB_NAMES
from . import stats
from .presets import BASELINE
from .records import DEFAULT_EXPERIMENT, DEFAULT_SELECT_BY, SELECT_BY, experiment_of, read_runs

COMPARISONS = {"early": "early-stopped", "fixed": "fixed budget"}
# metric -> +1 where higher is better, -1 where lower is better
METRICS = {"test_accuracy": +1, "test_f1": +1, "test_loss": -1, "test_nll_ts": -1, "test_ece": -1,
           "test_brier": -1, "gap": -1, "degradation": -1}
VERDICT_METRICS = ("test_accuracy", "test_loss")  # what findings.md states a verdict for
NAMES = {"test_accuracy": "test accuracy", "test_f1": "test macro-F1", "test_loss": "test NLL",
         "test_nll_ts": "test NLL after temperature scaling", "test_ece": "test ECE", "test_brier": "test Brier",
         "gap": "gap (test - train loss)", "degradation": "degradation (final - early-stopped test loss)"}
# underfit: the selected point's accuracy is within 0.02 of the majority-class rate, or the run's lowest selection
# loss stays within 5% of ln K (a uniform prediction)
NEAR_CHANCE_ACCURACY, NEAR_CHANCE_LOSS = 0.02, 0.95


def check_select_by(select_by: str) -> None:
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {list(SELECT_BY)}, got {select_by!r}")


def selected_point(run: dict, select_by: str = DEFAULT_SELECT_BY) -> dict:
    """The evaluation point with the best selection-split score; ties go to the earliest."""
    key, sign = SELECT_BY[select_by]
    best = max(sign * p[key] for p in run["evals"])
    return next(p for p in run["evals"] if sign * p[key] == best)


def run_values(run: dict, select_by: str = DEFAULT_SELECT_BY) -> dict:
    """Per-run numbers under both comparisons, and whether the run is underfit."""
    evals = run["evals"]
    early = selected_point(run, select_by)
    final = evals[-1]
    out = {}
    for name, point in (("early", early), ("fixed", final)):
        out[name] = {m: point[m] for m in METRICS if m.startswith("test_")}
        out[name]["gap"] = point["test_loss"] - point["train_loss"]
    out["fixed"]["degradation"] = final["test_loss"] - early["test_loss"]
    classes = len(run["experiment"]["settings"]["labels"])
    out["underfit"] = (early["selection_accuracy"] <= run["selection_majority"] + NEAR_CHANCE_ACCURACY
                       or min(p["selection_loss"] for p in evals) >= NEAR_CHANCE_LOSS * math.log(classes))
    out["selection_score"] = early[SELECT_BY[select_by][0]]
    out["selected_epoch"] = early["epoch"]
    # after the selected point: how test accuracy, NLL and temperature-scaled NLL move by the final one
    out["after"] = {m: final[m] - early[m] for m in ("test_accuracy", "test_loss", "test_nll_ts")}
    out["final_train_accuracy"] = final.get("train_accuracy", float("nan"))
    return out


def _choose_rate(runs: list[dict], select_by: str = DEFAULT_SELECT_BY) -> float:
    """The learning rate whose runs reach the best mean selection score (the test split plays no part)."""
    key, sign = SELECT_BY[select_by]
    by_rate = defaultdict(list)
    for r in runs:
        by_rate[r["learning_rate"]].append(sign * selected_point(r, select_by)[key])
    return max(by_rate, key=lambda lr: (statistics.fmean(by_rate[lr]), -lr))


def summarize(runs: list[dict], select_by: str = DEFAULT_SELECT_BY, margins: dict | None = None) -> list[dict]:
    """One record per experiment x preset x train size (see the module doc)."""
    check_select_by(select_by)
    margins = check_margins(margins)
    experiments = list(dict.fromkeys(experiment_of(r) for r in runs))
    return [rec for name in experiments
            for rec in _summarize([r for r in runs if experiment_of(r) == name], name, select_by, margins)]


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


def regimes(ordered: list[dict], underfit_runs: int) -> list[str]:
    """What a cell's runs did, from what they measured (per-seed changes from the selected to the final point,
    t-intervals at 95%): *underfit* (most runs' best selection point near chance), *memorises* (mean final
    training accuracy >= 0.99), *overfits* (test accuracy falls after the selected point beyond noise),
    *overconfident* (test NLL rises after it beyond noise, while accuracy and temperature-scaled NLL do not worsen
    beyond noise)."""
    out = []
    if underfit_runs * 2 > len(ordered):
        out.append("underfit")
    train = [v["final_train_accuracy"] for v in ordered if not math.isnan(v["final_train_accuracy"])]
    if train and statistics.fmean(train) >= 0.99:
        out.append("memorises")
    ci = {m: stats.paired([v["after"][m] for v in ordered])["ci95"] for m in ordered[0]["after"]}
    if ci["test_accuracy"][1] < 0:
        out.append("overfits")
    elif ci["test_loss"][0] > 0 and not ci["test_nll_ts"][0] > 0:
        out.append("overconfident")
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
    records = []
    for (preset, size) in sorted(cells, key=lambda c: (c[1], order.index(c[0]))):
        seeds, lr = chosen[(preset, size)]
        ordered = [seeds[s] for s in sorted(seeds)]
        rec = {"experiment": experiment, "preset": preset, "train_size": size, "seeds": sorted(seeds),
               "learning_rate": lr, "select_by": select_by, "underfit_runs": sum(v["underfit"] for v in ordered),
               "selected_epoch": statistics.fmean(v["selected_epoch"] for v in ordered)}
        rec["regime"] = regimes(ordered, rec["underfit_runs"])
        for comp in COMPARISONS:
            for m in ordered[0][comp]:
                values = [v[comp][m] for v in ordered]
                rec[f"{comp}_{m}"] = statistics.fmean(values)
                rec[f"{comp}_{m}_ci95"] = list(stats.paired(values)["ci95"])
        base = chosen.get((BASELINE, size), ({}, None))[0]
        paired_seeds = sorted(set(seeds) & set(base))
        if preset != BASELINE and paired_seeds:
            rec["paired_seeds"] = paired_seeds
            for comp in COMPARISONS:
                for m in ordered[0][comp]:
                    deltas = [seeds[s][comp][m] - base[s][comp][m] for s in paired_seeds]
                    rec[f"delta_{comp}_{m}"] = {**stats.paired(deltas), "deltas": deltas}
        records.append(rec)
    _adjust(records, margins, family_alpha(runs[0]["experiment"].get("settings", {})))
    return records


def family_alpha(settings: dict) -> float:
    """The family-wise alpha of one look at an experiment: 0.05, or 0.05 / looks for a staged grid (`--seeds
    auto`), whose verdicts are looked at after every stage (`stats.looks`)."""
    seeds = settings.get("seeds") or {}
    return stats.ALPHA / stats.looks(seeds["max_seeds"], seeds["stage"]) if seeds.get("rule") == "auto" \
        else stats.ALPHA


def decided(record: dict) -> bool:
    """Whether every verdict of a cell (both comparisons, test accuracy and NLL) is better, worse or equivalent."""
    keys = [f"delta_{c}_{m}" for c in COMPARISONS for m in VERDICT_METRICS]
    return all(k in record and record[k]["verdict"] != "inconclusive" for k in keys)


def _adjust(records: list[dict], margins: dict, alpha: float) -> None:
    """Holm p-values, simultaneous intervals, TOST and four-way verdicts within each family (comparison x
    metric), at family-wise ``alpha``."""
    keys = {k for r in records for k in r if k.startswith("delta_")}
    for key in keys:
        metric = key.split("_", 2)[2]
        margin = margins[metric]
        family = [r[key] for r in records if key in r and r[key]["n"] >= 2]
        m = len(family)
        for d, p_holm in zip(family, stats.holm([d["p"] for d in family])):
            d.update(m=m, p_holm=p_holm, margin=margin, p_tost=stats.tost_p(d["deltas"], margin), alpha=alpha,
                     **stats.judge(d["deltas"], margin, METRICS[metric] > 0, m, alpha))
        for r in records:
            if key in r and r[key]["n"] < 2:
                r[key].update(m=m, p_holm=float("nan"), margin=margin, p_tost=float("nan"), alpha=alpha,
                              ci_adjusted=[float("nan")] * 2, ci_equivalence=[float("nan")] * 2,
                              verdict="inconclusive")


def pooled(records: list[dict], margins: dict | None = None) -> list[dict]:
    """Each preset's paired differences pooled across its cells (``records`` from one or several result
    directories: every experiment x size is a cell), for both comparisons and every metric with a verdict: one row
    over all cells (``scope`` "all") and one per training size. Random effects (`stats.random_effects`); the
    presets of one comparison x metric x scope form one family (simultaneous level 1 - alpha/m)."""
    margins = check_margins(margins)
    rows = []
    presets = list(dict.fromkeys(r["preset"] for r in records if r["preset"] != BASELINE))
    sizes = sorted({r["train_size"] for r in records})
    for comp in COMPARISONS:
        for metric in VERDICT_METRICS:
            key = f"delta_{comp}_{metric}"
            for scope in ["all", *sizes]:
                family = []
                for preset in presets:
                    cells = [r[key] for r in records if r["preset"] == preset and key in r and r[key]["n"] >= 2
                             and (scope == "all" or r["train_size"] == scope)]
                    if cells:
                        family.append((preset, cells))
                for preset, cells in family:
                    pool = stats.random_effects([d["mean"] for d in cells], [d["sd"] ** 2 / d["n"] for d in cells],
                                                alpha=stats.ALPHA / len(family))
                    rows.append({"preset": preset, "comparison": comp, "metric": metric,
                                 "scope": "all" if scope == "all" else f"n={scope}", "cells": pool["k"],
                                 "seeds": sum(d["n"] for d in cells), "delta": pool["delta"],
                                 "ci": pool["ci"], "ci_equivalence": pool["ci_equivalence"], "i2": pool["i2"],
                                 "tau": pool["tau"], "m": len(family), "margin": margins[metric],
                                 "verdict": stats.verdict(*pool["ci"], higher_is_better=METRICS[metric] > 0,
                                                          eq=pool["ci_equivalence"], margin=margins[metric])})
    return rows


def pooled_table(rows: list[dict], scope: str = "all") -> str:
    """Markdown: one line per preset, Δ accuracy and Δ NLL pooled over the cells of ``scope``, both comparisons."""
    head = ["preset", "cells", "seeds"] + [f"Δ {NAMES[m].replace('test ', '')} ({COMPARISONS[c]})"
                                           for c in COMPARISONS for m in VERDICT_METRICS]
    out = [head, ["---"] * len(head)]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = {(r["comparison"], r["metric"]): r for r in rows if r["preset"] == preset and r["scope"] == scope}
        if not mine:
            continue
        first = next(iter(mine.values()))
        cells = []
        for c in COMPARISONS:
            for m in VERDICT_METRICS:
                r = mine.get((c, m))
                cells.append("-" if r is None else f"{_num(r['delta'], sign=True)} [{_num(r['ci'][0], sign=True)}, "
                             f"{_num(r['ci'][1], sign=True)}] I²={_num(r['i2'], 2)} {_short(r['verdict'])}")
        out.append([preset, str(first["cells"]), str(first["seeds"]), *cells])
    return "\n".join("| " + " | ".join(row) + " |" for row in out)


def answer(rows: list[dict]) -> str:
    """One paragraph from the overall pooled rows: per verdict, the presets that get it for test accuracy under
    both comparisons, then those whose two comparisons disagree."""
    overall = [r for r in rows if r["scope"] == "all" and r["metric"] == "test_accuracy"]
    if not overall:
        return ""
    cells = max(r["cells"] for r in overall)
    by_preset = defaultdict(dict)
    for r in overall:
        by_preset[r["preset"]][r["comparison"]] = r
    same, mixed = defaultdict(list), []
    for preset, comps in by_preset.items():
        verdicts = {c: comps[c]["verdict"] for c in comps}
        if len(set(verdicts.values())) == 1 and len(verdicts) == len(COMPARISONS):
            same[next(iter(verdicts.values()))].append(f"`{preset}`")
        else:
            mixed.append(f"`{preset}` ({', '.join(f'{v} {COMPARISONS[c]}' for c, v in verdicts.items())})")
    margin = overall[0]["margin"]
    words = {"equivalent": f"equivalent to `{BASELINE}` within ±{margin:g}", "better": "better than it",
             "worse": "worse than it", "inconclusive": "inconclusive"}
    parts = [f"{words[v]}: {', '.join(same[v])}" for v in ("equivalent", "better", "worse", "inconclusive")
             if same[v]]
    if mixed:
        parts.append(f"the two comparisons differ for {', '.join(mixed)}")
    return (f"**Answer** (test accuracy pooled over up to {cells} cells, early-stopped and at a fixed budget alike): "
            + "; ".join(parts) + ".")


def pooled_text(rows: list[dict], sources: list[str]) -> str:
    """pooled.md: the overall table, then one per training size, and the reading in words."""
    if not rows:
        return "## Pooled\n\nNo comparison with at least two paired seeds.\n"
    lines = ["## Pooled over data sets and sizes", "",
             f"Sources: {', '.join(f'`{s}`' for s in sources)}. Each preset's mean paired Δ (preset − "
             f"`{BASELINE}`) per cell (data set × size), pooled by a random-effects model (DerSimonian–Laird τ², "
             f"modified Hartung–Knapp interval, t with cells − 1 df); intervals simultaneous over the presets of "
             f"each column (Bonferroni). Margins: {_margins_text({r['metric']: r['margin'] for r in rows})}"
             ". **better** / **worse**: the interval excludes 0; **equivalent**: the TOST interval lies inside the "
             "margin; otherwise inconclusive. I² = share of the spread that is between cells. Rows over few "
             "cells are wide by design: with 2 cells the interval has 1 degree of freedom.", "",
             answer(rows), "", "### All cells", "", pooled_table(rows), ""]
    for scope in dict.fromkeys(r["scope"] for r in rows if r["scope"] != "all"):
        lines += [f"### {scope}", "", pooled_table(rows, scope), ""]
    lines += ["In words (all cells):", ""]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        said = [f"{r['verdict']} in {NAMES[r['metric']]} {COMPARISONS[r['comparison']]} "
                f"(Δ {_num(r['delta'], sign=True)} [{_num(r['ci'][0], sign=True)}, {_num(r['ci'][1], sign=True)}])"
                for r in rows if r["preset"] == preset and r["scope"] == "all"]
        lines.append(f"- `{preset}`: " + "; ".join(said) + ".")
    return "\n".join(lines) + "\n"


def power(records: list[dict], margins: dict | None = None) -> dict:
    """Per comparison (early-stopped, fixed budget), from the median paired SD of Δ test accuracy over the presets
    that are not near-copies of the baseline (paired SD under a tenth of the family's median: a preset that changes
    nothing the baseline does): seeds for 80% power to detect Δ = 0.01 and 0.02 (at alpha = 0.05 and at the
    family's corrected alpha), and to show equivalence within the margin when the true Δ is 0."""
    margin = check_margins(margins)["test_accuracy"]
    out = {}
    for comp in COMPARISONS:
        deltas = [r[f"delta_{comp}_test_accuracy"] for r in records
                  if r.get(f"delta_{comp}_test_accuracy", {}).get("n", 0) >= 2]
        if not deltas:
            continue
        everyone = statistics.median(d["sd"] for d in deltas)
        kept = [d for d in deltas if d["sd"] >= 0.1 * everyone]
        sd = statistics.median(d["sd"] for d in kept) if kept else 0.0
        m = deltas[0]["m"]
        out[comp] = {"paired_sd": sd, "family_size": m, "near_copies": len(deltas) - len(kept),
                     "seeds": {f"{delta}": {"alpha_0.05": stats.seeds_for_power(sd, delta),
                                            "alpha_corrected": stats.seeds_for_power(sd, delta, alpha=stats.ALPHA / m)}
                               for delta in (0.01, 0.02)},
                     "equivalence": {"margin": margin,
                                     "alpha_corrected": stats.seeds_for_equivalence(sd, margin, stats.ALPHA / m)}}
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
    other rates) that reaches zero."""
    key = f"delta_{select}_test_accuracy"
    out = []
    for size in sorted({r["train_size"] for r in records}):
        cells = {r["preset"]: r for r in records if r["train_size"] == size and r["preset"] in points}
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


def sweep_text(family: str, rows: list[dict]) -> list[str]:
    unit = "×" if family not in KNOB_NAMES else ""
    fmt = lambda values: ", ".join(f"{unit}{v:g}" for v in values) or "none"  # noqa: E731
    lines = [f"Rate sweep `{family}` ({'factor on every rate of the preset' if unit else 'the knob alone'}; "
             f"test accuracy, early-stopped):", ""]
    for r in rows:
        lines.append(f"- n={r['train_size']}: equivalent to none at {fmt(r['equivalent'])}; worse at "
                     f"{fmt(r['worse'])}; better at {fmt(r['better'])}; inconclusive at {fmt(r['inconclusive'])}. "
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
    """Markdown: per preset x size, test accuracy and NLL under both comparisons, deltas with their
    simultaneous intervals and verdicts, and the regime the cell's runs showed."""
    head = ["size", "preset", "seeds", "lr", "stop epoch", "acc (early)", "Δ acc (early)", "Δ NLL (early)",
            "acc (fixed)", "Δ acc (fixed)", "Δ NLL (fixed)", "underfit", "regime"]
    rows = [head, ["---"] * len(head)]
    for r in records:
        cells = []
        for comp in COMPARISONS:
            for m in VERDICT_METRICS:
                d = r.get(f"delta_{comp}_{m}")
                cells.append("-" if d is None else f"{_delta(d)} {_short(d['verdict'])}")
        rows.append([str(r["train_size"]), r["preset"], str(len(r["seeds"])), f"{r['learning_rate']:g}",
                     _num(r["selected_epoch"], 1), _num(r["early_test_accuracy"]), cells[0], cells[1],
                     _num(r["fixed_test_accuracy"]), cells[2], cells[3],
                     f"{r['underfit_runs']}/{len(r['seeds'])}", ", ".join(r.get("regime", [])) or "-"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _short(verdict: str) -> str:
    return {"better": "**better**", "worse": "**worse**", "equivalent": "equiv.", "inconclusive": "inconcl."}[verdict]


def _margins_of(records: list[dict]) -> dict:
    """{metric: margin} the records' comparisons were judged against."""
    return {k.split("_", 2)[2]: d["margin"] for r in records for k, d in r.items() if k.startswith("delta_")}


def _margins_text(margins: dict) -> str:
    return ", ".join(f"{NAMES[m]} ±{margins[m]:g}" for m in VERDICT_METRICS if m in margins)


def _copies(n: int) -> str:
    return f" ({n} near-cop{'ies' if n > 1 else 'y'} of the baseline left out)" if n else ""


def findings(records: list[dict], settings: dict | None = None, codes: list[str] | None = None,
             sweeps: dict | None = None) -> str:
    """findings.md for one experiment: the verdict table and its plain-word reading, derived from the numbers."""
    lines = ["## Findings", ""]
    if settings:
        lines += [f"Model {settings.get('model')}; data roles: {settings.get('roles')}; learning rate(s) "
                  f"{settings.get('learning_rates')}, {settings.get('num_train_epochs')} epochs"
                  f"{', at least ' + str(settings['min_steps']) + ' steps' if settings.get('min_steps') else ''}, "
                  f"batch {settings.get('train_batch_size')}, {settings.get('evals_per_epoch')} evaluations per "
                  f"epoch.", ""]
    if codes and len(codes) > 1:
        lines += [f"Note: these runs were made by {len(codes)} versions of the code ({', '.join(codes)}).", ""]
    first = next((r["delta_early_test_accuracy"] for r in records if "delta_early_test_accuracy" in r), {})
    fam, alpha = first.get("m", 0), first.get("alpha", stats.ALPHA)
    level = f"{100 * (1 - alpha):g}%" + (f" (α = 0.05 spent evenly over the {round(stats.ALPHA / alpha)} looks of "
                                         f"a staged grid)" if alpha < stats.ALPHA else "")
    select_by = records[0].get("select_by", DEFAULT_SELECT_BY) if records else DEFAULT_SELECT_BY
    lines += [f"Each preset against `{BASELINE}`, paired by seed, on the test split; early-stopped = each run at "
              f"its best selection-split {select_by} (ties: the earliest point), fixed budget = its final step. Δ "
              f"is preset − baseline with its simultaneous {level} interval (Bonferroni over the {fam} comparisons "
              f"of each column). Margins: {_margins_text(_margins_of(records))}. **better** / **worse**: the "
              f"interval excludes 0; equiv. (equivalent): the TOST interval (1 − 2α/{fam}) lies inside the margin; "
              f"inconcl. (inconclusive): neither. Underfit = runs whose selected point is near chance; regime = what "
              f"the cell's runs measured (see the README).", "", table(records), ""]
    words = []
    for r in records:
        if r["preset"] == BASELINE:
            regime = ", ".join(r.get("regime", []))
            if regime:
                words.append(f"`{BASELINE}` at {r['train_size']}: {regime}.")
            continue
        by = defaultdict(list)
        for comp, label in COMPARISONS.items():
            for m in VERDICT_METRICS:
                d = r.get(f"delta_{comp}_{m}")
                if d:
                    by[d["verdict"]].append(f"{NAMES[m]} {label}" + (f" (Δ {_delta(d)})" if d["verdict"] in (
                        "better", "worse") else ""))
        text = "; ".join(f"{v} in {', '.join(by[v])}" for v in stats.VERDICTS if by[v])
        if r.get("regime"):
            text += f" — {', '.join(r['regime'])}"
        words.append(f"`{r['preset']}` at {r['train_size']}: {text}.")
    lines += ["In words:", ""] + [f"- {w}" for w in words] + [""]
    verdicts = [r[f"delta_{c}_{m}"]["verdict"] for r in records for c in COMPARISONS for m in VERDICT_METRICS
                if f"delta_{c}_{m}" in r]
    lines.append(f"Of {len(verdicts)} verdicts, {verdicts.count('better')} say better, {verdicts.count('worse')} "
                 f"worse, {verdicts.count('equivalent')} equivalent, {verdicts.count('inconclusive')} inconclusive.")
    for family, points in (sweeps or {}).items():
        lines += [""] + sweep_text(family, dose_response(records, points))
    for comp, pw in power(records, _margins_of(records)).items():
        if pw["paired_sd"] == 0:
            lines += ["", f"Power ({COMPARISONS[comp]}): every paired difference in test accuracy is zero."]
            continue
        s, copies = pw["seeds"], pw["near_copies"]
        lines += ["", f"Power ({COMPARISONS[comp]}): the median paired SD of Δ test accuracy is "
                      f"{pw['paired_sd']:.4f}{_copies(copies)}. "
                      f"Detecting Δ = 0.02 with 80% power needs {s['0.02']['alpha_0.05']} seeds at α = 0.05 "
                      f"({s['0.02']['alpha_corrected']} at the corrected α = 0.05/{pw['family_size']}); Δ = 0.01 "
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
    """dose_response.png: per sweep (rows) Δ test accuracy, NLL and ECE (columns, early-stopped) against the rate,
    one line per training size, with simultaneous intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("test_accuracy", "test_loss", "test_ece")
    path = os.path.join(output_dir, f"dose_response{suffix}.png")
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(11, 3.0 * len(sweeps)), squeeze=False)
    for row, (family, points) in zip(axes, sweeps.items()):
        for ax, metric in zip(row, metrics):
            for size in sorted({r["train_size"] for r in records}):
                xs, ys, lo, hi = [0.0], [0.0], [0.0], [0.0]
                for r in records:
                    d = r.get(f"delta_early_{metric}")
                    if r["train_size"] == size and r["preset"] in points and d and d["n"] >= 2:
                        xs.append(points[r["preset"]])
                        ys.append(d["mean"])
                        lo.append(d["mean"] - d["ci_adjusted"][0])
                        hi.append(d["ci_adjusted"][1] - d["mean"])
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.errorbar([xs[i] for i in order], [ys[i] for i in order],
                            yerr=[[lo[i] for i in order], [hi[i] for i in order]], marker="o", capsize=3,
                            label=f"n={size}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(f"{family} {'factor' if family not in KNOB_NAMES else 'rate'}")
            ax.set_ylabel(f"Δ {NAMES[metric]} (early)")
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


def report(output_dir: str, make_plots: bool = True, select_by: str = DEFAULT_SELECT_BY,
           margins: dict | None = None, pooled_dir: str | None = None) -> str:
    """Rebuild summary.json, summary.csv, findings.md, pooled.json, pooled.md and the plots from
    ``output_dir/runs.jsonl``; return the findings. Each experiment in the directory gets its own section (and,
    beside the default one, its own plot files). ``pooled_dir`` (default ``output_dir``) receives the pooled
    files; `report_many` pools several directories instead."""
    text, records = _report(output_dir, _runs(output_dir), make_plots, select_by, margins)
    write_pooled(pooled_dir or output_dir, records, [output_dir], margins)
    return text


def report_many(output_dirs: list[str], out: str | None = None, make_plots: bool = True,
                select_by: str = DEFAULT_SELECT_BY, margins: dict | None = None) -> str:
    """`report` each of ``output_dirs``, then pool all their cells into ``out``/pooled.json and pooled.md (with
    one directory, ``out`` defaults to it). Returns the pooled text."""
    if len(output_dirs) > 1 and not out:
        raise ValueError(f"{len(output_dirs)} result directories need --out DIR for the pooled files")
    check_select_by(select_by)
    check_margins(margins)
    loaded = {d: _runs(d) for d in output_dirs}  # every directory read and checked before anything is written
    records = [rec for d, runs in loaded.items() for rec in _report(d, runs, make_plots, select_by, margins)[1]]
    out = out or output_dirs[0]
    os.makedirs(out, exist_ok=True)
    return write_pooled(out, records, output_dirs, margins)


def write_pooled(out: str, records: list[dict], sources: list[str], margins: dict | None) -> str:
    rows = pooled(records, margins)
    text = pooled_text(rows, sources)
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


def _report(output_dir: str, loaded: tuple[list[dict], int], make_plots: bool, select_by: str,
            margins: dict | None) -> tuple[str, list[dict]]:
    runs, duplicates = loaded
    records = summarize(runs, select_by, margins)
    write_summary(output_dir, records)
    out = []
    for name in dict.fromkeys(experiment_of(r) for r in runs):
        mine = [r for r in records if r["experiment"] == name]
        theirs = [r for r in runs if experiment_of(r) == name]
        if make_plots:
            plot(output_dir, theirs, mine, suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        sweeps = sweep_points(theirs)
        if make_plots and sweeps:
            plot_dose_response(output_dir, mine, sweeps, suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        text = findings(mine, theirs[0]["experiment"].get("settings"), code_identities(theirs), sweeps)
        out.append(text if name == DEFAULT_EXPERIMENT else f"# Experiment {name}\n\n{text}")
    if duplicates:
        out.append(f"note: {duplicates} duplicate record(s) in runs.jsonl were counted once")
    text = "\n".join(out)
    _atomic_write(os.path.join(output_dir, "findings.md"), text)
    return text, records
