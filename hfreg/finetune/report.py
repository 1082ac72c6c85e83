"""Summaries, tables and plots of the overfitting comparison, rebuilt from ``runs.jsonl`` alone."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict

from .presets import BASELINE
from .records import DEFAULT_EXPERIMENT, read_runs

# two-sided 95% Student-t quantiles by degrees of freedom (beyond 30: normal)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
METRICS = ("best_epoch", "best_eval_loss", "final_eval_loss", "best_eval_accuracy", "final_eval_accuracy",
           "degradation", "gap_at_best", "gap_final")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T95[n - 2] if n - 2 < len(_T95) else 1.96
    return mean, t * sd / math.sqrt(n)


def run_metrics(run: dict) -> dict:
    """Per-run numbers: best epoch by validation loss, degradation, generalization gap (eval-mode losses)."""
    epochs = run["epochs"]
    best = min(epochs, key=lambda e: e["eval_loss"])
    final = epochs[-1]
    return {"best_epoch": best["epoch"], "best_eval_loss": best["eval_loss"], "final_eval_loss": final["eval_loss"],
            "best_eval_accuracy": best["eval_accuracy"], "final_eval_accuracy": final["eval_accuracy"],
            "degradation": final["eval_loss"] - best["eval_loss"],
            "gap_at_best": best["eval_loss"] - best["train_loss"], "gap_final": final["eval_loss"] - final["train_loss"]}


def experiment_of(run: dict) -> str:
    return run.get("experiment", {}).get("name", DEFAULT_EXPERIMENT)


def summarize(runs: list[dict]) -> list[dict]:
    """One record per experiment x preset x train size: mean and 95% interval over seeds, and the paired
    difference from the zero-dropout baseline (same seeds) for final validation loss, accuracy and gap."""
    experiments = list(dict.fromkeys(experiment_of(r) for r in runs))
    return [rec for name in experiments for rec in _summarize([r for r in runs if experiment_of(r) == name], name)]


def _summarize(runs: list[dict], experiment: str) -> list[dict]:
    by = defaultdict(dict)
    for r in runs:
        by[(r["preset"], r["train_size"])][r["seed"]] = run_metrics(r)
    order = list(dict.fromkeys(r["preset"] for r in runs))
    records = []
    for (preset, size), seeds in sorted(by.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        rec = {"experiment": experiment, "preset": preset, "train_size": size, "seeds": sorted(seeds)}
        for m in METRICS:
            rec[m], rec[m + "_ci95"] = mean_ci([seeds[s][m] for s in sorted(seeds)])
        base = by.get((BASELINE, size), {})
        paired = sorted(set(seeds) & set(base))
        if preset != BASELINE and paired:
            for m in ("final_eval_loss", "final_eval_accuracy", "gap_final"):
                rec[f"delta_{m}"], rec[f"delta_{m}_ci95"] = mean_ci([seeds[s][m] - base[s][m] for s in paired])
        records.append(rec)
    return records


def _fmt(mean, ci, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f}±{ci:.{digits}f}"


def table(records: list[dict]) -> str:
    """A Markdown table: one row per preset x size; ± is the 95% interval over seeds."""
    head = ["size", "preset", "seeds", "best ep", "best val loss", "final val loss", "final val acc",
            "degradation", "gap end", f"Δ val loss vs {BASELINE}", "Δ val acc"]
    rows = [head, ["---"] * len(head)]
    for r in records:
        rows.append([str(r["train_size"]), r["preset"], str(len(r["seeds"])), f"{r['best_epoch']:.1f}",
                     _fmt(r["best_eval_loss"], r["best_eval_loss_ci95"]),
                     _fmt(r["final_eval_loss"], r["final_eval_loss_ci95"]),
                     _fmt(r["final_eval_accuracy"], r["final_eval_accuracy_ci95"]),
                     _fmt(r["degradation"], r["degradation_ci95"]), _fmt(r["gap_final"], r["gap_final_ci95"]),
                     _fmt(r.get("delta_final_eval_loss"), r.get("delta_final_eval_loss_ci95", 0.0)),
                     _fmt(r.get("delta_final_eval_accuracy"), r.get("delta_final_eval_accuracy_ci95", 0.0))])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_summary(output_dir: str, records: list[dict]) -> None:
    tmp = os.path.join(output_dir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(records, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, "summary.json"))
    fields = list(dict.fromkeys(k for r in records for k in r))
    tmp = os.path.join(output_dir, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in records:
            writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    os.replace(tmp, os.path.join(output_dir, "summary.csv"))


def plot(output_dir: str, runs: list[dict], records: list[dict], suffix: str = "") -> list[str]:
    """Learning curves per preset (train vs validation loss, eval mode, mean over seeds) and gap vs size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
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
            group = [r for r in runs if r["preset"] == preset and r["train_size"] == size]
            if not group:
                continue
            n = min(len(r["epochs"]) for r in group)
            x = list(range(1, n + 1))
            for key, style in (("train_loss", "--"), ("eval_loss", "-")):
                y = [sum(r["epochs"][e][key] for r in group) / len(group) for e in range(n)]
                ax.plot(x, y, style, color=colors[i % len(colors)],
                        label=f"n={size} {'train' if key == 'train_loss' else 'val'}")
        ax.set_title(preset)
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("loss (eval mode)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    paths.append(curves)

    gap = os.path.join(output_dir, f"gap_vs_size{suffix}.png")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for preset in presets:
        recs = sorted((r for r in records if r["preset"] == preset), key=lambda r: r["train_size"])
        ci = [0.0 if math.isnan(r["gap_final_ci95"]) else r["gap_final_ci95"] for r in recs]
        ax.errorbar([r["train_size"] for r in recs], [r["gap_final"] for r in recs], yerr=ci, marker="o",
                    capsize=3, label=preset)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training-set size")
    ax.set_ylabel("final gap: val loss - train loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(gap, dpi=110)
    plt.close(fig)
    paths.append(gap)
    return paths


def report(output_dir: str, make_plots: bool = True) -> str:
    """Rebuild summary.json, summary.csv, the plots and the table from ``output_dir/runs.jsonl``.

    Each experiment in the directory gets its own table (and, beside the default one, its own plot files)."""
    runs, duplicates = read_runs(output_dir, with_duplicates=True)
    if not runs:
        raise ValueError(f"no finished runs in {os.path.join(output_dir, 'runs.jsonl')}")
    records = summarize(runs)
    write_summary(output_dir, records)
    out = []
    for name in dict.fromkeys(experiment_of(r) for r in runs):
        mine = [r for r in records if r["experiment"] == name]
        if make_plots:
            plot(output_dir, [r for r in runs if experiment_of(r) == name], mine,
                 suffix="" if name == DEFAULT_EXPERIMENT else f"-{name}")
        out.append(("" if name == DEFAULT_EXPERIMENT else f"experiment {name}:\n") + table(mine))
    if duplicates:
        out.append(f"note: {duplicates} duplicate record(s) in runs.jsonl were counted once")
    return "\n\n".join(out)
