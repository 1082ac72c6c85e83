"""The documentation: the site builds strictly, every public name is documented, the examples run, and the README
stays a page."""

import doctest
import inspect
import os
import subprocess
import sys

import pytest
from harness import ROOT

import hfreg


def test_site_builds_strictly(tmp_path):
    """`make docs`: a broken link, a missing page or a docstring that names a parameter the signature lacks fails.
    Built as the Makefile builds it: without -q, which would hide the warnings strict mode counts."""
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mkdocs"), "build", "--strict",
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


@pytest.mark.parametrize("name", hfreg.__all__)
def test_every_public_name_has_a_docstring(name):
    obj = getattr(hfreg, name)
    if callable(obj):
        doc = inspect.getdoc(obj) or ""
        assert doc.strip(), f"hfreg.{name} has no docstring"
        assert "Example" in doc, f"hfreg.{name} has no example"
        assert inspect.isclass(obj) or "Args:" in doc or not inspect.signature(obj).parameters, \
            f"hfreg.{name} documents no arguments"


@pytest.mark.parametrize("module", ["hfreg.config", "hfreg.layers", "hfreg.patcher", "hfreg.rdrop", "hfreg.state",
                                    "hfreg.mc", "hfreg.probing", "hfreg.schedule", "hfreg.sites",
                                    "hfreg.twin"])
def test_docstring_examples_run(module):
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{module} has no example"


def test_readme_fits_on_a_page():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 12 * 1024


