"""pooled.md in words: the answer, the rate sweeps pooled, the table of every pooled row, written from the numbers
(`numbers.pooled`), never by hand."""

from __future__ import annotations

import math
from collections import defaultdict

from .. import stats, tasks
from ..presets import BASELINE
from .numbers import COMPARISONS, METRICS, MODERATOR_ALPHA, SHORT, names, sweep_best
from .stages import waiting
from .words import (
    arm_label,
    by_verdict,
    calibration_words,
    edge_note,
    margins_text,
    num,
    rate_list,
    span,
    sweep_words,
    verdict_mark,
)


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
                cells.append("-" if r is None else f"{_interval(r)} {verdict_mark(r['verdict'])}")
        method = "strata" if first["method"] == "strata" else "RE"
        line = [arm_label(*arm), str(first["cells"]), str(first["seeds"]), f"{method} ({first['df']:.1f})",
                f"{max(first['weights'].values()):.2f}", *cells]
        if scope == "all":
            pi = first["prediction_interval"]
            line.insert(5, f"[{num(pi[0], sign=True)}, {num(pi[1], sign=True)}]")
        out.append(line)
    return "\n".join("| " + " | ".join(row) + " |" for row in out)


def arm_answer(rows: list[dict], preset: str, against: str) -> dict[str, tuple[str | None, str]]:
    """{comparison: (verdict, text)} for one arm's test accuracy (the primary endpoint), from its rows at each size:
    one verdict at every size is said once; else the verdict at each size, marked "depends on size" where the
    moderator test says so (which also marks one verdict whose Δ differs with size). The row over all cells decides
    nothing: a between-sizes test that finds no size effect does not show the sizes alike, and its weights lean on
    the larger size's cells, whose seeds vary less. The verdict is None where the answer is not one verdict."""
    primary = tasks.of_rows(rows).primary
    out = {}
    for comp in COMPARISONS:
        mine = [r for r in rows if (r["preset"], r["against"]) == (preset, against) and r["comparison"] == comp
                and r["metric"] == primary and r["scope"] != "all"]
        if not mine:
            continue
        if len(mine) == 1:  # the one size there is
            out[comp] = (mine[0]["verdict"], mine[0]["verdict"])
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
    under both comparisons at every size; then the arms whose answer differs between sizes or between the
    comparisons, in full."""
    task = tasks.of_rows(rows)
    arms = list(dict.fromkeys((r["preset"], r["against"]) for r in rows if r["metric"] == task.primary))
    if not arms:
        return ""
    margin = next(r["margin"] for r in rows if r["metric"] == task.primary)
    same, other = defaultdict(list), []
    for arm in arms:
        said = arm_answer(rows, *arm)
        # one verdict everywhere: at every size, under both comparisons
        verdicts = {verdict for verdict, _ in said.values()}
        if len(said) == len(COMPARISONS) and len(verdicts) == 1 and None not in verdicts:
            same[verdicts.pop()].append(arm_label(*arm))
        else:
            other.append(f"{arm_label(*arm)}: "
                         + "; ".join(f"{COMPARISONS[c]} {text}" for c, (_, text) in said.items()))
    words = {"equivalent": f"equivalent within ±{margin:g}", "trivial": f"different but within ±{margin:g}",
             "better": "better", "worse": "worse", "inconclusive": "inconclusive"}
    parts = [f"{words[v]}: {', '.join(same[v])}" for v in stats.VERDICTS if same[v]]
    text = (f"**Answer** ({names(task)[task.primary]}; `preset` against `{BASELINE}`, `preset` vs `control` against "
            f"the control it names; at every size, from each size's pooled row, and early-stopped and at a fixed "
            f"budget alike): "
            + ("; ".join(parts) if parts else "no arm gets one verdict everywhere, early-stopped and at a fixed "
                                              "budget alike") + ".")
    if other:
        text += "\n\nPer size or per comparison:\n\n" + "\n".join(f"- {o}." for o in other)
    return text


def secondary(rows: list[dict]) -> str:
    """Per judged metric besides the primary one (a classifier's temperature-scaled NLL), one line: every pooled row
    of it with a better or worse verdict, over all cells or at a size, each as its tables give it (each metric's
    rows are over all cells where its own between-sizes test allows, so they need not be where the answer's are)."""
    task = tasks.of_rows(rows)
    out = []
    for metric in task.verdicts[1:]:
        shown = defaultdict(lambda: defaultdict(list))  # verdict -> arm -> where
        for r in rows:
            if r["metric"] == metric and r["verdict"] in ("better", "worse"):
                where = "over all cells" if r["scope"] == "all" else f"at {r['scope']}"
                shown[r["verdict"]][arm_label(r["preset"], r["against"])].append(
                    f"{COMPARISONS[r['comparison']]} {where}")
        said = "; ".join(f"{v}: " + ", ".join(f"{arm} ({', '.join(where)})" for arm, where in shown[v].items())
                         for v in ("better", "worse") if shown[v])
        if any(r["metric"] == metric for r in rows):
            out.append(f"**{names(task)[metric][0].upper()}{names(task)[metric][1:]}** (every pooled row of it, "
                       f"both comparisons): " + (f"{said}; no other row is better or worse." if said else
                                                 "no row is better or worse."))
    return "\n\n".join(out)


def pooled_sweep_text(family: str, points: dict[str, float], rows: list[dict], sources: int = 2) -> list[str]:
    """A rate sweep over the ``sources`` data sets (one: its test set counted as a draw, as every pooled row counts
    it), per training size: each rate's pooled Δ against the baseline (the strata
    rows of pooled.md, primary metric, early-stopped) with its simultaneous interval and verdict, the rates by
    verdict (with each rate's number of cells where they differ), the rate of the highest pooled Δ (×0: none
    beats the baseline), and the rates not shown worse than another (`not_shown_worse`, where every rate pools the same
    cells). The intervals are simultaneous over the column's rows, so the highest one's holds although it was picked
    as the highest."""
    task = tasks.of_rows(rows)
    unit, what, fmt = sweep_words(family, points)
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
            f"{rate_list(points, unit, [BASELINE])}, no rate's pooled Δ is {'above' if sign > 0 else 'below'} none"
        verdicts = by_verdict(fmt, by, [points[r["preset"]] for r in here if sign * r["delta"] > 0])
        # no rate is judged against another over different data sets
        kept = "not said, the rates pool different data sets" if varied else rate_list(points, unit, kept)
        missing = [p for p in points if p != BASELINE and p not in {r["preset"] for r in here}]
        kept += f" ({rate_list(points, unit, missing)}: no pooled row at this size)" if missing else ""
        lines.append(f"- {scope}: {', '.join(rates)}. {verdicts[0].upper()}{verdicts[1:]}. "
                     f"{'Highest' if sign > 0 else 'Lowest'} pooled Δ: {said}{edge_note(points, best)}; not shown "
                     f"worse than another rate: {kept}.")
    return lines + [""] if len(lines) > 2 else []


def _interval(row: dict) -> str:
    """A pooled row's Δ and interval."""
    return span(row["delta"], row["ci"])


def _levels(alphas: list[float]) -> str:
    """A column's nominal level, or the range of its rows' levels."""
    lo, hi = min(alphas), max(alphas)
    return f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}–{hi:.2g}"


def pooled_text(rows: list[dict], sources: list[str], baseline: str | None = None, stages: list = (),
                sweeps: dict | None = None) -> str:
    """pooled.md: the answer, the rate sweeps (``sweeps``: `sweep_points`), the table of
    each training size, the all-cells table, and the moderator tests; ``baseline`` says what the baseline means for the
    sources' model (`baseline_text`); ``stages``, the sources' `cell_stages`: while a staged grid's cells still plan
    seeds, the page says so and writes no answer, rate sweep or secondary line."""
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
             f"effect: the between-sizes test below, p ≥ {MODERATOR_ALPHA:g}; a summary that the answer, read at "
             f"each size, does not use): random effects (DerSimonian–Laird τ², modified Hartung–Knapp interval, t "
             f"with cells − 1 df) with its "
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
             f"{margins_text({r['metric']: r['margin'] for r in rows})}. Verdicts: **better** / **worse** (the "
             f"interval excludes 0 and the equivalence interval is not inside the margin: a difference, which may "
             f"still be smaller than the margin), *trivial* (it excludes 0 but the equivalence interval lies inside "
             f"the margin), "
             f"equivalent (the equivalence interval lies inside the margin, the interval contains 0), "
             f"inconclusive. {calibration_words(task)}A row over one "
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
                  f"seeds (below the first look, between looks, open, or planned and not compared yet; each source's "
                  f"findings list them). Each row below spends only what its cells' looks allow, but there is no "
                  f"answer, and no rate sweep is read, until every cell has stopped or reached the last look; "
                  f"stopped cells' estimates lean towards the effect that stopped them.", ""]
    else:
        lines += [answer(rows), ""]
        more = secondary(rows)
        lines += [more, ""] if more else []
    if stages and not still:  # while cells wait, the "Not final" paragraph says it
        lines += ["Each cell of a staged grid stopped at the first look that decided it (or found it futile): a "
                  "stopped cell's estimate leans towards the effect that stopped it.", ""]
    for family, points in (sweeps or {}).items() if not still else ():  # one source too: the answer's "how much"
        lines += pooled_sweep_text(family, points, rows, len(sources))
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
                          + (f"{num(slope, 4, sign=True)}" if slope is not None and not math.isnan(slope)
                             else "n/a with fewer than 3 cells") + ": "
                          + ("**depends on size**" if mod["depends_on_size"] else "no evidence that size matters"))
                lines.append(f"- {arm_label(r['preset'], r['against'])}: {text}.")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"
