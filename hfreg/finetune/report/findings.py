"""The words of a report: findings.md, pooled.md and their tables, written from the numbers (`numbers`), never by
hand."""

from __future__ import annotations

import math
from collections import defaultdict

from ...config import KNOBS as KNOB_NAMES
from .. import stats, tasks
from ..presets import BASELINE
from .numbers import (
    CLASSIFIER,
    COMPARISONS,
    METRICS,
    MODERATOR_ALPHA,
    NAMES,
    RUN_SETTINGS,
    SHORT,
    check_margins,
    dose_response,
    names,
    power,
    stop_reason,
    sweep_best,
)


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
                cells.append("-" if r is None else f"{_interval(r)} {_short(r['verdict'])}")
        method = "strata" if first["method"] == "strata" else "RE"
        line = [_label(*arm), str(first["cells"]), str(first["seeds"]), f"{method} ({first['df']:.1f})",
                f"{max(first['weights'].values()):.2f}", *cells]
        if scope == "all":
            pi = first["prediction_interval"]
            line.insert(5, f"[{_num(pi[0], sign=True)}, {_num(pi[1], sign=True)}]")
        out.append(line)
    return "\n".join("| " + " | ".join(row) + " |" for row in out)


def arm_answer(rows: list[dict], preset: str, against: str) -> dict[str, tuple[str | None, str]]:
    """{comparison: (verdict, text)} for one arm's test accuracy (the primary endpoint): the all-cells verdict where
    there is one, else the verdict at each size (marked "depends on size" where the moderator test says so and the
    verdicts differ; one verdict at every size is said once, even where the Δ behind it differs with size). The
    verdict is None where no one verdict holds everywhere with one Δ."""
    primary = tasks.of_rows(rows).primary
    out = {}
    for comp in COMPARISONS:
        mine = [r for r in rows if (r["preset"], r["against"]) == (preset, against) and r["comparison"] == comp
                and r["metric"] == primary]
        if not mine:
            continue
        overall = next((r for r in mine if r["scope"] == "all"), None if len(mine) > 1 else mine[0])
        if overall:  # the all-cells row, or the one size there is
            out[comp] = (overall["verdict"], overall["verdict"])
            continue
        per_size = ", ".join(f"{r['verdict']} at {r['scope']}" for r in mine)
        depends = mine[0]["moderator"]["depends_on_size"]
        if len({r["verdict"] for r in mine}) == 1:  # the verdict does not depend on size
            verdict = mine[0]["verdict"]
            out[comp] = (None, f"{verdict} at every size, by a Δ that differs with size") if depends else (
                verdict, f"{verdict} at every size")
        else:
            out[comp] = (None, f"depends on size ({per_size})" if depends else f"per size: {per_size}")
    return out


def answer(rows: list[dict]) -> str:
    """One paragraph from the pooled rows of test accuracy (the primary endpoint): per verdict the arms that get it
    under both comparisons, over all cells or (where no row is over all cells) at every size; then the arms whose
    answer depends on size or differs between the comparisons, in full."""
    task = tasks.of_rows(rows)
    arms = list(dict.fromkeys((r["preset"], r["against"]) for r in rows if r["metric"] == task.primary))
    if not arms:
        return ""
    margin = next(r["margin"] for r in rows if r["metric"] == task.primary)
    same, other = defaultdict(list), []
    for arm in arms:
        said = arm_answer(rows, *arm)
        # one verdict everywhere: over all cells, or at every size where there is no row over all cells
        verdicts = {verdict for verdict, _ in said.values()}
        if len(said) == len(COMPARISONS) and len(verdicts) == 1 and None not in verdicts:
            same[verdicts.pop()].append(_label(*arm))
        else:
            other.append(f"{_label(*arm)}: " + "; ".join(f"{COMPARISONS[c]} {text}" for c, (_, text) in said.items()))
    words = {"equivalent": f"equivalent within ±{margin:g}", "trivial": f"different but within ±{margin:g}",
             "better": "better", "worse": "worse", "inconclusive": "inconclusive"}
    parts = [f"{words[v]}: {', '.join(same[v])}" for v in stats.VERDICTS if same[v]]
    text = (f"**Answer** ({names(task)[task.primary]}; `preset` against `{BASELINE}`, `preset` vs `control` against "
            f"the control it names; over all cells where size does not moderate the effect, else per size; "
            f"early-stopped and at a fixed budget alike): "
            + ("; ".join(parts) if parts else "no arm gets one verdict everywhere, early-stopped and at a fixed "
                                              "budget alike") + ".")
    if other:
        text += "\n\nPer size or per comparison:\n\n" + "\n".join(f"- {o}." for o in other)
    return text


