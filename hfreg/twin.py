"""The small twin: a copy of a config shrunk to a few layers of small width, with the same architecture, code path
and rates, cheap enough to build and run on a CPU. `probing` runs twins to learn which native sites act; the
coverage benchmark builds every model type as one."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .provenance import config_tree

if TYPE_CHECKING:
    from transformers import PretrainedConfig


# config fields that set depth and width, shrunk for a small twin
_DEPTH = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
          "num_decoder_layers")
# widths that follow the model's: the last ones a DPT neck's, a codec's codes, factorised or projected embeddings
# (ALBERT, ColPali), an audio encoder's output where a decoder reads it
_WIDTH = ("hidden_size", "d_model", "n_embd", "dim", "reassemble_hidden_size", "codebook_dim", "embedding_size",
          "embedding_dim", "audio_hidden_size")
_HEADS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
          "decoder_attention_heads")
_FFN = ("intermediate_size", "ffn_dim", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "n_inner", "hidden_dim",
        "moe_intermediate_size", "shared_expert_intermediate_size")


def _divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 at least)."""
    return max(g for g in range(1, max(at_most, 1) + 1) if n % g == 0)


def small_twin(config: PretrainedConfig, layers: int = 2, width: int = 64, heads: int = 4) -> PretrainedConfig:
    """A copy of ``config`` with ``layers`` layers, width ``width`` and ``heads`` heads: the same architecture and
    code path (attention implementation, rates, layer types), cheap enough to run on a CPU. (A backbone whose
    stages are its layers keeps as many as the stages its head reads: Depth Anything's DINOv2 keeps 4.) Sizes the
    model needs to agree stay consistent (key-value heads, multi-head latent attention's head sizes and ranks,
    multimodal rotary sections, a tower's output projection). Near-zero initialisation scales are raised to usual
    ones, so that a dropout's effect shows in the output.

    Args:
        config: a transformers config (nested sub-configs are shrunk too).
        layers: layers per stack.
        width: hidden width.
        heads: attention heads.

    Returns:
        The shrunk copy; ``config`` is unchanged.

    Example:
        >>> import hfreg, transformers
        >>> twin = hfreg.small_twin(transformers.BertConfig())  # bert-base: 12 layers of width 768
        >>> twin.num_hidden_layers, twin.hidden_size, twin.attention_probs_dropout_prob
        (2, 64, 0.1)
    """
    config = copy.deepcopy(config)

    def shrink(cfg):
        d = vars(cfg)
        # sizes tied to the width: kept tied (Bamba, GraniteMoeHybrid: the SSM heads span expand * hidden;
        # EfficientNet: the last convolution's 1280 * width_coefficient channels are `hidden_dim`)
        ssm_tied = all(isinstance(d.get(k), int) for k in ("mamba_n_heads", "mamba_d_head", "mamba_expand",
                                                           "hidden_size")) \
            and d["mamba_n_heads"] * d["mamba_d_head"] == d["mamba_expand"] * d["hidden_size"]
        depth_was = d.get("num_hidden_layers")
        for k in _DEPTH:
            if isinstance(d.get(k), int) and d[k] > layers:
                setattr(cfg, k, layers)
        for k in _WIDTH:
            if isinstance(d.get(k), int) and d[k] > width:
                setattr(cfg, k, width)
        was = next((d[k] for k in _HEADS if isinstance(d.get(k), int)), None)  # the config's own head count
        for k in _HEADS:
            if isinstance(d.get(k), int) and d[k] > heads:
                setattr(cfg, k, heads)
        now = next((d[k] for k in _HEADS if isinstance(d.get(k), int)), heads)
        if "num_key_value_heads" in d and d["num_key_value_heads"] is None and isinstance(was, int):
            cfg.num_key_value_heads = now  # left None by a default config (Nemotron): one per head, as meant
        elif isinstance(d.get("num_key_value_heads"), int):
            # multi-head attention (every head its own keys; multi-head latent attention needs it) stays so;
            # grouped-query attention keeps groups, with a key-value head count that divides the head count
            kv = d["num_key_value_heads"]
            cfg.num_key_value_heads = now if kv == was else _divisor(now, min(kv, now // 2))
        mla = isinstance(d.get("qk_rope_head_dim"), int)  # multi-head latent attention (DeepSeek-V2 and after)
        rope_is_head = mla and d.get("head_dim") == d["qk_rope_head_dim"]
        mla_head = mla and d.get("head_dim") == d.get("qk_head_dim")  # Mistral 4: head_dim is the whole query head
        wide = d["hidden_size"] if isinstance(d.get("hidden_size"), int) else width  # shrunk above
        for k in ("head_dim", "d_kv", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            # a head_dim of None: derived from the width where the model does so, read as a number where it does not
            # (Ministral's, Hunyuan's default configs); a size of 0 (no rotary part) stays 0
            if (isinstance(d.get(k), int) and d[k] > 0) or (k == "head_dim" and k in d and d[k] is None):
                setattr(cfg, k, wide // now)
        if mla:  # its latent ranks, and the sizes it derives from the head sizes, kept consistent
            for k in ("kv_lora_rank", "q_lora_rank"):
                if isinstance(d.get(k), int) and d[k] > width:
                    setattr(cfg, k, width)
            if isinstance(d.get("qk_head_dim"), int):
                cfg.qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            if rope_is_head:  # the rotary embedding is sized by head_dim
                cfg.head_dim = cfg.qk_rope_head_dim
            elif mla_head and isinstance(d.get("qk_head_dim"), int):
                cfg.head_dim = cfg.qk_head_dim
        # a tower's output, read by another tower of the twin's width (T5Gemma's decoder attends to its encoder)
        for k in ("projection_size", "out_hidden_size", "cross_attention_hidden_size"):
            if isinstance(d.get(k), int) and d[k] > width:
                setattr(cfg, k, width)
        for k in _FFN:
            if isinstance(d.get(k), int) and d[k] > 2 * width:
                setattr(cfg, k, 2 * width)
        if isinstance(d.get("num_queries"), int):  # a detector's queries, chosen among the anchors of a small image
            cfg.num_queries = min(cfg.num_queries, 8)
        for k in ("num_local_experts", "num_experts", "n_routed_experts"):
            if isinstance(d.get(k), int):
                setattr(cfg, k, min(d[k], 4))
                for g in ("n_group", "num_expert_group"):  # groups divide the experts, two or more each (Bailing)
                    if isinstance(d.get(g), int) and d[g] > 1:
                        groups = d[g]  # d is the config's own dict: read before it changes
                        setattr(cfg, g, _divisor(getattr(cfg, k), min(groups, getattr(cfg, k) // 2)))
                        if isinstance(d.get("topk_group"), int):  # fewer groups chosen than there are, as before
                            now_groups = getattr(cfg, g)
                            cfg.topk_group = min(d["topk_group"],
                                                 now_groups if d["topk_group"] >= groups else max(1, now_groups - 1))
        for k in ("num_experts_per_tok", "num_experts_per_token"):
            if isinstance(d.get(k), int):
                setattr(cfg, k, min(d[k], 2))
        if "n_routed_experts" in d:  # DeepSeek-V2's and dots1's defaults leave router sizes None: their modules fail
            for k, n in (("num_experts_per_tok", 2), ("n_routed_experts", 4), ("n_shared_experts", 1)):
                if k in d and d[k] is None:
                    setattr(cfg, k, n)
        rope = d.get("rope_parameters")
        if isinstance(rope, dict) and ("mrope_section" in rope
                                       or "mrope_section" in getattr(cfg, "ignore_keys_at_rope_validation", ())):
            # multimodal rotary sections (Qwen2-VL, GLM-4V: time, height, width) span the rotary half of a head; the
            # model's default, where the config has none, is sized for its own heads
            head = d["head_dim"] if isinstance(d.get("head_dim"), int) else cfg.hidden_size // now
            half = int(head * rope.get("partial_rotary_factor", d.get("partial_rotary_factor") or 1.0)) // 2
            cfg.rope_parameters = {**rope, "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]}
        if isinstance(d.get("rotary_dim"), int):
            cfg.rotary_dim = min(cfg.rotary_dim, width // now)
        if isinstance(d.get("layer_types"), list):  # the first layers, and one of each kind the model has
            kinds = list(dict.fromkeys(cfg.layer_types))
            first = cfg.layer_types[:layers]
            cfg.layer_types = first + [k for k in kinds if k not in first]
            if len(cfg.layer_types) > layers:
                for k in _DEPTH:
                    if isinstance(d.get(k), int) and d[k] == layers:
                        setattr(cfg, k, len(cfg.layer_types))
        if isinstance(depth_was, int) and hasattr(cfg, "set_output_features_output_indices") \
                and d.get("stage_names") == ["stem"] + [f"stage{i}" for i in range(1, depth_was + 1)]:
            # a backbone whose stages are its layers (DINOv2 under Depth Anything): the stage names follow the new
            # depth, and it keeps as many layers as the stages a head reads, which read the last ones (the neck fits)
            picked = {i % (depth_was + 1) for i in cfg.out_indices or ()}  # -1: the last stage
            read = len(picked - {0})
            n = cfg.num_hidden_layers = max(cfg.num_hidden_layers, read)
            cfg.stage_names = ["stem"] + [f"stage{i}" for i in range(1, n + 1)]
            cfg.set_output_features_output_indices(out_features=None, out_indices=[0] * (0 in picked)
                                                   + list(range(n - read + 1, n + 1)))
        if ssm_tied:
            cfg.mamba_n_heads = min(cfg.mamba_n_heads, heads)
            cfg.mamba_d_head = cfg.mamba_expand * cfg.hidden_size // cfg.mamba_n_heads
        if isinstance(d.get("width_coefficient"), float) and isinstance(d.get("hidden_dim"), int):
            cfg.width_coefficient = cfg.hidden_dim / 1280
            cfg.depth_coefficient = min(d.get("depth_coefficient", 1.0), 1.0)
        if isinstance(d.get("conv_dim"), (list, tuple)):  # speech encoders' convolutional feature extractor
            cfg.conv_dim = type(d["conv_dim"])(min(c, width) for c in d["conv_dim"])
        if isinstance(d.get("depths"), list):  # staged vision models: one block per stage
            cfg.depths = [1] * len(cfg.depths)
        # near-zero initialisations (BLIP's 1e-10, layer scales of 1e-6) hide any dropout: a usual scale instead
        for k, usual in (("initializer_range", 0.02), ("layer_scale_init_value", 0.1), ("layerscale_value", 0.1)):
            if isinstance(d.get(k), float) and 0 < d[k] < usual / 100:
                setattr(cfg, k, usual)

    for _, cfg in config_tree(config):  # nested sub-configs (text, vision) too
        shrink(cfg)
    return config
