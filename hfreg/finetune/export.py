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


# --------------------------------------------------------------------------------------- re-creating a run
def settings_argv(settings: dict) -> list[str]:
    """The harness flags that give a grid the recorded experiment ``settings`` again, besides the data (which the
    record identifies by its sha256 but does not locate) and the grid's presets, sizes and seeds."""
    import re

    from .presets import METHOD_FLAGS
    from .records import DEFAULT_MODEL
    from .sweep import NEWER_SETTINGS

    argv = [] if settings.get("model") in (None, DEFAULT_MODEL) else ["--model_name_or_path", settings["model"]]
    argv += ["--text_column", ",".join(settings["text_columns"]), "--label_column", settings["label_column"],
             "--max_seq_length", str(settings["max_length"]),
             "--learning_rates", ",".join(f"{lr!r}" for lr in settings["learning_rates"]),
             "--num_train_epochs", str(settings["num_train_epochs"]),
             "--train_batch_size", str(settings["train_batch_size"]),
             "--lr_scheduler_type", settings["lr_scheduler_type"], "--warmup_ratio", repr(settings["warmup_ratio"]),
             "--evals_per_epoch", str(settings["evals_per_epoch"]),
             "--max_train_eval_samples", str(settings["max_train_eval_samples"]),
             "--mixed_precision", settings["precision"], "--parallel", settings["parallel"],
             # absent: off (the records of settings added later hold them only when on)
             "--min_steps", str(settings.get("min_steps", 0)),
             "--max_grad_norm", repr(settings.get("max_grad_norm", 0)),
             "--mc_samples", str(settings.get("mc_samples", 0))]
    for flag in (*NEWER_SETTINGS, *METHOD_FLAGS):
        if flag in settings:
            value = settings[flag]
            argv += [f"--{flag}"] if value is True else [f"--{flag}", repr(value)]
    for key, flag in (("problem_type", "--problem_type"), ("tokenizer", "--tokenizer_name")):
        if key in settings:
            argv += [flag, settings[key]]
    if settings.get("seeds", {}).get("rule") == "auto":
        argv += ["--max_seeds", str(settings["seeds"]["max_seeds"]), "--seed_stage", str(settings["seeds"]["stage"])]
    if settings.get("margins"):
        argv += ["--margin", ",".join(f"{k}={v!r}" for k, v in settings["margins"].items())]
    if settings.get("lora"):
        lora = settings["lora"]
        targets = lora["target_modules"]
        argv += ["--peft", "lora", "--lora_r", str(lora["r"]), "--lora_alpha", str(lora["lora_alpha"]),
                 "--lora_target_modules", targets if isinstance(targets, str) else ",".join(targets)]
    roles = settings["roles"]  # the description `data.assign_roles` wrote
    half = re.match(r"selection = a stratified half of the validation split \(\d+, seed (\d+)\)", roles)
    pool = re.match(r"selection = (\d+) training examples outside every subset \(seed (\d+)\)", roles)
    if half:
        argv += ["--roles", "validation-half", "--split_seed", half.group(1)]
    elif pool:
        argv += ["--roles", "train-pool", "--selection_size", pool.group(1), "--split_seed", pool.group(2)]
    else:
        argv += ["--roles", "validation"]
    return argv


def find_run(runs: list[dict], experiment: str, preset: str, train_size: int | None = None, seed: int | None = None,
             learning_rate: float | None = None) -> dict:
    """The one run of ``runs`` that the given fields pick; one-line ValueError for none or several."""
    from .records import experiment_of

    wanted = {"preset": preset, "train_size": train_size, "seed": seed, "learning_rate": learning_rate}
    mine = [r for r in runs if experiment_of(r) == experiment
            and all(v is None or r[k] == v for k, v in wanted.items())]
    given = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in wanted.items()
                      if v is not None)
    if not mine:
        raise ValueError(f"no run of experiment {experiment!r} has {given}")
    if len(mine) > 1:
        differ = [k for k in ("train_size", "seed", "learning_rate") if len({r[k] for r in mine}) > 1]
        raise ValueError(f"{len(mine)} runs of experiment {experiment!r} have {given}: pick one with "
                         + ", ".join(f"--{k} ({', '.join(sorted({format(r[k], 'g') for r in mine}))})"
                                     for k in differ))
    return mine[0]


