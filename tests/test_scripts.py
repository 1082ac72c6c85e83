"""The maintainer scripts in benchmarks/: comparing one grid recorded twice, and copying findings into the README."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from harness import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import compare_runs  # noqa: E402


def record(preset, seed, accs, selected=2, settings=None):
    evals = [{"step": i + 1, "test_accuracy": a, "test_loss": 1 - a} for i, a in enumerate(accs)]
    return {"experiment": {"name": "default", "settings": settings or {}}, "preset": preset, "preset_config": {},
            "train_size": 64, "seed": seed, "learning_rate": 2e-4, "evals": evals, "selected_step": selected}


def write_runs(path, records):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "runs.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_compare_runs_pairs_by_run_whatever_the_settings(tmp_path):
    write_runs(tmp_path / "a", [record("zero", 0, [0.6, 0.7], settings={"torch": "2.13"}),
                                record("zero", 1, [0.6, 0.8]), record("drop", 0, [0.6, 0.7]),
                                record("drop", 5, [0.5, 0.5])])  # seed 5 has no partner
    write_runs(tmp_path / "b", [record("zero", 0, [0.6, 0.70001], settings={"torch": "2.11"}),
                                record("zero", 1, [0.6, 0.8]), record("drop", 0, [0.6, 0.75], selected=1)])
    rows = {r[0]: r for r in compare_runs.compare(str(tmp_path / "a"), str(tmp_path / "b"), tol=1e-4)}
    assert rows["zero"][1:3] == [2, 2] and rows["zero"][5] == 2
    assert rows["drop"][1:3] == [1, 0] and rows["drop"][3] == pytest.approx(0.05) and rows["drop"][5] == 0
    rows = {r[0]: r for r in compare_runs.compare(str(tmp_path / "a"), str(tmp_path / "b"), tol=1e-6)}
    assert rows["zero"][2] == 1


def test_the_grid_s_code_change_was_checked_by_re_training_runs_it_had_recorded():
    """docs/results.md: three first-stage runs re-trained by the code that took the grid over agree with the
    committed records at every point within 6e-7, every accuracy exactly, and choose the same step."""
    grid = os.path.join(ROOT, "docs", "results", "answer-sst2-sentences")
    rows = compare_runs.compare(grid, os.path.join(grid, "rerun"), tol=6e-7)
    assert sorted(r[0] for r in rows) == ["classic", "drop-path", "rdrop"]
    assert all(r[1] == r[2] == r[5] == 1 for r in rows), rows
    from hfreg.finetune.records import read_runs

    old = {compare_runs.key(r): r for r in read_runs(grid)}
    for new in read_runs(os.path.join(grid, "rerun")):
        was = old[compare_runs.key(new)]
        assert new["provenance"]["code"] != was["provenance"]["code"]
        assert [{k: v for k, v in p.items() if k.endswith("accuracy")} for p in new["evals"]] == [
            {k: v for k, v in p.items() if k.endswith("accuracy")} for p in was["evals"]]


def test_the_rate_choice_table_is_what_the_benchmark_prints():
    """docs/results.md quotes `benchmarks/rate_choice.py` on the committed first stage (seeded: the same draws each
    time), which is why each seed chooses its own learning rate: per seed, the false-claim rate of one fixed rate
    within Monte Carlo error; per cell, many times the budget."""
    import re

    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "rate_choice.py"),
                          os.path.join(ROOT, "docs", "results", "answer-sst2-sentences"), "--sims", "50000"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("\n", 1)[1].strip()
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        assert table in f.read(), "docs/results.md: quote benchmarks/rate_choice.py anew"
    budget = float(re.search(r"per-comparison budget ([0-9.e+-]+);", out.stdout).group(1))
    rows = [[float(x) for x in line.strip(" |").split(" | ")[2:]] for line in table.splitlines()[2:]]
    assert all(abs(fixed - per_seed) < 4 * math.sqrt(budget / 50000) for fixed, _, _, per_seed in rows)
    assert max(r[1] for r in rows) > 100 * budget and min(r[2] for r in rows) > 10 * budget
    # the page's words on it: the largest gap between one fixed rate and per seed, and the per-cell rules' worst
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        page = " ".join(f.read().split())
    gap = max(abs(fixed - per_seed) for fixed, _, _, per_seed in rows)
    assert f"differ by at most {gap:.1e}".replace("e-04", "e-4") in page and gap < 4 * math.sqrt(budget / 50000)
    worst = [round(max(r[k] for r in rows) / budget, -1) for k in (1, 2)]
    assert f"reaches {worst[0]:.0f} and {worst[1]:.0f} times the budget" in page


def test_compare_runs_user_errors_are_one_line(tmp_path):
    write_runs(tmp_path / "a", [record("zero", 0, [0.6])])
    write_runs(tmp_path / "b", [record("zero", 1, [0.6])])
    for args, words in [([str(tmp_path / "a"), str(tmp_path / "missing")], "holds no runs.jsonl"),
                        ([str(tmp_path / "a"), str(tmp_path / "b")], "share no run")]:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare_runs.py"), *args],
                             capture_output=True, text=True)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_readme_results_copies_findings_between_markers(tmp_path):
    os.makedirs(tmp_path / "benchmarks")
    shutil.copy(os.path.join(ROOT, "benchmarks", "readme_results.py"), tmp_path / "benchmarks")
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- findings:x -->\nold\n<!-- /findings:x -->\n"
                      "<!-- findings:y -->\nold\n<!-- /findings:y -->\nend\n")
    write_runs(tmp_path / "docs" / "results" / "x", [])
    (tmp_path / "docs" / "results" / "x" / "findings.md").write_text("## Findings\n\nfrom the tool\n")
    run = [sys.executable, str(tmp_path / "benchmarks" / "readme_results.py")]
    assert subprocess.run(run).returncode == 0
    text = readme.read_text()
    assert "#### Findings: x\n\nfrom the tool\n<!-- /findings:x -->" in text
    assert "No finished runs in `docs/results/y` yet." in text and "old" not in text and text.endswith("end\n")
    # findings older than the runs they summarize are refused, and the README is left as it was
    os.utime(tmp_path / "docs" / "results" / "x" / "findings.md", (1, 1))
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 2 and "older than runs.jsonl" in out.stderr and readme.read_text() == text
    # a pooled answer of its own folder (`--out docs/results/NAME`): quoted up to its per-size tables
    os.utime(tmp_path / "docs" / "results" / "x" / "findings.md")
    readme.write_text("<!-- pooled:answer -->\nold\n<!-- /pooled:answer -->\n")
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 2 and "--out docs/results/answer` first" in out.stderr
    answer = tmp_path / "docs" / "results" / "answer"
    answer.mkdir()
    (answer / "pooled.md").write_text("## Pooled\n\nSources: `a`. The method at length.\n\nthe answer\n\n"
                                      "### n=64\n\nrows\n")
    assert subprocess.run(run).returncode == 0
    link = "[docs/results/answer/pooled.md](docs/results/answer/pooled.md)"
    # the README links the method (its sources said); docs/results.md, the page of the method, quotes it whole
    assert readme.read_text() == (f"<!-- pooled:answer -->\n#### Pooled\n\nSources: `a`; how they pool, the error "
                                  f"control and the margins: {link}.\n\nthe answer\n\nThe tables of each size and "
                                  f"over all cells, and the between-sizes tests: {link}.\n<!-- /pooled:answer -->\n")
    page = tmp_path / "docs" / "results.md"
    page.write_text("<!-- pooled:answer -->\n<!-- /pooled:answer -->\n")
    assert subprocess.run(run).returncode == 0
    assert "Sources: `a`. The method at length.\n\nthe answer\n\n" in page.read_text()


@pytest.mark.parametrize("name", sorted(d for d in os.listdir(os.path.join(ROOT, "docs", "results"))
                                         if os.path.isfile(os.path.join(ROOT, "docs", "results", d, "runs.jsonl"))))
def test_committed_findings_are_what_the_report_derives(tmp_path, name):
    """Every committed findings.md (and pooled.md, where the directory was reported alone) is `hfreg report`'s output
    for the committed records, and the results page quotes it; the records of a grid still running (no findings.md)
    read, and nothing quotes findings of it."""
    results = os.path.join(ROOT, "docs", "results", name)
    shutil.copy(os.path.join(results, "runs.jsonl"), tmp_path)
    shutil.copytree(os.path.join(results, "predictions"), tmp_path / "predictions")
    out = subprocess.run([sys.executable, "-m", "hfreg.cli", "report", "--no_plots", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        page = f.read()
    if not os.path.isfile(os.path.join(results, "findings.md")):
        assert f"<!-- findings:{name} -->" not in page and f"docs/results/{name}/" in page
        return
    with open(os.path.join(results, "findings.md")) as f:
        committed = f.read()
    assert (tmp_path / "findings.md").read_text() == committed
    pooled = os.path.join(results, "pooled.md")  # where the directory was reported alone, its pool too
    if os.path.isfile(pooled):
        with open(pooled) as f:
            assert (tmp_path / "pooled.md").read_text() == f.read().replace(f"docs/results/{name}", str(tmp_path))
    if f"<!-- findings:{name} -->" in page:
        assert committed.replace("## Findings", f"#### Findings: {name}", 1).strip() in page


def test_readme_methods_tables_are_built_from_the_committed_summaries():
    """Each `<!-- methods:NAME -->` table of the results page is what benchmarks/readme_results.py builds from
    docs/results/NAME/summary.json: the verdicts the report wrote, beside the paper each preset file cites."""
    import re

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from readme_results import _source, methods_table

    pages = []
    for page in ("README.md", os.path.join("docs", "results.md")):
        with open(os.path.join(ROOT, page)) as f:
            pages.append(f.read())
    readme = "\n".join(pages)
    assert readme.count("<!-- methods:methods-sst2 -->") == 2
    for name, body in re.findall(r"<!-- methods:([\w.-]+) -->\n(.*?)\n<!-- /methods:", readme, flags=re.S):
        summary = os.path.join(ROOT, "docs", "results", name, "summary.json")
        expected = methods_table(summary) if os.path.isfile(summary) else f"No summary in `docs/results/{name}` yet."
        assert body == expected
    assert _source("mixout") == "Lee et al., ICLR 2020" and _source("strong-baseline") == "Zhang et al., ICLR 2021"


def test_readme_quotes_the_committed_pooled_answer(tmp_path):
    """docs/results/pooled.md is what `hfreg report` pools from the committed grids, and the README quotes its
    answer and overall table."""
    for name in ("sst2", "rt-polarity"):
        (tmp_path / name).mkdir()
        shutil.copy(os.path.join(ROOT, "docs", "results", name, "runs.jsonl"), tmp_path / name)
        # the stored predictions give each cell's test-set resolution, the floor of its variance in the pool
        shutil.copytree(os.path.join(ROOT, "docs", "results", name, "predictions"), tmp_path / name / "predictions")
    out = subprocess.run([sys.executable, "-m", "hfreg.cli", "report", "--no_plots", str(tmp_path / "sst2"),
                          str(tmp_path / "rt-polarity"), "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(ROOT, "docs", "results", "pooled.md")) as f:
        committed = f.read()
    assert (tmp_path / "pooled.md").read_text().replace(str(tmp_path) + "/", "docs/results/") == committed
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from readme_results import pooled_overview

    for page in ("README.md", os.path.join("docs", "results.md")):
        with open(os.path.join(ROOT, page)) as f:
            quoted = pooled_overview(os.path.join(ROOT, "docs", "results", "pooled.md"),
                                     os.path.dirname(os.path.join(ROOT, page)), brief=page == "README.md")
            assert quoted in f.read(), page
    # the README links the method paragraph (its first sentence, the sources, kept) and quotes the answer whole
    quoted = pooled_overview(os.path.join(ROOT, "docs", "results", "pooled.md"), ROOT, brief=True)
    assert "Sources: `docs/results/sst2`, `docs/results/rt-polarity`; how they pool, the error control and the " \
           "margins: [docs/results/pooled.md](docs/results/pooled.md).\n\n**Answer** (" in quoted
    assert "DerSimonian" not in quoted and quoted.count("**Answer**") == 1


def test_readme_quotes_the_committed_coverage_measurement():
    """The README's coverage figures are those `benchmarks/coverage.py` wrote to docs/coverage.md."""
    import re

    with open(os.path.join(ROOT, "docs", "coverage.md")) as f:
        measured = f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, "docs", "patcher.md")) as f:
        guide = " ".join(f.read().split())
    passing, buildable = re.search(r"\*\*(\d+) of (\d+) buildable types pass every invariant\*\*", measured).groups()
    acting, warning, failing = re.search(r"(\d+) with every knob acting, (\d+) where some knobs cannot act and warn "
                                         r"at patch time \(listed below\); (\d+) fail", measured).groups()
    unbuilt, known = re.search(r"(\d+) of (\d+) types could not be built or fed generically", measured).groups()
    assert f"{passing} of the {buildable} model types" in readme
    assert f"other {unbuilt} of its {known} could not be built or fed generically" in " ".join(readme.split())
    assert f"{buildable} types build and run that way; **{passing} of them pass every invariant**" in guide
    assert f"{acting} with every knob acting, {warning} where some knobs cannot act" in guide


