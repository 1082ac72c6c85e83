"""Which transformers model types pass the patcher's invariants, built as small twins from their default configs.

    .venv/bin/python benchmarks/coverage.py --output docs/coverage.md [--limit N] [--types bert,gpt2]
    # on two cores: two shards at once, then one table
    .venv/bin/python benchmarks/coverage.py --shard 0/2 --output /tmp/a & \
    .venv/bin/python benchmarks/coverage.py --shard 1/2 --output /tmp/b; wait
    .venv/bin/python benchmarks/coverage.py --merge /tmp/a.json /tmp/b.json --output docs/coverage.md

For every model type transformers knows: its default config shrunk by `hfreg.small_twin` (2 layers, width 64),
the base model (`AutoModel`; for a type with heads alone, as UperNet, its first head, and for a sub-model's config
the class made for it: `hfreg.auto_class_for`, as `hfreg probe <type>` builds), inputs from `hfreg.probe_inputs`.
A type counts as buildable when the unpatched twin runs in eval and train mode with finite outputs and an eval
output that does not depend on the seed. The invariants, each on a fresh twin where it matters:
  eval      eval output bit-identical under a spec setting every knob (0.3)
  keys      state_dict keys and values unchanged by that patch
  zero      `disable_dropout` passes: the all-zero spec makes training deterministic
  knob:X    knob X alone at 0.5 changes training output (reproducibly), or warns that it cannot apply; for
            `mixout`, which mixes towards the weights at patch time, after a small step of every weight
  unpatch   `unpatch_model` gives back the unpatched training output and hooks
  keeps:X   knob X alone at 0.5 acts, by `inspect_model`, in every layer (and every site outside layers) where
            the unpatched model's X acted, and where none of X acts after the patch (it warned), every native site
            of X is as it was
  branches  with every branch end of a layer giving zeros (every branch dropped), the layer still passes its
            input on (as it is, or normalised): checked in eval mode on the first layer of each stack and class
            that the inputs reach and whose output depends on its input hidden states, called alone on them and
            on other ones
Near-zero initialisations (an `initializer_range` of 1e-10, layer scales of 1e-6) are set to a usual scale by
`small_twin`, and weights initialised to exactly zero (zero-init residual branches, gates) are drawn from
N(0, 0.02), as a trained checkpoint has them: dropout on a branch whose output is ~0 cannot be seen; BatchNorm
is not special-cased. Passes are seeded (torch, numpy, random); `zero` passes two different seeds after
`disable_dropout`, which also switches off the training noise it knows (`hfreg.architectures.NOISE_KEYS` and
`NOISE_MODULES`); other noise fails it. `knob:X` is judged with that noise off too, so that a knob is seen to act
only where it draws. Each type runs under a time limit; a type over it counts as not buildable.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hfreg  # noqa: E402
import hfreg.sites  # noqa: E402
from hfreg import KNOBS  # noqa: E402
from hfreg import RegularizationConfig as Reg
from hfreg.probing import _move_weights, _output_tensors, _switch_off_noise  # nested outputs: feature maps too

KNOBS_CHECKED = tuple(k for k in KNOBS if k not in ("classifier", "adapter"))  # base models, no adapters


class Timeout(BaseException):  # not an Exception: library code catching those must not swallow it
    pass


def _alarm(signum, frame):
    raise Timeout()


def outputs(model, inputs, train, seed):
    model.train(train)
    torch.manual_seed(seed)
    np.random.seed(seed)  # some models draw training noise with numpy (SpecAugment masks); reproducible too
    random.seed(seed)
    with torch.no_grad():
        out = model(**inputs)
    return [v.detach().clone() for v in _output_tensors(out) if v.is_floating_point()]


def train_out(model, inputs, seed):
    return outputs(model, inputs, True, seed)


def eval_out(model, inputs, seed=0):
    return outputs(model, inputs, False, seed)


def same(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def build(model_type):
    from transformers import AutoConfig

    from hfreg.patcher import model_from_config

    config = hfreg.small_twin(AutoConfig.for_model(model_type))
    config.architectures = config.architectures or []  # AutoModel reads it for types with several classes (Funnel)
    torch.manual_seed(0)
    # what `hfreg probe <type>` builds: the base model, a type's only head (UperNet), a sub-model's class (…TextModel)
    model = model_from_config(config)
    with torch.no_grad():  # zero-initialised branch outputs and gates (NeoMME): drawn as a checkpoint would have them
        for name, p in model.named_parameters():
            if not name.endswith("bias") and p.is_floating_point() and p.numel() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    return model


def keeps(before, after, knob) -> bool:
    """The invariant of a knob patched at a rate > 0, from `inspect_model` before and after: it acts in at least
    the places it acted before (counted per layer: one hook at a block's branch end may replace two native sites of
    that block), and where it cannot act at all, the model's own sites of it keep their rates."""
    was = {s.path: s.rate for s in before if s.kind == knob}
    now = [s for s in after if s.kind == knob]
    if not any(s.rate for s in now):
        return {s.path: s.rate for s in now if s.path in was} == was

    def places(sites):
        return {s.path if s.layer is None else s.layer for s in sites if s.rate}

    return places(now) >= places(s for s in before if s.kind == knob)


