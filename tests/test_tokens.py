"""Token classification (`--task token-classification`): word labels on each word's first sub-token, seqeval's
entity F1 as the primary endpoint, the same presets, records and verdicts — on a tiny BERT and tagged sentences."""


import numpy as np
import pytest
import torch
from harness import SCRIPT, launch, load_script

from hfreg.finetune import records, report, scores, stats, tasks, tokens


def test_entities_are_read_as_seqeval_reads_iob2():
    assert tokens.entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert tokens.entities(["I-LOC", "I-LOC", "B-LOC"]) == {("LOC", 0, 1), ("LOC", 2, 2)}  # I- after O starts one
    assert tokens.entities(["B-PER", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 1)}  # another type starts one
    assert tokens.entities(["O", "O"]) == set()


def test_word_scores_count_first_sub_tokens_and_entities():
    names = ["O", "B-PER", "I-PER"]
    labels = torch.tensor([[-100, 1, 2, -100, 0, -100], [-100, 0, 1, -100, -100, -100]])
    logits = torch.full((2, 6, 3), -5.0)
    logits[0, :, 1] = 5.0  # example 0: every word B-PER -> entities (PER,0,0),(PER,1,1),(PER,2,2); gold (PER,0,1)
    logits[1, :, 0] = 5.0  # example 1: every word O -> misses (PER,1,1)
    out = tokens.outputs(logits, labels, names).numpy()
    assert out[:, 1].tolist() == [3, 2] and out[:, 2].tolist() == [1, 1]  # words, words right
    assert out[:, 3:].tolist() == [[0, 3, 1], [0, 0, 1]]  # true positives, predicted, gold entities
    got = scores.token_scores(out)
    assert got["entity_f1"] == 0.0 and got["token_accuracy"] == pytest.approx(2 / 5)
    terms = scores.per_example(out, np.zeros(2), {}, tasks.TOKENS)
    assert terms["test_token_accuracy"].mean() == pytest.approx(2 / 5)


def test_every_task_spends_the_whole_alpha_on_its_own_columns():
    for task in tasks.TASKS.values():
        shares = [stats.ALPHA_SHARES[(c, m)] for c in ("early", "fixed") for m in task.verdicts]
        assert sum(shares) == pytest.approx(1.0), task.problem_type


def test_a_tagged_grid_trains_a_token_classifier_judged_on_entity_f1(tiny_classifier, tagged, tmp_path):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_classifier, "--train_file", str(tagged / "train.jsonl"),
            "--validation_file", str(tagged / "validation.jsonl"), "--test_file", str(tagged / "test.jsonl"),
            "--presets", "pretrain-zero,classic", "--train_sizes", "64", "--seeds", "0,1", "--num_train_epochs", "3",
            "--min_steps", "40", "--learning_rate", "3e-3", "--mixed_precision", "no", "--output_dir", str(out),
            "--no_plots"]
    assert load_script().main(argv) == 0
    runs = records.read_runs(str(out))
    settings = runs[0]["experiment"]["settings"]
    assert settings["problem_type"] == "token-classification" and settings["labels"] == ["B-LOC", "B-PER", "I-LOC",
                                                                                           "O"]
    last = runs[0]["evals"][-1]
    assert {"selection_entity_f1", "selection_token_accuracy", "test_entity_f1"} <= set(last)
    assert max(r["evals"][-1]["test_entity_f1"] for r in runs) > 0.5  # the names and places are learnt
    arrays = records.load_predictions(str(out), runs[0])
    again = scores.token_scores(arrays["test_logits"][-1])
    assert again["entity_f1"] == pytest.approx(last["test_entity_f1"], abs=1e-6)
    summary = report.summarize(runs)
    classic = next(r for r in summary if r["preset"] == "classic")
    assert classic["select_by"] == "entity_f1" and "delta_early_test_entity_f1" in classic
    assert "test entity F1" in (out / "findings.md").read_text()


