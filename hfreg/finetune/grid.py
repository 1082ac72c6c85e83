"""The grid of one launch, in named phases (`Grid`): the output directory prepared, the runs not yet recorded
trained here or on a Ray cluster, in stages under ``--seeds auto``, then the report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict

from . import tracking
from .experiment import Experiment
from .records import (
    SELECT_BY,
    RunKey,
    WorkQueue,
    append_run,
    digest,
    experiment_conflict,
    experiment_of,
    read_runs,
    run_key,
)


def plan_runs(experiment: str, presets: list, contents: dict, sizes, seeds, learning_rates,
              cells: set | None = None) -> dict:
    """{`RunKey`: (preset, size, seed, learning rate)} of every run a grid plans: each preset x size (those in
    ``cells`` where given) x seed x learning rate, keyed as its record will be (its preset's recorded ``contents``
    included), the largest size first, so that no process is left with a long run while the others idle."""
    return {RunKey(experiment, p.name, digest(contents[p.name]), n, s, lr): (p, n, s, lr)
            for n in sorted(sizes, reverse=True) for s in seeds for lr in learning_rates
            for p in presets if cells is None or (p.name, n) in cells}


def next_cells(runs: list[dict], experiment: str, done: list, select_by: str | None,
               margins: dict | None) -> tuple[set, set]:
    """What a staged grid's next stage runs: the (preset, size) cells whose primary verdicts are not yet decided
    and could still be by the maximum seeds (`report.stop_reason`), and those cells with the baseline and their
    controls beside them. Read from the runs of the stages ``done`` (their seeds) alone, so that a grid resumed
    in the middle of a stage, or a process that looks later than another, decides as the finished stages did."""
    from . import report
    from .presets import BASELINE

    done = set(done)
    so_far = [r for r in runs if experiment_of(r) == experiment and r["seed"] in done]
    rows = defaultdict(list)
    for r in report.summarize(so_far, select_by, margins):
        if r["preset"] != BASELINE:
            rows[(r["preset"], r["train_size"])].append(r)
    # a cell without a row has no comparable seed yet (none with a run at every learning rate): open
    cells = {(r["preset"], r["train_size"]) for r in so_far if r["preset"] != BASELINE}
    undecided = {cell for cell in cells if cell not in rows or report.stop_reason(rows[cell], margins) is None}
    against = report.controls(so_far)  # the baseline and each open cell's controls run on beside it
    return undecided, undecided | {(c, n) for p, n in undecided for c in [BASELINE, *against.get(p, [])]}


def clear_output_dir(output_dir: str) -> list[str]:
    """Delete what the harness wrote into ``output_dir`` (`--overwrite_output_dir`): the runs and their
    predictions, claims of runs in progress, summaries, findings, plots and tracking logs; nothing else. Returns
    what went, in words."""
    import glob
    import shutil

    from .records import CLAIMS_DIR, PREDICTIONS_DIR, RUNS_FILE, locked

    if not os.path.isdir(output_dir):
        return []
    removed = []
    with locked(output_dir):  # no run is appended half-way through
        runs = read_runs(output_dir)
        for name in (RUNS_FILE, PREDICTIONS_DIR, CLAIMS_DIR, tracking.LOGS_DIR):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(name + "/")
            elif os.path.exists(path):
                os.remove(path)
                removed.append(f"{name} ({len(runs)} run(s))" if name == RUNS_FILE else name)
    for pattern in ("summary.json", "summary.csv", "findings.md", "pooled.json", "pooled.md", "learning_curves*.png",
                    "gap_vs_size*.png", "dose_response*.png"):
        for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern))):
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def presets_line(presets: list, arms: dict) -> str:
    """The grid's presets, each equal-compute arm (``<control>@<k>x``) with the presets whose compute it has."""
    return "presets: " + ", ".join(f"{p.name} (equal compute for {', '.join(arms[p.name])})" if p.name in arms
                                   else p.name for p in presets)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(done: list[dict], grid: list[RunKey], num_processes: int) -> str:
    """Runs done and left, and an ETA from the measured run times (per training-set size, else scaled)."""
    finished = {run_key(r) for r in done}
    left = [k for k in grid if k not in finished]
    line = f"grid: {len(grid) - len(left)}/{len(grid)} runs done, {len(left)} left"
    if not done or not left:
        return line
    per_size = {}
    for r in done:
        per_size.setdefault(r["train_size"], []).append(r["seconds"])
    mean = {n: sum(v) / len(v) for n, v in per_size.items()}
    per_example = sum(mean[n] / n for n in mean) / len(mean)
    eta = sum(mean.get(k.train_size, per_example * k.train_size) for k in left) / num_processes
    return f"{line}, ETA {_duration(eta)} ({num_processes} process(es))"


