"""Per-architecture facts, as data. The mechanism in `sites.py` and `patcher.py` reads only these tables.

Measured on transformers 5.24 (see the dropout survey the README cites). An architecture with a standard layer
stack needs no entry: the generic rules below cover it.

A native *site* is named by ``"OwnerClass.attribute"`` — an ``nn.Dropout`` child (its ``p``) or a float
attribute read in ``forward`` — and classified by the first pattern that full-matches it. Sites no pattern
claims are classified by where they sit: inside a layer of the stack -> ``hidden``, elsewhere in the base
model -> ``embedding``, outside the base model (a head) -> ``classifier``.
"""

from __future__ import annotations

# (pattern on "OwnerClass.attribute", knob), tried in order after an architecture's own patterns.
GENERIC_RULES: tuple[tuple[str, str], ...] = (
    (r".*DropPath\.drop_prob", "drop_path"),
    (r".*\.(encoder_|decoder_)?layerdrop", "layerdrop"),
    (r".*\.(activation_dropout|intermediate_dropout)", "activation"),
    (r".*\.(attn_dropout|attention_dropout|attn_pdrop)", "attention"),
    (r".*Attention\.dropout", "attention"),  # BertSelfAttention, T5Attention, BartAttention, CLIPAttention, ...
    (r".*\.pos_dropout", "embedding"),  # DeBERTa relative-position embeddings
)

# Where residual branches end inside one layer: for each branch, candidates tried in order (first present
# wins). The branch's output is taken just before it joins the residual stream.
GENERIC_BRANCHES: tuple[tuple[str, ...], ...] = (
    ("attention.output.dropout", "self_attn", "self_attention", "attn", "attention"),  # self-attention
    ("crossattention.output.dropout", "encoder_attn", "cross_attn", "crossattention"),  # cross-attention
    ("output.dropout", "mlp", "feed_forward", "ffn", "fc2"),  # MLP
)

# Architecture exceptions. Keys:
#   branches: branch-end modules inside a layer ("*" matches one path component), replacing GENERIC_BRANCHES
#   rules:    classification patterns tried before GENERIC_RULES
#   dead:     sites that exist but that forward never reads
#   dead_unless: {site: config flag} — dead unless that config flag is truthy
#   forward_config: {config key: knob} — rates read from `self.config` inside forward
#   shared_depth: config key giving the depth of a stack whose one layer is reused (weight sharing)
ARCHITECTURES: dict[str, dict] = {
    "albert": dict(branches=("attention.output_dropout", "ffn_output"), dead=("AlbertLayer.dropout",),
                   shared_depth="num_hidden_layers"),
    # the residual is added inside BloomAttention / BloomMLP: the branch ends at their output projection
    "bloom": dict(branches=("self_attention.dense", "mlp.dense_4h_to_h"), dead=("BloomBlock.hidden_dropout",)),
    "convnext": dict(branches=("pwconv2",)),
    "falcon": dict(forward_config={"hidden_dropout": "hidden", "attention_dropout": "hidden"},
                   dead=("FalconDecoderLayer.hidden_dropout", "FalconMLP.hidden_dropout",
                         "FalconAttention.hidden_dropout"),
                   dead_unless={"FalconAttention.attention_dropout": "alibi"}),
    # sandwich norms: scaling the sublayer output would be undone by its post-norm
    "gemma2": dict(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "gemma3_text": dict(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "olmo2": dict(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "gpt_neox": dict(branches=("post_attention_dropout", "post_mlp_dropout")),
    "modernbert": dict(rules=((r"ModernBertMLP\.drop", "activation"),)),
    "mpnet": dict(branches=("attention.dropout", "output.dropout"), rules=((r"MPNetAttention\.dropout", "hidden"),)),
    "opt": dict(dead=("OPTDecoder.dropout",)),
    "t5": dict(branches=("layer.*.dropout",),
               rules=((r"T5Layer\w*\.dropout", "hidden"), (r"T5Dense\w*\.dropout", "activation"))),
    "wav2vec2": dict(forward_config={"layerdrop": "layerdrop"}),
}

# Config keys per knob, for `patch_config`. A key listed under several knobs belongs to the first; the
# others follow after the model is built, through `patch_model`.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "attention": ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"),
    "hidden": ("hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "resid_dropout", "residual_dropout",
               "dropout", "dropout_rate"),
    "embedding": ("embd_pdrop", "embed_dropout", "embedding_dropout", "emb_dropout", "feat_proj_dropout"),
    "activation": ("activation_dropout", "mlp_dropout"),
    "classifier": ("classifier_dropout", "classifier_dropout_prob", "seq_classif_dropout", "qa_dropout",
                   "pooler_dropout", "summary_first_dropout", "summary_last_dropout", "final_dropout"),
    "drop_path": ("drop_path_rate",),
    "layerdrop": ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"),
}


def architecture(model_type: str | None) -> dict:
    return ARCHITECTURES.get(model_type or "", {})
