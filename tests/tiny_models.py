"""Tiny random configs for every covered architecture (2 layers, width 32): no hub, no weights."""

import torch
from transformers import AutoConfig

_TEXT = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
_DECODER = dict(_TEXT, num_key_value_heads=2, pad_token_id=0)
_SEQ2SEQ = dict(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64)
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)
_SPEECH = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4, mask_time_prob=0.0, mask_feature_prob=0.0)

# model_type -> keyword arguments of AutoConfig.for_model
TINY = {
    "bert": _TEXT, "roberta": dict(_TEXT, pad_token_id=1), "electra": dict(_TEXT, embedding_size=32),
    "xlm-roberta": dict(_TEXT, pad_token_id=1), "mpnet": dict(_TEXT, pad_token_id=1),
    "deberta": dict(_TEXT, type_vocab_size=0), "deberta-v2": dict(_TEXT, type_vocab_size=0),
    "albert": dict(_TEXT, embedding_size=16),
    "distilbert": dict(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64),
    "modernbert": dict(_TEXT, pad_token_id=0, global_attn_every_n_layers=2, local_attention=16),
    "gpt2": dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0),
    "gpt_neo": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                    attention_types=[[["global", "local"], 1]], max_position_embeddings=64, window_size=16,
                    pad_token_id=0),
    "gpt_neox": dict(_TEXT, pad_token_id=0),
    "gptj": dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, pad_token_id=0),
    "opt": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1),
    "bloom": dict(vocab_size=128, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0),
    "falcon": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0),
    "llama": _DECODER, "mistral": _DECODER, "qwen2": _DECODER, "qwen3": dict(_DECODER, head_dim=8),
    "mixtral": dict(_DECODER, **_MOE),
    "qwen2_moe": dict(_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "gemma": dict(_DECODER, head_dim=8), "gemma2": dict(_DECODER, head_dim=8),
    "gemma3_text": dict(_DECODER, head_dim=8),
    "phi": dict(_TEXT, pad_token_id=0), "phi3": dict(_DECODER, pad_token_id=0),
    "stablelm": dict(_DECODER, pad_token_id=0), "olmo": dict(_DECODER, pad_token_id=0),
    "olmo2": dict(_DECODER, pad_token_id=0), "starcoder2": dict(_DECODER, pad_token_id=0),
    "t5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               pad_token_id=0, decoder_start_token_id=0),
    "mt5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                pad_token_id=0, decoder_start_token_id=0),
    "umt5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                 pad_token_id=0, decoder_start_token_id=0),
    "longt5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   pad_token_id=0, decoder_start_token_id=0),
    "bart": _SEQ2SEQ, "mbart": _SEQ2SEQ, "pegasus": dict(_SEQ2SEQ, pad_token_id=0, decoder_start_token_id=0),
    "whisper": dict(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
                    max_source_positions=16, max_target_positions=32, pad_token_id=0, decoder_start_token_id=1,
                    bos_token_id=1, eos_token_id=2, suppress_tokens=[], begin_suppress_tokens=[]),
    "vit": _VISION, "deit": _VISION, "beit": dict(_VISION, vocab_size=32),
    "dinov2": _VISION,
    "swin": dict(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                 window_size=4),
    "convnext": dict(image_size=32, num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "wav2vec2": _SPEECH,
    "clip": dict(text_config=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64),
                 vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64), projection_dim=16),
    # convolutional: EfficientNet's and MobileNetV2's residual blocks (stage heads without a residual), LeViT's
    # residual layers between subsampling attention
    "efficientnet": dict(image_size=64, width_coefficient=0.1, hidden_dim=128, depth_coefficient=0.5,
                         drop_connect_rate=0.2),
    "mobilenet_v2": dict(image_size=32, depth_multiplier=0.35),
    "levit": dict(architectures=["LevitForImageClassification"], image_size=32, hidden_sizes=[16, 32, 48],
                  num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                  key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 4, 4, 2, 2]]),
    # post-LN blocks with their residual adds inside the attention and the feed-forward modules
    "funnel": dict(architectures=["FunnelModel"], vocab_size=128, block_sizes=[1, 1], d_model=32, n_head=4,
                   d_head=8, d_inner=64, num_decoder_layers=1),
    # a state-space and an attention layer; the MLP branch sums routed experts and a shared MLP
    "granitemoehybrid": dict(_DECODER, shared_intermediate_size=64, layer_types=["mamba", "attention"],
                             mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=8, **_MOE),
    "siglip": dict(text_config=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64),
                   vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64)),
}

