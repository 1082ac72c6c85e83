"""`hfreg export`: a recorded run trained again and kept as `--save_strategy` would have kept it (`recreate`), the
grid rebuilt from the experiment's recorded settings (`settings_argv`) and checked against the record."""

from __future__ import annotations

import os

from .keep import SAVE_STRATEGIES, Keeper, run_dir


def settings_argv(settings: dict) -> list[str]:
    """The harness flags that give a grid the recorded experiment ``settings`` again, besides the data (which the
    record identifies by its sha256 but does not locate), the grid's presets, sizes and seeds, and how it planned
    and judged them (`experiment.PLAN_SETTINGS`: one run trains alike under any)."""
    import re

    from .experiment import NEWER_SETTINGS
    from .presets import METHOD_FLAGS
    from .records import DEFAULT_MODEL

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
    from .experiment import PLAN_SETTINGS, build_experiment
    from .presets import BASELINE, from_record
    from .records import check_grid_dir, read_runs
    from .tasks import of_run
    from .training import Job, train

    check_grid_dir(output_dir)
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
    differ = sorted(k for k in set(recorded) | set(now)
                    if k not in ("versions", *PLAN_SETTINGS) and recorded.get(k) != now.get(k))
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
    settings = dataclasses.replace(exp.settings, learning_rate=run["learning_rate"])
    result, _ = train(Job(exp.accelerator, exp.base_model, exp.data, exp.roles, exp.collate, the_preset,
                          run["train_size"], run["seed"], settings), log=log, keep=keeper)
    rebuilt = {p["step"]: p["selection_loss"] for p in result["evals"]}
    diff = max(abs(rebuilt.get(p["step"], float("inf")) - p["selection_loss"]) for p in run["evals"])
    again = {**run, **result, "kept_step": result["kept_step"]}
    keeper.write_card(again, recorded.get("model") or "")
    recorded_step = report.selected_point(run, select_by)["step"] if strategy == "best" else run["evals"][-1]["step"]
    return {"path": path, "kept_step": result["kept_step"], "recorded_step": recorded_step,
            "max_selection_loss_diff": diff}