def pooled_sweep_text(family: str, points: dict[str, float], rows: list[dict], sources: int = 2,
                      units: dict | None = None) -> list[str]:
    """A rate sweep over the ``sources`` data sets (one: its test set counted as a draw, as every pooled row counts
    it), per training size: each rate's pooled Δ against the baseline (the strata
    rows of pooled.md, primary metric, early-stopped) with its simultaneous interval and verdict, the rates by
    verdict (with each rate's number of cells where they differ), the rate of the highest pooled Δ (×0: none
    beats the baseline), and the rates not shown worse than another (`not_shown_worse`, where every rate pools the same
    cells). The intervals are simultaneous over the column's rows, so the highest one's holds although it was picked
    as the highest."""
    task = tasks.of_rows(rows)
    unit, what, fmt = _sweep_words(family, units)
    over = "over the data sets" if sources > 1 else "pooled"
    lines = [f"Rate sweep `{family}` {over} ({what}; {names(task)[task.primary]}, early-stopped; each "
             f"rate's pooled Δ against `{BASELINE}` (rate 0) with its simultaneous interval, as the tables below give "
             f"it):", ""]
    sign = METRICS[task.primary]  # +1 where higher is better (a loss: -1)
    for scope in dict.fromkeys(r["scope"] for r in rows if r["scope"] != "all"):
        here = sorted((r for r in rows if r["scope"] == scope and r["comparison"] == "early"
                       and r["metric"] == task.primary and r["against"] == BASELINE and r["preset"] in points),
                      key=lambda r: points[r["preset"]])
        if not here:
            continue
        by = defaultdict(list)
        for r in here:
            by[r["verdict"]].append(points[r["preset"]])
        best, kept = sweep_best(points, sign, {r["preset"]: r["delta"] for r in here},
                                {r["preset"]: r["ci"] for r in here})
        # rates pooled over different data sets estimate different things: say so where they do
        varied = len({frozenset(r["weights"]) for r in here}) > 1
        rates = [f"{unit}{points[r['preset']]:g} {_interval(r)} {r['verdict']}"
                 + (f" ({r['cells']} cell{'s' if r['cells'] > 1 else ''})" if varied else "") for r in here]
        top = next((r for r in here if r["preset"] == best), None)
        said = f"{unit}{points[best]:g} ({_interval(top)})" if top else \
            f"{_rates(points, unit, [BASELINE])}, no rate's pooled Δ is {'above' if sign > 0 else 'below'} none"
        verdicts = _by_verdict(fmt, by)
        # no rate is judged against another over different data sets
        kept = "not said, the rates pool different data sets" if varied else _rates(points, unit, kept)
        missing = [p for p in points if p != BASELINE and p not in {r["preset"] for r in here}]
        kept += f" ({_rates(points, unit, missing)}: no pooled row at this size)" if missing else ""
        lines.append(f"- {scope}: {', '.join(rates)}. {verdicts[0].upper()}{verdicts[1:]}. "
                     f"{'Highest' if sign > 0 else 'Lowest'} pooled Δ: {said}{_edge(points, best)}; not shown "
                     f"worse than another rate: {kept}.")
    return lines + [""] if len(lines) > 2 else []


def _interval(row: dict) -> str:
    """A pooled row's Δ and interval."""
    return _span(row["delta"], row["ci"])


def _levels(alphas: list[float]) -> str:
    """A column's nominal level, or the range of its rows' levels."""
    lo, hi = min(alphas), max(alphas)
    return f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}–{hi:.2g}"


