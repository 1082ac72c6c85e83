"""`embedding_noise`: NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
uniform noise in ``[-a, a]``, ``a = alpha / sqrt(L * d)``, added to the input embeddings (L tokens of width d), per
packed sequence where a row packs several."""

from __future__ import annotations

import torch
from torch import nn

from ..hooks import Hook, called_directly, map_first, sampling
from ..layers import embedding_noise, packed_lengths
from ..sites import Site, is_weighted, stack_key
from ..state import Plan


class PackedLengths(Hook):
    """Model pre-hook: where the forward's position ids pack several sequences into a row, the length of each
    position's sequence (`packed_lengths`), which `EmbeddingNoise` scales NEFTune by; None otherwise."""

    pre = True
    with_kwargs = True

    def __init__(self):
        self.lengths = None

    def __call__(self, module, args, kwargs):
        self.lengths = packed_lengths(kwargs.get("position_ids"))


class EmbeddingNoise(Hook):
    """NEFTune on an embedding module's output, or (``pre``) on the hidden states a tower's first layer takes; per
    packed sequence where ``packed`` (a `PackedLengths`) saw packed rows in this forward."""

    def __init__(self, p, pre=False, packed: PackedLengths | None = None):
        self.p = p  # NEFTune's alpha, named as the rates are so that `set_rate_factors` moves it
        self.pre = self.with_kwargs = pre
        self.packed = packed

    def noise(self, x):
        lengths = self.packed.lengths if self.packed is not None else None
        fits = lengths is not None and x.dim() >= 3 and tuple(lengths.shape) == tuple(x.shape[:2])
        return embedding_noise(x, self.p, True, lengths if fits else None)

    def __call__(self, module, args, *rest):
        if not self.p or not sampling(module):
            return None
        if not self.pre:
            return map_first(rest[-1], self.noise)
        kwargs = rest[0]
        if args and isinstance(args[0], torch.Tensor):
            return (self.noise(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": self.noise(kwargs["hidden_states"])}
        return None


def inject(plan: Plan) -> list[Site]:
    """`embedding_noise` (NEFTune) on the output of the model's input embeddings and of every module that shares
    their weight: BART's and T5's encoder and decoder run their own ``embed_tokens`` tied to ``shared`` (a hook on
    ``get_input_embeddings()`` alone, as in transformers' `Trainer`, never fires there). A model without input
    embeddings (speech, convolutional and two-tower models) gets it on the input of each tower's first layer."""
    model, struct, knobs, state = plan.model, plan.struct, plan.knobs, plan.state
    alpha = knobs.get("embedding_noise")
    if alpha is None:
        return []
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    weight = getattr(emb, "weight", None) if isinstance(emb, nn.Module) else None
    found = [(n, m, False) for n, m in model.named_modules()
             if m is emb or (weight is not None and getattr(m, "weight", None) is weight and not is_weighted(m))]
    # the outermost only: a wrapper PEFT put around the embeddings (`modules_to_save`) reads as holding their weight,
    # and the copy inside it would add its noise to the wrapper's
    found = [f for f in found if not any(f[0].startswith(o[0] + ".") for o in found)]
    if not found:
        firsts = [tower[0] for tower in struct.towers if not tower[0].parallel and tower[0].calls == 1]
        found = [(f.path + ".<input>", f.module, True) for f in firsts if stack_key(f.path) not in plan.hookless]
        if firsts and not found:
            plan.refuse("embedding_noise", alpha, "it has no input embeddings (`get_input_embeddings`), and "
                                                   + called_directly(firsts[0].module))
            return []
    if not found:
        plan.refuse("embedding_noise", alpha, "it has neither input embeddings (`get_input_embeddings`) nor a "
                                               "layer stack whose input could take it")
        return []
    packed = state.hook(model, PackedLengths()) if alpha else None  # NEFTune per packed sequence
    for n, m, pre in found:
        if alpha and pre:
            state.hook(m, EmbeddingNoise(alpha, pre, packed), knob="embedding_noise")
        elif alpha:  # embeddings PEFT may wrap later (`modules_to_save`, `trainable_token_indices`): it follows
            state.hook_at(model, n, EmbeddingNoise(alpha, pre, packed), knob="embedding_noise", above=True)
    return [Site(n, "embedding_noise", alpha, None, "injected") for n, _, _ in found]