def run_grid(args, exp: Experiment, ray) -> int:
    """Train every run of the grid not yet recorded (in stages under ``--seeds auto``), then report."""
    return Grid(args, exp, ray).run()


class Grid:
    """One launch of the grid, in named phases: `prepare` the output directory, `plan` a stage, `announce` it,
    `train_stage` (here, or on a Ray cluster), decide the `next_stage` of a staged grid from the records, then
    `finish` with the report. Every process of a launch runs the same phases; the records are the only state they
    share."""

    def __init__(self, args, exp: Experiment, ray):
        self.args, self.exp, self.ray = args, exp, ray
        self.accelerator = exp.accelerator
        self.runner, self.cluster_cpus = None, 0.0
        self.by_key: dict = {}
        self.grid: list = []
        self.n_proc = exp.accelerator.num_processes
        self.rank_tag = (f"[rank {exp.accelerator.process_index}] " if self.n_proc > 1 and args.parallel == "run"
                         else "")
        self.log = print if args.parallel == "run" else exp.accelerator.print
        self.refused: str | None = None  # data mode: the main process's refused record, for every rank to stop with

    def run(self) -> int:
        args = self.args
        self.prepare()
        stage = args.seed_stage if args.auto_seeds else len(args.seeds)
        self.plan({(p.name, n) for p in self.exp.presets for n in args.train_sizes}, args.seeds[:stage])
        self.announce()
        self.train_stage()
        done = args.seeds[:stage]
        while args.auto_seeds and len(done) < len(args.seeds) and self.next_stage(done):
            done += args.seeds[len(done):len(done) + args.seed_stage]
            self.train_stage()
        self.finish()
        return 0

    # ------------------------------------------------------------------------------------------------ phases
    def prepare(self) -> None:
        """Check the directory against this experiment before anything is written; clear it on
        --overwrite_output_dir; make it; open the work queue the processes share."""
        args, accelerator = self.args, self.accelerator
        if args.overwrite_output_dir:  # every input checked: the directory starts afresh, saying what goes
            if accelerator.is_main_process:
                removed = clear_output_dir(args.output_dir)
                if removed:
                    print(f"--overwrite_output_dir: removed {', '.join(removed)} from {args.output_dir}", flush=True)
            accelerator.wait_for_everyone()
        self.refuse_other_settings(read_runs(args.output_dir))  # early, before anything is written
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        accelerator.wait_for_everyone()
        self.queue = WorkQueue(args.output_dir)
        if self.ray is not None:
            from . import cluster

            exp = self.exp
            self.cluster_cpus = self.ray.cluster_resources().get("CPU", 1.0)
            self.runner = cluster.Runner(self.ray, {"model": exp.base_model, "data": exp.data, "roles": exp.roles,
                                                    "collate": exp.collate},
                                         args.run_cpus, args.run_gpus, args.run_retries, exp.precision)

    def plan(self, cells: set, seeds: list) -> None:
        """The runs of ``cells`` (preset, size) at ``seeds`` and every learning rate (`plan_runs`)."""
        args = self.args
        self.by_key = plan_runs(args.experiment, self.exp.presets, self.exp.contents, args.train_sizes, seeds,
                                args.learning_rates, cells)
        self.grid = list(self.by_key)

    def announce(self) -> None:
        args, exp = self.args, self.exp
        accelerator = self.accelerator
        mine = self.grid_runs()
        accelerator.print(
            f"hfreg: {exp.model_name} | {len(exp.roles.pool)} training-pool examples, {len(exp.label_names)} "
            f"classes | {len(self.grid)} runs{' in the first stage' if args.auto_seeds else ''}, {len(mine)} "
            f"already done | {self.n_proc} process(es) on {accelerator.device}"
            f"{f' ({exp.threads} thread(s) each)' if accelerator.device.type == 'cpu' else ''}, "
            f"parallel={args.parallel}, batch {args.train_batch_size}, mixed precision {exp.precision}\n"
            f"data roles ({args.roles}): training subsets from the training pool; {exp.roles.description}\n"
            f"{presets_line(exp.presets, exp.arms)}", flush=True)

    def train_stage(self) -> None:
        """Every run of the planned stage, here or on the cluster; returns once all are recorded."""
        if self.runner is not None:
            return self._train_on_cluster()
        while True:
            while (key := self.next_run()) is not None:
                self._train_here(key)
            # every run of this grid finished (a launch beside this one may still be training its last ones): a
            # staged grid decides its next stage from complete stages only
            if not self.args.auto_seeds or self._main_decides(
                    lambda: len({run_key(r) for r in self.grid_runs()}) == len(self.grid)):
                return
            time.sleep(2)

    def _main_decides(self, decide):
        """``decide()``, read from the records by the main process alone in data mode and given to every rank:
        ranks reading for themselves could see a neighbour launch's record one of them did not, and go on to
        different collectives (a hang)."""
        if self.args.parallel == "run":
            return decide()
        from accelerate.utils import broadcast_object_list

        box = [decide() if self.accelerator.is_main_process else None]
        broadcast_object_list(box)
        return box[0]

    def next_stage(self, done: list) -> bool:
        """Plan the next stage of a staged grid: the cells whose primary verdicts are not yet decided (and could
        still be by --max_seeds, `report.stop_reason`), with the baseline and their controls beside them
        (`next_cells`), from the records of the stages done (in data mode as the main process reads them). False:
        nothing is left open."""
        args = self.args
        self.accelerator.wait_for_everyone()
        undecided, cells = self._main_decides(
            lambda: next_cells(read_runs(args.output_dir), args.experiment, done, args.select_by, args.margin))
        if not undecided:
            return False
        seeds = args.seeds[len(done):len(done) + args.seed_stage]
        self.plan(cells, seeds)
        self.accelerator.print(f"stage {len(done) // args.seed_stage + 1}: seeds {seeds[0]}-{seeds[-1]} for "
                               f"{len(undecided)} undecided preset x size cell(s), {len(self.grid)} runs",
                               flush=True)
        return True

    def finish(self) -> None:
        """The report, once every process is done; the best kept models pushed where asked."""
        from . import keep, report

        args, accelerator = self.args, self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            accelerator.print(report.report(args.output_dir, make_plots=not args.no_plots, select_by=args.select_by,
                                            margins=args.margin))
            accelerator.print(f"results in {args.output_dir}: runs.jsonl, predictions/, summary.json, summary.csv, "
                              f"findings.md, pooled.json, pooled.md"
                              + ("" if args.no_plots else ", learning_curves.png, gap_vs_size.png"))
            if args.push_to_hub:  # each preset's best kept run, chosen on the selection split
                keep.push_best(args.output_dir, self.grid_runs(), SELECT_BY[args.select_by], args.hub_model_id)
        accelerator.end_training()

    # ------------------------------------------------------------------------------------------------ helpers
    def refuse_other_settings(self, runs: list[dict]) -> None:
        args = self.args
        why = experiment_conflict(runs, args.experiment, self.exp.record["settings"], self.exp.contents)
        if why:
            raise ValueError(f"{args.output_dir} holds experiment {args.experiment!r} made under other settings: "
                             f"{why}; use another --output_dir, or --experiment NAME to add these runs as a "
                             f"separate experiment")

    def grid_runs(self) -> list[dict]:
        """This stage's finished runs, whichever process or launch made them."""
        return [r for r in read_runs(self.args.output_dir) if run_key(r) in self.by_key]

    def next_run(self):
        """The key of the next run to train (None: none left). Data mode: every rank trains the run the main
        process claimed."""
        if self.args.parallel == "run":
            return self.queue.claim(self.grid, check=self.refuse_other_settings)
        from accelerate.utils import broadcast_object_list

        box = [None]
        if self.accelerator.is_main_process:
            try:
                box[0] = (None, self.refused) if self.refused else (
                    self.queue.claim(self.grid, check=self.refuse_other_settings), None)
            except ValueError as e:  # every rank stops with it, none waits for a run that never comes
                box[0] = (None, str(e))
        broadcast_object_list(box)
        key, error = box[0]
        if error:
            raise ValueError(error)
        return key

    def tracker_for(self, preset, size: int, seed: int, lr: float):
        """The tracker run of one training run, where this process logs it (the one that trains it)."""
        args = self.args
        if not args.report_to or not (args.parallel == "run" or self.accelerator.is_main_process):
            return None
        group = args.run_name or args.experiment
        name = tracking.run_name(group, preset.name, size, seed, lr)
        config = tracking.run_config(args.experiment, preset.name, self.exp.contents[preset.name], size, seed, lr)
        return tracking.RunTracker(args.report_to, args.output_dir, name, group, config)

    def stored(self, predictions: dict | None) -> dict | None:
        """A run's predictions as stored: without the selection split's under --no_selection_predictions."""
        if predictions is None or not self.args.no_selection_predictions:
            return predictions
        return {k: v for k, v in predictions.items() if not k.startswith("selection_")}

    def make_record(self, preset, size: int, seed: int, result: dict) -> dict:
        # an arm's pairing is not its identity: a grid may add presets of the same compute later, and its runs
        # must stay the same runs (preset_config, whose digest keys them, says what trained)
        exp, args = self.exp, self.args
        paired = {"equal_compute_for": exp.arms[preset.name]} if preset.name in exp.arms else {}
        result = dict(result)
        machine = result.pop("machine", None)  # the process that trained it: a cluster's worker, not this driver
        # a staged grid's plan: the report holds its reading open while a planned cell has not run
        plan = {"plan": {"presets": [p.name for p in exp.presets], "train_sizes": sorted(args.train_sizes)}} \
            if args.auto_seeds else {}
        return {"experiment": exp.record, "preset": preset.name, "preset_config": exp.contents[preset.name],
                "train_size": size, "seed": seed, **paired, **plan, **result,
                "provenance": {"data": args.dataset_name or args.train_file or "synthetic", "code": exp.code,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               **({"machine": machine} if machine else {})}}

    def _train_here(self, key) -> None:
        from . import keep
        from .training import Job, train

        args, exp, accelerator = self.args, self.exp, self.accelerator
        preset, size, seed, lr = self.by_key[key]
        settings = dataclasses.replace(exp.settings, learning_rate=lr)
        self.log(f"{self.rank_tag}run preset={preset.name} train_size={size} seed={seed} learning_rate={lr:g} | "
                 f"{settings.budget(size, preset.steps_factor)}", flush=True)
        tracker = None
        keeper = None if args.save_strategy == "no" else keep.Keeper(
            args.save_strategy, args.select_by, exp.collate.tokenizer,
            keep.run_dir(args.output_dir, args.experiment, preset.name, size, seed, lr))
        try:
            tracker = self.tracker_for(preset, size, seed, lr)
            # the bar on the first process only: several processes' bars would overwrite each other
            result, predictions = train(Job(accelerator, exp.base_model, exp.data, exp.roles, exp.collate, preset,
                                            size, seed, settings),
                                        log=lambda line: self.log(self.rank_tag + line, flush=True),
                                        on_point=tracker.log if tracker else None,
                                        progress=None if accelerator.is_main_process else False, keep=keeper)
        except BaseException:
            if accelerator.is_main_process or args.parallel == "run":
                self.queue.release(key)
            raise
        finally:
            if tracker is not None:
                tracker.finish()
        record = self.make_record(preset, size, seed, result)
        if "kept_step" in result:  # this process saved the weights: the card says what they are
            keeper.write_card(record, exp.model_name)
        if args.parallel == "run":
            self.queue.finish(key, record, self.stored(predictions), check=self.refuse_other_settings)
        elif accelerator.is_main_process:
            try:
                self.queue.finish(key, record, self.stored(predictions), check=self.refuse_other_settings)
            except ValueError as e:  # the other ranks wait in the next claim's broadcast: it tells them
                self.refused = str(e)
                return
        if accelerator.is_main_process:
            accelerator.print(progress_line(self.grid_runs(), self.grid, self.n_proc), flush=True)

    def _train_on_cluster(self) -> None:
        """Ray: this driver submits what is left and writes what comes back."""
        args = self.args
        finished = {run_key(r) for r in self.grid_runs()}

        def finish(key, result, predictions):
            preset, size, seed, _ = self.by_key[key]
            append_run(args.output_dir, self.make_record(preset, size, seed, result), self.stored(predictions),
                       check=self.refuse_other_settings)
            print(f"done preset={preset.name} train_size={size} seed={seed}", flush=True)
            print(progress_line(self.grid_runs(), self.grid, max(1, int(self.cluster_cpus // args.run_cpus))),
                  flush=True)
            tracker = self.tracker_for(preset, size, seed, result["learning_rate"])
            if tracker is not None:  # a worker's run, logged by the driver as it comes back
                for point in result["evals"]:
                    tracker.log(point)
                tracker.finish()

        self.runner.run({k: self.by_key[k] for k in self.grid if k not in finished},
                        lambda lr: dataclasses.replace(self.exp.settings, learning_rate=lr), finish)
