"""Instruction tuning of a causal LM (`--task causal-lm`): TRL's data formats, the loss on completion tokens only,
completion NLL and exact match per point, and the same presets, records, verdicts and report as classification —
on a tiny random Llama with a cut of the packaged MiniLM's tokenizer, and instruction pairs made from real reviews."""

import json

import numpy as np
import pytest
import torch
from harness import SCRIPT, launch, load_script, reviews

from hfreg.finetune import causal_lm, records, report, scores, tasks


def _argv(model, data, out, *extra):
    return ["--model_name_or_path", model, "--train_file", str(data / "train.jsonl"),
            "--validation_file", str(data / "validation.jsonl"), "--test_file", str(data / "test.jsonl"),
            "--presets", "pretrain-zero,classic", "--train_sizes", "16", "--seeds", "0,1", "--num_train_epochs", "2",
            "--min_steps", "30", "--learning_rate", "1e-2", "--max_seq_length", "24", "--max_eval_samples", "24",
            "--mixed_precision", "no",
            "--output_dir", str(out), "--no_plots", *extra]


def test_the_completion_alone_is_trained_and_a_long_prompt_loses_its_start(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    ids, labels = causal_lm.encode_example(tok, "Review: fine film\nSentiment:", " positive", 64)
    completion = tok(" positive", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]  # no EOS: SEP ends
    assert ids[-len(completion):] == completion and labels[-len(completion):] == completion
    assert labels[:-len(completion)] == [causal_lm.IGNORE] * (len(ids) - len(completion))
    ids, labels = causal_lm.encode_example(tok, "word " * 100 + "last", " positive", 16)
    assert len(ids) == 16 and labels[-len(completion):] == completion
    assert tok.decode(ids[:-len(completion)]).endswith("last")  # the prompt's end kept
    assert causal_lm.detect_format(["prompt", "completion", "id"]) == "prompt-completion"
    assert causal_lm.detect_format(["messages"]) == "messages" and causal_lm.detect_format(["label"]) is None


def test_completion_scores_are_the_models_own_loss_and_greedy_choice():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), causal_lm.IGNORE)
    labels[:, 3:] = torch.randint(0, 11, (3, 3))
    labels[2, 4:] = logits[2, 3:5].argmax(-1)  # example 2: its last two completion tokens are the greedy choice
    labels[2, 3] = logits[2, 2].argmax(-1)
    out = causal_lm.outputs(logits, labels).numpy()
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                                ignore_index=causal_lm.IGNORE, reduction="sum")
    assert out[:, 0].sum() == pytest.approx(float(shifted), rel=1e-5) and list(out[:, 1]) == [3, 3, 3]
    assert out[2, 2] == 1.0
    got = scores.lm_scores(out)
    assert got["loss"] == pytest.approx(out[:, 0].sum() / 9) and got["exact_match"] == pytest.approx(1 / 3)
    terms = scores.per_example(out, np.zeros(3), {}, tasks.CAUSAL_LM)
    assert terms["test_loss"].mean() == pytest.approx(got["loss"])
    assert terms["test_exact_match"].mean() == pytest.approx(got["exact_match"])


def test_an_instruction_grid_trains_the_completions_and_is_judged_on_them(tiny_llama, instructions, tmp_path):
    out = tmp_path / "out"
    assert load_script().main(_argv(tiny_llama, instructions, out, "--save_strategy", "best")) == 0
    runs = records.read_runs(str(out))
    assert {r["experiment"]["settings"]["problem_type"] for r in runs} == {"causal-lm"}
    assert runs[0]["experiment"]["settings"]["text_columns"] == ["prompt", "completion"]
    first, last = runs[0]["evals"][0], runs[0]["evals"][-1]
    assert {"selection_loss", "selection_exact_match", "selection_perplexity", "test_loss"} <= set(last)
    assert last["train_loss"] < first["train_loss"]  # it learns the completions
    assert max(r["evals"][-1]["train_exact_match"] for r in runs) > 0.5  # " positive"/" negative" + SEP, greedy
    arrays = records.load_predictions(str(out), runs[0])
    assert arrays["test_logits"].shape[1:] == (24, 3)  # per example: NLL sum, tokens, exact, never the logits
    assert set(arrays["test_logits"][0][:, 1]) == {2.0}  # " positive" is one token here, then SEP
    again = scores.lm_scores(arrays["test_logits"][-1])
    assert again["loss"] == pytest.approx(runs[0]["evals"][-1]["test_loss"], rel=1e-5)
    kept = next((out / "models").rglob("config.json")).parent
    from transformers import AutoModelForCausalLM

    import hfreg

    assert isinstance(hfreg.load_regularized(str(kept)), type(AutoModelForCausalLM.from_pretrained(kept)))

    summary = report.summarize(runs)
    classic = next(r for r in summary if r["preset"] == "classic")
    assert classic["select_by"] == "loss" and {"delta_early_test_loss", "delta_fixed_test_exact_match"} <= set(
        classic)
    text = (out / "findings.md").read_text()
    assert "test NLL per completion token" in text and "| NLL/token (early) |" in text and "accuracy" not in text
    assert "**Answer** (test NLL per completion token" in (out / "pooled.md").read_text()


