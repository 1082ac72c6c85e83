"""Where each cell of a staged grid (`--seeds auto`) stands: stopped, at its last look, or waiting for seeds,
as both report pages say it."""

from __future__ import annotations

from collections import defaultdict

from .. import stats, tasks
from ..presets import BASELINE
from ..records import experiment_of
from .numbers import margins_of, stop_reason

FINAL_STAGES = ("stopped: decided", "stopped: futile", "at the last look")  # a cell of these plans no more seeds
REOPENED = "stopped here by the grid, inconclusive as read now"  # the baseline's rate chosen again from more seeds
NOT_COMPARED = "planned, not compared yet"  # a cell of the plan with no summary row: no seed compared so far


def plans(runs: list[dict], source: str = "") -> dict[tuple, set]:
    """{(``source``, experiment): {(preset, size)}}: the cells a staged grid plans, from the ``plan`` its runs
    record (every preset of the launch at every size; absent in older records). The latest launch's plan counts
    (that of the last run that records one): a launch with fewer presets or sizes retires the cells it leaves out."""
    out = {}
    for r in runs:
        if r.get("plan"):
            out[(source, experiment_of(r))] = {(p, n) for p in r["plan"]["presets"] for n in r["plan"]["train_sizes"]}
    return out


def cell_stages(records: list[dict], planned: dict | None = None) -> list[tuple[str, int, str, int, str]]:
    """Where each preset x size cell of a staged grid stands, by the rule the grid stops it by (`stop_reason`, over
    its rows against the baseline and its controls, under this report's margins and selection rule): (source,
    size, preset, paired seeds of its primary comparison, state); the states of `FINAL_STAGES`, `REOPENED` (the
    baseline completed a later look without it, so the grid stopped it at this one, though its verdicts read again
    are undecided: a stage runs seed by seed, every cell of it before the next seed), or open, between looks while
    a stage runs, or below the first look, where nothing is read yet. A cell of ``planned`` (`plans`) without a row
    (no seed compared yet: the queue has not reached it, or no seed has a run at every learning rate) is
    `NOT_COMPARED`: a staged experiment's reading is not final while part of its plan has not run.
    Records of grids with fixed seeds have none."""
    margins = margins_of(records)
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
    for (source, name), cells_planned in (planned or {}).items():
        for preset, size in sorted(cells_planned, key=lambda c: (c[1], c[0])):
            if preset != BASELINE and ((source, name, size), preset) not in cells:
                out.append((source, size, preset, 0, NOT_COMPARED))
    return out


def waiting(stages: list[tuple]) -> list[tuple]:
    """The cells of `cell_stages` that still plan seeds."""
    return [c for c in stages if c[4] not in (*FINAL_STAGES, REOPENED)]