def passes_input_on(model, inputs) -> bool:
    """The `branches` invariant: drop-path's premise, that each branch end's output joins the residual stream after
    it (a branch end that adds the residual itself, as MPT's MLP, would zero the stream instead)."""
    # the first layer of each stack and class: its siblings share its code (a 1024-pixel vision tower's are costly)
    firsts = {}
    for x in hfreg.sites.analyze(model).layers:
        if x.branches and not x.parallel:
            firsts.setdefault((hfreg.sites.stack_key(x.path), type(x.module)), x)
    layers = list(firsts.values())
    seen = {}
    handles = [x.module.register_forward_pre_hook(
        lambda m, a, k, p=x.path: seen.setdefault(p, (a, k)) and None, with_kwargs=True) for x in layers]
    try:
        eval_out(model, inputs)
    finally:
        for h in handles:
            h.remove()
    g = torch.Generator().manual_seed(0)
    for layer in layers:
        if layer.path not in seen:  # a part the inputs never reach
            continue
        args, kwargs = seen[layer.path]
        positional = bool(args) and torch.is_tensor(args[0])
        x = args[0] if positional else kwargs.get("hidden_states")
        if not torch.is_tensor(x) or not x.is_floating_point():
            continue
        # unit-scale, not the input's own: some encoders' hidden states are ~1e-12 in a small twin
        other = (torch.randn(x.shape, generator=g) + 0.5).to(x)

        def run(h, zero):
            call = ((h, *args[1:]), kwargs) if positional else (args, {**kwargs, "hidden_states": h})
            zeroed = [m.register_forward_hook(lambda mod, a, out: hfreg.hooks.map_first(out, torch.zeros_like))
                      for _, m in layer.branches] if zero else []
            try:
                with torch.no_grad():  # the hidden states: the first tensor (not attention weights beside it)
                    return [t.detach().clone() for t in _output_tensors(layer.module(*call[0], **call[1]))
                            if t.is_floating_point()][:1]
            finally:
                for handle in zeroed:
                    handle.remove()

        try:
            if close(run(x, False), run(other, False)):  # an output that ignores its input proves nothing
                continue
            if close(run(x, True), run(other, True)):
                return False
        except Timeout:
            raise
        except Exception:  # a layer that cannot be called alone on these arguments: not checked
            continue
    return True


