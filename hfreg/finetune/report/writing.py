"""A report written to disk: read and check the records, compute (`numbers`), word (`findings`) and draw (`plots`),
then write summary.json/csv, findings.md, pooled.json/md and the plots, each file whole or not at all."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections import defaultdict

import numpy as np

from ...files import replacing
from .. import stats, tasks
from ..records import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL,
    check_grid_dir,
    default_model_path,
    experiment_of,
    load_predictions,
    read_runs,
)
from .findings import baseline_text, findings, read_apart
from .numbers import (
    COMPARISONS,
    check_margins,
    check_select_by,
    pooled,
    seed_choices,
    selected_point,
    summarize,
    sweep_points,
)
from .plots import plot, plot_dose_response
from .pooled_page import pooled_text
from .stages import cell_stages, plans, waiting


# ------------------------------------------------------------------------------------------------- files
def _atomic_write(path: str, text: str) -> None:
    """Write ``path`` whole or not at all, through a temporary file of this writer's own: two launches reporting
    into one directory at once each replace the file with a whole one, never a mix or a missing temporary file."""
    with replacing(path) as tmp, open(tmp, "x", newline="") as f:
        f.write(text)


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


def code_identities(runs: list[dict]) -> list[str]:
    """The code identities of ``runs`` (git commit, or a hash of the installed source), in order of appearance;
    records made before they carried one count as "unrecorded (hfreg VERSION)"."""
    return list(dict.fromkeys(
        r.get("provenance", {}).get("code")
        or f"unrecorded (hfreg {r['experiment'].get('settings', {}).get('versions', {}).get('hfreg', '?')})"
        for r in runs))


def machines(runs: list[dict]) -> str:
    """What trained ``runs`` and for how long, for findings.md: each recorded machine with its runs and their summed
    wall time (runs made before records said which machine, together)."""
    by = {}
    for r in runs:
        machine = r.get("provenance", {}).get("machine") or "machines the records do not name"
        seen = by.setdefault(machine, [0, 0.0])
        seen[0], seen[1] = seen[0] + 1, seen[1] + r.get("seconds", 0.0)
    return "Trained on " + "; ".join(f"{m}: {n} run{'s' * (n != 1)}, {s / 3600:.2f} h of run wall time"
                                     for m, (n, s) in by.items()) + "." if by else ""


def report(output_dir: str, make_plots: bool = True, select_by: str | None = None,
           margins: dict | None = None, pooled_dir: str | None = None) -> str:
    """Rebuild summary.json, summary.csv, findings.md, pooled.json, pooled.md and the plots from
    ``output_dir/runs.jsonl``; return the findings. Each experiment in the directory gets its own section (and,
    beside the default one, its own plot files). ``pooled_dir`` (default ``output_dir``) receives the pooled
    files; `report_many` pools several directories instead."""
    loaded = _runs(output_dir)
    text, records = _report(output_dir, loaded, make_plots, select_by, margins)
    write_pooled(pooled_dir or output_dir, records, [output_dir], margins, sweep_points(loaded[0]),
                 _read_as_stopped(loaded[0], records), plans(loaded[0], output_dir))
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
    records, as_stopped = [], True
    for d, runs in loaded.items():
        mine = _report(d, runs, make_plots, select_by, margins, report_dir(d, out))[1]
        records, as_stopped = records + mine, as_stopped and _read_as_stopped(runs[0], mine)
    out = out or output_dirs[0]
    os.makedirs(out, exist_ok=True)
    every = [r for runs, _ in loaded.values() for r in runs]
    planned = {k: v for d, (runs, _) in loaded.items() for k, v in plans(runs, d).items()}
    return write_pooled(out, records, output_dirs, margins, sweep_points(every), as_stopped, planned)


def report_dir(output_dir: str, out: str | None) -> str:
    """Where `report_many` writes ``output_dir``'s summaries and findings: ``out``/<its name>, else itself."""
    return os.path.join(out, os.path.basename(os.path.normpath(output_dir))) if out else output_dir


def _read_as_stopped(runs: list[dict], records: list[dict]) -> bool:
    """Whether every staged experiment of one result directory is read here under the margins and selection rule
    its grid stopped its cells by (`read_apart`): only then do this report's stages say where the grid stands."""
    for name in dict.fromkeys(experiment_of(r) for r in runs):
        mine = [r for r in records if r["experiment"] == name]
        if any(r.get("design") for r in mine):
            settings = next(r for r in runs if experiment_of(r) == name)["experiment"].get("settings") or {}
            if any(read_apart(mine, settings)):
                return False
    return True