# Architectures outside the covered list, with no entry in hfreg's tables: the generic path must handle them.
GENERIC = {
    "camembert": dict(_TEXT, pad_token_id=1), "ernie": _TEXT, "data2vec-text": dict(_TEXT, pad_token_id=1),
    "granite": _DECODER, "qwen3_moe": dict(_DECODER, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32),
    "vit_msn": _VISION,
    # speech encoders that read `self.config.layerdrop` in forward, found by the source scan
    "hubert": _SPEECH, "data2vec-audio": _SPEECH, "unispeech": _SPEECH, "unispeech-sat": _SPEECH,
    "sew": dict(_SPEECH, squeeze_factor=2),
    # layers as parallel per-index lists (attentions[i], ffns[i]) joined in the model's forward
    "xlm": dict(vocab_size=128, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64),
    "flaubert": dict(vocab_size=128, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64),
    # attention-probability dropout in a float named `dropout_prob`
    "yolos": dict(_VISION, image_size=[32, 32], num_detection_tokens=4),
    # convolutional residual blocks whose branches end in a `drop_path` module (an identity at rate 0)
    "convnextv2": dict(image_size=32, num_channels=3, hidden_sizes=[16, 32], depths=[1, 2], num_stages=2,
                       drop_path_rate=0.1),
    # T5's structure with routed experts: blocks of sub-layers in a list `layer`
    "switch_transformers": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4, num_experts=2, encoder_sparse_step=1, decoder_sparse_step=1,
                                pad_token_id=0, decoder_start_token_id=0, router_jitter_noise=0.0),
    "poolformer": dict(num_channels=3, hidden_sizes=[16, 32], depths=[1, 2], num_encoder_blocks=2,
                       patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1], pool_size=3, drop_path_rate=0.1),
}
TINY.update(GENERIC)


def tiny_config(model_type: str, **overrides):
    cfg = AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})
    cfg._attn_implementation = "eager"
    return cfg

CONVOLUTIONAL = {"convnext", "convnextv2", "poolformer", "efficientnet", "mobilenet_v2"}  # no attention
VISION = {"vit", "deit", "beit", "dinov2", "swin", "vit_msn", "yolos", "levit"} | CONVOLUTIONAL
SPEECH = {"wav2vec2", "hubert", "data2vec-audio", "unispeech", "unispeech-sat", "sew"}
AUDIO = SPEECH | {"whisper"}
DUAL = {"clip", "siglip"}
SEQ2SEQ = {"t5", "mt5", "umt5", "longt5", "switch_transformers", "bart", "mbart", "pegasus"}


def head_class(model_type: str):
    """The classification-head Auto class for an architecture."""
    import transformers as T

    if model_type in VISION - {"yolos"} or model_type in DUAL:
        return T.AutoModelForImageClassification
    if model_type in AUDIO:
        return T.AutoModelForAudioClassification
    if model_type in ("pegasus", "granite", "granitemoehybrid"):  # no sequence-classification head: the LM head
        return T.AutoModelForCausalLM
    if model_type in ("longt5", "switch_transformers"):  # no sequence-classification head: the seq2seq LM head
        return T.AutoModelForSeq2SeqLM
    if model_type == "yolos":  # a detector: class logits per detection token
        return T.AutoModelForObjectDetection
    return T.AutoModelForSequenceClassification


def build(model_type: str, head: bool = False, **overrides):
    """A tiny random model in eval mode: the base model, or its classification head model (3 labels). BatchNorm's
    running statistics are those of one batch, then frozen (batch counts too), so that training passes leave the
    eval output as it was."""
    from transformers import AutoModel

    cfg = tiny_config(model_type, **overrides)
    if not head:
        model = AutoModel.from_config(cfg)
    else:
        cfg.num_labels = 3
        if model_type == "deit":  # two image-classification classes share DeiTConfig
            cfg.architectures = ["DeiTForImageClassification"]
        model = head_class(model_type).from_config(cfg)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:  # scales of one and statistics of one batch, as a trained checkpoint has them (EfficientNet draws
        #        its scales from N(0, 0.02): activations vanish over a few blocks)
        for m in norms:
            if m.weight is not None:
                torch.nn.init.ones_(m.weight)
            m.momentum = None  # a cumulative average: after one pass, that batch's statistics
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train()(**make_inputs(model_type, model.config, head=head))
        for m in norms:
            m.momentum, m.num_batches_tracked = 0.0, None
    return model.eval()


def make_inputs(model_type: str, config, batch: int = 2, head: bool = False) -> dict:
    """Deterministic inputs for a tiny model of ``model_type``."""

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (batch, 8), generator=g)
    size = config.image_size if isinstance(getattr(config, "image_size", None), int) else 32
    pixels = torch.randn(batch, 3, size, size, generator=g)
    if model_type in VISION:
        return {"pixel_values": pixels}
    if model_type in SPEECH:
        return {"input_values": torch.randn(batch, 400, generator=g)}
    if model_type == "whisper":
        feats = {"input_features": torch.randn(batch, 8, 32, generator=g)}
        return feats if head else {**feats, "decoder_input_ids": ids[:, :4]}
    if model_type in DUAL:
        return {"pixel_values": pixels} if head else {"input_ids": ids, "pixel_values": pixels}
    if model_type in SEQ2SEQ and (not head or model_type in ("longt5", "switch_transformers")):
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    if model_type in ("t5", "mt5", "umt5", "longt5") and head:
        ids[:, -1] = 1  # eos token, required by T5's classification head
    if model_type in ("bart", "mbart") and head:
        ids[:, -1] = 2
    return {"input_ids": ids}


def first_tensor(output):
    """The first tensor of a model output (last_hidden_state or logits)."""

    values = output.values() if hasattr(output, "values") else output
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise ValueError("output holds no tensor")
