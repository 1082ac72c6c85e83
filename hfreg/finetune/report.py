"""Summaries, findings, tables and plots of the comparison, rebuilt from ``runs.jsonl`` alone (no torch).

Every preset is compared with the zero-dropout baseline, paired by seed, on the test split, twice:
  * early-stopped: each run at its own evaluation point with the lowest selection-split loss;
  * fixed budget: each run at its final step.
Per table (one experiment, one comparison, one metric) the m preset x size comparisons form one family: verdicts
use the simultaneous interval at level 1 - 0.05/m (see `stats`), Holm-adjusted p-values are listed beside it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import defaultdict

from . import stats
from .presets import BASELINE
from .records import DEFAULT_EXPERIMENT, experiment_of, read_runs

COMPARISONS = {"early": "early-stopped", "fixed": "fixed budget"}
# metric -> +1 where higher is better, -1 where lower is better
METRICS = {"test_accuracy": +1, "test_f1": +1, "test_loss": -1, "test_nll_ts": -1, "test_ece": -1,
           "test_brier": -1, "gap": -1, "degradation": -1}
VERDICT_METRICS = ("test_accuracy", "test_loss")  # what findings.md states a verdict for
NAMES = {"test_accuracy": "test accuracy", "test_f1": "test macro-F1", "test_loss": "test NLL",
         "test_nll_ts": "test NLL after temperature scaling", "test_ece": "test ECE", "test_brier": "test Brier",
         "gap": "gap (test - train loss)", "degradation": "degradation (final - early-stopped test loss)"}
# underfit: the best selection point is near chance: within 0.02 of the majority-class rate, or its loss
# within 5% of ln K (a uniform prediction)
NEAR_CHANCE_ACCURACY, NEAR_CHANCE_LOSS = 0.02, 0.95


def run_values(run: dict) -> dict:
    """Per-run numbers under both comparisons, and whether the run is underfit."""
    evals = run["evals"]
    early = next(p for p in evals if p["step"] == run["selected_step"])
    final = evals[-1]
    out = {}
    for name, point in (("early", early), ("fixed", final)):
        out[name] = {m: point[m] for m in METRICS if m.startswith("test_")}
        out[name]["gap"] = point["test_loss"] - point["train_loss"]
    out["fixed"]["degradation"] = final["test_loss"] - early["test_loss"]
    classes = len(run["experiment"]["settings"]["labels"])
    out["underfit"] = (early["selection_accuracy"] <= run["selection_majority"] + NEAR_CHANCE_ACCURACY
                       or early["selection_loss"] >= NEAR_CHANCE_LOSS * math.log(classes))
    out["selection_loss"] = early["selection_loss"]
    out["selected_epoch"] = early["epoch"]
    return out


def _choose_rate(runs: list[dict]) -> float:
    """The learning rate whose runs reach the lowest mean selection loss (the test split plays no part)."""
    by_rate = defaultdict(list)
    for r in runs:
        by_rate[r["learning_rate"]].append(min(p["selection_loss"] for p in r["evals"]))
    return min(by_rate, key=lambda lr: (statistics.fmean(by_rate[lr]), lr))


def summarize(runs: list[dict]) -> list[dict]:
    """One record per experiment x preset x train size (see the module doc)."""
    experiments = list(dict.fromkeys(experiment_of(r) for r in runs))
    return [rec for name in experiments for rec in _summarize([r for r in runs if experiment_of(r) == name], name)]


def _summarize(runs: list[dict], experiment: str) -> list[dict]:
    cells = defaultdict(list)
    for r in runs:
        cells[(r["preset"], r["train_size"])].append(r)
    order = list(dict.fromkeys(r["preset"] for r in runs))
    chosen = {}
    for cell, group in cells.items():
        lr = _choose_rate(group)
        chosen[cell] = {r["seed"]: run_values(r) for r in group if r["learning_rate"] == lr}, lr
    records = []
    for (preset, size) in sorted(cells, key=lambda c: (c[1], order.index(c[0]))):
        seeds, lr = chosen[(preset, size)]
        ordered = [seeds[s] for s in sorted(seeds)]
        rec = {"experiment": experiment, "preset": preset, "train_size": size, "seeds": sorted(seeds),
               "learning_rate": lr, "underfit_runs": sum(v["underfit"] for v in ordered),
               "selected_epoch": statistics.fmean(v["selected_epoch"] for v in ordered)}
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
    _adjust(records)
    return records


def _adjust(records: list[dict]) -> None:
    """Holm p-values, simultaneous intervals and verdicts within each family (comparison x metric)."""
    keys = {k for r in records for k in r if k.startswith("delta_")}
    for key in keys:
        family = [r[key] for r in records if key in r and r[key]["n"] >= 2]
        m = len(family)
        for d, p_holm in zip(family, stats.holm([d["p"] for d in family])):
            d["m"] = m
            d["p_holm"] = p_holm
            d["ci_adjusted"] = list(stats.interval(d["deltas"], 1 - stats.ALPHA / m))
            metric = key.split("_", 2)[2]
            d["verdict"] = stats.verdict(*d["ci_adjusted"], higher_is_better=METRICS[metric] > 0)
        for r in records:
            if key in r and r[key]["n"] < 2:
                r[key].update(m=m, p_holm=float("nan"), ci_adjusted=[float("nan")] * 2,
                              verdict="no detectable difference")


def power(records: list[dict]) -> dict:
    """Seeds needed for 80% power to detect a test-accuracy difference of 0.01 and 0.02 (early-stopped), from
    the median observed paired SD; at alpha = 0.05 and at the family's corrected alpha."""
    deltas = [r["delta_early_test_accuracy"] for r in records if r.get("delta_early_test_accuracy", {}).get("n", 0) >= 2]
    if not deltas:
        return {}
    sd = statistics.median(d["sd"] for d in deltas)
    m = deltas[0]["m"]
    return {"paired_sd": sd, "family_size": m,
            "seeds": {f"{delta}": {"alpha_0.05": stats.seeds_for_power(sd, delta),
                                   "alpha_corrected": stats.seeds_for_power(sd, delta, alpha=stats.ALPHA / m)}
                      for delta in (0.01, 0.02)}}


