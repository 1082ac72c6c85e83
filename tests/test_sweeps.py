"""Sweeps over several processes: run-parallel grids, data-parallel runs, experiment identity, safe resume."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import ROOT, SCRIPT, args_for, launch, launch_cmd, load_script

from hfreg.finetune import records

GRID = 8  # args_for: 2 presets x 2 sizes x 2 seeds


def comparable(runs):
    """Records keyed by run, without what may differ between two executions of the same run."""
    skip = ("seconds", "eval_seconds", "provenance")
    return {records.run_key(r): {k: v for k, v in r.items() if k not in skip} for r in runs}


@pytest.mark.slow
def test_two_processes_share_the_grid_and_match_one_process(tiny_classifier, csv_data, tmp_path, capsys):
    """Run-parallel: a 2-process launch, without --cpu on a machine without a GPU, becomes one gloo group that
    splits the grid (no run twice, batch unchanged) and gives the records of one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert load_script().main(args_for(tiny_classifier, csv_data, one, "--threads", "1")) == 0
    assert "1 process(es) on cpu (1 thread(s) each)" in capsys.readouterr().out
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, two, "--threads", "1"), num_processes=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    lines = (two / "runs.jsonl").read_text().splitlines()
    assert len(lines) == GRID  # nothing appended twice
    # both ranks trained: every run once, spread over the two
    assert set(re.findall(r"\[rank (\d)\] run preset=", proc.stdout)) == {"0", "1"}
    assert proc.stdout.count("] run preset=") == GRID
    a, b = comparable(records.read_runs(one)), comparable(records.read_runs(two))
    assert a == b and len(a) == GRID
    assert next(iter(b.values()))["experiment"]["settings"]["train_batch_size"] == 16


@pytest.mark.slow
def test_data_parallel_batch_must_split_evenly(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "odd"
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, out, "--parallel", "data", "--train_batch_size", "15"),
                  quiet=True)
    assert proc.returncode != 0
    # the script's one line; torchrun then adds a failure report of its own, which -q does not silence
    assert "error: --parallel data splits each batch across 2 processes: --train_batch_size 15" in proc.stderr
    assert not (out / "runs.jsonl").exists()