def test_select_by_is_compared_on_the_selection_split_alone():
    """benchmarks/compare_select_by.py picks each rule's point on one half of the selection split (alternate examples)
    and scores it on the other: a point with one confidently wrong example has the higher NLL but the better
    accuracy, so the NLL rule reads the worse point where the accuracy rule reads the better one."""
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from compare_select_by import held_out

    labels = np.array([0, 1] * 10)
    onehot = labels[:, None] == np.arange(2)
    x = np.where(onehot, 1.0, -1.0)
    x[0] = np.where(onehot[0], -20.0, 20.0)  # 19 of 20 right, one wrong with huge confidence (fold A)
    y = np.where(onehot, 1.0, -1.0)
    y[1:5] = np.where(onehot[1:5], -0.1, 0.1)  # 16 of 20 right, the 4 wrong ones barely (2 in each fold)
    out = held_out(np.stack([x, y]), labels)
    assert out["accuracy"] == pytest.approx((1.0 + 0.9) / 2) and out["f1"] == pytest.approx(out["accuracy"], abs=0.01)
    assert out["loss"] == pytest.approx((0.8 + 0.9) / 2)


def test_the_decided_answer_design_is_commands_the_harness_takes(tmp_path, capsys):
    """benchmarks/decided_answer.py: every grid command of the written-down design parses as the harness reads it
    (the data folders faked as empty files), for the CPU (fp32) and for one GPU (processes sharing each grid's
    queue, no cluster to install); a subset of data sets, and bad choices or missing data, are one line."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from decided_answer import DATA_SETS, commands, main

    from hfreg.finetune.sweep import parse_args

    for name in DATA_SETS:
        (tmp_path / name).mkdir()
        for split in ("train", "validation", "test"):
            (tmp_path / name / f"{split}.csv").write_text("text,label\n")
    for gpu in (False, True):
        steps = commands(str(tmp_path), gpu, sys.executable)
        assert len(steps) == len(DATA_SETS) + 1 and steps[-1][2:4] == ["hfreg.cli", "report"]
        for command in steps[:-1]:
            args = parse_args(command[3:])
            assert args.auto_seeds and args.max_seeds == 40 and args.train_sizes == [64, 512]
            assert args.backend == "local" and len(args.learning_rates) == 3
            assert (args.mixed_precision, args.threads) == (("auto", 1) if gpu else ("no", None))
            # the grid that was running when the design chose to store the test split's outputs alone keeps both
            train_file = command[command.index("--train_file") + 1]
            assert args.no_selection_predictions == ("/sst2-sentences/" not in train_file)
    assert main(["--print", "--gpu", "--data_sets", "sst5", "--data_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "/sst5/train.csv" in printed[0] and printed[0].endswith("# x16 processes")
    assert main(["--print", "--data_dir", str(tmp_path / "nowhere")]) == 2
    assert main(["--print", "--data_sets", "sst2", "--data_dir", str(tmp_path)]) == 2
    assert main(["--print", "--gpu", "--processes", "0", "--data_dir", str(tmp_path)]) == 2
    assert "choose from sst2-sentences, rt-polarity, sst5" in capsys.readouterr().err
    # several launches of one command share the cores (a thread count each, unless it names one) and report the
    # first failure
    from decided_answer import launch

    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    shares = f"import sys; sys.exit(0 if sys.argv[-2:] == ['--threads', '{share}'] else 3)"
    assert launch([sys.executable, "-c", shares], 2) == 0
    assert launch([sys.executable, "-c", "import sys; sys.exit(5)", "--threads", "1"], 2) == 5


def test_the_rehearsed_end_of_the_decided_answer_reads_as_final(tmp_path, capsys):
    """benchmarks/rehearse_answer.py fills the later stages of the committed answer grid with copies of its first
    stage until the grid's own rule (`next_cells`) closes every cell; the report on that is the page the grid will
    publish when it ends: no cell waits, the pooled rows take their final reading (the last look's level, not a
    stopped cell's), the stopping bias is said, and the rate sweeps read as rates."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from rehearse_answer import main

    grid = tmp_path / "answer-sst2-sentences"
    assert main([os.path.join(ROOT, "docs", "results", "answer-sst2-sentences"), str(grid)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "after 5 seeds: 28 cell(s) open" and said[-2].endswith(": 0 cell(s) open")
    assert "fabricated" in said[-1]
    assert main([str(grid), str(grid)]) == 2 and "exists: give a new directory" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "hfreg.cli", "report", "--no_plots", str(grid), "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    findings, pooled = (grid / "findings.md").read_text(), (tmp_path / "pooled.md").read_text()
    assert "**Not final:**" not in findings and "**Not final:**" not in pooled
    stages = findings.split("Stages (", 1)[1].split("\n\n")[1].splitlines()
    assert stages and all("stopped: " in line or "at the last look" in line for line in stages)
    rows = json.loads((tmp_path / "pooled.json").read_text())
    levels = {r["alpha"] for r in rows if r["metric"] == "test_accuracy" and r.get("verdict")}
    # the last look's level (about 5e-4), where a stopped cell's look would read at 1e-6 or less (15-20 seeds)
    assert min(levels) > 1e-4
    assert "a stopped cell's estimate leans towards the effect that stopped it" in pooled
    assert "Rate sweep `classic` pooled (factor on every rate of the preset; ×1 is attention 0.1, hidden 0.1, " \
           "classifier 0.1;" in pooled and "Rate sweep `classifier` pooled (the knob alone, every other as in " \
           "`pretrain-zero`;" in pooled


def test_decided_answer_progress_counts_the_planned_runs_and_the_results_page_quotes_it(tmp_path):
    """`decided_answer.py --progress` counts a record where its key is one the first stage plans (a changed preset
    is another run) and the rest as later stages; docs/results.md quotes what it says of the committed records."""
    import json
    import re

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from decided_answer import progress

    with open(os.path.join(ROOT, "docs", "results", "answer-sst2-sentences", "runs.jsonl")) as f:
        records = [json.loads(line) for line in f][:20]
    later = {**records[0], "seed": 7}
    changed = {**records[1], "seed": 3, "preset_config": {**records[1]["preset_config"], "hidden": 0.5}}
    (tmp_path / "answer-sst2-sentences").mkdir()
    (tmp_path / "answer-sst2-sentences" / "runs.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*records, records[0], later, changed]))
    lines = progress(results_dir=str(tmp_path)).splitlines()
    assert lines[0].startswith("- `sst2-sentences`: first stage (seeds 0–4) 20 of 450 runs (n=512 20 of 225, n=64 0 "
                               "of 225); no later stage yet. Recorded run time: median ")
    seconds = sorted(r["seconds"] for r in [*records, later, changed])  # every run read, the duplicate once
    assert f"median {seconds[11]:.0f} s (10–90%: {seconds[2]:.0f}–{seconds[19]:.0f} s); at that median the rest of " \
           f"the first stage is {430 * seconds[11] / 3600:.0f} core-hours; " in lines[0]
    # at most: every cell to 40 seeds, less the runs done that the design plans (the changed preset's is not one)
    assert lines[0].endswith(f"; this data set's design at most {3579 * seconds[11] / 3600:.0f} core-hours more "
                             f"(3,579 runs, were no cell to stop before 40 seeds).")
    assert lines[1:] == ["- `rt-polarity`: not started (450 first-stage runs planned, 3,600 at most).",
                         "- `sst5`: not started (450 first-stage runs planned, 3,600 at most)."]
    # a complete first stage (the committed 512-example runs, and the same again as 64 where `placebo` has the
    # baseline's own numbers): the next stage as the grid plans it, with the baseline and rdrop's controls beside
    # the cells. Every cell is open: the first look spends almost no error (a level of 5e-176), so that even a copy
    # of the baseline is not called equivalent on 5 seeds
    with open(os.path.join(ROOT, "docs", "results", "answer-sst2-sentences", "runs.jsonl")) as f:
        first = [r for r in map(json.loads, f) if r["train_size"] == 512 and r["seed"] < 5]
    assert len(first) == 225
    base = {(r["seed"], r["learning_rate"]): r for r in first if r["preset"] == "pretrain-zero"}
    at_64 = [{**(base[(r["seed"], r["learning_rate"])] if r["preset"] == "placebo" else r), "preset": r["preset"],
              "preset_config": r["preset_config"], "train_size": 64} for r in first]
    full = [*first, *at_64, {**first[0], "seed": 5}]
    (tmp_path / "answer-sst2-sentences" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    line = progress(results_dir=str(tmp_path)).splitlines()[0]
    assert "first stage (seeds 0–4) 450 of 450 runs (n=512 225 of 225, n=64 225 of 225); stage 2 (seeds 5–9) 1 of " \
           "450 runs for 28 undecided preset × size cells. Recorded run time:" in line
    assert "the rest of stage 2 is" in line and "core-hours more (3,149 runs, were no cell" in line
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        quoted = re.search(r"<!-- progress -->\n(.*?)\n<!-- /progress -->", f.read(), flags=re.S).group(1)
    assert quoted == progress(), "docs/results.md: quote it anew with benchmarks/readme_results.py"


def test_the_step_cost_figures_were_measured_on_todays_code():
    """docs/speed.md names the digest of the code a training step runs through, as `benchmarks/patch_overhead.py
    --methods` printed it when it measured the figures: changing that code calls for measuring them again."""
    import re

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from patch_overhead import code_path_digest

    with open(os.path.join(ROOT, "docs", "speed.md")) as f:
        recorded = re.search(r"code path `([0-9a-f]{12})`", f.read()).group(1)
    assert recorded == code_path_digest(), "the code on a training step's path changed since docs/speed.md's " \
                                           "figures: run benchmarks/patch_overhead.py --methods again"


def test_the_evaluation_figures_were_measured_on_todays_evaluation_path():
    """docs/speed.md names the digest of the harness code an evaluation point runs through (its batching, loader and
    prediction loop), as `benchmarks/eval_profile.py` printed it: changing that code calls for measuring again."""
    import re

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from eval_profile import eval_path_digest

    with open(os.path.join(ROOT, "docs", "speed.md")) as f:
        recorded = re.search(r"eval path\s+`([0-9a-f]{12})`", f.read()).group(1)
    assert recorded == eval_path_digest(), "the code an evaluation point runs through changed since docs/speed.md's " \
                                           "figures: run benchmarks/eval_profile.py again"


def test_device_run_sh_checks_its_imports_by_reading_a_split_of_the_first_grid(tmp_path):
    """run.sh's check before the grids start reads the first grid's selection split through `datasets` (so that a
    dependency `datasets` lacks there, such as pyarrow, stops the call before any run), here on this machine."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import device_pack

    script = device_pack.RUN_SH
    check = script[script.index("# reading a split"):script.index("nvidia-smi")]
    split = tmp_path / ".device" / "data" / "rt-polarity"
    split.mkdir(parents=True)
    (split / "validation.csv").write_text("text,label\na fine film,1\na dull one,0\nfine,1\n")
    done = subprocess.run(["bash", "-c", "set -u; sets=rt-polarity,sst5\n" + check.replace("python3", sys.executable)],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, "HF_DATASETS_OFFLINE": "1",
                               "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imports ok: datasets" in done.stdout and "read 3 rows" in done.stdout


def test_device_pack_cuts_the_model_into_calls_that_fit_and_put_together_give_its_bytes(tmp_path):
    """benchmarks/device_pack.py: every call carries at most what one device call takes beside the working tree, the
    parts in order are the model's bytes, whose SHA-256 run.sh checks there; missing data is one line."""
    import hashlib

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import device_pack

    model = tmp_path / "pkg" / "model"
    model.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    weights = os.urandom(9 * 2**20 + 12345)
    (model / "model.safetensors").write_bytes(weights)
    (model / "config.json").write_text("{}")
    data, wheels = tmp_path / "data", tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1.0-py3-none-any.whl").write_bytes(b"w" * 1000)
    for name in device_pack.DATA_SETS:
        (data / name).mkdir(parents=True)
        (data / name / "train.csv").write_text("text,label\n")
    out = tmp_path / "device"
    tree = device_pack.CALL_LIMIT - device_pack.MARGIN - 4 * 2**20  # 4 MiB of room a call
    calls = device_pack.pack(str(model), str(data), str(out), tree=tree, wheels=str(wheels))
    parts = [c["carry"][0] for c in calls]
    assert [os.path.basename(p) for p in parts] == [f"part-0{i}" for i in range(1, len(parts) + 1)]
    assert b"".join(open(os.path.join(ROOT, p), "rb").read() for p in parts) == weights
    for call in calls:
        assert sum(device_pack.du(os.path.join(ROOT, p)) for p in call["carry"]) <= 4 * 2**20
    assert calls[-1]["command"] == "bash .device/run.sh 420"
    for call, part in zip(calls[:-1], parts):  # each earlier call checks its part where it lands
        digest = hashlib.sha256(open(os.path.join(ROOT, part), "rb").read()).hexdigest()
        assert call["command"] == f"echo '{digest}  {part}' | sha256sum -c -"
    script = (out / "run.sh").read_text()
    assert hashlib.sha256(weights).hexdigest() in script and "--data_sets \"$sets\"" in script
    assert (out / "pkg" / "pkg" / "model" / "config.json").exists()
    assert not (out / "pkg" / "pkg" / "model" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="lacks sst5"):
        shutil.rmtree(data / "sst5")
        device_pack.pack(str(model), str(data), str(out), tree=tree, wheels=str(wheels))


def test_merge_runs_appends_the_runs_a_grid_lacks_and_refuses_other_settings(tmp_path, capsys):
    """benchmarks/merge_runs.py: the runs SOURCE holds and DEST lacks join DEST with their predictions (a line cut
    short by a writing worker skipped, a second merge adding nothing); a run of the same experiment under other
    settings (DEST's or another new run's), or a predictions file DEST holds with other bytes, is refused with one
    line and nothing is written."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from merge_runs import main

    from hfreg.finetune import records

    grid = os.path.join(ROOT, "docs", "results", "answer-sst2-sentences")
    runs = records.read_runs(grid)[:5]

    def make(d, rs, torn=False):
        os.makedirs(d / "predictions", exist_ok=True)
        lines = [json.dumps(r, sort_keys=True) for r in rs]
        (d / "runs.jsonl").write_text("\n".join(lines) + "\n" + ('{"preset": "cut sh' if torn else ""))
        for r in rs:
            shutil.copy(os.path.join(grid, r["predictions"]), d / r["predictions"])

    make(tmp_path / "src", runs, torn=True)
    make(tmp_path / "dst", runs[:3])
    assert main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert capsys.readouterr().out.strip().endswith("5 runs (2 new)")
    merged = records.read_runs(str(tmp_path / "dst"))
    assert [records.run_key(r) for r in merged] == [records.run_key(r) for r in runs] and merged == runs
    for r in runs:
        assert (tmp_path / "dst" / r["predictions"]).read_bytes() == open(os.path.join(grid, r["predictions"]),
                                                                            "rb").read()
    assert main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 0 and "(0 new)" in capsys.readouterr().out
    before = (tmp_path / "dst" / "runs.jsonl").read_bytes()
    # another torch version: a resume would be refused, and so is the merge
    other = json.loads(json.dumps(runs[0]))
    other["seed"] = 99
    other["experiment"]["settings"]["versions"]["torch"] = "0.0"
    make(tmp_path / "other", [other])
    assert main([str(tmp_path / "other"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "versions=" in err
    # a predictions file the destination holds with other bytes
    changed = dict(runs[1], seed=98)
    make(tmp_path / "clash", [changed])
    (tmp_path / "dst" / changed["predictions"]).write_bytes(b"other")
    assert main([str(tmp_path / "clash"), str(tmp_path / "dst")]) == 2
    assert "exists with other contents" in capsys.readouterr().err
    assert (tmp_path / "dst" / "runs.jsonl").read_bytes() == before
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "dst")]) == 2 and "holds no runs.jsonl" in \
        capsys.readouterr().err
    # a source mixing settings among its own runs, merged into a fresh destination: refused, and no folder is left
    make(tmp_path / "mixed", [runs[0], other])
    assert main([str(tmp_path / "mixed"), str(tmp_path / "fresh")]) == 2 and "versions=" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
