"""`--backend ray` on a real local Ray cluster (a head started with 2 CPUs for this module): the same records as the
local backend, one writer, lost workers retried, a killed driver resumed, one-line errors before training, and Ray's
token authentication handled both ways.

Ray keeps per-user state under the home directory (``~/.ray/auth_token``) that decides whether a head asks for a
token; every test here runs in a home directory of its own, so the suite passes whatever the machine did before. The
module's head is made as a user's machine makes it: a plain local ``ray.init()`` first (Ray writes the token), then
``ray start --head`` (which therefore asks for it)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from harness import args_for, free_port, load_script

from hfreg.finetune import records, sweep

ray = pytest.importorskip("ray")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """A home directory of the module's own, and none of Ray's auth variables from the caller's environment."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        for k in AUTH_VARS:
            mp.delenv(k, raising=False)
        yield home


@contextlib.contextmanager
def ray_head(temp, num_cpus=2):
    """``ray start --head --block`` in the current environment; its address, then SIGTERM stops it and its workers
    (and only them: no `ray stop`, which would end every Ray cluster of the machine)."""
    port = free_port()
    temp.mkdir(parents=True, exist_ok=True)
    log = open(temp / "head.log", "w+")
    proc = subprocess.Popen([RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "will now block" not in (temp / "head.log").read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the Ray head did not start:\n" + (temp / "head.log").read_text()[-2000:])
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()


def _plain_ray_init() -> None:
    """What any local Ray program does first (a bare `ray.init()`), in its own process."""
    subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"],
                   check=True, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def head(ray_home, tmp_path_factory):
    """A 2-CPU head that asks for a token: a plain local `ray.init()` wrote ``~/.ray/auth_token``, then
    ``ray start --head`` took it up (the sequence that made hfreg's driver fail)."""
    _plain_ray_init()
    assert (ray_home / ".ray" / "auth_token").is_file()
    with ray_head(tmp_path_factory.mktemp("ray")) as address:
        yield address


def ray_args(model, data, out, address, *extra):
    return args_for(model, data, out, "--backend", "ray", "--ray_address", address, "--mixed_precision", "no",
                    *extra)


def _strip(run: dict) -> dict:
    """What a run computed: everything but wall times and when it finished."""
    return {k: v for k, v in run.items() if k not in ("seconds", "eval_seconds", "provenance")}


def test_records_equal_the_local_backends(tiny_classifier, csv_data, tmp_path, head):
    # a Ray run with --run_cpus 1 trains on one thread: fp32 sums alike
    load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "local", "--mixed_precision", "no",
                                "--threads", "1"))
    load_script().main(ray_args(tiny_classifier, csv_data, tmp_path / "ray", head, "--run_cpus", "1"))
    local, remote = records.read_runs(tmp_path / "local"), records.read_runs(tmp_path / "ray")
    key = records.run_key
    assert len(local) == len(remote) == 8 and {key(r) for r in local} == {key(r) for r in remote}
    by_key = {key(r): r for r in remote}
    for r in local:
        assert _strip(r) == _strip(by_key[key(r)])
        a = records.load_predictions(tmp_path / "local", r)
        b = records.load_predictions(tmp_path / "ray", by_key[key(r)])
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "ray" / ".claims").exists() or not os.listdir(tmp_path / "ray" / ".claims")


