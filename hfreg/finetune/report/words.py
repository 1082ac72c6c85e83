"""The words two report pages share (findings.md, pooled.md): numbers and intervals, verdict marks, arm labels,
margins, and how a rate sweep lists its rates."""

from __future__ import annotations

import math

from ...config import KNOBS as KNOB_NAMES
from .. import tasks
from ..presets import BASELINE
from .numbers import (
    CLASSIFIER,
    Sweep,
    names,
)


def num(x, digits=3, sign=False):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{'+' if sign else ''}.{digits}f}"


def span(mean, ci) -> str:
    """An estimate and its interval: ``+0.012 [-0.003, +0.027]``."""
    return f"{num(mean, sign=True)} [{num(ci[0], sign=True)}, {num(ci[1], sign=True)}]"


def verdict_mark(verdict: str) -> str:
    return {"better": "**better**", "worse": "**worse**", "trivial": "*trivial*", "equivalent": "equiv.",
            "inconclusive": "inconcl."}[verdict]


def arm_label(preset: str, against: str) -> str:
    return f"`{preset}`" if against == BASELINE else f"`{preset}` vs `{against}`"


def margins_text(margins: dict, task: tasks.Task = CLASSIFIER) -> str:
    return ", ".join(f"{names(task)[m]} ±{margins[m]:g}" for m in task.verdicts if m in margins)


def calibration_words(task: tasks.Task, findings: bool = False) -> str:
    if not task.calibration:
        return ""
    return ("Calibration (raw NLL, ECE) is shown without a verdict. " if findings
            else "Raw NLL and ECE are calibration and get no verdict (see the findings). ")


def by_verdict(fmt, by, better=()) -> str:
    """A sweep's rates by verdict, the verdicts no rate got left out: ``by`` maps each verdict to its rates; a
    trivial difference (shown, but within the margin) is said with its side: better where its rate is in
    ``better``, else worse."""
    trivial = by.get("trivial", ())
    by = {**by, "better within": [v for v in trivial if v in better],
          "worse within": [v for v in trivial if v not in better]}
    words = {"equivalent": "equivalent to none", "worse": "worse", "better": "better",
             "better within": "better but within the margin", "worse within": "worse but within the margin",
             "inconclusive": "inconclusive"}
    return "; ".join(f"{words[v]} at {fmt(by[v])}" for v in words if by.get(v))


def edge_note(points: dict[str, float], best: str) -> str:
    """Where the best rate is the largest swept, the best may lie beyond it: said."""
    return ", the largest rate swept" if best != BASELINE and points.get(best) == max(points.values()) else ""


def rate_list(points: dict[str, float], unit: str, presets) -> str:
    """Presets of a sweep by their rate, the baseline first among rate 0; the baseline is "none" where a preset's
    ×0 (which keeps, say, its weight decay) is an arm of its own."""
    shared = any(v == 0 for p, v in points.items() if p != BASELINE)
    order = sorted(presets, key=lambda p: (points[p], p != BASELINE))
    return ", ".join("none" if p == BASELINE and shared else f"{unit}{points[p]:g}" for p in order) or "none"


def sweep_words(family: str, points: dict):
    """A sweep's unit (× for a factor on a preset's rates, none for a knob's own rate), what it varies (a factor
    sweep's ×1 as rates: ``points`` is then a `numbers.Sweep`, and a plain dict, which would drop them unsaid, is
    refused), and how it lists its rates."""
    unit = "×" if family not in KNOB_NAMES else ""
    if unit and not isinstance(points, Sweep):
        raise TypeError(f"the {family} factor sweep's points must be a numbers.Sweep (from sweep_points), which "
                        f"carries its ×1 rates; got a {type(points).__name__}")
    one = points.x1_rates if unit else None
    what = ("factor on every rate of the preset" + (f"; ×1 is {one}" if one else "")
            if unit else f"the knob alone, every other as in `{BASELINE}`")
    return unit, what, lambda values: ", ".join(f"{unit}{v:g}" for v in values) or "none"