# ------------------------------------------------------------------------------------------------- text
def _num(x, digits=3, sign=False):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{'+' if sign else ''}.{digits}f}"


def _delta(d) -> str:
    lo, hi = d["ci_adjusted"]
    return f"{_num(d['mean'], sign=True)} [{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def table(records: list[dict]) -> str:
    """Markdown: per preset x size, test accuracy and NLL under both comparisons, deltas with their
    simultaneous intervals and verdicts."""
    head = ["size", "preset", "seeds", "lr", "stop epoch", "acc (early)", "Δ acc (early)", "Δ NLL (early)",
            "acc (fixed)", "Δ acc (fixed)", "Δ NLL (fixed)", "underfit"]
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
                     f"{r['underfit_runs']}/{len(r['seeds'])}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _short(verdict: str) -> str:
    return {"better": "**better**", "worse": "**worse**"}.get(verdict, "n.d.")


def findings(records: list[dict], settings: dict | None = None) -> str:
    """findings.md for one experiment: the verdict table and its plain-word reading, derived from the numbers."""
    lines = ["## Findings", ""]
    if settings:
        lines += [f"Model {settings.get('model')}; data roles: {settings.get('roles')}; learning rate(s) "
                  f"{settings.get('learning_rates')}, {settings.get('num_train_epochs')} epochs, batch "
                  f"{settings.get('train_batch_size')}, {settings.get('evals_per_epoch')} evaluations per epoch.", ""]
    fam = next((r["delta_early_test_accuracy"]["m"] for r in records if "delta_early_test_accuracy" in r), 0)
    lines += [f"Each preset against `{BASELINE}`, paired by seed, on the test split; early-stopped = each run at "
              f"its lowest selection-split loss, fixed budget = its final step. Δ is preset − baseline with its "
              f"simultaneous 95% interval (Bonferroni over the {fam} comparisons of each column); **better** / "
              f"**worse** only where that interval excludes zero, n.d. = no detectable difference. Underfit = runs "
              f"whose best selection point is near chance.", "", table(records), ""]
    words = []
    for r in records:
        if r["preset"] == BASELINE:
            if r["underfit_runs"]:
                words.append(f"`{BASELINE}` at {r['train_size']}: underfit in {r['underfit_runs']} of "
                             f"{len(r['seeds'])} runs.")
            continue
        said = []
        for comp, label in COMPARISONS.items():
            for m in VERDICT_METRICS:
                d = r.get(f"delta_{comp}_{m}")
                if d and d["verdict"] != "no detectable difference":
                    said.append(f"{d['verdict']} {NAMES[m]} {label} (Δ {_delta(d)})")
        text = "; ".join(said) if said else "no detectable difference in test accuracy or NLL, early-stopped or " \
                                            "at a fixed budget"
        if r["underfit_runs"]:
            text += f"; underfit in {r['underfit_runs']} of {len(r['seeds'])} runs"
        words.append(f"`{r['preset']}` at {r['train_size']}: {text}.")
    lines += ["In words:", ""] + [f"- {w}" for w in words] + [""]
    verdicts = [r[f"delta_{c}_{m}"]["verdict"] for r in records for c in COMPARISONS for m in VERDICT_METRICS
                if f"delta_{c}_{m}" in r]
    lines.append(f"Of {len(verdicts)} verdicts, {verdicts.count('better')} say better, {verdicts.count('worse')} "
                 f"worse, {verdicts.count('no detectable difference')} no detectable difference.")
    pw = power(records)
    if pw and pw["paired_sd"] == 0:
        lines += ["", "Power: every paired difference in test accuracy is zero; no power estimate."]
    elif pw:
        s = pw["seeds"]
        lines += ["", f"Power: the median paired SD of Δ test accuracy (early-stopped) is {pw['paired_sd']:.4f}. "
                      f"Detecting Δ = 0.02 with 80% power needs {s['0.02']['alpha_0.05']} seeds at α = 0.05 "
                      f"({s['0.02']['alpha_corrected']} at the corrected α = 0.05/{pw['family_size']}); Δ = 0.01 "
                      f"needs {s['0.01']['alpha_0.05']} ({s['0.01']['alpha_corrected']})."]
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
                for f in ("mean", "p", "p_holm", "d_z", "verdict"):
                    row[f"{k}_{f}"] = v.get(f)
                row[f"{k}_ci_adjusted"] = " ".join(map(str, v.get("ci_adjusted", [])))
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


