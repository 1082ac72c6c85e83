"""`hfreg` command line: inspect, compare, probe, patch, report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext

from .config import (
    CONFIG_ATTR,
    CONFIG_NAME,
    DROP_PATH_MODES,
    DROP_PATH_PROFILES,
    KNOBS,
    MIXOUT_TARGETS,
    SCALES,
    RegularizationConfig,
    check_rate,
    check_scale,
    field_help,
)
from .hub import unreachable_hub
from .resources import shipped, shipped_names


def _shipped() -> list[str]:
    return [name.replace("--", "/") for name in shipped_names("models", ".json")]


MODEL_HELP = "model dir, config.json, shipped config name, hub id, or model type (opt, llama: its defaults)"


def load_config(ref: str, notes: list[str] | None = None):
    """A transformers config from a local dir, a config.json, a shipped published config, a hub id, or else a model
    type transformers builds (``opt``, ``llama``, ``upernet``, a sub-model's ``siglip_text_model``): its config class
    at its defaults, which ``notes`` is told (a warning where none is given)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    from .patcher import package_model_class, type_auto_class

    published = shipped("models", ref.replace("/", "--") + ".json")
    if os.path.isfile(ref):
        with open(ref) as f:
            try:
                data = json.load(f)
            except ValueError as e:  # json's own message names no file
                raise ValueError(f"{ref!r} is a file but not a JSON config: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{ref!r} holds JSON but not a config object")
    elif os.path.isdir(ref):
        if not os.path.isfile(os.path.join(ref, "config.json")):
            raise ValueError(f"{ref!r} is a directory without a config.json")
        return AutoConfig.from_pretrained(ref)
    elif published is not None:
        data = json.loads(published.read_text())
    else:
        host = unreachable_hub()
        try:  # with no hub to ask, the local cache only: huggingface_hub would retry for some 25 s first
            return AutoConfig.from_pretrained(ref, **({"local_files_only": True} if host else {}))
        except Exception:
            if type_auto_class(ref) is not None or (  # no config of that name: the architecture at its defaults
                    ref in CONFIG_MAPPING_NAMES and package_model_class(CONFIG_MAPPING[ref]) is not None):
                return _model_type_config(ref, notes)
            if ref in CONFIG_MAPPING_NAMES:
                raise ValueError(f"{ref!r} is the config of a part of a model (a sub-model) that no Auto class "
                                 f"builds: pass the model type it belongs to, or a checkpoint") from None
            raise ValueError(f"cannot find a config for {ref!r}: not a file, not a directory, not one of the "
                             f"shipped configs {_shipped()}, not a model type transformers builds (bert, llama, ...), "
                             f"and " + (f"not in the local cache, with the hub ({host}) unreachable from here"
                                        if host else "not reachable on the hub")) from None
    if "model_type" not in data:
        raise ValueError(f"{ref!r} has no model_type; not a transformers config")
    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def _model_type_config(model_type: str, notes: list[str] | None):
    from transformers import AutoConfig

    from .patcher import package_model_class, type_auto_class

    try:
        config = AutoConfig.for_model(model_type)
    except Exception as e:  # transformers raises many types for a config class that needs arguments
        raise ValueError(f"cannot make model type {model_type!r} at its defaults: {_first_line(e)}") from None
    auto = type_auto_class(model_type)  # a type with heads alone (UperNet) is built with its first
    built = (f"a sub-model's config: {package_model_class(type(config)).__name__}" if auto is None
             else "base model, no head" if auto.__name__ == "AutoModel" else f"no base model: {auto.__name__}'s head")
    note = f"{type(config).__name__}() at its defaults (a model type, not a checkpoint's config): {built}"
    if notes is None:
        warnings.warn(f"hfreg: {note}", UserWarning, stacklevel=3)
    else:
        notes.append(note)
    return config


def _first_line(e: Exception, limit: int | None = 200) -> str:
    """An exception's first line, cut at ``limit`` characters (transformers' errors may list every model type); None
    keeps it whole (hfreg's own errors, which name every allowed value)."""
    # the first line that says something (a missing optional library's message starts with an empty one)
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def _build(config, notes: list[str] | None = None, name: str | None = None, head: bool = True):
    """The model ``config`` describes, head included (`auto_class_for`, `model_from_config`; without ``head``, the
    base model): a head's Linear is where `classifier` acts (a language model's output layer too). What had to be
    left out goes to ``notes``."""
    from transformers import AutoModel

    from .patcher import auto_class_for, model_from_config

    try:
        cls = auto_class_for(config) if head else AutoModel
    except ValueError:  # architectures of remote code, or of a later transformers: the base model, said
        cls = AutoModel
        if notes is not None:
            notes.append(f"transformers does not know its architectures {config.architectures}: shown is the base "
                         f"model, without a head")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model_from_config(config, cls)
    except Exception as e:  # transformers raises many types for configs it cannot build
        what = repr(name) if name else f"a model from {type(config).__name__} ({getattr(config, 'model_type', None)})"
        raise ValueError(f"cannot build {what}: {_first_line(e)}") from None


def _meta_model(config, notes: list[str] | None = None):
    """The model ``config`` describes, head included (`auto_class_for`), on the meta device: its structure and rates,
    no memory for weights; patched with the spec its config records, if any, as `load_regularized` would. What the
    patch says (a knob that cannot act) goes to ``notes``."""
    import torch

    from .patcher import patch_model

    with torch.device("meta"):
        model = _build(config, notes)
    if getattr(config, CONFIG_ATTR, None) is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            patch_model(model)
        if notes is not None:
            notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return model


def spec_summary(config) -> str | None:
    """The spec a config records, as one line (``hidden=0.1, mixout=0.7, drop_path_profile=uniform``), or None."""
    recorded = getattr(config, CONFIG_ATTR, None)
    if recorded is None:
        return None
    reg = RegularizationConfig.from_dict(dict(recorded))
    default = RegularizationConfig()
    parts = [f"{k}={v:g}" for k, v in reg.knob_values().items()]
    for key in ("mixout_modules", "mixout_target", "drop_path_profile", "drop_path_mode", "schedule"):
        value = getattr(reg, key)
        if value != getattr(default, key):
            if key == "schedule":
                value = {k: s.kind if s.kind == "constant" else f"{s.kind}@{s.cutoff}" for k, s in value.items()}
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "no knob set"


def knob_summary(sites, knob: str) -> str:
    """The rate(s) of one knob among ``sites``: "-", one rate, two, or the range of a depth schedule."""
    rates = sorted({round(s.rate, 4) for s in sites if s.kind == knob})
    if not rates:
        return "-"
    if len(rates) > 2:
        return f"{rates[0]:g}..{rates[-1]:g}"
    return "/".join(f"{r:g}" for r in rates)


def knob_rates(config) -> dict[str, str]:
    """Canonical knob -> the rate(s) in force for a config, read off its model built on the meta device."""
    from .patcher import inspect_model

    sites = inspect_model(_meta_model(config))
    return {knob: knob_summary(sites, knob) for knob in KNOBS}


def _spec_lines(name: str, config, notes: list[str]) -> list[str]:
    """What `inspect` and `compare` say under the table: the spec a config records, and what building or patching
    its model said."""
    summary = spec_summary(config)
    lines = [] if summary is None else [f"{name}: its config records an hfreg spec, applied above as "
                                        f"hfreg.load_regularized applies it: {summary}"]
    return lines + [f"{name}: {note.removeprefix('hfreg: ')}" for note in notes]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_inspect(args):
    from .patcher import inspect_model

    notes = []
    config = load_config(args.model, notes)
    sites = inspect_model(_meta_model(config, notes))
    rows = [["path", "kind", "rate", "layer", "source", "config key"]]
    for s in sites:
        rows.append([s.path, s.kind, f"{s.rate:g}", "-" if s.layer is None else str(s.layer), s.source,
                     s.config_key or "-"])
    print(_table(rows))
    if not sites:  # Mamba, a CNN without dropout modules: an empty table alone would look like a failure
        print(f"no native site: every knob acts through hfreg's hooks where it can (`hfreg probe {args.model}` "
              f"says which)")
    for line in _spec_lines(_name(args.model), config, notes):
        print(line)
    if args.plot:
        plot_profiles([(args.model, sites)], args.plot)


def _name(ref: str) -> str:
    """A model's title in tables and plots: a hub id's or shipped config's last part; a local path's last two, as a
    folder's own name (a package's ``model/``) often says little."""
    if not os.path.exists(ref):
        return os.path.basename(ref.rstrip("/"))
    path = os.path.normpath(ref)
    path = os.path.abspath(path) if path.split(os.sep)[0] in (".", "..") else path  # "." names no folder
    return "/".join(path.split(os.sep)[-2:]).lstrip("/")


def cmd_compare(args):
    from .patcher import inspect_model

    models, said = [], []
    for ref in args.models:
        notes = []
        config = load_config(ref, notes)
        models.append((ref, inspect_model(_meta_model(config, notes))))
        said += _spec_lines(_name(ref), config, notes)
    rows = [["knob"] + [_name(ref) for ref, _ in models]]
    for knob in KNOBS:
        rows.append([knob] + [knob_summary(sites, knob) for _, sites in models])
    print(_table(rows))
    for line in said:
        print(line)
    if args.plot:
        plot_profiles(models, args.plot)


def depth_profile(sites) -> tuple:
    """(knobs × columns matrix of the highest rate in force, NaN where the knob has no site; column labels): one
    column per layer index, then one for sites outside the layers (embeddings, heads)."""
    import numpy as np

    depth = max((s.layer for s in sites if s.layer is not None), default=-1) + 1
    grid = np.full((len(KNOBS), depth + 1), np.nan)
    for s in sites:
        row, col = KNOBS.index(s.kind), depth if s.layer is None else s.layer
        grid[row, col] = s.rate if np.isnan(grid[row, col]) else max(grid[row, col], s.rate)
    return grid, [str(i) for i in range(depth)] + ["out"]


def plot_profiles(models, path: str) -> None:
    """Small multiples, one heatmap per model: each knob's rate in force against layer depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    profiles = [(ref, *depth_profile(sites)) for ref, sites in models]
    top = max([float(np.nanmax(g, initial=0.0)) for _, g, _ in profiles] + [0.1])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")  # grey: no site for that knob there
    height = 1.2 + 0.22 * len(KNOBS)  # a readable row per knob
    fig, axes = plt.subplots(1, len(profiles), figsize=(1.5 + 3.2 * len(profiles), height), squeeze=False)
    for ax, (ref, grid, labels) in zip(axes[0], profiles):
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=top,
                          interpolation="nearest")
        ax.set_title(_name(ref), fontsize=9)
        ax.set_yticks(range(len(KNOBS)), KNOBS if ax is axes[0][0] else [""] * len(KNOBS), fontsize=8)
        step = max(1, len(labels) // 8)
        ticks = list(range(0, len(labels) - 1, step)) + [len(labels) - 1]
        ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7)
    fig.supxlabel("layer (out: outside the layers, e.g. embeddings and heads; grey: no site)", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label="rate in force")
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")  # tight: the knob names are never clipped
    except OSError as e:
        raise ValueError(f"cannot write the plot to {path!r}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    print(f"wrote {path}")


# files that hold a model's weights, in any format (`.bin` and `.safetensors` mark a folder as a model's)
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".index.json")
# what a Trainer checkpoint holds besides the model: left out
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json", "rng_state")
# files that hold a tokenizer
_TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
              "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model"}


def _output_dir(args) -> str:
    given = [d for d in (args.output, args.output_dir) if d]
    if not given:
        raise ValueError("no output directory: give it as `hfreg patch MODEL OUT` or `-o OUT`")
    if len(given) == 2 and os.path.abspath(given[0]) != os.path.abspath(given[1]):
        raise ValueError(f"two output directories, {given[0]!r} and {given[1]!r}: give one")
    return given[0]


def _copy_folder(src: str, out: str) -> tuple[list[str], list[str]]:
    """Copy what a model folder holds besides its config into ``out`` (weights unchanged: a patch never changes
    them; tokenizer, processor, generation config, model card): (copied, left out). Left out: a Trainer's training
    state, and sub-folders that hold weights (another format's export, a sentence-transformers dense layer); hidden
    files are skipped."""
    import shutil

    copied, left = [], []
    for name in sorted(os.listdir(src)):
        path, dest = os.path.join(src, name), os.path.join(out, name)
        if name.startswith(".") or name in ("config.json", CONFIG_NAME) or os.path.exists(dest):
            continue
        if name.startswith(_TRAINING_STATE):
            left.append(name)
        elif os.path.isdir(path):
            if any(f.endswith(_WEIGHTS) for _, _, files in os.walk(path) for f in files):
                left.append(name + "/")
            else:
                shutil.copytree(path, dest)
                copied.append(name + "/")
        elif os.path.isfile(path):
            shutil.copy2(path, dest)
            copied.append(name)
    return copied, left


def cmd_patch(args):
    from .patcher import patch_config

    out = _output_dir(args)
    if args.mixout_target is not None and args.mixout is None:
        raise ValueError(f"--mixout_target {args.mixout_target} needs a rate: add --mixout P (DropConnect's p)")
    reg = RegularizationConfig(**{k: getattr(args, k) for k in KNOBS}, drop_path_profile=args.drop_path_profile,
                               drop_path_mode=args.drop_path_mode, mixout_target=args.mixout_target)
    notes = []
    config = patch_config(load_config(args.model, notes), reg)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"output directory {out!r} is a file: give a new or empty directory")
    if os.path.exists(out) and os.listdir(out):  # never mixed with an earlier model's files
        raise ValueError(f"output directory {out!r} exists and is not empty: give a new or empty directory")
    try:  # which knobs act, as `load_regularized` will apply them (built on the meta device: no weights read)
        _meta_model(config, notes)
    except Exception as e:  # transformers raises many types for configs it cannot build
        notes.append(f"not checked which knobs act: {e}")
    config.save_pretrained(out)
    reg.save_pretrained(out)
    folder = os.path.isdir(args.model)
    copied, left = _copy_folder(args.model, out) if folder else ([], [])
    weights = [f for f in copied if f.endswith(_WEIGHTS)]
    tokenizer = [f for f in copied if f in _TOKENIZER]
    other = [f for f in copied if f not in weights and f not in tokenizer]
    source = f"{args.model} is not a model folder" if not folder else f"{args.model} has none"
    lines = [f"wrote {out}:",
             "  config.json        native keys set, spec recorded (hfreg.load_regularized applies it)",
             f"  {CONFIG_NAME}  the spec alone",
             f"  weights            {', '.join(weights) + ' (copied unchanged)' if weights else 'none: ' + source}",
             f"  tokenizer          {', '.join(tokenizer) if tokenizer else 'none: ' + source}"]
    if other:
        lines.append(f"  also copied        {', '.join(other)}")
    if left:
        lines.append(f"  left out           {', '.join(left)} (training state, or weights of another format or "
                     f"module)")
    print("\n".join(lines + [f"note: {n.removeprefix('hfreg: ')}" for n in notes]))


def cmd_probe(args):
    from transformers import AutoModel

    from .patcher import type_auto_class
    from .probing import probe
    from .twin import small_twin

    notes = []
    config = load_config(args.model, notes)
    built = config if args.full else small_twin(config)
    if getattr(built, "pad_token_id", 0) is None and any(
            a.endswith("ForSequenceClassification") for a in getattr(built, "architectures", None) or []):
        built.pad_token_id = 0  # a decoder's classifier finds each row's end by its pad token, which it then lacks
    model = _build(built, notes, args.model)
    with warnings.catch_warnings(record=True) as said:  # what a knob says as it runs: notes under the table
        warnings.simplefilter("always")
        try:
            try:
                results = probe(model, rate=args.rate)
            except Exception as e:
                if type_auto_class(getattr(built, "model_type", None)) is not AutoModel:
                    raise  # a type with heads alone (UperNet): no base model to fall back on
                base = _build(built, None, args.model, head=False)  # not `base_model`: BLIP's and T5's heads
                if type(base) is type(model):                         # keep their body under other names
                    raise
                # a head that needs inputs of its own (a decoder's classifier without a pad token, multiple choice)
                notes.append(f"shown is the base model: its head, {type(model).__name__}, does not run on a "
                             f"generic input ({type(e).__name__}: {_first_line(e)})")
                results = probe(base, rate=args.rate)
        except Exception as e:  # a model whose forward needs more than one generic input (CLIP: text and pixels)
            raise ValueError(f"cannot probe {args.model!r} with a generic input: {type(e).__name__}: "
                             f"{_first_line(e)}") from None
    notes += dict.fromkeys(str(w.message).removeprefix("hfreg: ") for w in said  # once each
                           if issubclass(w.category, UserWarning) and str(w.message).startswith("hfreg: "))
    what = "the model as configured" if args.full else "a small twin (same architecture and code path, usually " \
                                                       "2 layers, width 64, random weights)"
    print(f"{args.model}: each site turned on alone at {args.rate:g}, all else off, on {what}; "
          f"acts = the training-mode output changes")
    rows = [["path", "kind", "source", "rate", "acts", "note"]]
    for r in results:
        note = r.note or ("dead: forward never reads it" if r.dead else "" if r.acts else
                          # inspect leaves out native sites the twin shows inert, not a knob's injected ones
                          "patched, but without effect here" if r.source == "hfreg" else
                          "runs without effect: inspect leaves it out" if r.exercised else
                          "not reached by this input (proves nothing)")
        rows.append([r.path, r.kind, r.source, "-" if r.source == "hfreg" else f"{r.rate:g}",
                     "yes" if r.acts else "no", note])
    print(_table(rows))
    sites = [r for r in results if r.source != "hfreg"]
    print(f"{len(sites)} native sites: {sum(r.acts for r in sites)} act, {sum(r.dead for r in sites)} dead as "
          f"expected, {sum(not r.acts and not r.dead and r.exercised for r in sites)} without effect, "
          f"{sum(not r.acts and not r.dead and not r.exercised for r in sites)} not reached; "
          f"knobs through hfreg that act: "
          f"{', '.join(r.kind for r in results if r.source == 'hfreg' and r.acts) or 'none'}")
    for note in notes:
        print(f"note: {note}")


def cmd_report(args):
    from .finetune.report import report_dir, report_many

    pooled = report_many(args.output_dirs, args.out, make_plots=not args.no_plots, select_by=args.select_by,
                         margins=args.margin)
    for d in args.output_dirs:
        with open(os.path.join(report_dir(d, args.out), "findings.md")) as f:
            print(f.read())
    print(pooled)


def cmd_export(args):
    from .finetune.export import recreate

    done = recreate(args.output_dir, args.data_flags, args.preset, args.train_size, args.seed, args.learning_rate,
                    args.experiment, args.save_strategy, args.select_by, args.out)
    same = done["kept_step"] == done["recorded_step"]
    print(f"kept step {done['kept_step']} in {done['path']}; the record's run kept step {done['recorded_step']}"
          f"{'' if same else ' (the re-created run chose differently)'}; largest difference from the record's "
          f"selection loss at an evaluation point: {done['max_selection_loss_diff']:.2g}")


def _number(check, allowed: str):
    """An argparse type: a float that ``check`` accepts, else a usage error saying what is ``allowed``."""

    def parse(text):
        try:
            value = float(text)
            check("value", value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        return value

    return parse


def _check_turned_on(name: str, value: float) -> None:
    check_rate(name, value)
    if value == 0:  # probe at 0 turns nothing on: every site would read as dead
        raise ValueError(f"`{name}` must be above 0, got 0")


_rate = _number(check_rate, "a float in [0, 1)")
_on_rate = _number(_check_turned_on, "a float in (0, 1)")
_scale = _number(check_scale, "a finite float >= 0")


class _Parser(argparse.ArgumentParser):
    """argparse whose user errors are one line (exit 2) naming the subcommand's --help, not a usage dump; the
    subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hfreg", description="Where and how strongly transformers regularize; one spec to change it.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="every dropout / drop-path / LayerDrop site of a model: path, kind, rate, "
                                       "layer, source, config key")
    s.add_argument("model", help=MODEL_HELP)
    s.add_argument("--plot", metavar="FILE.png", help="also draw each knob's rate against layer depth")
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("compare", help="the canonical knobs of several configs or models, side by side")
    s.add_argument("models", nargs="+", help=f"each a {MODEL_HELP}")
    s.add_argument("--plot", metavar="FILE.png", help="also draw, per model, each knob's rate against layer depth")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("patch", help="write a patched model folder: config (native keys set, spec recorded), and "
                                     "the weights, tokenizer and other files of a model dir")
    s.add_argument("model", help=f"{MODEL_HELP}; all but a model dir give a config alone")
    s.add_argument("output", nargs="?", help="the output directory (or -o)")
    s.add_argument("-o", "--output_dir", help="the output directory")
    for knob in KNOBS:
        scale = knob in SCALES
        s.add_argument(f"--{knob}", type=_scale if scale else _rate, default=None,
                       metavar="SCALE" if scale else "RATE",
                       help=f"{field_help(knob)} ({'a scale >= 0' if scale else 'a rate in [0, 1)'}; unset: as the "
                            f"model has it)")
    s.add_argument("--mixout_target", default=None, choices=MIXOUT_TARGETS,
                   help="zero: a dropped weight becomes 0, which makes --mixout DropConnect (Wan et al., 2013) with "
                        "inverted scaling; needs --mixout (default: a dropped weight takes its value at patch time, "
                        "Mixout)")
    s.add_argument("--drop_path_profile", default="linear", choices=DROP_PATH_PROFILES,
                   help=f"{field_help('drop_path_profile')} (default linear)")
    s.add_argument("--drop_path_mode", default="per_sample", choices=DROP_PATH_MODES,
                   help=f"{field_help('drop_path_mode')} (default per_sample)")
    s.set_defaults(func=cmd_patch)
    s = sub.add_parser("probe", help="whether each site and knob actually changes training: dead knobs show up")
    s.add_argument("model", help=MODEL_HELP)
    s.add_argument("--full", action="store_true", help="build the model as configured, not a small twin")
    s.add_argument("--rate", type=_on_rate, default=0.5, help="the rate each site is turned on at, in (0, 1) "
                                                              "(default 0.5)")
    s.set_defaults(func=cmd_probe)
    from .finetune.records import SELECT_BY, margins_arg

    s = sub.add_parser("report", help="rebuild findings.md, the summary files and plots from runs.jsonl; pool "
                                      "several result directories")
    s.add_argument("output_dirs", nargs="+", metavar="output_dir")
    s.add_argument("--out", default=None, help="where pooled.json and pooled.md go (default: the one output_dir)")
    s.add_argument("--select_by", default=None, choices=SELECT_BY,
                   help="the selection-split metric that picks each run's early-stopping point and each preset's "
                        "learning rate (ties: the earliest point; default: accuracy for classification, loss for "
                        "regression)")
    s.add_argument("--margin", type=margins_arg, default={}, metavar="METRIC=VALUE[,...]",
                   help="equivalence margins, e.g. test_accuracy=0.01,test_loss=0.05 (defaults: 0.02 for "
                        "test_accuracy, test_nll_ts, test_r2 and test_spearman)")
    s.add_argument("--no_plots", action="store_true")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("export", help="re-create one recorded run's model (as --save_strategy keeps it) by training "
                                      "it again from its record",
                       epilog="Any other flag is one of the grid's data flags (--train_file, --validation_file, "
                              "--test_file, --dataset_name, --task_name, --max_eval_samples): the record identifies "
                              "the data by their sha256 but does not say where they are.")
    s.add_argument("output_dir", help="the grid's --output_dir (its runs.jsonl)")
    s.add_argument("--preset", required=True, help="the recorded run's preset (classic, hidden=0.1, ...)")
    # the run's other fields: needed only where the preset alone names several runs (the error lists their values)
    s.add_argument("--train_size", type=int, default=None, help="its training size, where the grid ran several")
    s.add_argument("--seed", type=int, default=None, help="its seed, where the grid ran several")
    s.add_argument("--learning_rate", type=float, default=None, help="its learning rate, where the grid ran several")
    s.add_argument("--experiment", default="default", help="its experiment, where the directory holds several "
                                                           "(default: default)")
    s.add_argument("--save_strategy", default="best", choices=("best", "final"),
                   help="the point whose weights are kept: the one --select_by picks (default) or the last")
    s.add_argument("--select_by", default=None, choices=SELECT_BY, help="default: the task's (accuracy, loss)")
    s.add_argument("--out", default=None, help="default: OUTPUT_DIR/models/EXPERIMENT/PRESET/nSIZE-sSEED-lrLR/")
    s.set_defaults(func=cmd_export, data_flags=[])
    for s in sub.choices.values():  # a flag the subcommand lacks is its error, pointing to its --help
        s.set_defaults(subparser=s)
    return p


@contextmanager
def _transformers_quiet():
    """transformers' logging at errors only: what building or running a model for its sites logs (a kernel's slower
    fallback, an attention implementation chosen) says nothing about its rates."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = parser.parse_known_args(argv)
    before = argv[:argv.index(args.command)]  # what stands before the command is hfreg's own, not the command's
    if any(r in before for r in rest):
        parser.error(f"unrecognized arguments: {' '.join(r for r in rest if r in before)}")
    if rest and args.func is not cmd_export:  # only export passes flags on (the grid's data flags)
        args.subparser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.data_flags = rest
    try:
        with _transformers_quiet() if args.func in (cmd_inspect, cmd_compare, cmd_probe) else nullcontext():
            args.func(args)
    except BrokenPipeError:  # `hfreg inspect ... | head`: the reader has what it wanted
        sys.stdout = None  # nothing left to flush at exit, where it would fail again
        return 0
    except (ValueError, OSError) as e:
        print(f"hfreg: error: {_first_line(e, limit=None)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
