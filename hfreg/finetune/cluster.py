"""The grid on a Ray cluster (`--backend ray`): one driver plans, Ray runs, the driver alone writes.

The driver puts the pretrained weights, the tokenized splits, the data roles and the collator into Ray's object
store once; each run is a Ray task asking for ``--run_cpus`` CPUs and ``--run_gpus`` GPUs (a fraction packs several
small runs onto one GPU), which trains with the same `training.train` as the local backend and returns the run's
record fields and predictions. The driver appends them to ``runs.jsonl`` (predictions first, under the directory's
lock, fsynced: `records.append_run`), so no worker ever writes to ``--output_dir``. A task whose worker process
dies is retried by Ray (``--run_retries`` times); a driver killed and started again resumes like any launch: the
finished runs are in ``runs.jsonl``, the others are submitted again.

Ray's token authentication (Ray ≥ 2.5x): a plain local ``ray.init()`` turns it on and writes ``~/.ray/auth_token``,
after which every ``ray start --head`` on the machine asks for that token, while a driver given an explicit address
connects without one unless ``RAY_AUTH_MODE=token``. `connect` therefore (a) gives the local cluster it starts a
token held in this process's environment only, so nothing is written under the home directory, (b) joins an
address with the token Ray would find (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) where
there is one — a cluster without token auth accepts it too — and (c) asks the head once, before Ray's minute of
retries, and says in one line when it wants a token that is missing or does not match. ``RAY_AUTH_MODE`` set by the
user is left as it is. Both variables are restored when the block ends.

This module imports ray only when called: `pip install "hfreg[ray]"`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys

_WORKER: dict = {}  # per Ray worker process: the Accelerator its runs share (accelerate keeps one state a process)


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ValueError('--backend ray needs the package ray: pip install "hfreg[ray]"') from None
    return ray


def _reachable(address: str) -> None:
    """A one-line error, before Ray's own retries, where nothing listens at ``host:port``."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError):
        raise ValueError(f"--ray_address {address!r}: no Ray cluster answers there (expected HOST:PORT of a running "
                         f"head node, e.g. from `ray start --head`)") from None


def _auth_api():
    """Ray's token-auth internals, or None on a Ray that has no token authentication."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return None
    return AuthenticationTokenLoader, Config, GcsClient, AuthenticationError


def _has_token(api) -> bool:
    loader = api[0].instance()
    loader.reset_cache()  # the file may have appeared since this process last looked
    return loader.has_token(ignore_auth_mode=True)


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


_AUTH_HELP = ("give the cluster's token (`ray get-auth-token` on its head prints it) as RAY_AUTH_TOKEN, in a file "
              "named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")


@contextlib.contextmanager
def _token_auth(address: str | None):
    """The environment Ray reads its authentication mode and token from, for one `connect` block."""
    api = _auth_api()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    if api is None or saved["RAY_AUTH_MODE"] is not None:  # no token auth in this Ray, or the user's choice
        yield
        return
    has_token = _has_token(api)
    try:
        if address is None and not has_token:
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # a local cluster's own, never written to disk
        if address is None or has_token:
            os.environ["RAY_AUTH_MODE"] = "token"
        api[1].initialize("")  # Ray caches its config: read the mode again (as Ray does when it enables tokens)
        if address and not address.startswith("ray://") and address != "auto":
            try:
                with _native_stderr_silenced():  # Ray's C++ client logs the refusal itself, on file descriptor 2
                    api[2](address=address)  # one request to the head: fails at once where the token is refused
            except api[3]:
                state = "hfreg's token does not match" if has_token else "hfreg found no token"
                raise ValueError(f"--ray_address {address!r}: the Ray cluster there uses token authentication and "
                                 f"{state}; {_AUTH_HELP}") from None
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        api[1].initialize("")
        api[0].instance().reset_cache()


@contextlib.contextmanager
def connect(address: str | None, run_cpus: float, run_gpus: float, log=print):
    """Join the cluster at ``address``, or start a local one for the length of the block; refuse a run size that no
    node can hold, before any training."""
    ray = _require_ray()
    if address:
        _reachable(address)
    started = not ray.is_initialized()
    with contextlib.ExitStack() as stack:
        if started:
            stack.enter_context(_token_auth(address))
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            stack.callback(ray.shutdown)
        yield _check_nodes(ray, run_cpus, run_gpus, log)


def _check_nodes(ray, run_cpus: float, run_gpus: float, log):
    """Refuse a run size that no node of the cluster can hold; say what the cluster has."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if run_cpus > cpus or run_gpus > gpus:
        raise ValueError(f"a run asks for {run_cpus:g} CPU(s) and {run_gpus:g} GPU(s) (--run_cpus, --run_gpus), "
                         f"but the largest node of the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s)")
    log(f"ray: {len(nodes)} node(s), {sum(n.get('CPU', 0) for n in nodes):g} CPU(s), "
        f"{sum(n.get('GPU', 0) for n in nodes):g} GPU(s); each run {run_cpus:g} CPU(s), {run_gpus:g} GPU(s)")
    return ray


def _train_task(payload: dict, preset, size: int, seed: int, settings, precision: str, threads: int):
    """One run on a Ray worker: the local backend's `train`, with a quiet log and this worker's Accelerator."""
    import torch
    from accelerate import Accelerator

    from .training import Job, train

    torch.set_num_threads(max(1, threads))
    if "accelerator" not in _WORKER:
        _WORKER["accelerator"] = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    return train(Job(_WORKER["accelerator"], payload["model"], payload["data"], payload["roles"], payload["collate"],
                     preset, size, seed, settings), log=lambda *a, **k: None)


class Runner:
    """Submits runs as Ray tasks and hands each finished one to ``finish(key, result, predictions)``, in the
    driver, in the order they finish."""

    def __init__(self, ray, payload: dict, run_cpus: float, run_gpus: float, retries: int, precision: str):
        self.ray, self.precision, self.threads = ray, precision, max(1, int(run_cpus))
        self.payload = ray.put(payload)  # once: every task reads the same copy
        self.task = ray.remote(num_cpus=run_cpus, num_gpus=run_gpus, max_retries=retries)(_train_task)

    def run(self, jobs: dict, settings_for, finish) -> None:
        """``jobs``: {key: (preset, size, seed, lr)}; ``settings_for(lr)`` gives each run's `Settings`."""
        pending = {}
        for key, (preset, size, seed, lr) in jobs.items():
            ref = self.task.remote(self.payload, preset, size, seed, settings_for(lr), self.precision, self.threads)
            pending[ref] = key
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            try:
                result, predictions = self.ray.get(done[0])
            except self.ray.exceptions.RayTaskError as e:  # the run's own error: the same as a local run's
                for ref in pending:
                    self.ray.cancel(ref, force=True)
                raise e.as_instanceof_cause() from None
            finish(key, result, predictions)  # the driver's progress line says how far the grid is