def close(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


def check(model_type) -> tuple[str, list[str], str, list[str]]:
    """(status, failed checks, note, knobs that warned): status is "pass" (every knob acts), "warns" (every
    invariant holds; some knobs cannot act and say so at patch time), "fail" or "unbuildable"."""
    try:
        model = build(model_type)
        inputs = hfreg.probe_inputs(model)
        train_out(model, inputs, 0)  # a first pass may rebuild modules (BigBird: full attention for short inputs)
        t1 = train_out(model, inputs, 1)  # before eval: train passes move BatchNorm statistics, eval ones do not
        e1, e2 = eval_out(model, inputs, 0), eval_out(model, inputs, 1)
        if not e1 or not same(e1, e2) or not all(torch.isfinite(x).all() for x in e1 + t1):
            return "unbuildable", [], "eval output empty, not finite or seed-dependent", []
    except Timeout:
        raise
    except Exception as e:  # anything a default config or generic input cannot do
        return "unbuildable", [], f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}", []
    failed, warned, knobs = [], [], []
    try:
        full = Reg(**{k: 0.3 for k in KNOBS_CHECKED})
        state = {k: v.clone() for k, v in model.state_dict().items()}
        hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
        if not passes_input_on(model, inputs):
            failed.append("branches")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hfreg.patch_model(model, full)
        if not same(eval_out(model, inputs, 0), e1):
            failed.append("eval")
        after = model.state_dict()
        if list(after) != list(state) or any(not torch.equal(after[k], v) for k, v in state.items()):
            failed.append("keys")
        hfreg.unpatch_model(model)
        if not same(train_out(model, inputs, 1), t1) or hooks != [
                (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]:
            failed.append("unpatch")
        try:
            hfreg.disable_dropout(model, inputs)
        except RuntimeError:
            failed.append("zero")
        hfreg.unpatch_model(model)
        native = hfreg.inspect_model(model)
        for knob in KNOBS_CHECKED:
            with warnings.catch_warnings(record=True) as caught:  # at patch time, or at the first forward
                warnings.simplefilter("always")
                hfreg.patch_model(model, Reg(**{**Reg.zero().knob_values(), knob: 0.5}))
                _switch_off_noise(model)  # SpecAugment masks, MoE jitter, Gumbel noise: not the knob's doing
                if knob == "mixout":  # it mixes towards the weights at patch time: seen once training moved them
                    weights = {k: v.clone() for k, v in model.state_dict().items()}
                    _move_weights(model, 1e-2)  # a small step, as one of training would take
                first = train_out(model, inputs, 1)
            if not keeps(native, hfreg.inspect_model(model), knob):
                failed.append(f"keeps:{knob}")
            caught = [w for w in caught if str(w.message).startswith("hfreg:")]
            acts = same(first, train_out(model, inputs, 1)) and any(
                not same(first, train_out(model, inputs, s)) for s in range(2, 6))
            if caught:
                # the patch-time warning says why: "...cannot apply to <type> (<Class>): <why>"
                warned.append(f"{knob} ({str(caught[0].message).split('): ', 1)[-1]})")
                knobs.append(knob)
            elif not acts:
                failed.append(f"knob:{knob}")
            if knob == "mixout":
                model.load_state_dict(weights)
        hfreg.unpatch_model(model)
    except Timeout:
        raise
    except Exception as e:
        failed.append(f"error ({type(e).__name__})")
    status = "fail" if failed else "warns" if warned else "pass"
    return status, failed, ("warns: " + "; ".join(warned)) if warned else "", knobs


def main(argv=None) -> int:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="docs/coverage.md")
    p.add_argument("--types", default=None, help="comma-separated model types (default: all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N types")
    p.add_argument("--seconds", type=int, default=90, help="time limit per type")
    p.add_argument("--shard", default="0/1", help="i/n: every n-th type from the i-th, its rows to OUTPUT.json; "
                                                  "run n shards at once, then --merge their .json files")
    p.add_argument("--merge", nargs="+", default=None, help="shards' .json rows to write as one OUTPUT (a later "
                                                            "file's row for a type replaces an earlier one)")
    args = p.parse_args(argv)
    types = args.types.split(",") if args.types else sorted(CONFIG_MAPPING_NAMES)
    types = types[:args.limit] if args.limit else types
    if args.merge:
        shards = [json.load(open(path)) for path in args.merge]
        # a later file's row for a type replaces an earlier one: a re-run of some types updates a full run
        rows = sorted({r[0]: tuple(r) for shard in shards for r in shard["rows"]}.values(),
                      key=lambda r: types.index(r[0]))
        write(args.output, rows, max(s["seconds"] for s in shards), len(types), shards[0]["limit"])
        return 0
    i, n = (int(x) for x in args.shard.split("/"))
    types = types[i::n]
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    rows, started = [], time.time()
    logging_off()
    for i, model_type in enumerate(types):
        signal.alarm(args.seconds)
        try:
            status, failed, note, knobs = check(model_type)
        except Timeout:
            status, failed, note, knobs = "unbuildable", [], f"over {args.seconds} s", []
        finally:
            signal.alarm(0)
        rows.append((model_type, status, failed, note, knobs))
        print(f"[{i + 1}/{len(types)}] {model_type}: {status} {' '.join(failed)} {note}", flush=True)
        if n > 1:
            with open(args.output + ".json", "w") as f:
                json.dump({"rows": rows, "seconds": time.time() - started, "limit": args.seconds}, f)
        else:  # as it goes: a stopped run keeps its rows
            write(args.output, rows, time.time() - started, len(types), args.seconds)
    return 0


