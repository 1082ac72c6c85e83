"""Helpers shared by the harness tests: launching the fine-tuning program and building its arguments."""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "finetune.py")


def load_script():
    from hfreg.finetune import sweep

    return sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(script, *args, num_processes=2, quiet=False):
    """`accelerate launch` of ``script``; several processes are a `--multi_gpu` launch (gloo on a CPU machine), on a
    free port of their own: the suite's workers may launch two at once."""
    return [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", *(["-q"] if quiet else []),
            *(["--multi_gpu", "--main_process_port", str(free_port())] if num_processes > 1 else []),
            "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script, *args]


def launch(script, *args, num_processes=2, quiet=False):
    return subprocess.run(launch_cmd(script, *args, num_processes=num_processes, quiet=quiet),
                          capture_output=True, text=True, timeout=600)


def args_for(model, data, out, *extra):
    return ["--model_name_or_path", model, "--train_file", str(data / "train.csv"),
            "--validation_file", str(data / "validation.csv"), "--presets", "pretrain-zero,classic",
            "--train_sizes", "16,32", "--seeds", "0,1", "--num_train_epochs", "2", "--min_steps", "0",
            "--output_dir", str(out),
            "--no_plots", *extra]


def reviews(shared_data, split, n):
    """The first ``n`` (text, label) rows of ../shared/data/rt-polarity's ``split``."""
    import csv

    with open(os.path.join(shared_data, "rt-polarity", f"{split}.csv")) as f:
        return [(row["text"], int(row["label"])) for row, _ in zip(csv.DictReader(f), range(n))]


def tiny_decoder(path, model_type: str, tokenizer_path, words: int = 2000) -> str:
    """A 2-layer, width-32 causal LM of ``model_type`` (llama, qwen2, ...) saved at ``path`` like a hub checkpoint,
    seeded, so every test run draws the same. Its tokenizer is the one at ``tokenizer_path`` (the packaged MiniLM's
    WordPiece) cut to its special tokens, its single characters, their ``##`` forms, its two-character pieces and
    its first ``words`` whole words (the frequent ones): every word still tokenizes, and the embedding and LM head,
    which dominate a model this narrow, are 7x smaller than over the full 30,522 tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    full = AutoTokenizer.from_pretrained(tokenizer_path)
    first_word = full.convert_tokens_to_ids("the")
    keep = [t for t, i in sorted(full.get_vocab().items(), key=lambda x: x[1])
            if t in full.all_special_tokens or not t.startswith("[") and i < first_word + words
            or t.startswith("##") and len(t) <= 4 or t in ("review", "sentiment", "positive", "negative")]
    tok = type(full)(vocab={t: i for i, t in enumerate(keep)}, model_max_length=full.model_max_length)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
