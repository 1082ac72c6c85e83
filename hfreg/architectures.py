"""Per-architecture facts, as data. The mechanism in `sites.py` and `patcher.py` reads only these tables.

Measured on transformers 5.24 (see the dropout survey the README cites). An architecture with a standard layer
stack needs no entry: the generic rules below cover it.

A native *site* is named by ``"OwnerClass.attribute"`` — an ``nn.Dropout`` child (its ``p``) or a float
attribute read in ``forward`` — and classified by the first pattern that full-matches it. Sites no pattern
claims are classified by where they sit: inside a layer of the stack -> ``hidden``, elsewhere in the base
model -> ``embedding``, outside the base model (a head) -> ``classifier``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import KNOBS

# (pattern on "OwnerClass.attribute", knob), tried in order after an architecture's own patterns.
GENERIC_RULES: tuple[tuple[str, str], ...] = (
    (r".*DropPath\.drop_prob", "drop_path"),
    (r".*\.(encoder_|decoder_)?layerdrop", "layerdrop"),
    (r".*\.(activation_dropout|intermediate_dropout)", "activation"),
    (r".*\.(attn_dropout|attention_dropout|attn_pdrop)", "attention"),
    # T5's family: the dropout that ends an attention sub-layer (T5LayerSelfAttention) is residual dropout
    (r".*Layer(Local|TransientGlobal)?(Self|Cross)Attention\.dropout", "hidden"),
    (r".*Attention\.dropout", "attention"),  # BertSelfAttention, T5Attention, BartAttention, CLIPAttention, ...
    (r".*\.pos_dropout", "embedding"),  # DeBERTa relative-position embeddings
    (r".*Dense(Gated)?ActDense\.dropout", "activation"),  # T5's family: dropout after the MLP's activation
)

# Where residual branches end inside one layer: for each branch, candidates tried in order (first present
# wins). The branch's output is taken just before it joins the residual stream.
GENERIC_BRANCHES: tuple[tuple[str, ...], ...] = (
    ("attention.output.dropout", "self_attn", "self_attention", "attn", "attention", "mixer", "temporal_block",
     "mamba"),
    #     self-attention; state-space blocks (Mamba, Nemotron-H) mix tokens in a `mixer`, Griffin (RecurrentGemma)
    #     in a `temporal_block`, the SSM layers of hybrids (Bamba, Jamba, Zamba) in a `mamba`
    ("crossattention.output.dropout", "encoder_attn", "cross_attn", "crossattention"),  # cross-attention
    ("output.dropout", "mlp", "feed_forward", "ffn", "fc2", "mlp_block"),  # MLP
)
# Where a layer has none of those, tried in order: its stochastic-depth modules (timm's ``x = shortcut +
# self.drop_path(x)``, also an identity where the rate is 0) mark where its branches join the residual stream, so
# residual blocks of convolutional stages (ConvNeXt V2, PoolFormer, DINOv3-ConvNeXt, BiT) become layers; else a
# block's one `layer` (ResNet, RegNet: ``x = self.layer(x); x += shortcut``), a module that runs (not a list);
# else the sub-layers of a block held in a list `layer`, each ending its branch in a dropout (T5 and its family:
# MT5, UMT5, LongT5, Switch Transformers, Pop2Piano).
FALLBACK_BRANCHES = ("drop_path*", "layer", "layer.*.dropout")


@dataclass(frozen=True)
class Arch:
    """One architecture's exceptions; a misspelt field or an unknown knob fails at import."""

    branches: tuple[str, ...] = ()  # branch-end modules inside a layer ("*": one path component, each match its own
    #                                 branch; "a+b": modules whose outputs are summed into one branch, one drop-path
    #                                 draw for all); replaces GENERIC_BRANCHES when given
    residual_flag: str | None = None  # attribute of a layer, false where the layer adds no residual (its branch
    #                                   is the main path): such layers get no branch hooks and are never skipped
    rules: tuple[tuple[str, str], ...] = ()  # classification patterns tried before GENERIC_RULES
    dead: tuple[str, ...] = ()  # sites that exist but that forward never reads, where the source scan cannot tell
    broken: tuple[str, ...] = ()  # sites whose own code fails when on: held at 0, the knob injected instead
    dead_unless: dict[str, str] = field(default_factory=dict)  # {site: config flag}: dead unless it is truthy
    forward_config: dict[str, str] = field(default_factory=dict)  # {config key: knob}: rates read from
    #                                 `self.config` in forward, where the source scan cannot tell the knob
    shared_depth: str | None = None  # config key giving the depth of a stack whose one layer is reused
    unwritable: tuple[str, ...] = ()  # config keys `patch_config` must leave alone: the model refuses them
    not_dropout: tuple[str, ...] = ()  # float "drop" attributes that scale the output in eval too: not a rate

    def __post_init__(self):
        knobs = [k for _, k in self.rules] + list(self.forward_config.values())
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown} in an architecture entry; allowed: {list(KNOBS)}")