def test_a_tracked_ray_grid_logs_each_runs_points_as_it_comes_back(tiny_classifier, csv_data, tmp_path, head):
    """With a tracker, the driver logs a worker's run once it returns: every evaluation point under the run's name,
    as a local run logs them live."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert load_script().main(ray_args(tiny_classifier, csv_data, out, head, "--presets", "classic",
                                       "--train_sizes", "16", "--seeds", "0", "--report_to", "tensorboard",
                                       "--run_name", "trial")) == 0
    (run,) = records.read_runs(out)
    acc = EventAccumulator(str(out / "logs" / "trial" / "classic" / "n16" / "s0" / f"lr{run['learning_rate']:g}"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("selection_loss")] == [p["step"] for p in run["evals"]]
    assert [e.value for e in acc.Scalars("selection_loss")] == pytest.approx(
        [p["selection_loss"] for p in run["evals"]], rel=1e-6)
    hidden = [p["rates"]["hidden"] for p in run["evals"]]
    assert hidden[0] > 0 and [e.value for e in acc.Scalars("rate/hidden")] == pytest.approx(hidden)


def _workers():
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray::_train_task" in cmd:
            found.append(p)
    return found


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(tiny_classifier, csv_data, tmp_path, head):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "hfreg.finetune", *ray_args(tiny_classifier, csv_data, out, head,
                                                              "--num_train_epochs", "6")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline and proc.poll() is None:
        busy = _workers()
        if busy:
            victim = busy[0]
            time.sleep(1.0)  # mid-run
            victim.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=600)
    assert victim is not None, "no Ray worker was seen running a task"
    assert proc.returncode == 0, stderr[-2000:]
    keys = [records.run_key(json.loads(x)) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 8


def test_a_killed_driver_resumes_where_it_stopped(tiny_classifier, csv_data, tmp_path, head, capsys):
    out = tmp_path / "out"
    args = ray_args(tiny_classifier, csv_data, out, head, "--num_train_epochs", "6")
    proc = subprocess.Popen([sys.executable, "-m", "hfreg.finetune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs.jsonl").exists() and (out / "runs.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    survived = records.read_runs(out)
    assert 1 <= len(survived) < 8
    capsys.readouterr()
    assert load_script().main(args) == 0  # a new driver, here
    assert f"8 runs, {len(survived)} already done" in capsys.readouterr().out
    keys = [records.run_key(json.loads(x)) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 8
    for r in records.read_runs(out):  # every record has its predictions, whole
        assert records.load_predictions(out, r)["test_logits"].shape[0] == sum("test_loss" in p for p in r["evals"])


@pytest.mark.parametrize("extra,message", [
    (("--ray_address", "127.0.0.1:1"), "--ray_address '127.0.0.1:1': no Ray cluster answers there"),
    (("--run_cpus", "64"), "a run asks for 64 CPU(s) and 0 GPU(s) (--run_cpus, --run_gpus), but the largest node of "
                           "the Ray cluster has 2 CPU(s) and 0 GPU(s)"),
    (("--run_gpus", "0.5"), "a run asks for 1 CPU(s) and 0.5 GPU(s)"),
])
def test_cluster_errors_are_one_line_before_any_training(tiny_classifier, csv_data, tmp_path, head, extra, message,
                                                         capfd):
    out = tmp_path / "out"
    # the console script's entry, in this process: capfd also takes what Ray's C++ client writes to descriptor 2
    assert sweep.cli([*ray_args(tiny_classifier, csv_data, out, head), *extra]) == 2
    stdout, stderr = capfd.readouterr()
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr, stderr
    assert "run preset=" not in stdout and not (out / "runs.jsonl").exists()


@pytest.mark.parametrize("token,message", [
    (None, "uses token authentication and hfreg found no token; give the cluster's token"),
    ("not-the-cluster-token", "uses token authentication and hfreg's token does not match; give the cluster's token"),
])
def test_a_cluster_asking_for_a_token_hfreg_lacks_is_one_line(tiny_classifier, csv_data, tmp_path, head, token,
                                                               message, monkeypatch, capfd):
    out, other_home = tmp_path / "out", tmp_path / "home"
    other_home.mkdir()  # no ~/.ray/auth_token there
    monkeypatch.setenv("HOME", str(other_home))
    if token:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    assert sweep.cli(ray_args(tiny_classifier, csv_data, out, head)) == 2
    stdout, stderr = capfd.readouterr()
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"--ray_address '{head}': the Ray cluster there {message}" in stderr
    assert "run preset=" not in stdout and not (out / "runs.jsonl").exists()


def test_a_local_ray_grid_leaves_no_token_and_a_later_head_takes_it(tiny_classifier, csv_data, tmp_path, ray_home,
                                                                     monkeypatch, tmp_path_factory):
    """hfreg's own local cluster writes nothing under the home directory, so a head started afterwards asks for no
    token; hfreg's driver, which now finds the module's token file in another home, joins it with that token."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    small = ("--presets", "pretrain-zero", "--train_sizes", "16", "--seeds", "0", "--mixed_precision", "no")
    assert load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "local", "--backend", "ray",
                                       "--run_cpus", "1", *small)) == 0
    assert not (home / ".ray").exists() and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ
    with ray_head(tmp_path_factory.mktemp("ray")) as address:  # a short path: Ray's sockets live under it
        monkeypatch.setenv("HOME", str(ray_home))  # a token is found: the driver sends it, this head ignores it
        assert load_script().main(args_for(tiny_classifier, csv_data, tmp_path / "joined", "--backend", "ray",
                                           "--ray_address", address, *small)) == 0
    assert len(records.read_runs(tmp_path / "local")) == len(records.read_runs(tmp_path / "joined")) == 1


@pytest.mark.parametrize("task", ["causal-lm", "image-classification", "token-classification"])
def test_every_task_trains_on_the_cluster_as_it_does_locally(task, head, tmp_path, request):
    """The payload of each task (a causal LM's completion labels, images decoded lazily from their data set, word
    labels) travels to Ray's workers, and a run there gives the record and predictions a local run gives."""
    if task == "causal-lm":
        model, data = request.getfixturevalue("tiny_llama"), request.getfixturevalue("instructions")
        files = [f"--{s}_file={data / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
        extra = ["--max_seq_length", "24", "--max_eval_samples", "16", "--learning_rate", "1e-2"]
    elif task == "image-classification":
        model, data = request.getfixturevalue("tiny_vit"), request.getfixturevalue("digits")
        files = [f"--{s}_dir={data / s}" for s in ("train", "validation", "test")]
        extra = ["--learning_rate", "3e-3"]
    else:
        model, data = request.getfixturevalue("tiny_classifier"), request.getfixturevalue("tagged")
        files = [f"--{s}_file={data / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
        extra = ["--learning_rate", "3e-3"]
    common = ["--model_name_or_path", model, *files, "--presets", "classic", "--train_sizes", "16", "--seeds", "0",
              "--num_train_epochs", "2", "--min_steps", "6", "--mixed_precision", "no", "--no_plots", *extra]
    assert load_script().main([*common, "--threads", "1", "--output_dir", str(tmp_path / "local")]) == 0
    assert load_script().main([*common, "--backend", "ray", "--ray_address", head, "--run_cpus", "1",
                               "--output_dir", str(tmp_path / "ray")]) == 0
    (local,), (remote,) = records.read_runs(tmp_path / "local"), records.read_runs(tmp_path / "ray")
    assert _strip(local) == _strip(remote)
    a, b = records.load_predictions(tmp_path / "local", local), records.load_predictions(tmp_path / "ray", remote)
    assert all(np.array_equal(a[k], b[k]) for k in a)