def recreate(output_dir: str, data_argv: list[str], preset: str, train_size: int | None = None,
             seed: int | None = None, learning_rate: float | None = None, experiment: str = "default",
             strategy: str = "best", select_by: str | None = None, out: str | None = None, log=print) -> dict:
    """Train one recorded run again from its record and keep its model as `--save_strategy` would have
    (``strategy`` best or final; default folder: the run's under ``output_dir/models``). ``data_argv``: the grid's
    data flags (``--train_file …`` or ``--dataset_name …``), which the record identifies but does not locate. The
    rebuilt experiment must equal the recorded one setting by setting (data by its sha256, the model by its config's
    digest, the preset by its contents; the library versions may differ and are named); then the re-trained run's
    selection metrics are compared with the record's at every point. Returns {"path", "kept_step",
    "recorded_step", "max_selection_loss_diff"}."""
    import dataclasses
    import tempfile

    from . import arguments, report
    from .presets import BASELINE, from_record
    from .records import read_runs
    from .sweep import build_experiment
    from .tasks import of_run
    from .training import train

    run = find_run(read_runs(output_dir), experiment, preset, train_size, seed, learning_rate)
    recorded = run["experiment"].get("settings", {})
    select_by = report.check_select_by(select_by, of_run(run))
    if strategy not in SAVE_STRATEGIES[1:]:
        raise ValueError(f"the model kept is at the point `best` picks or the `final` one, got {strategy!r}")
    path = out or run_dir(output_dir, experiment, run["preset"], run["train_size"], run["seed"],
                          run["learning_rate"])
    if os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"{path} already holds a model: give --out elsewhere")
    the_preset = from_record(run["preset"], run.get("preset_config") or {})
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar(), datasets.disable_progress_bars()  # a mismatch is one line, no bars before it
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the harness's checks and loading; it writes nothing here
            args = arguments.parse([*data_argv, *settings_argv(recorded), "--presets", BASELINE, "--train_sizes",
                                    str(run["train_size"]), "--seed", str(run["seed"]), "--output_dir", scratch,
                                    "--experiment", experiment, "--no_plots", "--select_by", select_by])
            exp = build_experiment(args, None)
    finally:
        hf_logging.enable_progress_bar(), datasets.enable_progress_bars()
    now = exp.record["settings"]
    differ = sorted(k for k in set(recorded) | set(now) if k != "versions" and recorded.get(k) != now.get(k))
    if differ:
        k = differ[0]
        hint = " (give the grid's data flags: --train_file/--validation_file/--test_file or --dataset_name)" \
            if k in ("data_sha256", "splits", "labels", "roles") else ""
        raise ValueError(f"these flags do not rebuild the run's experiment: {k}={recorded.get(k)!r} in the record, "
                         f"{now.get(k)!r} now{hint}"
                         + (f"; {len(differ) - 1} more setting(s) differ: {', '.join(differ[1:])}"
                            if len(differ) > 1 else ""))
    if recorded.get("versions") != now.get("versions"):
        log(f"note: the run was trained under {recorded.get('versions')}, this is {now.get('versions')}: the "
            f"re-created numbers may differ in the last digits")
    keeper = Keeper(strategy, select_by, exp.collate.tokenizer, path)
    result, _ = train(exp.accelerator, exp.base_model, the_preset, exp.data, exp.roles, run["train_size"],
                      run["seed"], dataclasses.replace(exp.settings, learning_rate=run["learning_rate"]), exp.collate,
                      log=log, keep=keeper)
    rebuilt = {p["step"]: p["selection_loss"] for p in result["evals"]}
    diff = max(abs(rebuilt.get(p["step"], float("inf")) - p["selection_loss"]) for p in run["evals"])
    again = {**run, **result, "kept_step": result["kept_step"]}
    keeper.write_card(again, recorded.get("model") or "")
    recorded_step = report.selected_point(run, select_by)["step"] if strategy == "best" else run["evals"][-1]["step"]
    return {"path": path, "kept_step": result["kept_step"], "recorded_step": recorded_step,
            "max_selection_loss_diff": diff}