ARCHITECTURES: dict[str, Arch] = {
    "albert": Arch(branches=("attention.output_dropout", "ffn_output"), shared_depth="num_hidden_layers"),
    # the residual is added inside BloomAttention / BloomMLP: the branch ends at their output projection
    "bloom": Arch(branches=("self_attention.dense", "mlp.dense_4h_to_h")),
    "convnext": Arch(branches=("pwconv2",)),
    # EfficientNet's blocks (and ALIGN's vision tower) add the residual after `projection.dropout`, which only
    # residual blocks call; its rate grows with depth from drop_connect_rate but is element-wise: hidden dropout
    "efficientnet": Arch(branches=("projection.dropout",), residual_flag="projection.apply_dropout"),
    "align_vision_model": Arch(branches=("projection.dropout",), residual_flag="projection.apply_dropout"),
    # `id_path(x) + post_gain * res_path(x)`
    "flava_image_codebook": Arch(branches=("res_path",)),
    # post-LN inside the blocks: the branches end at the dropouts before each residual add and norm
    "funnel": Arch(branches=("attention.hidden_dropout", "ffn.dropout")),
    # attention and SSM side by side, their outputs summed into one branch
    "falcon_h1": Arch(branches=("self_attn+mamba", "feed_forward")),
    # the MLP branch is the routed experts' output plus the shared MLP's
    "granitemoehybrid": Arch(branches=("mamba", "self_attn", "block_sparse_moe+shared_mlp")),
    # `hidden + module(hidden) * mask`: the residual layer's drop_rate is per-sample drop-path
    "levit": Arch(branches=("module",), rules=((r"LevitResidualLayer\.drop_rate", "drop_path"),)),
    "mobilenet_v2": Arch(branches=("reduce_1x1",), residual_flag="use_residual"),
    # the classifier multiplies by (1 - hidden_dropout_prob) in eval and training alike
    "pp_lcnet": Arch(not_dropout=("PPLCNetForImageClassification.hidden_dropout_prob",)),
    # `conv_final(conv_start(x)) + conv_down(x)`
    "uvdoc_backbone": Arch(branches=("conv_final",)),
    # DiffLlamaAttention raises at build time when config.attention_dropout > 0; set live, the rate acts
    "diffllama": Arch(unwritable=("attention_dropout",)),
    # config.attention_dropout is residual dropout after attention; the attention-probability module is used
    # only on the ALiBi path
    "falcon": Arch(forward_config={"attention_dropout": "hidden"},
                   dead_unless={"FalconAttention.attention_dropout": "alibi"}),
    # sandwich norms: scaling the sublayer output would be undone by its post-norm
    "gemma2": Arch(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "gemma3_text": Arch(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "olmo2": Arch(branches=("post_attention_layernorm", "post_feedforward_layernorm")),
    "gpt_neox": Arch(branches=("post_attention_dropout", "post_mlp_dropout")),
    # transformers' encoder LayerDrop sets the hidden states to None when it skips a layer, and forward fails
    "pegasus_x": Arch(broken=("PegasusXEncoder.layerdrop",)),
    # the mask head's Dropout2d is built only when dropout_ratio > 0 at construction; forward reads the ratio
    "pp_doclayout_v3": Arch(broken=("PPDocLayoutV3MaskFeatFPN.dropout_ratio",)),
    # post-LN inside ConvDropoutLayerNorm (the residual added after its dropout); the attention module returns a
    # dict, before its output projection
    "squeezebert": Arch(branches=("post_attention.dropout", "output.dropout")),
    # two attention and MLP sub-layers per layer, in lists; the MoE's output joins the last residual add
    "longcat_flash": Arch(branches=("self_attn.0", "mlps.0", "self_attn.1", "mlps.1+mlp")),
    # every sub-block adds its residual inside, after its dense (and its dropout where `use_bottleneck` is off):
    # attention, each feed-forward network of the list the layer loops over, the output, then the bottleneck,
    # which adds the layer's own input
    "mobilebert": Arch(branches=("attention.output.dense", "ffn.*.output.dense", "output.dense",
                                 "output.bottleneck.dropout")),
    # the MLP adds the residual itself (`forward(x, residual)`): its branch ends at the down projection
    "mpt": Arch(branches=("attn", "ffn.down_proj")),
    # each sub-block adds its own residual: the branches end at the attention and feed-forward inside them
    "cpmant": Arch(branches=("self_att.self_attention", "ffn.ffn")),
    "mpnet": Arch(branches=("attention.dropout", "output.dropout"), rules=((r"MPNetAttention\.dropout", "hidden"),)),
    # the residual is added inside the attention's post_attention and the feed-forward block: the branches end at
    # the attention's output dropout and at the second linear layer (ff.dropout also follows the activation)
    "xlnet": Arch(branches=("rel_attn.dropout", "ff.layer_2")),
}

# Config keys per knob, for `patch_config`: a fact of transformers' families, not of the knob (a knob absent here has
# no config key). A key listed under several knobs belongs to the first; the others follow after the model is built,
# through `patch_model`.
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
    "adapter": (),  # PEFT adapters' dropout lives in the adapter's config, not the model's
    "heads": (), "mixout": (),  # no model has them natively
    "embedding_noise": (),  # transformers' NEFTune is a `TrainingArguments` option, not a config key
}


def architecture(model_type: str | None) -> Arch:
    return ARCHITECTURES.get(model_type or "", Arch())


# Training-time noise that is not dropout and that no knob governs: {config key: (what it draws, value that
# switches it off)}. The spec leaves it as the model has it; `disable_dropout` switches it off as well.
NOISE_KEYS: dict[str, tuple[str, object]] = {
    "mask_time_prob": ("SpecAugment time masks", 0.0),  # speech encoders (wav2vec2 family)
    "mask_feature_prob": ("SpecAugment feature masks", 0.0),
    "router_jitter_noise": ("MoE router jitter", 0.0),
    "input_jitter_noise": ("MoE input jitter", 0.0),
    "pos_embed_shift": ("patch-coordinate shift", None),  # DINOv3's RoPE augmentation
    "pos_embed_jitter": ("patch-coordinate jitter", None),
    "pos_embed_rescale": ("patch-coordinate rescale", None),
}

# Training-time noise that a module draws in its forward with no switch at all: {module class name (exactly: not
# its subclasses): what it draws}.
# `disable_dropout` runs such a module's forward as in eval mode (the model's deterministic inference path).
NOISE_MODULES: dict[str, str] = {
    "GroupViTAssignAttention": "Gumbel-softmax group assignment",  # eval: a hard argmax, straight-through
}