@pytest.mark.parametrize("name", [n for n in hfreg.__all__ if callable(getattr(hfreg, n))])
def test_every_public_signature_is_typed(name):
    """Each parameter and return of a public function, and of a public class's own public methods, has a type."""
    obj = getattr(hfreg, name)
    methods = [(name, obj)]
    if inspect.isclass(obj):
        methods = [(f"{name}.{k}", v) for k, v in vars(obj).items()
                   if callable(v) and (not k.startswith("_") or k == "__init__")]
    for where, f in methods:
        sig = inspect.signature(f)
        bare = [p.name for p in sig.parameters.values()
                if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")]
        assert not bare, f"hfreg.{where}: {bare} untyped"
        assert where.endswith("__init__") or sig.return_annotation is not inspect.Signature.empty, \
            f"hfreg.{where} has no return type"


def test_reference_pages_name_every_key():
    """The run record, pooled.json and preset-file pages name every key the committed records, the pooled rows and
    a preset can hold: a key added without its line here fails."""
    import dataclasses
    import glob
    import json

    from hfreg.finetune import experiment, presets, tasks

    def page(name):
        with open(os.path.join(ROOT, "docs", "reference", name)) as f:
            return f.read()

    record, keys, settings, points = page("run-record.md"), set(), set(experiment.NEWER_SETTINGS), set()
    settings |= set(presets.METHOD_FLAGS)
    for path in glob.glob(os.path.join(ROOT, "docs", "results", "*", "runs.jsonl")):
        with open(path) as f:
            for run in map(json.loads, f):
                keys |= set(run) | set(run["provenance"])
                settings |= set(run["experiment"]["settings"])
                points |= {k for p in run["evals"] for k in p}
    missing = sorted(k for k in keys | settings if f"`{k}`" not in record)
    assert not missing, f"docs/reference/run-record.md does not name {missing}"
    metrics = {m.split("_", 1)[1] for t in tasks.TASKS.values() for m in t.metrics} | {
        k.split("_", 1)[1] for k in points if k.split("_", 1)[0] in ("train", "selection", "test")}
    assert not [m for m in sorted(metrics) if f"`{m}`" not in record], "a metric the run record page does not name"
    with open(os.path.join(ROOT, "docs", "results", "pooled.json")) as f:
        rows = json.load(f)
    pooled = page("pooled.md")
    assert not [k for k in sorted({k for r in rows for k in r}) if f"`{k}`" not in pooled]
    preset = page("presets.md")
    fields = {f.name for f in dataclasses.fields(presets.Preset)} - {"name", "reg"}
    fields |= {f.name for f in dataclasses.fields(hfreg.RegularizationConfig)}
    assert not [k for k in sorted(fields) if f"`{k}`" not in preset], "a preset key the preset page does not name"
    with open(os.path.join(ROOT, "docs", "patcher.md")) as f:
        rows = {line.split("|")[1].strip().strip("`") for line in f if line.startswith("| `")}
    assert not [k for k in hfreg.KNOBS if k not in rows], "a knob without its row in docs/patcher.md's knob table"


def test_the_designs_power_numbers_are_the_stats_and_the_published_findings():
    """docs/results.md's design: the seed counts come from `stats` at the column's final level, and the paired SDs
    it quotes are the published findings' power lines."""
    import glob
    import re

    from hfreg.finetune import report, stats

    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        design = " ".join(f.read().split("**Maximum seeds: 40.**")[1].split("- **Answer per size.**")[0].split())
    final = stats.nominal_alpha(40, report.column_alpha("early", "test_accuracy", 32), 40, 5)
    # what the second look needs to stop a cell, against the first stage's cells (the committed records, seeds 0-4)
    from scipy.stats import t

    from hfreg.finetune.records import read_runs

    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        page = " ".join(f.read().split())
    share = report.column_alpha("early", "test_accuracy", 32)
    level = {n: stats.nominal_alpha(n, share, 40, 5) for n in (10, 15)}
    half = {n: t.ppf(1 - a / 2, n - 1) / n ** 0.5 for n, a in level.items()}
    below = 0.02 / (t.ppf(1 - level[10], 9) / 10 ** 0.5)  # the equivalence (TOST) interval's half-width in SDs
    assert (f"exceeds {half[10]:.0f} paired SDs (the interval's half-width at its nominal level, {level[10]:.1e} for "
            f"test accuracy), or, for equivalence within ±0.02, where its paired SD is below {below:.4f}"
            ) in page and f"to 15 seeds ({half[15]:.1f} paired SDs there)" in page
    assert stats.FUTILITY_FROM * 40 == 20 and "futility is read from 20 seeds on" in page
    assert (f"stayed at that look's level ({level[15]:.1e} in a column of 32 rows, against "
            f"{stats.nominal_alpha(40, share, 40, 5):.1e} at the last look)").replace("e-0", "e-") in page
    first = [r for r in read_runs(os.path.join(ROOT, "docs", "results", "answer-sst2-sentences")) if r["seed"] < 5]
    cells = [r["delta_early_test_accuracy"] for r in report.summarize(first) if "delta_early_test_accuracy" in r]
    assert len(cells) == 32 and all(d["n"] == 5 for d in cells)
    ratio, sd = max(abs(d["mean"]) / d["sd"] for d in cells), min(d["sd"] for d in cells)
    assert f"its largest ratio of mean difference to paired SD is {ratio:.1f}, its smallest paired SD {sd:.4f}" in page
    assert ratio < half[10] / 2 and sd > 1.5 * below  # "no cell came near either"
    nll = stats.nominal_alpha(40, report.column_alpha("early", "test_nll_ts", 32), 40, 5)
    assert (f"accuracy columns' final nominal level ({final:.1e}; the temperature-scaled NLL columns end at "
            f"{nll:.1e})").replace("e-04", "e-4") in design
    power = [stats.seeds_for_power(sd, 0.02, final) for sd in (0.015, 0.025, 0.035)]
    equivalence = [stats.seeds_for_equivalence(sd, 0.02, final) for sd in (0.015, 0.025, 0.035)]
    assert "needs {}, {} and {} seeds".format(*power) in design
    assert "needs {}, {} and {} (".format(*equivalence) in design
    sds = {}
    for path in glob.glob(os.path.join(ROOT, "docs", "results", "*", "findings.md")):
        with open(path) as f:
            found = re.search(r"Power \(early-stopped\): the median paired SD of Δ test accuracy is (\d+\.\d+)",
                              f.read())
        if found:
            sds[os.path.basename(os.path.dirname(path))] = float(found.group(1))
    assert f"SDs of {min(sds.values()):.3f}–{max(sds.values()):.3f}" in design
    assert f"the SST-2 grids' {sds['sst2']:.3f}, rt-polarity's {sds['rt-polarity']:.3f}" in design
    assert f"{sds['methods-sst2']:.3f}" == f"{sds['sst2']:.3f}"
    sweep = sds["sweep-sst2"]
    assert f"SST-2 sweep's {sweep} ({stats.seeds_for_power(sweep, 0.02, final)} seeds)" in design
    # "about 0.027": the largest SD (to 0.001) at which 40 seeds still give 80% power
    largest = max(k / 1000 for k in range(1, 60) if stats.seeds_for_power(k / 1000, 0.02, final) <= 40)
    assert f"at most about {largest:.3f}" in design