def _span(mean, ci) -> str:
    """An estimate and its interval: ``+0.012 [-0.003, +0.027]``."""
    return f"{_num(mean, sign=True)} [{_num(ci[0], sign=True)}, {_num(ci[1], sign=True)}]"


def pooled_text(rows: list[dict], sources: list[str], baseline: str | None = None, stages: list = (),
                sweeps: dict | None = None, units: dict | None = None) -> str:
    """pooled.md: the answer, the rate sweeps (``sweeps``: `sweep_points`, ``units``: `sweep_units`), the table of
    each training size, the all-cells table, and the moderator tests; ``baseline`` says what the baseline means for the
    sources' model (`baseline_text`); ``stages``, the sources' `cell_stages`: while a staged grid's cells still plan
    seeds, the answer is said not to be final."""
    if not rows:
        return "## Pooled\n\nNo comparison with at least two paired seeds.\n"
    task = tasks.of_rows(rows)
    said = names(task)
    alphas = defaultdict(list)
    for r in rows:
        alphas[(r["comparison"], r["metric"])].append(r["alpha"])
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
             f"Bonferroni over a column's rows, each row of a staged grid at the look its cells are read at (the "
             f"strictest of theirs) while any staged cell of the sources plans seeds, else at the last look's where "
             f"every source is a staged grid read under the margins and selection rule it stopped by (nominal "
             f"levels {', '.join(_levels(a) for a in alphas.values())}). Margins: "
             f"{_margins_text({r['metric']: r['margin'] for r in rows})}. Verdicts: **better** / **worse** (the "
             f"interval excludes 0 and the equivalence interval is not inside the margin: a difference, which may "
             f"still be smaller than the margin), *trivial* (it excludes 0 but the equivalence interval lies inside "
             f"the margin), "
             f"equivalent (the equivalence interval lies inside the margin, the interval contains 0), "
             f"inconclusive. {_calibration_words(task)}A row over one "
             f"cell can differ from that cell's findings row either way: the pool also counts the test set as a "
             f"draw (wider), and in its final reading it is read at the last look's level, where the findings read "
             f"a cell at the look it stopped at (narrower, for a cell that stopped early).", ""]
    column = [r for r in rows if r["comparison"] == "early" and r["metric"] == task.primary and r["scope"] != "all"]
    short = sum(r.get("seeds_only", 0) for r in column)
    if short:
        # measured (docs/comparison.md): on the seeds' variance alone, 95% strata intervals cover as little as
        # 0.85 with fixed seeds and 0.71 where cells stop early
        lines += [f"**Seeds' variance alone:** {short} of the {sum(r['cells'] for r in column)} cells of the "
                  f"per-size rows ({COMPARISONS['early']} {said[task.primary]}) have no stored predictions, so "
                  f"their variance leaves out what the test set contributes; intervals over such cells cover less "
                  f"than their level (docs/comparison.md, *What the test set adds*).", ""]
    still = waiting(stages)
    if still:
        lines += [f"**Not final:** {len(still)} of the sources' {len(stages)} staged preset × size cells still plan "
                  f"seeds (below the first look, between looks or open; each source's findings list them). Each "
                  f"row spends only what its cells' looks allow, but the answer is final once every cell has "
                  f"stopped or reached the last look; stopped cells' estimates lean towards the effect that stopped "
                  f"them.", ""]
    lines += [answer(rows), ""]
    if stages and not still:  # while cells wait, the "Not final" paragraph says it
        lines += ["Each cell of a staged grid stopped at the first look that decided it (or found it futile): a "
                  "stopped cell's estimate leans towards the effect that stopped it.", ""]
    for family, points in (sweeps or {}).items():  # one source too: the answer's "how much", as the pool reads it
        lines += pooled_sweep_text(family, points, rows, len(sources), units)
    lines += [baseline, ""] if baseline else []
    for scope in dict.fromkeys(r["scope"] for r in rows if r["scope"] != "all"):
        lines += [f"### {scope}", "", pooled_table(rows, scope), ""]
    if any(r["scope"] == "all" for r in rows):
        lines += ["### All cells", "", pooled_table(rows), ""]
    for i, (comp, label) in enumerate(COMPARISONS.items()):
        lines += [f"Size as a moderator ({said[task.primary]}, {label}): Q_between over the sizes' equal-weight "
                  "estimates, with the spread between data sets within a size (τ within) added to every cell's "
                  f"variance, χ² with sizes − 1 df, each arm at p < {MODERATOR_ALPHA:g} unadjusted (a gate that "
                  "decides whether the answer is per size, not a verdict); the slope of Δ per unit of log size for "
                  "its direction, given 3 cells or more:" if not i else
                  f"Size as a moderator ({said[task.primary]}, {label}), by the same test:", ""]
        for r in rows:
            if r["comparison"] == comp and r["metric"] == task.primary and r["scope"] == next(
                    x["scope"] for x in rows if (x["preset"], x["against"]) == (r["preset"], r["against"])):
                mod, slope = r["moderator"], r["moderator"]["slope_per_log_size"]
                text = "not testable (one size)" if mod["p"] is None or math.isnan(mod["p"]) \
                    else (f"Q_between = {mod['q_between']:.1f}, p = {mod['p']:.2g} (df {mod['df']}), slope "
                          + (f"{_num(slope, 4, sign=True)}" if slope is not None and not math.isnan(slope)
                             else "n/a with fewer than 3 cells") + ": "
                          + ("**depends on size**" if mod["depends_on_size"] else "no evidence that size matters"))
                lines.append(f"- {_label(r['preset'], r['against'])}: {text}.")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def sweep_text(family: str, points: dict[str, float], rows: list[dict], metric: str = NAMES["test_accuracy"],
               units: dict | None = None) -> list[str]:
    unit, what, fmt = _sweep_words(family, units)
    lines = [f"Rate sweep `{family}` ({what}; {metric}, early-stopped):", ""]
    for r in rows:
        higher = r["sign"] > 0  # a loss: the lowest Δ is the best
        top = f"{_rates(points, unit, [BASELINE])}, no rate's mean Δ is {'above' if higher else 'below'} none" \
            if r["best_preset"] == BASELINE else \
            f"{unit}{r['best']:g} ({_span(r['best_delta'], r['best_ci'])})"
        lines.append(f"- n={r['train_size']}: {_by_verdict(fmt, r)}. {'Highest' if higher else 'Lowest'} mean Δ: "
                     f"{top}{_edge(points, r['best_preset'])}; not shown worse than another rate: "
                     f"{_rates(points, unit, r['not_worse_than_best'])}.")
    return lines + [""]


