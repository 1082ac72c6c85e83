"""Rewrite a results directory's prediction files in the compact layout (`hfreg.finetune.records.compact`: a
classifier's logits as float16 differences from the first class, LZMA), in place, each file only after checking that
its rewrite gives the run's recorded accuracy at every point (selection and test) and its NLL within 1e-3.

    .venv/bin/python benchmarks/compact_predictions.py docs/results/sst2 docs/results/rt-polarity

Files already compact are left alone. Prints the bytes before and after.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hfreg.finetune import records  # noqa: E402


def check(run: dict, arrays: dict) -> None:
    """ValueError unless ``arrays`` give the run's recorded accuracy at every point and its NLL within 1e-3."""
    for j, point in enumerate(run["evals"]):
        for split in ("selection", "test"):
            if f"{split}_accuracy" not in point:
                continue
            labels, logits = arrays[f"{split}_labels"], arrays[f"{split}_logits"][j]
            accuracy = float((logits.argmax(-1) == labels).mean())
            logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
            nll = float(-logp[np.arange(len(labels)), labels].mean())
            if accuracy != point[f"{split}_accuracy"] or abs(nll - point[f"{split}_loss"]) >= 1e-3:
                raise ValueError(f"{run['predictions']}: step {point['step']} {split}: accuracy {accuracy} "
                                 f"(recorded {point[f'{split}_accuracy']}), NLL {nll:.5f} (recorded "
                                 f"{point[f'{split}_loss']:.5f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="results directories (each with runs.jsonl and predictions/)")
    args = p.parse_args(argv)
    before = after = 0
    for d in args.dirs:
        for run in records.read_runs(d):
            path = os.path.join(d, run["predictions"])
            with np.load(path) as f:
                if not any(k.endswith("_logits") for k in f.files):
                    continue  # compact already
            arrays = records.load_predictions(d, run)
            size = os.path.getsize(path)
            tmp = os.path.join(d, "predictions", ".rewrite")
            rel = records._save_predictions(tmp, ("rewrite",), arrays)
            rewritten = records.load_predictions(tmp, {"predictions": rel})
            check(run, rewritten)
            os.replace(os.path.join(tmp, rel), path)  # the same file name: the run's record is unchanged
            os.rmdir(os.path.dirname(os.path.join(tmp, rel)))
            os.rmdir(tmp)
            before, after = before + size, after + os.path.getsize(path)
    print(f"rewritten: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
