"""The plots of a report (matplotlib, imported only when plotting): learning curves, the early-stopped deltas per
size, and each rate sweep's dose-response."""

from __future__ import annotations

import math
import os
import statistics

from ...config import KNOBS as KNOB_NAMES
from ...files import replacing
from .. import tasks
from ..presets import BASELINE
from .numbers import names, seed_choices


def plot(output_dir: str, runs: list[dict], records: list[dict], suffix: str = "") -> list[str]:
    """Learning curves per preset (training-subset and selection loss, eval mode, mean over each seed's chosen run,
    against epochs) and the fixed-budget gap against training-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {(p, n): v for (_, p, n), v in seed_choices(runs, records[0]["select_by"] if records else
                                                         "accuracy").items()}
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
            group = list(chosen.get((preset, size), {}).values())
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
    with replacing(curves) as tmp:  # whole, even with a launch beside this one reporting too
        fig.savefig(tmp, dpi=110, format="png")
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
    with replacing(gap) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [curves, gap]


def plot_dose_response(output_dir: str, records: list[dict], sweeps: dict, suffix: str = "") -> str:
    """dose_response.png: per sweep (rows) Δ test accuracy, temperature-scaled NLL and ECE (columns, early-stopped)
    against the rate, one line per training size, with simultaneous intervals (95% ones for ECE, which gets no
    verdict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = tasks.of_rows(records)
    metrics = (*task.verdicts, *(task.calibration[-1:] or ("test_loss",)))
    path = os.path.join(output_dir, f"dose_response{suffix}.png")
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(11, 3.0 * len(sweeps)), squeeze=False)
    for row, (family, points) in zip(axes, sweeps.items()):
        for ax, metric in zip(row, metrics):
            for size in sorted({r["train_size"] for r in records}):
                xs, ys, lo, hi = [0.0], [0.0], [0.0], [0.0]
                for r in records:
                    d = r.get(f"delta_early_{metric}")
                    if r["train_size"] == size and r["preset"] in points and d and d["n"] >= 2 \
                            and r.get("against", BASELINE) == BASELINE:
                        xs.append(points[r["preset"]])
                        ys.append(d["mean"])
                        ci = d.get("ci_adjusted") or d["ci95"]  # calibration has no verdict: its 95% interval
                        lo.append(d["mean"] - ci[0])
                        hi.append(ci[1] - d["mean"])
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.errorbar([xs[i] for i in order], [ys[i] for i in order],
                            yerr=[[lo[i] for i in order], [hi[i] for i in order]], marker="o", capsize=3,
                            label=f"n={size}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(f"{family} {'factor' if family not in KNOB_NAMES else 'rate'}")
            ax.set_ylabel(f"Δ {names(task)[metric]} (early)")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