def _edge(points: dict[str, float], best: str) -> str:
    """Where the best rate is the largest swept, the best may lie beyond it: said."""
    return ", the largest rate swept" if best != BASELINE and points.get(best) == max(points.values()) else ""


def _sweep_words(family: str, units: dict | None = None):
    """A sweep's unit (× for a factor on a preset's rates, none for a knob's own rate), what it varies (a factor
    sweep's ×1 rates from ``units``, `sweep_units`), and how it lists its rates."""
    unit = "×" if family not in KNOB_NAMES else ""
    what = ("factor on every rate of the preset" + (f"; ×1 is {units[family]}" if family in (units or {}) else "")
            if unit else f"the knob alone, every other as in `{BASELINE}`")
    return unit, what, lambda values: ", ".join(f"{unit}{v:g}" for v in values) or "none"


def _rates(points: dict[str, float], unit: str, presets) -> str:
    """Presets of a sweep by their rate, the baseline first among rate 0; the baseline is "none" where a preset's
    ×0 (which keeps, say, its weight decay) is an arm of its own."""
    shared = any(v == 0 for p, v in points.items() if p != BASELINE)
    order = sorted(presets, key=lambda p: (points[p], p != BASELINE))
    return ", ".join("none" if p == BASELINE and shared else f"{unit}{points[p]:g}" for p in order) or "none"


def _by_verdict(fmt, by) -> str:
    """A sweep's rates by verdict, the verdicts no rate got left out: ``by`` maps each verdict to its rates."""
    words = {"equivalent": "equivalent to none", "worse": "worse", "better": "better", "trivial": "trivial",
             "inconclusive": "inconclusive"}
    return "; ".join(f"{words[v]} at {fmt(by[v])}" for v in words if by.get(v))