def test_conversations_go_through_the_chat_template_and_its_absence_is_one_line(tiny_llama, shared_data, tmp_path):
    from transformers import AutoTokenizer

    data = tmp_path / "chat"
    data.mkdir()
    for split, n in (("train", 40), ("validation", 16)):
        with open(data / f"{split}.jsonl", "w") as f:
            for text, label in reviews(shared_data, split, n):
                f.write(json.dumps({"messages": [{"role": "user", "content": f"Sentiment of: {text}"},
                                                 {"role": "assistant", "content": "positive" if label else
                                                  "negative"}]}) + "\n")
    argv = ["--model_name_or_path", tiny_llama, "--train_file", str(data / "train.jsonl"), "--validation_file",
            str(data / "validation.jsonl"), "--presets", "pretrain-zero", "--train_sizes", "16", "--seeds", "0",
            "--num_train_epochs", "1", "--min_steps", "0", "--mixed_precision", "no", "--no_plots"]
    with pytest.raises(ValueError, match="the data are conversations .* the tokenizer has no chat template"):
        load_script().main([*argv, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    templated = tmp_path / "templated"
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    tok.save_pretrained(templated)
    assert load_script().main([*argv, "--tokenizer_name", str(templated), "--output_dir", str(tmp_path / "o")]) == 0
    (run,) = records.read_runs(str(tmp_path / "o"))
    assert run["experiment"]["settings"]["text_columns"] == ["messages"]


@pytest.mark.parametrize("extra, message", [
    (("--mc_samples", "4"), r"--mc_samples 4 act\(s\) on class probabilities, which hfreg measures for a sequence "
                            r"classifier only"),
    (("--task", "causal-lm", "--problem_type", "regression"), "--problem_type regression is a sequence classifier"),
])
def test_what_a_causal_lm_cannot_take_is_one_line(tiny_llama, instructions, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        load_script().main(_argv(tiny_llama, instructions, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_causal_lm_trains_under_data_parallel_processes(tiny_llama, instructions, tmp_path):
    """Two processes train each run together (`--parallel data`, gloo): the completion scores are gathered whole."""
    out = tmp_path / "out"
    done = launch(SCRIPT, *_argv(tiny_llama, instructions, out, "--presets", "classic", "--seeds", "0",
                                 "--parallel", "data", "--min_steps", "6"), num_processes=2, quiet=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = records.read_runs(str(out))
    arrays = records.load_predictions(str(out), run)
    assert arrays["selection_logits"].shape[1:] == (24, 3) and arrays["test_logits"].shape[1:] == (24, 3)
    assert run["evals"][-1]["train_loss"] < run["evals"][0]["train_loss"]


def test_a_packed_batch_gives_the_padded_batchs_loss(tiny_llama):
    """`--packing`: a batch's examples side by side in one row attend to themselves alone (position ids restart at
    each), so the model's loss on the packed row is the loss on the padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pairs = [("Review: a gripping film\nSentiment:", " positive"), ("Review: dull\nSentiment:", " negative"),
             ("Review: the cast is charming and the script is sharp\nSentiment:", " positive")]
    items = [dict(zip(("input_ids", "labels"), causal_lm.encode_example(tok, p, c, 64))) for p, c in pairs]
    packed = causal_lm.Packed(tok)(items)
    assert packed["input_ids"].shape == (1, sum(len(x["input_ids"]) for x in items)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [i for x in items for i in range(len(x["input_ids"]))]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    model.config.use_cache = False  # as the harness sets it when packing: a cache turns the packed masks off
    with torch.no_grad():
        padded = model(**causal_lm.Collator(tok)(items)).loss
        assert model(**packed).loss == pytest.approx(padded.item(), abs=1e-5)
        unmasked = model(input_ids=packed["input_ids"], labels=packed["labels"]).loss  # one long sequence instead
    assert abs(unmasked.item() - padded.item()) > 1e-4  # so the equality above is the isolation, not chance


def test_neftune_takes_each_packed_sequences_own_length(tiny_llama):
    """NEFTune's bound alpha / sqrt(L * d) uses each packed sequence's own L, as if it were alone in its row."""
    from transformers import AutoModelForCausalLM

    import hfreg

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    emb = model.get_input_embeddings()
    hfreg.patch_model(model, hfreg.RegularizationConfig(embedding_noise=5.0))
    seen = []
    emb.register_forward_hook(lambda m, a, out: seen.append(out.detach()))  # after hfreg's: the noisy output
    ids = torch.randint(1000, 2000, (1, 40))
    positions = torch.tensor([list(range(4)) + list(range(36))])  # a 4-token and a 36-token sequence
    model.train()
    model.config.use_cache = False
    model(input_ids=ids, position_ids=positions)
    noise = (seen[-1] - emb.weight[ids]).abs().amax(-1)[0]
    d = emb.weight.shape[1]
    short, long = 5.0 / (4 * d) ** 0.5, 5.0 / (36 * d) ** 0.5
    assert noise[:4].max() <= short + 1e-6 and noise[:4].max() > long  # beyond the long one's bound: its own
    assert noise[4:].max() <= long + 1e-6
    model(input_ids=ids)  # one sequence: the row's length, as transformers' NEFTune
    assert (seen[-1] - emb.weight[ids]).abs().max() <= 5.0 / (40 * d) ** 0.5 + 1e-6


def test_a_packed_instruction_grid_trains_and_is_judged_unpacked(tiny_llama, instructions, tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny_llama, instructions, out, "--packing", "--neftune_noise_alpha", "5")
    argv[argv.index("--presets") + 1], argv[argv.index("--seeds") + 1] = "classic", "0"
    assert load_script().main(argv) == 0
    (run,) = records.read_runs(str(out))
    assert run["experiment"]["settings"]["packing"] is True
    assert run["evals"][-1]["train_loss"] < run["evals"][0]["train_loss"]
    arrays = records.load_predictions(str(out), run)
    assert arrays["test_logits"].shape[1:] == (24, 3)  # evaluation stays one example per row


def test_packing_where_it_cannot_go_is_one_line(tiny_llama, instructions, tiny_classifier, csv_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--packing puts a batch in one row, which --parallel data cannot split"):
        load_script().main(_argv(tiny_llama, instructions, out, "--packing", "--parallel", "data"))
    with pytest.raises(ValueError, match="--packing joins a causal LM's training examples into one row; this grid is "
                                         "single_label_classification"):
        load_script().main(["--model_name_or_path", tiny_classifier, "--train_file", str(csv_data / "train.csv"),
                            "--validation_file", str(csv_data / "validation.csv"), "--packing", "--mixed_precision",
                            "no", "--output_dir",
                            str(out)])
    assert not out.exists()


def test_r_drop_and_label_smoothing_take_the_next_token_positions(tiny_llama):
    """A causal LM's R-Drop and label smoothing are over the positions that predict a completion token: with the
    two passes equal (eval mode) and no smoothing they are the model's own loss; smoothed, its smoothed
    cross-entropy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hfreg
    from hfreg.finetune.training import task_loss

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    items = [dict(zip(("input_ids", "labels"), causal_lm.encode_example(tok, p, c, 64)))
             for p, c in (("Review: a gripping film\nSentiment:", " positive"), ("Review: dull\nSentiment:", " no"))]
    batch = causal_lm.Collator(tok)(items)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        own = model(**batch).loss
        assert hfreg.rdrop_loss(model, batch, 1.0, shift=True)[0] == pytest.approx(own.item(), rel=1e-5)
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]  # right-padded: the pads come after
        logp = torch.log_softmax(logits, -1)[batch["labels"][:, 1:] != -100]
        smoothed = 0.9 * own - 0.1 * logp.mean(-1).mean()  # (1 - eps) CE + eps x the mean over tokens of -log p
        assert task_loss(model, batch, 0.0, 0.1, "causal-lm") == pytest.approx(smoothed.item(), rel=1e-5)


def test_an_r_drop_instruction_grid_runs_against_its_control_at_equal_compute(tiny_llama, instructions, tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny_llama, instructions, out, "--label_smoothing_factor", "0.1")
    argv[argv.index("--presets") + 1], argv[argv.index("--seeds") + 1] = "pretrain-zero,classic,rdrop", "0"
    argv[argv.index("--min_steps") + 1] = "8"
    assert load_script().main(argv) == 0
    runs = {r["preset"]: r for r in records.read_runs(str(out))}
    assert {"pretrain-zero", "rdrop", "classic", "classic@2x"} <= set(runs)  # its control, also at its compute
    assert runs["rdrop"]["forward_passes"] == 2 and runs["classic@2x"]["steps"] == 2 * runs["classic"]["steps"]
