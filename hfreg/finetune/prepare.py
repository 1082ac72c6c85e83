"""What a run does to its copy of the model before training: the head re-drawn (`reset_head`), the top layers
re-initialised (`reinit_top_layers`), LoRA's task type (`lora_task`), activation checkpointing, the grid's NEFTune
(`grid_noise`), and the optimizer's parameter groups with weight decay and layer-wise learning-rate decay
(`param_groups`); `prepare_model` does them in order, and patches the copy with the run's preset."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from torch import nn

from ..patcher import patch_model
from .tasks import CAUSAL_LM, TOKENS

PEFT_TASK_TYPES = {CAUSAL_LM: "CAUSAL_LM", TOKENS: "TOKEN_CLS"}  # else SEQ_CLS (an image classifier: `lora_task`)


def param_groups(model: nn.Module, weight_decay: float, llrd: float = 1.0, lr: float | None = None):
    """AdamW groups: decay on weight matrices only, never on biases or normalization parameters. With ``llrd`` < 1
    (layer-wise learning-rate decay: Howard & Ruder, 2018; Zhang et al., 2021, "Revisiting Few-sample BERT
    Fine-tuning") layer i of a tower of L trains at ``lr * llrd ** (L - 1 - i)``, what comes before the stacks in
    the model (embeddings) at ``lr * llrd ** L``, what comes after (pooler, final norm, head) at ``lr``."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
    no_decay = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
                no_decay.add(id(p))
    scale = _depth_scales(model, llrd) if llrd != 1.0 else {}
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in no_decay, scale.get(id(p), 1.0)), []).append(p)
    out = []
    for (exempt, factor), params in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        group = {"params": params, "weight_decay": 0.0 if exempt else weight_decay}
        if scale:
            group["lr"] = lr * factor
        out.append(group)
    return out


def _depth_scales(model: nn.Module, llrd: float) -> dict[int, float]:
    """{id(parameter): learning-rate factor} under layer-wise decay, for the parameters below the top."""
    _, struct = _stacks(model, "--llrd")
    factor = {}
    for layer in struct.layers:
        for p in layer.module.parameters():
            factor[id(p)] = llrd ** (layer.depth - 1 - layer.index)
    order = [id(p) for p in model.parameters()]
    first = min(order.index(i) for i in factor)
    bottom = llrd ** max(layer.depth for layer in struct.layers)
    for i in order[:first]:  # registered before the first layer: embeddings
        factor.setdefault(i, bottom)
    return factor


def _stacks(model: nn.Module, flag: str):
    """The base model inside a classifier and its structure; a one-line error naming ``flag`` without layers."""
    from ..sites import analyze

    base = getattr(model, "base_model", model)
    struct = analyze(base)
    if not struct.layers:
        raise ValueError(f"{flag} needs a layer stack, and none was found in {type(base).__name__}")
    return base, struct


def reinit_top_layers(model: nn.Module, k: int) -> list[str]:
    """Re-initialise the top ``k`` layers of every tower, and a ``pooler`` where the model has one, with the
    model's own initialisation (Zhang et al., 2021: the top layers of a pretrained encoder are specialised to the
    pretraining task). Returns the paths re-initialised."""
    base, struct = _stacks(model, "--reinit_layers")
    chosen = [(layer.path, layer.module) for tower in struct.towers for layer in tower[-k:]]
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, nn.Module):
        chosen.append(("pooler", pooler))
    init = getattr(base, "_init_weights", None)
    if init is None:
        raise ValueError(f"--reinit_layers: {type(base).__name__} has no `_init_weights` to re-initialise with")
    with torch.no_grad():
        for _, module in chosen:
            for sub in module.modules():
                for p in sub.parameters(recurse=False):
                    p._is_hf_initialized = False  # transformers' init functions skip loaded weights
                init(sub)
    return [path for path, _ in chosen]


def lora_task(model: nn.Module, problem_type: str) -> dict:
    """peft's ``task_type`` for the model, which keeps a new head trainable beside the adapters; an image
    classifier, for which peft has none, names its head modules (those outside the base model) to train instead."""
    if problem_type in PEFT_TASK_TYPES:
        return {"task_type": PEFT_TASK_TYPES[problem_type]}
    if getattr(model, "main_input_name", None) == "pixel_values":
        base = getattr(model, "base_model", model)
        return {"modules_to_save": [name for name, child in model.named_children() if child is not base]}
    return {"task_type": "SEQ_CLS"}


def reset_head(model: nn.Module, seed: int):
    """Re-draw the classification head (everything outside the base model) from ``seed``."""
    base = getattr(model, "base_model", model)
    gen = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    for child in model.children():
        if child is base:
            continue
        for m in child.modules():
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    if m.bias is not None:
                        m.bias.zero_()


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant (it needs no input that requires grad: LoRA's frozen
    embeddings), under the name of the installed transformers (`activation_checkpointing_enable` since 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def grid_noise(reg, alpha: float):
    """``reg`` with NEFTune's ``embedding_noise`` at the grid's ``alpha`` (``--neftune_noise_alpha``) where the
    preset sets none, at a constant rate (a preset's ``all`` schedule is its own knobs'); else ``reg`` itself."""
    if not alpha or reg.embedding_noise is not None:
        return reg
    from ..config import ALL_KNOBS, Schedule

    schedule = reg.schedule
    if schedule and ALL_KNOBS in schedule:
        schedule = {**schedule, "embedding_noise": Schedule()}
    return dataclasses.replace(reg, embedding_noise=float(alpha), schedule=schedule)


def prepare_model(base_model: nn.Module, settings, preset, seed: int, log) -> tuple[nn.Module, dict, list]:
    """A fresh copy of ``base_model``, ready to train under ``preset`` and ``settings`` (a `settings.Settings`): its
    head re-drawn at ``seed`` (a causal LM's stays), checkpointing, adapters and re-initialised layers as the
    settings ask, then patched with the preset; what the patch warns goes to ``log``. Returns the model, the
    training-loop methods in force and the layers re-initialised."""
    model = copy.deepcopy(base_model)
    if settings.problem_type != CAUSAL_LM:  # a language model's output layer is pretrained (often tied): it stays
        reset_head(model, seed)
    if settings.gradient_checkpointing:  # before the adapters and the patch, on the transformers model itself
        enable_checkpointing(model)
    if settings.packing:  # transformers keeps packed sequences apart only where no cache is kept (training)
        model.config.use_cache = False
    if settings.lora:  # adapters first, so that the patch finds them (`adapter` knob)
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**settings.lora, lora_dropout=0.0,
                                                 **lora_task(model, settings.problem_type)))
    methods = preset.methods(settings)
    reinit = reinit_top_layers(model, methods["reinit_layers"]) if methods["reinit_layers"] else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_model(model, grid_noise(preset.reg, settings.neftune_noise_alpha))
    for w in caught:
        log(f"  note: {w.message}")
    return model, methods, reinit