# ------------------------------------------------------------------------------------------------- text
def _num(x, digits=3, sign=False):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{'+' if sign else ''}.{digits}f}"


def _delta(d) -> str:
    return _span(d["mean"], d["ci_adjusted"])


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


def read_apart(records: list[dict], settings: dict | None) -> tuple[dict | None, str | None]:
    """Where a staged grid's report reads it under other rules than the grid stopped its cells by (its recorded
    ``settings``): the margins it stopped on where this report's differ, and the selection metric it stopped on
    where this report selects by another (None where they agree). The report's stages (`cell_stages`) are read
    under its own rules, so they are the grid's only where both are None."""
    task = tasks.of_rows(records)
    stopped_on = check_margins((settings or {}).get("margins"))
    mine = _margins_of(records)
    stopped_by = (settings or {}).get("select_by", task.default_select_by)
    select_by = records[0].get("select_by", task.default_select_by) if records else task.default_select_by
    return (stopped_on if any(stopped_on[m] != mine.get(m, stopped_on[m]) for m in task.verdicts) else None,
            stopped_by if stopped_by != select_by else None)


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
        n = sizes[0]
        # the baseline's accuracy per size (not their mean): what one run's accuracy is known to, there
        lo, hi = min(base), max(base)
        width = sorted(f"{1.96 * math.sqrt(p * (1 - p) / n):.3f}" for p in (lo, hi))
        near = f"near {lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"at the baseline's {lo:.2f}–{hi:.2f}"
        text[0] += (f"; this test set has {n} examples: one example is {1 / n:.4f}, and one run's accuracy {near} "
                    f"is known to ±{width[0] if width[0] == width[1] else '–'.join(width)} (95%)")
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


def rates_text(records: list[dict]) -> str:
    """With several learning rates: how each seed's rate is chosen, and how often each was chosen per size over the
    cells' seeds; "" with one rate."""
    counts = defaultdict(lambda: defaultdict(int))
    for r in records:
        if r["against"] == BASELINE:
            for lr, k in (r.get("learning_rates_chosen") or {}).items():
                counts[r["train_size"]][lr] += k
    if not counts:
        return ""
    said = " | ".join(f"n={n}: " + ", ".join(f"{lr} ×{k}" for lr, k in sorted(c.items(), key=lambda x: float(x[0])))
                      for n, c in sorted(counts.items()))
    return (f"Learning rates: each seed's is chosen on its own selection split, as its early-stopping point is (so a "
            f"seed is one whole replicate of tuning and training); the table's lr is the rate most of a cell's seeds "
            f"chose. Chosen over the cells' seeds: {said}.")