def test_runs_near_chance_and_the_regimes_read_each_tasks_own_metrics():
    def run(problem_type, **selection):
        point = {"step": 1, "epoch": 1.0, "train_loss": 1.0, "test_loss": 1.0, "test_entity_f1": 0.0,
                 "test_token_accuracy": 0.8, "train_token_accuracy": 0.8, "selection_loss": 1.0,
                 "selection_entity_f1": 0.0, **selection}
        return {"experiment": {"settings": {"problem_type": problem_type}}, "evals": [point]}

    # a tagger that finds no entity (all "O") is near chance however many of its words are right
    assert report.run_values(run("token-classification"), "entity_f1")["underfit"]
    assert not report.run_values(run("token-classification", selection_entity_f1=0.4), "entity_f1")["underfit"]
    # a causal LM overfits when its exact match falls; its NLL rising while exact match holds is "loss rises"
    lm = tasks.TASKS[tasks.CAUSAL_LM]
    rises = [{"after": {"test_loss": 0.3 + d, "test_exact_match": d / 10}, "final_fit": 0.5} for d in (0, .01, .02)]
    falls = [{"after": {"test_loss": 0.3 + d, "test_exact_match": -0.2 - d}, "final_fit": 0.5} for d in (0, .01, .02)]
    assert report.regimes(rises, 0, lm) == ["loss rises"] and report.regimes(falls, 0, lm) == ["overfits"]


def test_a_tagged_grid_trains_under_data_parallel_processes(tiny_classifier, tagged, tmp_path):
    """Two processes train one run together (`--parallel data`, gloo): every selection and test sentence is scored
    once (the word-level summaries gathered whole), and the run learns."""
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_classifier, "--train_file", str(tagged / "train.jsonl"),
            "--validation_file", str(tagged / "validation.jsonl"), "--test_file", str(tagged / "test.jsonl"),
            "--presets", "classic", "--train_sizes", "64", "--seeds", "0", "--num_train_epochs", "1",
            "--min_steps", "12", "--learning_rate", "3e-3", "--mixed_precision", "no", "--output_dir", str(out),
            "--no_plots", "--parallel", "data"]
    done = launch(SCRIPT, *argv, num_processes=2, quiet=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = records.read_runs(str(out))
    arrays = records.load_predictions(str(out), run)
    n = sum(1 for _ in open(tagged / "validation.jsonl"))
    assert arrays["selection_logits"].shape[1] == n and sorted(arrays["selection_index"]) == list(range(n))
    assert run["evals"][-1]["train_loss"] < run["evals"][0]["train_loss"]
    again = scores.token_scores(arrays["test_logits"][-1])
    assert again["entity_f1"] == pytest.approx(run["evals"][-1]["test_entity_f1"], abs=1e-6)


def test_r_drop_and_label_smoothing_take_the_labelled_tokens(tiny_classifier):
    """A tagger's R-Drop and label smoothing are over its labelled tokens (first sub-tokens): with the two passes
    equal (eval mode) and no smoothing they are the model's own loss; smoothed, its smoothed cross-entropy."""
    from transformers import AutoModelForTokenClassification

    import hfreg
    from hfreg.finetune.training import task_loss

    model = AutoModelForTokenClassification.from_pretrained(tiny_classifier, num_labels=4).eval()
    batch = {"input_ids": torch.randint(1000, 2000, (2, 7)),
             "labels": torch.tensor([[-100, 0, 1, -100, 2, 3, -100]] * 2)}
    with torch.no_grad():
        own = model(**batch).loss
        assert hfreg.rdrop_loss(model, batch, 1.0)[0] == pytest.approx(own.item(), rel=1e-5)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits, -1)[batch["labels"] != -100]
        smoothed = 0.9 * own - 0.1 * logp.mean(-1).mean()  # (1 - eps) CE + eps x the mean over classes of -log p
        assert task_loss(model, batch, 0.0, 0.1, "token-classification") == pytest.approx(smoothed.item(), rel=1e-5)
