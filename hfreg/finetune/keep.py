"""The model a run chose, kept (`--save_strategy best|final`): its weights at that point, patched as the run trained
them (the spec recorded in its config, so `hfreg.load_regularized` brings the regularization back and a plain
`from_pretrained` loads the weights for inference), the tokenizer, and a model card that says what made it.

One folder per run, ``OUTPUT_DIR/models/<experiment>/<preset>/n<size>-s<seed>-lr<lr>/``; the card is written once
the run's record is complete (its metrics at the kept point)."""

from __future__ import annotations

import json
import os

from .records import SELECT_BY

SAVE_STRATEGIES = ("no", "best", "final")


def run_dir(output_dir: str, experiment: str, preset: str, size: int, seed: int, lr: float) -> str:
    return os.path.join(output_dir, "models", experiment, preset, f"n{size}-s{seed}-lr{lr:g}")


class Keeper:
    """Holds, during one run, the weights at the point ``strategy`` keeps: ``best``, the point with the best
    selection score under the rule ``select_by`` (ties: the earliest, as the report picks), or ``final``; then saves
    them with ``tokenizer`` into ``path``. Where the run's `training.Leaders` already copies each rule's leading
    weights, the keeper adopts its copy instead of making its own (`adopt`)."""

    def __init__(self, strategy: str, select_by: str, tokenizer, path: str):
        if strategy not in SAVE_STRATEGIES[1:]:
            raise ValueError(f"--save_strategy must be one of {list(SAVE_STRATEGIES)}, got {strategy!r}")
        self.strategy, self.rule, self.tokenizer, self.path = strategy, select_by, tokenizer, path
        self.key, self.sign = SELECT_BY[select_by]
        self.score, self.step, self.state = None, None, None

    def offer(self, point: dict, model) -> None:
        """At each evaluation point: copy the weights (to CPU) where the point leads the selection rule."""
        if self.strategy == "best" and (self.score is None or self.sign * point[self.key] > self.score):
            self.score, self.step = self.sign * point[self.key], point["step"]
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def adopt(self, leaders) -> None:
        """Take the rule's leading point and its weights from ``leaders`` (a `training.Leaders`): it keeps a copy
        wherever the point is not the final one, which needs none."""
        if self.strategy == "best":
            self.step = leaders.best[self.rule][1]
            self.state = leaders.states.get(self.step)

    def save(self, model, final_step: int) -> int:
        """Save the kept weights (``model`` holds the final ones) and the tokenizer; returns the kept step."""
        step = final_step
        if self.strategy == "best" and self.step != final_step:
            model.load_state_dict(self.state)  # the run's copy of the model: nothing trains after this
            step = self.step
        os.makedirs(self.path, exist_ok=True)
        model.save_pretrained(self.path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(self.path)
        self.state = None
        return step

    def write_card(self, record: dict, base_model: str) -> None:
        """README.md beside the saved weights, once the run's ``record`` is complete (`model_card`)."""
        with open(os.path.join(self.path, "README.md"), "w") as f:
            f.write(model_card(record, base_model, record["provenance"]["data"], self.rule, self.strategy))


def model_card(record: dict, base_model: str, data: str, select_by: str, strategy: str) -> str:
    """README.md for a kept run: what it is, how it was trained and chosen, and its metrics at the kept point."""
    point = next(p for p in record["evals"] if p["step"] == record["kept_step"])
    settings = record["experiment"].get("settings", {})
    metrics = {k: point[k] for k in sorted(point) if k.startswith(("selection_", "test_", "train_"))}
    how = (f"the evaluation point with the best selection-split {select_by} (step {point['step']} of "
           f"{record['steps']}, epoch {point['epoch']:g})" if strategy == "best"
           else f"the final step ({record['steps']})")
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    return f"""---
library_name: transformers
base_model: {base_model}
tags: [hfreg, regularization, text-classification]
---

# {record['preset']} fine-tune of {base_model}

Fine-tuned by `hfreg` (the regularization comparison) on {record['train_size']} training examples of {data}
(seed {record['seed']}, learning rate {record['learning_rate']:g}, batch {settings.get('train_batch_size')},
{record['steps']} optimizer steps), under the regularization preset `{record['preset']}`:

```json
{json.dumps(record.get('preset_config') or {}, indent=2, sort_keys=True)}
```

Kept: {how}. Its config records the regularization spec: `hfreg.load_regularized(path)` loads it with the same
dropout sites and rates for further training; a plain `from_pretrained` loads the same weights, which is all
inference needs (dropout is off in eval mode).

| metric at the kept point | value |
|---|---|
{rows}

Selection and test splits: {settings.get('roles', '-')}. Whether this preset is better than the others is what the
grid's findings say (`findings.md` beside `runs.jsonl`), not one run.
"""


def best_runs(runs: list[dict], select_by: tuple[str, int]) -> dict[str, dict]:
    """{preset: its kept run with the best selection score at the kept point} (ties: the earliest seed): the test
    split plays no part in the choice."""
    key, sign = select_by
    best: dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: (r["seed"], r["train_size"], r["learning_rate"])):
        if "kept_step" not in r:
            continue
        score = sign * next(p for p in r["evals"] if p["step"] == r["kept_step"])[key]
        if r["preset"] not in best or score > best[r["preset"]][0]:
            best[r["preset"]] = (score, r)
    return {p: r for p, (_, r) in best.items()}


def push_best(output_dir: str, runs: list[dict], select_by: tuple[str, int], hub_model_id: str, api=None,
              log=print) -> list[str]:
    """Upload each preset's best kept run (`best_runs`) to the Hub repository ``<hub_model_id>-<preset>`` (created
    where missing, private by the Hub's default for the account); returns the repositories. Without a network or a
    token, one-line ValueError."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    pushed = []
    for preset, run in best_runs(runs, select_by).items():
        repo = f"{hub_model_id}-{preset.replace('@', '-at-').replace('*', 'x').replace('=', '-')}"
        folder = run_dir(output_dir, run["experiment"]["name"], preset, run["train_size"], run["seed"],
                         run["learning_rate"])
        try:
            api.create_repo(repo, exist_ok=True)
            api.upload_folder(folder_path=folder, repo_id=repo,
                              commit_message=f"hfreg: {preset}, n={run['train_size']}, seed {run['seed']}")
        except Exception as e:  # noqa: BLE001 - network, auth and Hub errors all end the same way for the user
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"--push_to_hub: could not upload to {repo!r} ({reason}); the models stay in "
                             f"{os.path.join(output_dir, 'models')} (log in with `hf auth login`, or drop "
                             f"--push_to_hub)") from None
        log(f"pushed {preset} (n={run['train_size']}, seed {run['seed']}) to {repo}")
        pushed.append(repo)
    return pushed
