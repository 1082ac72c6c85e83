"""findings.md in words: its table, verdicts, stages, power and rate sweeps, written from the numbers (`numbers`),
never by hand."""

from __future__ import annotations

import math
from collections import defaultdict

from .. import stats, tasks
from ..presets import BASELINE
from .numbers import (
    CLASSIFIER,
    COMPARISONS,
    NAMES,
    RUN_SETTINGS,
    SHORT,
    check_margins,
    dose_response,
    margins_of,
    names,
    power,
)
from .stages import cell_stages, waiting
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


def sweep_text(family: str, points: dict[str, float], rows: list[dict],
               metric: str = NAMES["test_accuracy"]) -> list[str]:
    unit, what, fmt = sweep_words(family, points)
    lines = [f"Rate sweep `{family}` ({what}; {metric}, early-stopped):", ""]
    for r in rows:
        higher = r["sign"] > 0  # a loss: the lowest Δ is the best
        top = f"{rate_list(points, unit, [BASELINE])}, no rate's mean Δ is {'above' if higher else 'below'} none" \
            if r["best_preset"] == BASELINE else \
            f"{unit}{r['best']:g} ({span(r['best_delta'], r['best_ci'])})"
        verdicts = by_verdict(fmt, r, r.get("trivially_better", ()))
        lines.append(f"- n={r['train_size']}: {verdicts}. {'Highest' if higher else 'Lowest'} mean Δ: "
                     f"{top}{edge_note(points, r['best_preset'])}; not shown worse than another rate: "
                     f"{rate_list(points, unit, r['not_worse_than_best'])}.")
    return lines + [""]


def _delta(d) -> str:
    return span(d["mean"], d["ci_adjusted"])


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
                cells.append("-" if d is None else f"{_delta(d)} {verdict_mark(d['verdict'])}" if d["n"] >= 2
                             else f"{num(d['mean'], sign=True)} (one seed)")
        calib = [r.get(f"delta_early_{m}") for m in task.calibration]
        calib = ([] if not task.calibration else ["-"] if None in calib
                 else [", ".join(num(d["mean"], sign=True) for d in calib)])
        rows.append([str(r["train_size"]), arm_label(r["preset"], r.get("against", BASELINE)), str(len(r["seeds"])),
                     f"{r['learning_rate']:g}", str(r.get("passes", 1)), num(r["selected_epoch"], 1),
                     num(r[f"early_{task.primary}"]), num(r[f"fixed_{task.primary}"]), *cells, *calib,
                     f"{r['underfit_runs']}/{len(r['seeds'])}", f"{r.get('censored_runs', 0)}/{len(r['seeds'])}",
                     ", ".join(r.get("regime", [])) or "-"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def read_apart(records: list[dict], settings: dict | None) -> tuple[dict | None, str | None]:
    """Where a staged grid's report reads it under other rules than the grid stopped its cells by (its recorded
    ``settings``): the margins it stopped on where this report's differ, and the selection metric it stopped on
    where this report selects by another (None where they agree). The report's stages (`cell_stages`) are read
    under its own rules, so they are the grid's only where both are None."""
    task = tasks.of_rows(records)
    stopped_on = check_margins((settings or {}).get("margins"))
    mine = margins_of(records)
    stopped_by = (settings or {}).get("select_by", task.default_select_by)
    select_by = records[0].get("select_by", task.default_select_by) if records else task.default_select_by
    return (stopped_on if any(stopped_on[m] != mine.get(m, stopped_on[m]) for m in task.verdicts) else None,
            stopped_by if stopped_by != select_by else None)


def _copies(n: int) -> str:
    return f" ({n} near-cop{'ies' if n > 1 else 'y'} of the baseline left out)" if n else ""


def margin_reasons(records: list[dict]) -> str:
    """The declared margins with their reasons, and what this experiment's test set resolves beside them."""
    margins = margins_of(records)
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


def rates_text(records: list[dict], grid: list | None = None) -> str:
    """With several learning rates: how each seed's rate is chosen, and how often each was chosen per size over the
    cells' seeds; with the ``grid`` of rates, the cells most of whose seeds chose its lowest or highest rate (their
    best rate may lie outside it); "" with one rate."""
    counts = defaultdict(lambda: defaultdict(int))
    edges = []
    ends = {f"{min(grid):g}": "lowest", f"{max(grid):g}": "highest"} if grid and len(grid) > 1 else {}
    for r in records:
        if r["against"] == BASELINE:
            chosen = r.get("learning_rates_chosen") or {}
            for lr, k in chosen.items():
                counts[r["train_size"]][lr] += k
            edges += [f"`{r['preset']}` at {r['train_size']} ({ends[lr]}, {lr}: {k} of {sum(chosen.values())})"
                      for lr, k in chosen.items() if lr in ends and 2 * k > sum(chosen.values())]
    if not counts:
        return ""
    said = " | ".join(f"n={n}: " + ", ".join(f"{lr} ×{k}" for lr, k in sorted(c.items(), key=lambda x: float(x[0])))
                      for n, c in sorted(counts.items()))
    edge = (f" At the grid's edge in over half of a cell's seeds: {', '.join(edges)}; a better rate may lie beyond "
            f"it, so these cells' verdicts hold at this grid of rates." if edges else "")
    return (f"Learning rates: each seed's is chosen on its own selection split, as its early-stopping point is (so a "
            f"seed is one whole replicate of tuning and training); the table's lr is the rate most of a cell's seeds "
            f"chose. Chosen over the cells' seeds: {said}.{edge}")


def findings(records: list[dict], settings: dict | None = None, codes: list[str] | None = None,
             sweeps: dict | None = None, pretrained: dict | None = None, machines: str = "",
             planned: dict | None = None) -> str:
    """findings.md for one experiment: the verdict table and its plain-word reading, derived from the numbers.
    ``pretrained``: the model's own dropout per knob (`pretrained_dropout`), for the baseline's description;
    ``machines``: what trained the runs and for how long (`writing.machines`); ``sweeps``: `sweep_points`;
    ``planned``: the cells its launches planned (`stages.plans`)."""
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
    rates = rates_text(records, (settings or {}).get("learning_rates"))
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
                      f"({margins_text(margins_apart, task)}): its stopping decisions were made on those.")
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
              f"(inconclusive): neither. {calibration_words(task, findings=True)}Passes = forward/"
              f"backward passes per optimizer step. Underfit = runs whose selected point is near chance without "
              f"fitting their training data; censored = runs whose selected point is the first or last evaluation; "
              f"regime = what the cell's runs measured (see docs/comparison.md).", ""]
    stages = cell_stages(records, planned) if design or planned else []
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
        lines += [""] + sweep_text(family, points, dose_response(records, points), said[task.primary])
    lines += _power_lines(records, task)
    return "\n".join(lines) + "\n"


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
        words.append(f"{arm_label(r['preset'], r.get('against', BASELINE))}{cost} at {r['train_size']}: {text}.")
    return words


def _power_lines(records: list[dict], task: tasks.Task) -> list[str]:
    """findings.md's power paragraphs: the seeds a verdict would need at the measured noise, per comparison."""
    said, lines = names(task), []
    # a staged grid's verdicts are read at each look's level; the seeds it needs are counted at the last one's
    level = "the last look's level" if any(r.get("design") for r in records) else "the level its verdicts are read at"
    for comp, pw in power(records, margins_of(records)).items():
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
