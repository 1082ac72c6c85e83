"""What a problem type measures and judges, as data: one `Task` per ``problem_type`` (transformers' names for a
sequence classifier's head), read by the training loop (which metrics a point records, which selection rules
exist) and by the report (which metrics get a verdict, which one is the primary endpoint, what "near chance" and
"fit its data" mean). Adding a problem type is one row here and its scores in `scores`.

Token classification (``token-classification``: word labels on each word's first sub-token) is judged on
seqeval's entity F1 (the primary endpoint) and on word accuracy. A causal LM's instruction tuning (``causal-lm``:
loss on the completion tokens only) is judged on the test NLL per completion token (the primary endpoint) and on
exact match of the greedy, teacher-forced completion.

Regression (float labels, one output, mean-squared-error loss, as `run_glue` infers it) is judged on test R²
(1 - MSE / the variance of the test labels: the test MSE on an axis whose margin reads alike on any label scale;
the test labels' variance is the same for every arm, so a verdict on R² is one on MSE) and on Spearman's rank
correlation, GLUE's STS-B metric.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION, REGRESSION, CAUSAL_LM, TOKENS = ("single_label_classification", "regression", "causal-lm",
                                              "token-classification")


@dataclass(frozen=True)
class Task:
    problem_type: str
    metrics: dict  # test metric -> +1 where higher is better, -1 where lower is better (the report's columns)
    verdicts: tuple  # the metrics judged, the primary endpoint (what `--seeds auto` stops on) first
    calibration: tuple  # described beside the verdicts, never judged
    names: dict  # metric -> words
    select_by: tuple  # the selection rules (`records.SELECT_BY`) it can use, the default first
    fit: str  # the training metric at or above `MEMORISED` at the final point: the run fit its data
    after: tuple  # the test metrics whose move from the selected to the final point `regimes` reads
    margin_note: str = ""  # why the default margins mean what they mean, beside them in the findings
    overfit: str = ""  # the test metric whose fall after the selected point is overfitting (default: the primary)
    chance: str = ""  # the selection metric within 0.02 of 0 of which a run is near chance ("": no chance level)

    @property
    def primary(self) -> str:
        return self.verdicts[0]

    @property
    def default_select_by(self) -> str:
        return self.select_by[0]


TASKS = {t.problem_type: t for t in (
    Task(CLASSIFICATION,
         metrics={"test_accuracy": +1, "test_f1": +1, "test_loss": -1, "test_nll_ts": -1, "test_ece": -1,
                  "test_brier": -1},
         verdicts=("test_accuracy", "test_nll_ts"), calibration=("test_loss", "test_ece"),
         names={"test_accuracy": "test accuracy", "test_f1": "test macro-F1", "test_loss": "test NLL",
                "test_nll_ts": "test NLL after temperature scaling", "test_ece": "test ECE",
                "test_brier": "test Brier"},
         select_by=("accuracy", "f1", "loss"), fit="train_accuracy",
         after=("test_accuracy", "test_loss", "test_nll_ts")),
    Task(REGRESSION,
         metrics={"test_r2": +1, "test_spearman": +1, "test_pearson": +1, "test_loss": -1},
         verdicts=("test_r2", "test_spearman"), calibration=(),
         names={"test_r2": "test R²", "test_spearman": "test Spearman", "test_pearson": "test Pearson",
                "test_loss": "test MSE"},
         select_by=("loss", "spearman"), fit="train_r2", after=("test_r2", "test_loss", "test_spearman"),
         margin_note="on the 0..1 scales of explained variance and rank agreement: a difference most users would "
                     "act on; R² is 1 − MSE / the test labels' variance, the same for every arm, so within a data "
                     "set its verdict is the MSE's (the same t and p), while ±0.02 of R² is a relative change in MSE "
                     "of 0.02 / (1 − R²): 4% at R² 0.5, 20% at 0.9; pooled over data sets it is a mean of "
                     "MSE differences each standardized by its test labels' variance",
         chance="selection_r2"),
    Task(CAUSAL_LM,
         metrics={"test_loss": -1, "test_exact_match": +1, "test_perplexity": -1},
         verdicts=("test_loss", "test_exact_match"), calibration=(),
         names={"test_loss": "test NLL per completion token", "test_exact_match": "test exact match",
                "test_perplexity": "test perplexity"},
         select_by=("loss", "exact_match"), fit="train_exact_match", after=("test_loss", "test_exact_match"),
         margin_note="0.02 nats per completion token is a 2% change in perplexity, and like any raw NLL it moves "
                     "with confidence as well as with what the model predicts (no temperature is fitted to a causal "
                     "LM's completions); exact match is the share of completions whose every token is the greedy, "
                     "teacher-forced choice",
         overfit="test_exact_match"),
    Task(TOKENS,
         metrics={"test_entity_f1": +1, "test_token_accuracy": +1, "test_loss": -1},
         verdicts=("test_entity_f1", "test_token_accuracy"), calibration=(),
         names={"test_entity_f1": "test entity F1", "test_token_accuracy": "test word accuracy",
                "test_loss": "test NLL per word"},
         select_by=("entity_f1", "loss"), fit="train_token_accuracy",
         after=("test_entity_f1", "test_loss", "test_token_accuracy"),
         margin_note="entity F1 is seqeval's micro F1 over IOB2 entities (a type and its exact span); word accuracy "
                     "counts each word's first sub-token",
         chance="selection_entity_f1"),
)}
PROBLEM_TYPES = tuple(TASKS)
CLASSIFIER_TYPES = (CLASSIFICATION, REGRESSION)  # `--problem_type`: a sequence classifier's head
TEXT, IMAGES = "text-classification", "image-classification"
TASK_NAMES = (TEXT, IMAGES, TOKENS, CAUSAL_LM)  # `--task`: what is fine-tuned


def task(problem_type: str | None) -> Task:
    """The task of ``problem_type`` (None: classification, as every record made before regression existed)."""
    if problem_type is None:
        return TASKS[CLASSIFICATION]
    if problem_type not in TASKS:
        raise ValueError(f"--problem_type must be one of {list(TASKS)}, got {problem_type!r}")
    return TASKS[problem_type]


def of_run(run: dict) -> Task:
    """A run record's task: its experiment's ``problem_type`` setting, recorded only where it is not classification."""
    return task((run.get("experiment", {}).get("settings") or {}).get("problem_type"))


def of_rows(rows: list[dict]) -> Task:
    """The task of summary or pooled rows (``problem_type`` on each, absent for classification); one-line error
    where rows of two problem types are mixed (a pool over them would compare different metrics)."""
    kinds = {r.get("problem_type", CLASSIFICATION) for r in rows}
    if len(kinds) > 1:
        raise ValueError(f"these results mix problem types ({', '.join(sorted(kinds))}): report each apart")
    return task(kinds.pop() if kinds else None)


def infer_problem_type(values, requested: str | None = None) -> str:
    """``requested`` (``--problem_type``) where given, else regression where the training labels are numbers and
    some are floats (as `run_glue` switches on a float label column: ``1.0`` counts, write ``1`` for a class),
    else classification."""
    if requested is not None:
        return task(requested).problem_type
    numbers = [v for v in values if v is not None]
    if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers) \
            and any(isinstance(v, float) for v in numbers):
        return REGRESSION
    return CLASSIFICATION