def logging_off():
    from transformers.utils import logging

    logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def write(path, rows, seconds, total, limit):
    import platform

    import transformers

    counts = collections.Counter(status for _, status, _, _, _ in rows)
    buildable = counts["pass"] + counts["warns"] + counts["fail"]
    by_check = collections.Counter(c for _, _, failed, _, _ in rows for c in failed)
    built = [r for r in rows if r[1] != "unbuildable"]
    per_knob = [(k, sum(k not in r[4] and not any(c.endswith(":" + k) for c in r[2]) for r in built),
                 sum(k in r[4] for r in built), sum(any(c.endswith(":" + k) for c in r[2]) for r in built))
                for k in KNOBS_CHECKED]
    lines = [
        "# Patcher coverage over transformers model types",
        "",
        f"`benchmarks/coverage.py` on transformers {transformers.__version__}, torch {torch.__version__}, "
        f"{platform.machine()}, {seconds / 60:.0f} min, {len(rows)} of {total} types, {limit} s per type at most"
        f"{' (alphabetical, from the first)' if len(rows) < total else ''}. Each type: its default config as a "
        f"small twin (`hfreg.small_twin`), the base model (a type with heads alone: its first head), inputs from "
        f"`hfreg.probe_inputs`; the invariants are listed in the script's docstring.",
        "",
        f"**{counts['pass'] + counts['warns']} of {buildable} buildable types pass every invariant** "
        f"({100 * (counts['pass'] + counts['warns']) / max(buildable, 1):.1f}%): {counts['pass']} with every "
        f"knob acting, {counts['warns']} where some knobs cannot act and warn at patch time (listed below); "
        f"{counts['fail']} fail at least one. {counts['unbuildable']} of {len(rows)} types could not be built or "
        f"fed generically.",
        "",
        "Each knob over the buildable types: where it acts, where it cannot and warns (the note of each type below "
        "says why), where a check of it fails.",
        "",
        "| knob | acts | warns | fails |",
        "|---|---|---|---|",
        *[f"| `{k}` | {a} | {w} | {f} |" for k, a, w, f in per_knob],
        "",
        "| failing check | types |",
        "|---|---|",
        *[f"| {c} | {n} |" for c, n in by_check.most_common()],
        "",
        "Types that fail a check or where a knob cannot act:",
        "",
        "| type | status | failing checks | note |",
        "|---|---|---|---|",
        *[f"| {t} | {s} | {' '.join(f)} | {n} |" for t, s, f, n, _ in rows if s in ("fail", "warns")],
        "",
        "Every knob acts: " + ", ".join(t for t, s, _, _, _ in rows if s == "pass") + ".",
        "",
        "Not buildable here:",
        "",
        *[f"- {t}: {n}" for t, s, f, n, _ in rows if s == "unbuildable"],
        "",
    ]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