def write_pooled(out: str, records: list[dict], sources: list[str], margins: dict | None,
                 sweeps: dict | None = None, as_stopped: bool = True, planned: dict | None = None) -> str:
    """pooled.json and pooled.md. The rows get their final reading (`pooled`'s ``final``) only where every cell is
    of a staged grid, none plans seeds (nor has yet to start: ``planned``, the sources' `plans`), and each grid is
    read under the rules it stopped by (``as_stopped``): a fixed grid's record does not say whether its seeds are
    complete, and under other margins or another selection rule a cell's stage here is not the grid's."""
    stages = cell_stages(records, planned)
    final = as_stopped and bool(records) and all(r.get("design") for r in records) and not waiting(stages)
    rows = pooled(records, margins, final=final)
    models = list(dict.fromkeys(r.get("model") for r in records if r.get("model")))
    text = pooled_text(rows, sources, baseline_text(pretrained_dropout(models[0])) if len(models) == 1 else None,
                       stages, sweeps)
    _atomic_write(os.path.join(out, "pooled.json"), json.dumps(_strict(rows), indent=2) + "\n")
    _atomic_write(os.path.join(out, "pooled.md"), text)
    return text


def _runs(output_dir: str) -> tuple[list[dict], int]:
    """The finished runs of ``output_dir`` and how many duplicates were dropped; one-line errors where there are
    none or they predate evaluation points."""
    check_grid_dir(output_dir)
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
    under ``test_set``), from the per-example differences of `paired_differences`; and ``test_examples``. A
    comparison whose runs lack stored predictions is left as it is."""
    for r, comp, columns in paired_differences(output_dir, runs, records, select_by):
        for m, diffs in columns.items():
            r[f"delta_{comp}_{m}"]["test_set"] = stats.test_set_terms(diffs)
        r["test_examples"] = diffs.shape[0]


def paired_differences(output_dir: str, runs: list[dict], records: list[dict], select_by: str):
    """(record, comparison, {verdict metric: examples x seeds}) for every comparison of ``records`` whose runs all
    have stored predictions: the per-example differences of the arm's runs minus its control's, paired by seed, at
    the compared points (each seed's chosen run, `seed_choices`: its selected point early-stopped, its final point at
    the fixed budget)."""
    from .. import scores

    chosen = seed_choices(runs, select_by)  # per cell, each seed's run as the comparison pairs it
    task = tasks.of_rows(records)
    cache: dict = {}

    def per_example(run, comp):
        if id(run) not in cache:
            try:
                cache[id(run)] = load_predictions(output_dir, run, ("test",)) if run.get("predictions") else None
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
        keys = [(r["experiment"], p, r["train_size"]) for p in (r["preset"], r["against"])]
        for comp in COMPARISONS:
            columns = defaultdict(list)
            for seed in r["paired_seeds"]:
                values = [per_example(run, comp) if run else None
                          for run in (chosen.get(k, {}).get(seed) for k in keys)]
                if None in values:
                    break
                for m in task.verdicts:
                    columns[m].append(values[0][m] - values[1][m])
            else:
                yield r, comp, {m: np.stack(diffs, axis=1) for m, diffs in columns.items()}


@functools.lru_cache(maxsize=16)
def pretrained_dropout(model: str | None) -> dict | None:
    """{knob: rate} of the dropout a model's own ``config.json`` sets (the config keys of
    `hfreg.architectures.CONFIG_KEYS`; no model is built, torch is not imported), for a model found on this machine:
    the default model or a local directory. None where no config can be read; {} where it sets no dropout."""
    from ...architectures import CONFIG_KEYS

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
        text = findings(mine, settings, code_identities(theirs), sweeps, pretrained_dropout(settings.get("model")),
                        machines(theirs), plans(theirs, output_dir))
        out.append(text if name == DEFAULT_EXPERIMENT else f"# Experiment {name}\n\n{text}")
    if duplicates:
        out.append(f"note: {duplicates} duplicate record(s) in runs.jsonl were counted once")
    text = "\n".join(out)
    _atomic_write(os.path.join(dest, "findings.md"), text)
    return text, records