@pytest.mark.slow
def test_data_parallel_ranks_draw_distinct_masks(tmp_path):
    """Each rank of a data-parallel run draws its drop-path masks from its own generator state."""
    out = tmp_path / "draws.json"
    proc = launch(os.path.join(ROOT, "tests", "ddp_masks.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = json.loads(out.read_text())
    assert len(pairs) >= 4  # 2 layers x 2 branches, per training step
    assert all(rank0 != rank1 for rank0, rank1 in pairs)


def _wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.1)


@pytest.mark.slow
def test_a_data_parallel_staged_grid_has_its_ranks_agree_on_each_stage(tiny_classifier, csv_data, tmp_path):
    """`--parallel data --seeds auto`: whether a stage is complete, and what the next one trains, is read by the
    main process and given to every rank, so a rank that saw one record fewer goes on with the others."""
    out = tmp_path / "out"
    proc = subprocess.run(launch_cmd(os.path.join(ROOT, "tests", "ddp_auto.py"),
                                     *args_for(tiny_classifier, csv_data, out, "--parallel", "data", "--presets",
                                               "pretrain-zero,classic", "--train_sizes", "16", "--seeds", "auto",
                                               "--max_seeds", "4", "--seed_stage", "2")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seeds = sorted({r["seed"] for r in records.read_runs(out)})
    assert seeds in ([0, 1], [0, 1, 2, 3]), proc.stdout[-2000:]  # the first stage, and the second where it is open


@pytest.mark.slow
def test_a_data_parallel_record_refused_on_writing_stops_every_rank_with_one_line(tiny_classifier, csv_data,
                                                                                   tmp_path):
    """`--parallel data`: only the main process writes records, so when a launch of other settings wrote into the
    directory meanwhile, the main process's refusal reaches every rank at the next claim: each stops with the
    one-line error, none waits in a broadcast until the launcher tears it down with a traceback."""
    out = tmp_path / "out"
    proc = subprocess.run(launch_cmd(os.path.join(ROOT, "tests", "ddp_refused.py"),
                                     *args_for(tiny_classifier, csv_data, out, "--parallel", "data", "--presets",
                                               "pretrain-zero", "--train_sizes", "16", "--seeds", "0"), quiet=True),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # both ranks say it (the second learns it from the main process), neither dies in a collective with a traceback
    # through hfreg; the launcher's own summary of its failed children is torch's
    assert proc.stderr.count("made under other settings: max_length") == 2, proc.stderr[-2000:]
    assert f"{os.sep}hfreg{os.sep}" not in "".join(re.findall(r'File "([^"]+)"', proc.stderr)), proc.stderr[-2000:]
    assert [r["seed"] for r in records.read_runs(out)] == [100]  # the neighbour's run alone: nothing half-written


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_gives_each_run_once(tiny_classifier, csv_data, tmp_path, capsys):
    out = tmp_path / "killed"
    argv = args_for(tiny_classifier, csv_data, out, "--num_train_epochs", "8")
    proc = subprocess.Popen(launch_cmd(SCRIPT, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    claims = out / records.CLAIMS_DIR

    def run_in_progress():
        if len(records.read_runs(out)) < 1 or not claims.is_dir():
            return False
        return any(claims.iterdir())

    _wait_for(run_in_progress)
    victim = json.loads(next(claims.glob("*.json")).read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    proc.wait(timeout=120)
    survived = records.read_runs(out)
    assert 1 <= len(survived) < GRID
    capsys.readouterr()
    assert load_script().main(argv) == 0  # resumed by one process, here: the dead rank's claim is released
    assert f"{GRID} runs, {len(survived)} already done" in capsys.readouterr().out
    lines = (out / "runs.jsonl").read_text().splitlines()
    keys = [records.run_key(json.loads(x)) for x in lines]
    assert len(keys) == len(set(keys)) == GRID
    assert records.read_runs(out)[: len(survived)] == survived
    for r in records.read_runs(out):  # every record has its predictions, whole
        assert records.load_predictions(out, r)["test_logits"].shape[0] == sum("test_loss" in p for p in r["evals"])


@pytest.mark.slow
def test_two_independent_launches_share_one_directory(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "shared"
    argv = [sys.executable, "-m", "hfreg.finetune", *args_for(tiny_classifier, csv_data, out,
                                                              "--num_train_epochs", "6", "--threads", "1")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    # on a failure, what each launch said (stdout's grid lines, stderr's end)
    said = "\n".join(f"launch {i}: rc {p.returncode}\n{o[-1500:]}\n{e[-1500:]}"
                     for i, (p, (o, e)) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), said
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == GRID, said
    assert sum(o.count("run preset=") for o, _ in outputs) == GRID, said  # no run trained twice either


def test_a_claim_is_live_while_its_owner_holds_it_whatever_its_pid_says(tmp_path):
    """A claim is held by its owner's lock on the claim file, not by the pid and host it names: another process
    cannot take a run a live process holds; the run is free once that process dies (kill -9), releases it, or when
    the file names a pid that is alive but holds nothing (a restarted machine reuses pids) or another host."""
    out = str(tmp_path)
    keys = [("default", "classic", "d", 16, seed, 0.1) for seed in range(3)]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hfreg.finetune.records import WorkQueue; "
                               f"q = WorkQueue({out!r}); print(q.claim([{keys[0]!r}]), flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == repr(keys[0])
        mine = records.WorkQueue(out)
        assert mine.claim(keys[:1]) is None  # held by a live process
        # a claim file naming this very process, and one naming another host, that nobody locks: free
        for key, owner in ((keys[1], {"host": mine.owner["host"], "pid": os.getpid()}),
                           (keys[2], {"host": "elsewhere", "pid": 1})):
            with open(mine._claim_path(key), "w") as f:
                json.dump(owner, f)
        assert mine.claim(keys) == keys[1] and mine.claim(keys) == keys[2] and mine.claim(keys) is None
        mine.release(keys[1])
        assert records.WorkQueue(out).claim(keys) == keys[1]  # released: another queue takes it
    finally:
        holder.kill()
        holder.wait()
    assert records.WorkQueue(out).claim(keys[:1]) == keys[0]  # its owner died


def _write_many(path, mark, n):
    from hfreg.finetune.report.writing import _atomic_write

    for _ in range(n):
        _atomic_write(path, mark * 20_000)


def test_two_writers_of_one_report_file_each_leave_it_whole(tmp_path):
    """Launches sharing a directory may write its report at once: every write replaces the file whole, through a
    temporary file of its own (a shared temporary name made torn files and lost renames)."""
    import multiprocessing

    path = str(tmp_path / "summary.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, mark, 3000)) for mark in "ab"]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        with contextlib.suppress(FileNotFoundError):
            text = open(path).read()
            seen.add((len(text), len(set(text))))
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert seen and all(size == 20_000 and kinds == 1 for size, kinds in seen)  # never empty, short or mixed
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left


def test_a_launch_of_other_settings_that_started_alongside_is_refused_at_its_first_record(tiny_classifier, csv_data,
                                                                                          tmp_path, monkeypatch):
    """Two launches of other settings both find the directory empty and claim: the one that records second is
    refused under the lock before it writes, so no experiment holds runs of two settings."""
    small = ("--presets", "pretrain-zero", "--train_sizes", "16", "--seeds", "0")
    other, out = tmp_path / "other", tmp_path / "out"
    assert load_script().main(args_for(tiny_classifier, csv_data, other, *small[:4], "--seeds", "1",
                                       "--num_train_epochs", "3")) == 0
    neighbour = (other / "runs.jsonl").read_text()
    real = records.WorkQueue.claim

    def claim_then_the_neighbour_records(self, candidates, check=None):
        key = real(self, candidates, check)
        if key is not None and not (out / "runs.jsonl").exists():
            (out / "runs.jsonl").write_text(neighbour)  # the other launch's first run lands meanwhile
        return key

    monkeypatch.setattr(records.WorkQueue, "claim", claim_then_the_neighbour_records)
    with pytest.raises(ValueError, match="made under other settings: .*num_train_epochs"):
        load_script().main(args_for(tiny_classifier, csv_data, out, *small))
    assert (out / "runs.jsonl").read_text() == neighbour
    assert not os.listdir(out / records.CLAIMS_DIR)  # its claim released


def test_changed_settings_are_refused_unless_named_apart(tiny_classifier, csv_data, tmp_path, capsys):
    finetune = load_script()
    out = tmp_path / "out"
    small = ("--presets", "pretrain-zero", "--train_sizes", "16", "--seeds", "0")
    assert finetune.main(args_for(tiny_classifier, csv_data, out, *small)) == 0
    before = (out / "runs.jsonl").read_text()
    with pytest.raises(ValueError, match=r"learning_rates=\[0.0002\] in the recorded runs, \[0.0001\] now"):
        finetune.main(args_for(tiny_classifier, csv_data, out, *small, "--learning_rate", "1e-4"))
    edited = tmp_path / "pretrain-zero.toml"
    edited.write_text("hidden = 0.2\n")
    with pytest.raises(ValueError, match="preset 'pretrain-zero' has changed: .*hidden=0.0 recorded, 0.2 now"):
        finetune.main(args_for(tiny_classifier, csv_data, out, *small[2:], "--presets", str(edited)))
    assert (out / "runs.jsonl").read_text() == before
    capsys.readouterr()
    assert finetune.main(args_for(tiny_classifier, csv_data, out, *small, "--learning_rate", "1e-4",
                                  "--experiment", "lr1e-4")) == 0
    assert "# Experiment lr1e-4" in capsys.readouterr().out
    runs = records.read_runs(out)
    assert [(r["experiment"]["name"], r["learning_rate"]) for r in runs] == [
        ("default", 2e-4), ("lr1e-4", 1e-4)]


def test_a_duplicated_record_is_counted_once(tiny_classifier, csv_data, tmp_path):
    from hfreg.finetune import report

    out = tmp_path / "out"
    load_script().main(args_for(tiny_classifier, csv_data, out, "--train_sizes", "16", "--seeds", "0"))
    path = out / "runs.jsonl"
    first = path.read_text().splitlines()[0]
    with open(path, "a") as f:
        f.write(first + "\n")
    runs, duplicates = records.read_runs(out, with_duplicates=True)
    assert len(runs) == 2 and duplicates == 1
    assert all(r["seeds"] == [0] for r in report.summarize(runs))
    assert "1 duplicate record(s) in runs.jsonl were counted once" in report.report(str(out), make_plots=False)
    assert not records.append_run(str(out), json.loads(first))  # a finished run is never appended again


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_output_dir_is_one_line(tiny_classifier, csv_data, tmp_path, kind):
    if kind == "file":
        out = tmp_path / "taken"
        out.write_text("not a directory")
        message = "exists and is not a directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
        message = "is not writable"
    proc = subprocess.run([sys.executable, SCRIPT, *args_for(tiny_classifier, csv_data, out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_report_does_not_import_torch(tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    load_script().main(args_for(tiny_classifier, csv_data, out, "--train_sizes", "16", "--seeds", "0"))
    code = ("import sys; from hfreg.cli import main; rc = main(['report', sys.argv[1], '--no_plots']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 16 | `classic` | 1 |" in proc.stdout


def test_progress_line_estimates_from_measured_runs():
    from hfreg.finetune.grid import progress_line

    done = [{"experiment": {"name": "default"}, "preset": "p", "preset_config": None, "train_size": 100, "seed": 0,
             "learning_rate": 1e-4, "seconds": 60.0}]
    grid = [records.RunKey("default", "p", records.digest(None), n, s, 1e-4) for n in (100, 50) for s in (0, 1)]
    assert grid[0] == ("default", "p", records.digest(None), 100, 0, 1e-4)  # a tuple: older digests hold
    # left: one run of 100 (60 s) and two of 50 (scaled: 30 s each) = 120 s over 2 processes
    assert progress_line(done, grid, 2) == "grid: 1/4 runs done, 3 left, ETA 1m00s (2 process(es))"


def test_run_mode_across_machines_is_refused_in_one_line(tiny_classifier, csv_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"run mode across several machines \(4 processes, 2 on this one\) .* "
                                         r"use --backend ray"):
        load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_single_process_uses_every_core_however_launched(tiny_classifier, csv_data, tmp_path, capsys):
    """`accelerate launch` hands each process one thread by default; a single CPU process takes every core it may
    use instead, and says so; `--threads` is the explicit choice."""
    allowed = len(os.sched_getaffinity(0))
    out = tmp_path / "out"
    small = ("--presets", "pretrain-zero", "--train_sizes", "16", "--seeds", "0")
    proc = launch(SCRIPT, *args_for(tiny_classifier, csv_data, out, *small), num_processes=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"1 process(es) on cpu ({allowed} thread(s) each)" in proc.stdout
    capsys.readouterr()
    assert load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "one", *small, "--threads", "1")) == 0
    assert "1 process(es) on cpu (1 thread(s) each)" in capsys.readouterr().out