def findings(records: list[dict], settings: dict | None = None, codes: list[str] | None = None,
             sweeps: dict | None = None, pretrained: dict | None = None, machines: str = "",
             units: dict | None = None) -> str:
    """findings.md for one experiment: the verdict table and its plain-word reading, derived from the numbers.
    ``pretrained``: the model's own dropout per knob (`pretrained_dropout`), for the baseline's description;
    ``machines``: what trained the runs and for how long (`writing.machines`); ``units``: the factor sweeps' ×1
    rates (`sweep_units`)."""
    lines = ["## Findings", ""]
    if settings:
        stretched = (f", at least {settings['min_steps']} steps (a run short of them trains more epochs, with as "
                     f"many evaluation points)" if settings.get("min_steps") else "")
        lines += [f"Model {settings.get('model')}; data roles: {settings.get('roles')}; learning rate(s) "
                  f"{settings.get('learning_rates')}, {settings.get('num_train_epochs')} epochs{stretched}, "
                  f"batch {settings.get('train_batch_size')}, {settings.get('evals_per_epoch')} evaluations per "
                  f"epoch, gradient clipping "
                  f"{settings['max_grad_norm'] if settings.get('max_grad_norm') else 'off'}"
                  + "".join(f", {text.format(settings[key])}" for key, text in RUN_SETTINGS if settings.get(key))
                  + ".", ""]
    lines += [baseline_text(pretrained), ""]
    if codes and len(codes) > 1:
        lines += [f"Note: these runs were made by {len(codes)} versions of the code ({', '.join(codes)}).", ""]
    if machines:
        lines += [machines, ""]
    rates = rates_text(records)
    if rates:
        lines += [rates, ""]
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
    if design:
        margins_apart, select_apart = read_apart(records, settings)
        if margins_apart:
            looks += (f" This report's margins differ from those the grid stopped on "
                      f"({_margins_text(margins_apart, task)}): its stopping decisions were made on those.")
        if select_apart:
            looks += (f" This report selects by {select_by}; the grid stopped on selection by {select_apart}: its "
                      f"stopping decisions were made on that.")
    shares = ", ".join(f"{COMPARISONS[c]} {said[m]} {a:.0%}" for (c, m), a in stats.ALPHA_SHARES.items()
                       if m in task.verdicts)
    lines += [f"Each preset against `{BASELINE}`, and a preset that names a control also against it (and against "
              f"the control at its compute, `@kx`), paired by seed, on the test split; early-stopped = each run at "
              f"its best selection-split {select_by} (ties: the earliest point), fixed budget = its final step. "
              f"Error control: α = 0.05 over every verdict below, shared by the columns ({shares}), Bonferroni over "
              f"the {fam} comparison{'s' if fam != 1 else ''} of a column.{looks} Margins: {margin_reasons(records)}. "
              f"Verdicts: **better** / "
              f"**worse**: the interval excludes 0 and the equivalence (TOST) interval is not inside the margin (a "
              f"difference, which may still be smaller than the margin); "
              f"*trivial*: it excludes 0 but the equivalence interval lies inside the margin; equiv. (equivalent): "
              f"the interval contains 0 and the equivalence interval lies inside the margin; inconcl. "
              f"(inconclusive): neither. {_calibration_words(task, findings=True)}Passes = forward/"
              f"backward passes per optimizer step. Underfit = runs whose selected point is near chance without "
              f"fitting their training data; censored = runs whose selected point is the first or last evaluation; "
              f"regime = what the cell's runs measured (see docs/comparison.md).", ""]
    stages = cell_stages(records) if design else []
    still = waiting(stages)
    if still:  # a report read while a staged grid runs: say so before any verdict is read
        lines += [f"**Not final:** {len(still)} of the {len(stages)} staged preset × size cells "
                  f"still plan seeds (*Stages* below). Their verdicts are read at the level of the look they have "
                  f"reached, and *inconclusive* there means not decided yet; the findings are final once every cell "
                  f"has stopped or reached the last look.", ""]
    lines += [table(records), ""]
    words = _verdict_words(records, task)
    lines += ["In words:", ""] + [f"- {w}" for w in words] + [""]
    if design:
        lines += _stage_lines(stages, task) + [""]
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
        lines += [""] + sweep_text(family, points, dose_response(records, points), said[task.primary], units)
    lines += _power_lines(records, task)
    return "\n".join(lines) + "\n"


FINAL_STAGES = ("stopped: decided", "stopped: futile", "at the last look")  # a cell of these plans no more seeds
REOPENED = "stopped here by the grid, inconclusive as read now"  # the baseline's rate chosen again from more seeds


def cell_stages(records: list[dict]) -> list[tuple[str, int, str, int, str]]:
    """Where each preset x size cell of a staged grid stands, by the rule the grid stops it by (`stop_reason`, over
    its rows against the baseline and its controls, under this report's margins and selection rule): (source,
    size, preset, paired seeds of its primary comparison, state); the states of `FINAL_STAGES`, `REOPENED` (the
    baseline completed a later look without it, so the grid stopped it at this one, though its verdicts read again
    are undecided: a stage runs seed by seed, every cell of it before the next seed), or open, between looks while
    a stage runs, or below the first look, where nothing is read yet. Records of grids with fixed seeds have
    none."""
    margins = _margins_of(records)
    cells, baseline = defaultdict(list), {}
    for r in records:
        if not r.get("design"):
            continue
        where = (r.get("source", ""), r.get("experiment"), r["train_size"])
        if r["preset"] == BASELINE:
            baseline[where] = len(r.get("seeds", ()))
        else:
            cells[(where, r["preset"])].append(r)
    out = []
    for (where, preset), rows in cells.items():
        key = f"delta_early_{tasks.of_rows(rows).primary}"
        looks = stats.looks(**rows[0]["design"])
        k = min((r.get(key) or {}).get("n", 0) for r in rows)  # a row without the comparison pairs nothing yet
        later = [look for look in looks if look > k]
        if k < looks[0]:
            state = f"below the first look ({looks[0]} seeds), nothing read yet"
        elif k not in looks and later:
            state = f"between looks, its stage to {later[0]} seeds not complete"
        else:  # at a look, or past the last (seeds added by hand): read as the grid reads it
            reason = stop_reason(rows, margins)
            state = ({"decided": FINAL_STAGES[0], "futile": FINAL_STAGES[1]}.get(reason) if reason
                     else FINAL_STAGES[2] if not later else REOPENED if baseline.get(where, 0) >= later[0]
                     else f"open, the next stage takes it to {later[0]} seeds")
        out.append((where[0], where[2], preset, k, state))
    return out