def report(output_dir: str, make_plots: bool = True) -> str:
    """Rebuild summary.json, summary.csv, findings.md and the plots from ``output_dir/runs.jsonl``; return
    the findings. Each experiment in the directory gets its own section (and, beside the default one, its own
    plot files)."""
    runs, duplicates = read_runs(output_dir, with_duplicates=True)
    if not runs:
        raise ValueError(f"no finished runs in {os.path.join(output_dir, 'runs.jsonl')}")
    legacy = sum("evals" not in r for r in runs)
    if legacy:
        raise ValueError(f"{legacy} record(s) in {os.path.join(output_dir, 'runs.jsonl')} predate evaluation points "
                         f"and the selection/test roles (they have per-epoch 'epochs'); re-run the grid into a new "
                         f"--output_dir")
    records = summarize(runs)
    write_summary(output_dir, records)
    out = []
    for name in dict.fromkeys(experiment_of(r) for r in runs):
        mine = [r for r in records if r["experiment"] == name]
        theirs = [r for r in runs if experiment_of(r) == name]
        if make_plots:
            plot(output_dir, theirs, mine, suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        text = findings(mine, theirs[0]["experiment"].get("settings"))
        out.append(text if name == DEFAULT_EXPERIMENT else f"# Experiment {name}\n\n{text}")
    if duplicates:
        out.append(f"note: {duplicates} duplicate record(s) in runs.jsonl were counted once")
    text = "\n".join(out)
    _atomic_write(os.path.join(output_dir, "findings.md"), text)
    return text
