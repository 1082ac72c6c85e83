"""MC-dropout: uncertainty from dropout at inference (Gal & Ghahramani, 2016, "Dropout as a Bayesian
Approximation").

Inside `mc_dropout(model)` the model is in eval mode except where a dropout site is in force (the sites
`inspect_model` lists): `nn.Dropout` modules and modules reading a float rate switch to training mode, hfreg's own
hooks sample while their modules stay in eval mode; normalization and everything else stay in eval mode. On exit
every module's mode is as before. `mc_predict` averages K such passes, batched.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .config import KNOBS, SAMPLING
from .hooks import SAMPLE_FLAG
from .patcher import inspect_model
from .state import patch_state, set_rate_factors, unwrap

# the knobs that are dropout sampling (`hfreg.config.knob`'s ``sampling``): LayerDrop skips whole layers, Mixout mixes
# in the weights at patch time (or, as DropConnect, drops weights: a mask per forward) and NEFTune adds noise; opt in
# to those with knobs=
MC_KNOBS = SAMPLING


def _sampling_modules(model, knobs):
    """The modules to put in training mode (native sites: dropout modules and modules reading a float rate), the
    modules whose hfreg hooks must sample (injected sites: their module itself stays in eval mode, which matters
    for a branch that ends in a normalization layer), the sites nothing can turn on (a config rate read in forward:
    the reader is unknown) and those whose module is no longer at their path."""
    modules = dict(model.named_modules())
    native, hooked, unreachable, moved = {}, {}, [], []
    for s in inspect_model(model):
        if s.kind not in knobs or not s.rate:
            continue
        path = s.path.split(":")[0].removesuffix(".<input>")
        if s.source == "config":
            unreachable.append(s.path)
        elif path not in modules:
            moved.append(s.path)
        else:
            (hooked if s.source == "injected" else native)[path] = modules[path]
    return list(native.values()), list(hooked.values()), unreachable, moved


def _knob_names(knobs) -> tuple[str, ...]:
    """``knobs`` as a tuple of known knob names (one name alone is one knob, not its letters)."""
    knobs = (knobs,) if isinstance(knobs, str) else tuple(knobs)
    for k in knobs:
        if k not in KNOBS:
            raise ValueError(f"unknown knob {k!r}; allowed: {list(KNOBS)}")
    return knobs


@contextlib.contextmanager
def mc_dropout(model: nn.Module, knobs: tuple[str, ...] | list[str] = MC_KNOBS) -> Iterator[nn.Module]:
    """A context in which the dropout sites of ``knobs`` sample while everything else runs in eval mode (MC
    dropout, Gal and Ghahramani, 2016); on leaving, every module's mode is as it was.

    Args:
        model: a model, patched or not (native sites sample too).
        knobs: the knobs that sample (default every dropout knob; LayerDrop, Mixout and NEFTune only when named).

    Returns:
        A context manager yielding ``model``.

    Raises:
        ValueError: an unknown knob name.

    Example:
        >>> import torch, hfreg, transformers
        >>> model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.3))
        >>> ids = torch.tensor([[101, 2000, 2001, 102]])
        >>> with hfreg.mc_dropout(model.eval()):
        ...     a, b = model(ids).last_hidden_state, model(ids).last_hidden_state
        >>> bool((a != b).any()), model.training
        (True, False)
    """
    knobs = _knob_names(knobs)
    inner = unwrap(model, wrapped=True)
    modes = [(m, m.training) for m in inner.modules()]
    # a module samples as a whole, and one may hold several knobs (a layer: injected embedding dropout and
    # LayerDrop; a branch: hidden dropout and drop-path): the patched knobs not asked for sample at rate 0 meanwhile,
    # the named ones at their rates outside every mc_dropout (a nested one turns on what an outer one silenced)
    state = patch_state(inner)
    saved = dict(state.factors) if state is not None else None
    outside = (state.mc_outside or saved) if state is not None else None
    if state is not None:
        set_rate_factors(inner, {k: outside[k] if k in knobs else 0.0 for k in KNOBS})
        state.mc_outside = outside
    flagged = []
    try:
        native, hooked, unreachable, moved = _sampling_modules(inner, knobs)  # at the rates now in force
        if unreachable:
            warnings.warn(f"hfreg: mc_dropout cannot sample {', '.join(unreachable)} (a rate read from the config "
                          f"in forward); patch the model with hfreg so that its own hooks carry that knob",
                          UserWarning, stacklevel=3)
        if moved:
            warnings.warn(f"hfreg: mc_dropout cannot sample {', '.join(moved)}: no module is at that path now (a "
                          f"module around it was wrapped after the patch, as PEFT's `modules_to_save` does); patch "
                          f"after wrapping", UserWarning, stacklevel=3)
        if not native and not hooked:
            warnings.warn(f"hfreg: {type(inner).__name__} has no dropout site in force for {list(knobs)}: every MC "
                          f"sample equals the eval output", UserWarning, stacklevel=3)
        inner.eval()
        for m in native:
            m.training = True  # this module only: its children stay in eval mode
        flagged = [m for m in hooked if SAMPLE_FLAG not in m.__dict__]  # an outer mc_dropout's flags stay its own
        for m in flagged:
            setattr(m, SAMPLE_FLAG, True)
        yield model
    finally:
        if state is not None:
            set_rate_factors(inner, saved)
            if outside is saved:  # the outermost one
                state.mc_outside = None
        for m in flagged:
            m.__dict__.pop(SAMPLE_FLAG, None)
        for m, mode in modes:
            m.training = mode


@dataclass
class MCPrediction:
    """What `mc_predict` returns: the predictive distribution of K MC-dropout passes and its uncertainty.

    Args:
        probs: ``(batch, classes)``, the mean of the samples' probabilities.
        entropy: ``(batch,)``, the predictive entropy of ``probs``, in nats.
        mutual_information: ``(batch,)``, the entropy minus the samples' mean entropy (the epistemic part).
        samples: ``(samples, batch, classes)``, each pass's probabilities.

    Example: see `mc_predict`.
    """

    probs: torch.Tensor  # (batch, classes): the mean of the samples' probabilities
    entropy: torch.Tensor  # (batch,): predictive entropy of ``probs``, in nats
    mutual_information: torch.Tensor  # (batch,): entropy minus the mean entropy of the samples (epistemic part)
    samples: torch.Tensor  # (samples, batch, classes): each pass's probabilities


def _entropy(p):
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@torch.no_grad()
def mc_predict(model: nn.Module, inputs: dict, samples: int = 16, chunk: int | None = None,
               knobs: tuple[str, ...] | list[str] = MC_KNOBS) -> MCPrediction:
    """``samples`` MC-dropout passes over ``inputs`` (a batch for ``model(**inputs)``, whose output has
    ``.logits``). Passes run ``chunk`` at a time (default: all at once) as one batch of repeated inputs; where a
    sampling knob draws once per batch (LayerDrop, per-batch drop-path) they run one at a time, so that samples stay
    independent.

    Args:
        model: a model with dropout sites in force (patched by hfreg or not).
        inputs: one batch, as ``model(**inputs)`` takes it.
        samples: MC passes (>= 1).
        chunk: passes per forward; None runs them all in one.
        knobs: the knobs that sample (default every dropout knob; LayerDrop, Mixout and NEFTune only when named).

    Returns:
        An `MCPrediction`: mean probabilities, predictive entropy, mutual information and each pass's
        probabilities.

    Raises:
        ValueError: a bad ``samples``, ``chunk`` or knob name, ``inputs`` without a batched tensor, or an output
            without ``.logits``.

    Example:
        >>> import torch, hfreg, transformers
        >>> model = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.3))
        >>> pred = hfreg.mc_predict(model, {"input_ids": torch.tensor([[101, 2000, 102]])}, samples=8)
        >>> tuple(pred.probs.shape), tuple(pred.samples.shape), bool(pred.mutual_information[0] >= 0)
        ((1, 2), (8, 1, 2), True)
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"`samples` must be an int >= 1, got {samples!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"`chunk` must be an int >= 1 or None, got {chunk!r}")
    knobs = _knob_names(knobs)
    batch = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim()), None)
    if batch is None:
        raise ValueError(f"`inputs` holds no batched tensor to repeat (keys: {sorted(inputs)})")
    state = patch_state(model)
    per_batch = state is not None and (state.reg.layerdrop and "layerdrop" in knobs or state.reg.drop_path
                                       and state.reg.drop_path_mode == "per_batch" and "drop_path" in knobs
                                       or state.reg.mixout and "mixout" in knobs)
    if per_batch:  # one draw per forward (LayerDrop, per-batch drop-path, Mixout's and DropConnect's weight masks)
        chunk = 1  # would be shared by every repeated sample
    chunk = min(chunk or samples, samples)
    probs = []
    with mc_dropout(model, knobs):
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            repeated = {n: v.repeat(k, *[1] * (v.dim() - 1)) if isinstance(v, torch.Tensor) and v.dim() and
                        v.shape[0] == batch else v for n, v in inputs.items()}
            output = model(**repeated)
            if getattr(output, "logits", None) is None:
                raise ValueError(f"mc_predict needs an output with `.logits` (a model with a head); "
                                 f"{type(unwrap(model, wrapped=True)).__name__} gives {type(output).__name__}")
            logits = output.logits.float()
            probs.append(torch.softmax(logits, -1).view(k, batch, -1))
    every = torch.cat(probs)
    mean = every.mean(0)
    entropy = _entropy(mean)
    return MCPrediction(mean, entropy, entropy - _entropy(every).mean(0), every)


def mc_log_probs(prediction: MCPrediction) -> torch.Tensor:
    """log of the mean probabilities: logits for any metric that takes logits (softmax gives back ``probs``)."""
    return torch.log(prediction.probs.clamp_min(math.ulp(0.0)))
