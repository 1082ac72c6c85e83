"""The grid on a Ray cluster (`--backend ray`): one driver plans, Ray runs, the driver alone writes.

The driver puts the pretrained weights, the tokenized splits, the data roles and the collator into Ray's object
store once; each run is a Ray task asking for ``--run_cpus`` CPUs and ``--run_gpus`` GPUs (a fraction packs several
small runs onto one GPU), which trains with the same `training.train` as the local backend and returns the run's
record fields and predictions. The driver appends them to ``runs.jsonl`` (predictions first, under the directory's
lock, fsynced: `records.append_run`), so no worker ever writes to ``--output_dir``. A task whose worker process
dies is retried by Ray (``--run_retries`` times); a driver killed and started again resumes like any launch: the
finished runs are in ``runs.jsonl``, the others are submitted again.

This module imports ray only when called: `pip install "hfreg[ray]"`.
"""

from __future__ import annotations

import contextlib
import socket

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


@contextlib.contextmanager
def connect(address: str | None, run_cpus: float, run_gpus: float, log=print):
    """Join the cluster at ``address``, or start a local one for the length of the block; refuse a run size that no
    node can hold, before any training."""
    ray = _require_ray()
    if address:
        _reachable(address)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        if run_cpus > cpus or run_gpus > gpus:
            raise ValueError(f"a run asks for {run_cpus:g} CPU(s) and {run_gpus:g} GPU(s) (--run_cpus, --run_gpus), "
                             f"but the largest node of the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s)")
        log(f"ray: {len(nodes)} node(s), {sum(n.get('CPU', 0) for n in nodes):g} CPU(s), "
            f"{sum(n.get('GPU', 0) for n in nodes):g} GPU(s); each run {run_cpus:g} CPU(s), {run_gpus:g} GPU(s)")
        yield ray
    finally:
        if started:
            ray.shutdown()


def _train_task(payload: dict, preset, size: int, seed: int, settings, precision: str, threads: int):
    """One run on a Ray worker: the local backend's `train`, with a quiet log and this worker's Accelerator."""
    import torch
    from accelerate import Accelerator

    from .training import train

    torch.set_num_threads(max(1, threads))
    if "accelerator" not in _WORKER:
        _WORKER["accelerator"] = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    return train(_WORKER["accelerator"], payload["model"], preset, payload["data"], payload["roles"], size, seed,
                 settings, payload["collate"], log=lambda *a, **k: None)


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