def waiting(stages: list[tuple]) -> list[tuple]:
    """The cells of `cell_stages` that still plan seeds."""
    return [c for c in stages if c[4] not in (*FINAL_STAGES, REOPENED)]


def _stage_lines(stages: list[tuple], task: tasks.Task) -> list[str]:
    """findings.md's stages (``stages``: `cell_stages`), so that a report read while a grid runs says what it
    cannot decide yet."""
    states = defaultdict(list)
    for _, n, preset, k, state in stages:
        states[(n, k, state)].append(f"`{preset}`")
    lines = [f"Stages (the grid's stopping rule read under this report's margins and selection rule; the paired "
             f"seeds of each cell's primary comparison, early-stopped {names(task)[task.primary]}):", ""]
    for (n, k, state), presets in sorted(states.items()):
        lines.append(f"- n={n}, {k} seed{'s' if k != 1 else ''}, {state}: {', '.join(presets)}.")
    return lines


def _verdict_words(records: list[dict], task: tasks.Task) -> list[str]:
    """findings.md's "In words": each cell's verdicts by outcome, with its regime and cost."""
    said = names(task)
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
        if r.get("null_arm") and any(by[v] for v in ("better", "worse", "trivial")):
            text += (f". A false claim: `{r['preset']}` differs from `{BASELINE}` only in an incidental draw, so its "
                     f"true Δ is 0; an error the table's α allows, or a flaw in the comparison (read the other "
                     f"verdicts with that in mind)")
        cost = f" at {r['passes']}× the passes per step" if r.get("passes", 1) > 1 else ""
        words.append(f"{_label(r['preset'], r.get('against', BASELINE))}{cost} at {r['train_size']}: {text}.")
    return words


def _power_lines(records: list[dict], task: tasks.Task) -> list[str]:
    """findings.md's power paragraphs: the seeds a verdict would need at the measured noise, per comparison."""
    said, lines = names(task), []
    # a staged grid's verdicts are read at each look's level; the seeds it needs are counted at the last one's
    level = "the last look's level" if any(r.get("design") for r in records) else "the level its verdicts are read at"
    for comp, pw in power(records, _margins_of(records)).items():
        if pw["paired_sd"] == 0:
            lines += ["", f"Power ({COMPARISONS[comp]}): every paired difference in {said[task.primary]} is zero."]
            continue
        s, copies = pw["seeds"], pw["near_copies"]
        lines += ["", f"Power ({COMPARISONS[comp]}): the median paired SD of Δ {said[task.primary]} is "
                      f"{pw['paired_sd']:.4f}{_copies(copies)}. "
                      f"Detecting Δ = 0.02 with 80% power needs {s['0.02']['alpha_0.05']} seeds at α = 0.05 "
                      f"({s['0.02']['alpha_corrected']} at {level}, "
                      f"{pw['alpha']:.2g}); Δ = 0.01 "
                      f"needs {s['0.01']['alpha_0.05']} ({s['0.01']['alpha_corrected']}); showing equivalence "
                      f"within ±{pw['equivalence']['margin']:g} when Δ = 0 needs about "
                      f"{pw['equivalence']['alpha_corrected']} at {level}."]
    return lines
