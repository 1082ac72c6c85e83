"""The patcher's invariants, on every covered architecture and on architectures hfreg has no entry for."""

import functools
import re
import warnings

import pytest
import torch
from tiny_models import CONVOLUTIONAL, GENERIC, TINY, build, first_tensor, head_class, make_inputs
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

import hfreg
import hfreg.probing
import hfreg.sites
from hfreg import KNOBS
from hfreg import RegularizationConfig as Reg
from hfreg.architectures import ARCHITECTURES
from hfreg.config import SCALES

COVERED = [m for m in TINY if m not in GENERIC]
CASES = [(m, head) for m in TINY for head in (False, True)]
# every knob (`adapter` needs PEFT adapters: tests/test_integrations.py), scales at a scale of their own
FULL = Reg(**{k: 5.0 if k in SCALES else 0.3 for k in KNOBS if k != "adapter"})


# knobs that cannot act on an architecture, and warn so (tested to act everywhere else)
CANNOT = {
    # no attention-probability dropout, eager attention without a head projection, Hardswish as a class hfreg's
    # activation names do not match
    "levit": {"attention", "heads", "activation"},
}


def knobs_for(model_type, head):
    skip = {"attention", "heads"} if model_type in CONVOLUTIONAL else set()
    skip.add("adapter")  # PEFT adapters only: tests/test_integrations.py
    skip |= CANNOT.get(model_type, set())
    if not head:
        skip.add("classifier")
    return [k for k in KNOBS if k not in skip]


def forward(model, inputs, train, seed=1):
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return first_tensor(model(**inputs)).clone()


def only(knob, rate=0.5):
    return Reg(**{**Reg.zero().knob_values(), knob: rate})


def patch_quietly(model, reg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hfreg.patch_model(model, reg)


def test_coverage_list_is_complete():
    assert len(COVERED) == 54
    assert not set(GENERIC) & set(ARCHITECTURES), "generic-path architectures must have no table entry"


@pytest.mark.parametrize("model_type,head", CASES)
def test_eval_bit_identical_and_state_dict_unchanged(model_type, head):
    model = build(model_type, head)
    inputs = make_inputs(model_type, model.config, head=head)
    before, state = forward(model, inputs, False), {k: v.clone() for k, v in model.state_dict().items()}
    patch_quietly(model, FULL)
    assert torch.equal(forward(model, inputs, False), before)
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())


@pytest.mark.parametrize("model_type,head", CASES)
def test_zero_spec_is_deterministic(model_type, head):
    model = build(model_type, head)
    inputs = make_inputs(model_type, model.config, head=head)
    hfreg.patch_model(model, Reg.zero())
    assert torch.equal(forward(model, inputs, True, seed=1), forward(model, inputs, True, seed=2))


@pytest.mark.parametrize("model_type,head", CASES)
def test_each_knob_alone_is_stochastic_and_reproducible(model_type, head):
    model = build(model_type, head, **({"alibi": True} if model_type == "falcon" else {}))
    inputs = make_inputs(model_type, model.config, head=head)
    for knob in knobs_for(model_type, head):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an applicable knob must not warn
            hfreg.patch_model(model, only(knob))
        if knob == "mixout":  # mixing a weight with itself changes nothing: train first
            hfreg.probing._move_weights(model, 0.05)
        first = forward(model, inputs, True, seed=1)
        assert torch.equal(first, forward(model, inputs, True, seed=1)), f"{knob} not reproducible"
        assert any(not torch.equal(first, forward(model, inputs, True, seed=s)) for s in range(2, 12)), \
            f"{knob} does not act on {model_type}"


@pytest.mark.parametrize("model_type,head", CASES)
def test_unpatch_restores_exactly_and_patching_twice_equals_once(model_type, head):
    model = build(model_type, head)
    inputs = make_inputs(model_type, model.config, head=head)
    train0, eval0 = forward(model, inputs, True), forward(model, inputs, False)
    own_hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
    patch_quietly(model, FULL)
    once = forward(model, inputs, True)
    patch_quietly(model, FULL)
    assert torch.equal(forward(model, inputs, True), once)
    hfreg.unpatch_model(model)
    assert not hfreg.is_patched(model)
    assert torch.equal(forward(model, inputs, True), train0)
    assert torch.equal(forward(model, inputs, False), eval0)
    assert not hasattr(model.config, "hfreg")
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == own_hooks


@pytest.mark.parametrize("model_type,head", CASES)
def test_inspect_reports_rates_in_force(model_type, head):
    model = build(model_type, head, **({"alibi": True} if model_type == "falcon" else {}))
    rates = {k: round(0.11 + 0.01 * i, 2) for i, k in enumerate(KNOBS)}
    patch_quietly(model, Reg(**rates))
    sites = hfreg.inspect_model(model)
    for knob in knobs_for(model_type, head):
        mine = [s for s in sites if s.kind == knob]
        assert mine, f"no {knob} site reported"
        if knob == "drop_path":  # the linear profile over each tower's depth (the deepest layer: the rate)
            depth = {p: layer.depth for layer in hfreg.sites.analyze(model).layers for p, _ in layer.branches}
            assert all(s.rate == pytest.approx(hfreg.drop_path_rates(rates[knob], depth[s.path])[s.layer])
                       for s in mine if s.path in depth)
            assert all(s.rate <= rates[knob] + 1e-9 for s in mine)
            assert max(s.rate for s in mine) > rates[knob] / 2
        else:
            assert {round(s.rate, 6) for s in mine} == {rates[knob]}, knob


def test_inspect_unpatched_bert_sees_native_rates():
    model = build("bert", hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.05)
    sites = hfreg.inspect_model(model)
    attention = [s for s in sites if s.kind == "attention"]
    assert [(s.layer, s.rate) for s in attention] == [(0, 0.05), (1, 0.05)]
    assert {s.rate for s in sites if s.kind in ("hidden", "embedding")} == {0.2}
    assert len([s for s in sites if s.kind == "hidden"]) == 4  # two branches x two layers


def test_linear_drop_path_profile_and_uniform():
    model = build("llama", num_hidden_layers=5)
    hfreg.patch_model(model, Reg(drop_path=0.2))
    per_layer = {s.layer: s.rate for s in hfreg.inspect_model(model) if s.kind == "drop_path"}
    assert per_layer == pytest.approx({0: 0.0, 1: 0.05, 2: 0.1, 3: 0.15, 4: 0.2})
    hfreg.patch_model(model, Reg(drop_path=0.2, drop_path_profile="uniform"))
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind == "drop_path"} == {0.2}


def test_hidden_injected_on_both_branches_of_one_branch_architectures():
    for model_type in ("distilbert", "stablelm", "llama"):
        model = build(model_type)
        hfreg.patch_model(model, Reg(hidden=0.1))
        per_layer = [s for s in hfreg.inspect_model(model) if s.kind == "hidden" and s.layer == 0]
        assert len(per_layer) == 2, model_type


def test_albert_shared_layer_gets_per_depth_rates():
    model = build("albert", num_hidden_layers=4)
    hfreg.patch_model(model, Reg(drop_path=0.3))
    rates = sorted((s.layer, s.rate) for s in hfreg.inspect_model(model) if s.kind == "drop_path")
    assert [layer for layer, _ in rates[::2]] == [0, 1, 2, 3]
    assert rates[-1][1] == pytest.approx(0.3)


def test_falcon_rotary_attention_warns_naming_knob_and_architecture():
    model = build("falcon")  # eager attention: a softmax with no dropout, nothing to hand a rate to
    with pytest.warns(UserWarning, match="`attention`=0.2 cannot apply to falcon .* implementation is 'eager'"):
        hfreg.patch_model(model, Reg(attention=0.2))


def test_attention_injected_into_sdpa_where_the_model_hard_codes_zero():
    """Falcon's rotary path calls scaled_dot_product_attention with dropout_p=0.0: hfreg hands it the rate."""
    model = build("falcon", head=True)
    model.config._attn_implementation = "sdpa"  # transformers' default; the tiny models run eager
    inputs = make_inputs("falcon", model.config, head=True)
    eval0, train0 = forward(model, inputs, False), forward(model, inputs, True)
    hooks0 = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, only("attention"))
    sites = [s for s in hfreg.inspect_model(model) if s.kind == "attention"]
    assert [(s.path, s.source) for s in sites] == [(f"transformer.h.{i}.self_attention", "injected") for i in (0, 1)]
    first = forward(model, inputs, True, seed=1)
    assert torch.equal(first, forward(model, inputs, True, seed=1))
    assert not torch.equal(first, forward(model, inputs, True, seed=2))
    assert torch.equal(forward(model, inputs, False), eval0)
    assert torch._C._len_torch_function_stack() == 0  # every mode entered was left
    with hfreg.mc_dropout(model):
        assert not torch.equal(forward(model, inputs, False, seed=1), forward(model, inputs, False, seed=2))
    hfreg.unpatch_model(model)
    assert torch.equal(forward(model, inputs, True), train0)
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == hooks0


def test_classifier_on_base_model_warns():
    with pytest.warns(UserWarning, match="`classifier`=0.1 cannot apply to llama .*no classification head"):
        hfreg.patch_model(build("llama"), Reg(classifier=0.1))


def test_hardcoded_head_dropout_is_a_classifier_site():
    from tiny_models import tiny_config
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_config(tiny_config("llama"))
    assert [s.rate for s in hfreg.inspect_model(model) if s.kind == "classifier"] == [0.1]
    hfreg.patch_model(model, Reg(classifier=0.0))
    assert [s.rate for s in hfreg.inspect_model(model) if s.kind == "classifier"] == [0.0]


def test_config_read_in_forward_is_rewired():
    model = build("falcon", hidden_dropout=0.3)
    inputs = make_inputs("falcon", model.config)
    hfreg.patch_model(model, Reg.zero())
    assert model.config.hidden_dropout == 0.0
    assert torch.equal(forward(model, inputs, True, 1), forward(model, inputs, True, 2))
    hfreg.unpatch_model(model)
    assert model.config.hidden_dropout == 0.3


@pytest.mark.parametrize("model_type", ["bert", "llama", "t5", "swin", "gpt2", "clip", "bart"])
def test_patch_config_round_trip_matches_live_patch(model_type, tmp_path):
    head = model_type not in ("clip", "t5", "bart")
    reg = Reg(attention=0.15, hidden=0.1, embedding=0.05, activation=0.05, drop_path=0.1, layerdrop=0.1,
              classifier=0.2 if head else None)
    live = build(model_type, head)
    config = hfreg.patch_config(live.config, reg)
    assert config is not live.config and not hasattr(live.config, "hfreg")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.hfreg == reg.to_dict()
    loaded._attn_implementation = "eager"  # not saved; sdpa would draw its dropout masks differently
    rebuilt = (head_class(model_type) if head else AutoModel).from_config(loaded)
    rebuilt.load_state_dict(live.state_dict())
    hfreg.patch_model(live, reg)
    hfreg.patch_model(rebuilt)  # the spec recorded in the config
    inputs = make_inputs(model_type, live.config, head=head)
    for seed in (1, 2):
        assert torch.equal(forward(live, inputs, True, seed), forward(rebuilt, inputs, True, seed))


def test_plain_transformers_honours_native_keys():
    config = hfreg.patch_config(build("bert", head=True).config, Reg(attention=0.15, hidden=0.25, classifier=0.3))
    model = type(build("bert", head=True))(config)
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.15
    assert model.bert.encoder.layer[1].output.dropout.p == 0.25
    assert config.classifier_dropout == 0.3
    gpt2 = hfreg.patch_config(build("gpt2").config, Reg(attention=0.1, hidden=0.2, embedding=0.3))
    assert (gpt2.attn_pdrop, gpt2.resid_pdrop, gpt2.embd_pdrop) == (0.1, 0.2, 0.3)
    clip = hfreg.patch_config(build("clip").config, Reg(attention=0.2))
    assert clip.text_config.attention_dropout == clip.vision_config.attention_dropout == 0.2


def test_load_regularized_loads_a_patched_model_in_one_call(tmp_path):
    model = build("llama")
    model.save_pretrained(tmp_path)
    loaded = hfreg.load_regularized(tmp_path, Reg(hidden=0.1))
    assert hfreg.is_patched(loaded)
    assert {s.rate for s in hfreg.inspect_model(loaded) if s.kind == "hidden"} == {0.1}
    loaded.save_pretrained(tmp_path / "again")
    again = hfreg.load_regularized(tmp_path / "again")
    assert again.config.hfreg == Reg(hidden=0.1).to_dict() and hfreg.is_patched(again)
    # `config` may name where to read the config from, as from_pretrained takes it: its record and settings count
    elsewhere = build("llama")
    elsewhere.config.update({"hfreg": Reg(hidden=0.3).to_dict()})
    elsewhere.config.save_pretrained(tmp_path / "config")
    other = hfreg.load_regularized(tmp_path, config=str(tmp_path / "config"), rms_norm_eps=1e-3)
    assert hfreg.patch_state(other).reg == Reg(hidden=0.3) and other.config.rms_norm_eps == 1e-3


def test_patch_model_without_spec_or_record_fails():
    with pytest.raises(ValueError, match="no regularization spec given and none recorded"):
        hfreg.patch_model(build("bert"))


@pytest.mark.parametrize("bad", [torch.nn.Linear(2, 2), "bert", 3])
def test_not_a_transformer(bad):
    with pytest.raises(ValueError, match="expected a transformers PreTrainedModel"):
        hfreg.patch_model(bad, Reg(hidden=0.1))


def test_bad_spec_types():
    with pytest.raises(ValueError, match="`reg` must be"):
        hfreg.patch_model(build("bert"), 0.1)
    with pytest.raises(ValueError, match="`hidden` must be a float"):
        hfreg.patch_model(build("bert"), {"hidden": 2})


def test_a_patch_that_fails_halfway_is_undone(monkeypatch):
    model = build("bert", head=True)
    inputs = make_inputs("bert", model.config, head=True)
    train0 = forward(model, inputs, True)
    hooks0 = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]

    def boom(*args):
        raise RuntimeError("injection failed")

    import hfreg.inject

    # the classifier's: after the attention and layer hooks are in place
    monkeypatch.setitem(hfreg.inject.INJECTORS, "classifier", boom)
    with pytest.raises(RuntimeError, match="injection failed"):
        hfreg.patch_model(model, FULL)
    assert not hfreg.is_patched(model) and not hasattr(model.config, "hfreg")
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()] == hooks0
    assert torch.equal(forward(model, inputs, True), train0)


def test_config_rates_read_in_forward_are_found_in_the_source():
    from transformers.models.hubert.modeling_hubert import HubertEncoder

    from hfreg.sites import analyze, config_reads

    assert "layerdrop" in config_reads(HubertEncoder)
    model = build("hubert", layerdrop=0.4)
    [site] = [n for n in analyze(model).natives if n.source == "config"]
    assert (site.path, site.kind, site.rate) == ("config.layerdrop", "layerdrop", 0.4)
    assert "hubert" not in ARCHITECTURES


def test_architecture_entries_are_typed():
    from hfreg.architectures import Arch

    with pytest.raises(TypeError):
        Arch(brnaches=("mlp",))
    with pytest.raises(ValueError, match="unknown knob"):
        Arch(forward_config={"layerdrop": "layer_drop"})


def test_attention_probability_dropout_named_dropout_prob_is_attention():
    # no name rule knows `dropout_prob`: the model, built with a sentinel in each rate key, shows where it came from
    from hfreg.architectures import GENERIC_RULES

    assert not any(re.fullmatch(p, "YolosSelfAttention.dropout_prob") for p, _ in GENERIC_RULES)
    sites = {s.path: s for s in hfreg.inspect_model(build("yolos"))}
    site = sites["encoder.layer.0.attention.attention:dropout_prob"]
    assert (site.kind, site.config_key) == ("attention", "attention_probs_dropout_prob")
    assert (sites["encoder.layer.0.attention.output.dropout"].kind,
            sites["encoder.layer.0.attention.output.dropout"].config_key) == ("hidden", "hidden_dropout_prob")


def test_config_sources_name_the_key_each_rate_was_built_from():
    from hfreg.provenance import config_sources

    sources = config_sources(build("bert", attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1))
    assert sources[("encoder.layer.1.attention.self.dropout", "p")] == ("", "attention_probs_dropout_prob")
    assert sources[("embeddings.dropout", "p")] == ("", "hidden_dropout_prob")  # equal rates told apart
    # a module attribute copied from a noise key (MoE router jitter) is found too
    sources = config_sources(AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("switch_transformers"))))
    assert sources[("encoder.block.1.layer.1.mlp.router", "jitter_noise")] == ("", "router_jitter_noise")


def test_modernbert_needs_no_entry_its_mlp_dropout_key_names_the_knob():
    assert "modernbert" not in ARCHITECTURES
    sites = {s.path: s for s in hfreg.inspect_model(build("modernbert", mlp_dropout=0.1, attention_dropout=0.1))}
    assert (sites["layers.0.mlp.drop"].kind, sites["layers.0.mlp.drop"].config_key) == ("activation", "mlp_dropout")
    assert sites["layers.0.attn:attention_dropout"].kind == "attention"
    # an nn.Dropout built from the attention key on the attention block's output is residual dropout
    out = next(s for s in hfreg.sites.analyze(build("modernbert", attention_dropout=0.1)).natives
               if s.path == "layers.0.attn.out_drop")
    assert (out.kind, out.config_key) == ("hidden", "attention_dropout")


def test_config_sources_of_a_class_that_needs_more_than_its_config_is_empty():
    from hfreg.provenance import config_sources

    class NeedsMore(type(build("bert"))):
        def __init__(self, config, extra):
            super().__init__(config)

    model = NeedsMore(build("bert").config, extra=1)
    assert config_sources(model) == {}
    assert {s.kind for s in hfreg.inspect_model(model)} >= {"attention", "hidden"}  # the name rules still decide


def test_parallel_per_index_lists_form_layers():

    model = build("xlm", head=True)
    layers = [layer for tower in hfreg.sites.analyze(model).towers for layer in tower]
    assert [(layer.path, [p for p, _ in layer.branches]) for layer in layers] == [
        (f"transformer.attentions.{i}", [f"transformer.attentions.{i}", f"transformer.ffns.{i}"]) for i in (0, 1)]
    kinds = {s.path: s.kind for s in hfreg.inspect_model(model)}
    assert kinds["transformer.ffns.0:dropout"] == "hidden" and kinds["transformer.attentions.0:dropout"] == "attention"
    assert "transformer:attention_dropout" not in kinds  # set in __init__, read nowhere: found dead by the scan
    assert [layer.norms and [p for p, _ in layer.norms] for layer in layers] == [
        [f"transformer.layer_norm1.{i}", f"transformer.layer_norm2.{i}"] for i in (0, 1)]


def test_layerdrop_skips_a_parallel_layer_whole():
    """XLM's layer i is attentions[i], layer_norm1[i], ffns[i] and layer_norm2[i], joined in the model's forward:
    LayerDrop skips all four at once, so a forward that skips layer 0 equals the one-layer model made of layer 1."""
    from hfreg.knobs.stack import ParallelDraw

    model = build("xlm")
    inputs = make_inputs("xlm", model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, only("layerdrop", 0.5))  # every other rate 0: the rest of training is exact
    draws = [h for m in model.modules() for h in m._forward_pre_hooks.values() if isinstance(h, ParallelDraw)]
    seen = {}
    for seed in range(40):
        out = forward(model, inputs, True, seed)
        seen.setdefault(tuple(d.skipped for d in draws), out)
    assert set(seen) == {(False, False), (True, False), (False, True), (True, True)}
    assert torch.equal(seen[(False, False)], forward(hfreg.patch_model(model, Reg.zero()), inputs, True))
    one = build("xlm", n_layers=1)
    state = model.state_dict()
    one.load_state_dict({k: state[re.sub(r"(attentions|ffns|layer_norm1|layer_norm2)\.0\.", r"\1.1.", k)]
                         for k in one.state_dict()})
    assert torch.equal(seen[(True, False)], forward(hfreg.patch_model(one, Reg.zero()), inputs, True))
    assert not torch.equal(seen[(True, False)], seen[(False, True)])


def test_each_tower_gets_a_knob_its_own_native_sites_do_not_cover():
    # InternVL: the vision tower has embedding dropout of its own, the language model none
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("internvl")))
    struct = hfreg.sites.analyze(model)
    [emb] = [n for n in struct.natives if n.kind == "embedding"]
    assert emb.path == "vision_tower.embeddings.dropout"
    assert [struct.towers[t][0].path for t in emb.towers] == ["vision_tower.encoder.layer.0"]
    hfreg.patch_model(model, Reg(embedding=0.5))
    sites = {s.path: s for s in hfreg.inspect_model(model) if s.kind == "embedding"}
    assert sites.keys() == {"vision_tower.embeddings.dropout", "language_model.layers.0.<input>"}
    inputs = hfreg.probe_inputs(model)  # text only: the language model's injected dropout is what acts
    model.train()
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(model(**inputs).last_hidden_state)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_sites_outside_layers_belong_to_the_tower_of_the_nearest_stack():
    from hfreg.sites import _towers_of

    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("internvl")))
    towers = hfreg.sites.analyze(model).towers
    assert _towers_of("", towers) == (0, 1)  # a model-level site: every stack under the model
    assert _towers_of("language_model.norm", towers) == (1,)


def test_a_tower_without_activation_modules_warns_by_name():
    # MiniMax-M3-VL: the vision tower has activation modules; the language model's experts are batched weights with
    # the activation as a function, and dropout on the shared expert beside them alone would be partial
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("minimax_m3_vl")))
    with pytest.warns(UserWarning, match=r"`activation`=0.2 cannot apply .* layers of language_model\.layers"):
        hfreg.patch_model(model, Reg(activation=0.2))
    assert any(s.kind == "activation" and s.path.startswith("vision_tower.") for s in hfreg.inspect_model(model))
    assert not any(s.kind == "activation" and s.path.startswith("language_model.") for s in hfreg.inspect_model(model))


# where a layer has no activation module of its own, `activation` drops the input of its MLP's output projection
PROJECTIONS = {
    "openai-gpt": "h.0.mlp.c_proj",  # GPT-2's Conv1D; its `gelu_new` is one module-level object in every layer
    "xlm": "ffns.0.lin2",  # parallel per-index lists; its `gelu` is module-level too
    "lfm2": "layers.0.feed_forward.w2",  # w2(silu(w1 x) * w3 x): the activation as a function
    "apertus": "layers.0.mlp.down_proj",  # xIELU has parameters
    "rwkv": "blocks.0.feed_forward.value",  # value(relu(key x) ** 2)
}


@pytest.mark.parametrize("model_type", sorted(PROJECTIONS))
def test_activation_falls_back_to_the_input_of_the_mlp_output_projection(model_type):
    model = _twin(model_type)
    path = PROJECTIONS[model_type]
    [layer, _] = hfreg.sites.analyze(model).layers
    assert layer.activations == [] and [p for p, _ in layer.projections] == [path]
    inputs = hfreg.probe_inputs(model)

    def zeros(reg):
        """The share of exact zeros in what the output projection takes, in one training pass under ``reg``."""
        hfreg.patch_model(model, reg)
        seen = []  # registered after the patch's hooks, so it sees their output
        handle = model.get_submodule(path).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            model(**inputs)
        handle.remove()
        return (seen[0] == 0).float().mean().item()

    before, after = zeros(Reg.zero()), zeros(only("activation"))
    # half of what was not zero already (ReLU's zeros: RWKV) is dropped
    assert abs(after - (before + 0.5 * (1 - before))) < 0.08, (before, after)
    assert _train_varies(model, inputs)
    sites = {s.path: s for s in hfreg.inspect_model(model) if s.kind == "activation"}
    assert f"{path}.<input>" in sites and sites[f"{path}.<input>"].source == "injected"


def test_activation_modules_come_before_output_projections():
    # Llama's `act_fn` is a module of each layer: it takes the knob, and the output projection takes none
    [layer, _] = hfreg.sites.analyze(_twin("llama")).layers
    assert [p for p, _ in layer.activations] == ["layers.0.mlp.act_fn"] and layer.projections == []
    # Phi-3 with xIELU (an activation with parameters): a fused gate-and-up projection, twice as wide, feeds down_proj
    torch.manual_seed(0)
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("phi3", hidden_act="xielu")))
    assert [p for layer in hfreg.sites.analyze(model).layers for p, _ in layer.projections] == [
        "layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]


class _Mlp(torch.nn.Module):  # the activation as a function: only the output projection can take `activation`
    def __init__(self, first="up"):
        super().__init__()
        for name in (("up", "down") if first == "up" else ("down", "up")):
            setattr(self, name, torch.nn.Linear(8, 16) if name == "up" else torch.nn.Linear(16, 8))

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(x)))


class _RoutedExperts(torch.nn.ModuleList):  # experts that are MLPs themselves, in a list named like experts
    pass


def test_output_projections_of_experts_of_shared_ones_and_of_down_first_mlps():
    block = torch.nn.Module()
    block.experts = _RoutedExperts([_Mlp(), _Mlp()])  # each expert an MLP: every one takes it
    assert [p for p, _ in hfreg.sites._projections(block)] == ["experts.0.down", "experts.1.down"]
    block = torch.nn.Module()
    block.moe = torch.nn.Module()
    block.moe.shared_mlp = _Mlp()
    block.moe.routed = torch.nn.Module()
    block.moe.routed.experts = _RoutedExperts([torch.nn.Linear(8, 8)])  # routed experts a level deeper
    assert hfreg.sites._projections(block) == []  # the shared expert alone would be partial
    block = torch.nn.Module()
    block.mlp = _Mlp(first="down")  # built output projection first: no guess at which is which
    assert hfreg.sites._projections(block) == []
    block.mlp = _Mlp()
    assert [p for p, _ in hfreg.sites._projections(block)] == ["mlp.down"]


def test_activation_names_the_layers_it_cannot_reach_beside_those_it_can():
    # LFM2-MoE: dense MLPs in the first layers, then routed experts held as batched weights
    config = AutoConfig.for_model("lfm2_moe", hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                                  num_hidden_layers=4, num_dense_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, vocab_size=100,
                                  layer_types=["full_attention", "conv", "full_attention", "conv"])
    model = AutoModel.from_config(config)
    with pytest.warns(UserWarning, match=r"`activation`=0.2 cannot apply .* was found in 2 of the 4 layers"):
        hfreg.patch_model(model, Reg(activation=0.2))
    assert [s.path for s in hfreg.inspect_model(model) if s.kind == "activation"] == [
        "layers.0.feed_forward.w2.<input>", "layers.1.feed_forward.w2.<input>"]


def test_a_module_level_activation_is_never_hooked_even_in_one_layer():
    # OpenAI GPT's `gelu_new` is one object of its modeling module: with one layer it sits at one path only, and a
    # hook on it would reach every other model in the process
    one = AutoModel.from_config(AutoConfig.for_model("openai-gpt", n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    other = AutoModel.from_config(AutoConfig.for_model("openai-gpt", n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                                       resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0))
    [layer] = hfreg.sites.analyze(one).layers
    assert layer.activations == [] and [p for p, _ in layer.projections] == ["h.0.mlp.c_proj"]
    hfreg.patch_model(one, only("activation"))
    inputs = {"input_ids": torch.arange(12).view(2, 6)}
    assert not _train_varies(other, inputs)  # the unpatched model draws nothing
    # a subclass defined elsewhere holds the same object: the modules of the classes it inherits from are read too
    from transformers.models.openai import modeling_openai

    class Mlp(modeling_openai.MLP):
        pass

    layer = one.h[0]
    layer.mlp = Mlp(4 * 32, one.config)
    assert hfreg.sites._activations(layer) == []


def test_activation_takes_the_peft_wrapper_of_an_output_projection():
    # patched after `get_peft_model` with LoRA on every MLP projection: the wrapper's input, which both the frozen
    # base layer and the adapter take, is dropped
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_twin("lfm2"), peft.LoraConfig(r=4, target_modules=["w1", "w2", "w3"]))
    hfreg.patch_model(model, only("activation"))
    wrapper = model.base_model.model.layers[0].feed_forward.w2
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, k=k: seen.setdefault(k, args[0]))
             for k, m in (("base", wrapper.base_layer), ("adapter", wrapper.lora_A["default"]))]
    model.train()
    with torch.no_grad():
        model(**hfreg.probe_inputs(model))
    for h in hooks:
        h.remove()
    for k in ("base", "adapter"):
        assert abs((seen[k] == 0).float().mean().item() - 0.5) < 0.08, k


@pytest.mark.parametrize("model_type, knob, target", [("lfm2", "activation", "w2"), ("llama", "heads", "o_proj")])
def test_a_projection_hook_follows_the_peft_wrapper_put_around_it_after_the_patch(model_type, knob, target):
    # patched before `get_peft_model`: at the next forward the hook moves to the wrapper, so the adapter takes the
    # dropped input too and mc_dropout samples it; `merge_and_unload` hands it back to the merged projection
    peft = pytest.importorskip("peft")
    inner = _twin(model_type)
    hfreg.patch_model(inner, only(knob))
    path = next(s.path for s in hfreg.inspect_model(inner) if s.kind == knob).removesuffix(".<input>")
    model = peft.get_peft_model(inner, peft.LoraConfig(r=4, target_modules=[target]))
    wrapper = inner.get_submodule(path)  # the first forward moves the hook, before anything inspects the model
    inputs = hfreg.probe_inputs(inner)

    def zeros(*modules, sample=False):
        """The share of exact zeros in what each of ``modules`` takes in one forward of ``model`` (training, or
        eval under mc_dropout)."""
        seen = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, args[0]))
                 for i, m in enumerate(modules)]
        with torch.no_grad():
            if sample:
                with hfreg.mc_dropout(model, [knob]):
                    model(**inputs)
            else:
                model.train()(**inputs)
        for h in hooks:
            h.remove()
        return [(seen[i] == 0).float().mean().item() for i in range(len(modules))]

    base, adapter = wrapper.base_layer, wrapper.lora_A["default"]
    assert min(zeros(base, adapter)) > 0.2 and min(zeros(base, adapter, sample=True)) > 0.2
    model = model.merge_and_unload()
    assert model is inner and inner.get_submodule(path) is base and zeros(base)[0] > 0.2
    hfreg.unpatch_model(model)
    assert zeros(base) == [0.0]


def test_a_head_that_peft_trains_as_a_copy_is_dropped_once_and_the_patch_still_controls_it():
    # PEFT's sequence-classification task deep-copies the head (`modules_to_save`), hooks and all: the hook moves to
    # the wrapper and the copy's copy goes, so the head's input is dropped once, at the rate the patch moves, under
    # mc_dropout too; `merge_and_unload` hands back the trained copy, which keeps it, and `unpatch_model` reaches it
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = AutoModelForSequenceClassification.from_config(
        hfreg.small_twin(AutoConfig.for_model("llama", num_labels=2, pad_token_id=0)))
    hfreg.patch_model(inner, only("classifier", 0.5))
    model = peft.get_peft_model(inner, peft.LoraConfig(r=4, target_modules=["o_proj"], task_type="SEQ_CLS"))
    copy = inner.score.modules_to_save["default"]
    inputs = hfreg.probe_inputs(inner)

    def zeros(module, sample=False):
        """The share of exact zeros in the input ``module`` takes in one forward of ``model``."""
        seen = []
        hook = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            if sample:
                with hfreg.mc_dropout(model, ["classifier"]):
                    model(**inputs)
            else:
                model.train()(**inputs)
        hook.remove()
        return (seen[0] == 0).float().mean().item()

    assert 0.35 < zeros(copy) < 0.65 and 0.35 < zeros(copy, sample=True) < 0.65  # twice would zero 3/4
    hfreg.set_rate_factors(model, {"classifier": 0.0})
    assert zeros(copy) == 0.0
    hfreg.set_rate_factors(model, {"classifier": 1.0})
    model = model.merge_and_unload()
    assert inner.score is copy and 0.35 < zeros(copy) < 0.65
    hfreg.unpatch_model(model)
    assert zeros(copy) == 0.0


def test_a_head_peft_trains_as_a_copy_patched_after_it_is_the_wrapper_and_unpatching_before_a_forward_clears_it():
    peft = pytest.importorskip("peft")

    def seq_cls():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(
            hfreg.small_twin(AutoConfig.for_model("llama", num_labels=2, pad_token_id=0)))

    def zeros(model, module):
        seen = []
        hook = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            model.train()(**hfreg.probe_inputs(model))
        hook.remove()
        return (seen[0] == 0).float().mean().item()

    lora = peft.LoraConfig(r=4, target_modules=["o_proj"], task_type="SEQ_CLS")
    # patched before, unpatched before any forward moved the hook: the copy PEFT made of it goes too
    inner = seq_cls()
    hfreg.patch_model(inner, only("classifier", 0.5))
    model = peft.get_peft_model(inner, lora)
    hfreg.unpatch_model(model)
    assert zeros(model, inner.score.modules_to_save["default"]) == 0.0
    # patched after: the wrapper is the head's Linear, so an adapter added later trains a copy without the hook
    inner = seq_cls()
    model = peft.get_peft_model(inner, lora)
    hfreg.patch_model(model, only("classifier", 0.5))
    assert [s.path for s in hfreg.inspect_model(model) if s.kind == "classifier"] == ["score.<input>"]
    model.add_adapter("second", lora)
    model.set_adapter("second")
    second = inner.score.modules_to_save["second"]
    assert 0.35 < zeros(model, second) < 0.65
    hfreg.set_rate_factors(model, {"classifier": 0.0})
    assert zeros(model, second) == 0.0
    hfreg.set_rate_factors(model, {"classifier": 1.0})
    hfreg.unpatch_model(model)
    assert zeros(model, second) == 0.0


@pytest.mark.parametrize("wrap", [{"trainable_token_indices": [1, 2, 3]}, {"modules_to_save": ["embed_tokens"]}])
def test_neftune_follows_peft_wrapping_the_embeddings_after_the_patch(wrap):
    # the trainable-tokens wrapper looks its embedding up itself, so the noise on the base layer's output never ran
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = AutoModelForCausalLM.from_config(hfreg.small_twin(AutoConfig.for_model("llama")))
    hfreg.patch_model(inner, only("embedding_noise", 5.0))
    model = peft.get_peft_model(inner, peft.LoraConfig(r=4, target_modules=["q_proj"], **wrap))
    inputs = hfreg.probe_inputs(inner)

    def noisy():
        """Whether two training forwards feed the first layer different embeddings."""
        seen = []
        hook = inner.model.layers[0].register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
            with_kwargs=True)
        with torch.no_grad():
            model.train()(**inputs)
            model(**inputs)
        hook.remove()
        return not torch.equal(*seen)

    assert noisy()
    hfreg.set_rate_factors(model, {"embedding_noise": 0.0})
    assert not noisy()
    hfreg.set_rate_factors(model, {"embedding_noise": 1.0})
    model = model.unload()
    assert noisy()
    hfreg.unpatch_model(model)
    assert not noisy()


def test_neftune_patched_after_peft_wrapped_the_embeddings_adds_its_noise_once():
    # the modules_to_save wrapper reads as holding the embeddings' weight, and so does the copy inside it
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = AutoModelForCausalLM.from_config(hfreg.small_twin(AutoConfig.for_model("llama")))
    lora = peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    model = peft.get_peft_model(inner, lora)
    hfreg.patch_model(model, only("embedding_noise", 5.0))
    assert [s.path for s in hfreg.inspect_model(model) if s.kind == "embedding_noise"] == ["model.embed_tokens"]
    inputs = hfreg.probe_inputs(inner)
    with torch.no_grad():
        train, clean = (inner.model.embed_tokens.train(mode)(inputs["input_ids"]) for mode in (True, False))
    bound = 5.0 / (inputs["input_ids"].shape[1] * inner.config.hidden_size) ** 0.5  # NEFTune's, drawn once
    assert 0 < (train - clean).abs().max() <= bound


def test_a_head_linear_nested_in_a_module_peft_copies_is_followed_into_the_copy():
    # ResNet's head is Sequential(Flatten, Linear): `modules_to_save=["classifier"]` copies the Sequential, the hooked
    # Linear's hook with it. The copy's hook is the patch's own again: rate factors, mc_dropout and unpatching reach
    # it, in the copy and in what merge_and_unload hands back
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = AutoModelForImageClassification.from_config(
        hfreg.small_twin(AutoConfig.for_model("resnet", num_labels=3)))
    hfreg.patch_model(inner, only("classifier", 0.5))
    assert [s.path for s in hfreg.inspect_model(inner) if s.kind == "classifier"] == ["classifier.1.<input>"]
    model = peft.get_peft_model(inner, peft.LoraConfig(r=2, target_modules=["convolution"],
                                                       modules_to_save=["classifier"]))
    inputs = hfreg.probe_inputs(inner)
    copy, original = inner.classifier.modules_to_save["default"][1], inner.classifier.original_module[1]

    def dropped():
        """Whether an MC-dropout forward drops some of what the trained copy of the head's Linear takes in eval."""
        seen = []
        hook = copy.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            with hfreg.mc_dropout(model.eval(), ["classifier"]):
                model(**inputs)
            model(**inputs)
        hook.remove()
        sampled, clean = seen
        return bool(((sampled == 0) & (clean != 0)).any())

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed, nothing to warn about
        assert dropped()
        assert [s.path for s in hfreg.inspect_model(model) if s.kind == "classifier"] == [
            "classifier.original_module.1.<input>", "classifier.modules_to_save.default.1.<input>"]
    assert _hook_of(copy) is _hook_of(original)
    hfreg.set_rate_factors(model, {"classifier": 0.0})
    assert not dropped()
    hfreg.set_rate_factors(model, {"classifier": 1.0})
    model = model.merge_and_unload()
    assert inner.classifier[1] is copy and dropped()
    hfreg.unpatch_model(model)
    assert not copy._forward_pre_hooks and not original._forward_pre_hooks


def test_a_copy_peft_adds_later_of_a_head_hooked_in_its_wrapper_is_followed_too():
    # patched after `get_peft_model`, the head's Linear is hooked in the original and in the copy; a second adapter
    # copies the original, hook and all: that copy's hook is the original's, listed, moved and sampled with it
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = AutoModelForImageClassification.from_config(
        hfreg.small_twin(AutoConfig.for_model("resnet", num_labels=3)))
    lora = peft.LoraConfig(r=2, target_modules=["convolution"], modules_to_save=["classifier"])
    model = peft.get_peft_model(inner, lora)
    hfreg.patch_model(model, only("classifier", 0.5))
    model.add_adapter("second", lora)
    model.set_adapter("second")
    second, original = inner.classifier.modules_to_save["second"][1], inner.classifier.original_module[1]
    assert [s.path for s in hfreg.inspect_model(model) if s.kind == "classifier"] == [
        "classifier.original_module.1.<input>", "classifier.modules_to_save.default.1.<input>",
        "classifier.modules_to_save.second.1.<input>"]
    assert _hook_of(second) is _hook_of(original)
    hfreg.set_rate_factors(model, {"classifier": 0.0})
    assert _hook_of(second).p == 0.0
    hfreg.set_rate_factors(model, {"classifier": 1.0})
    with hfreg.mc_dropout(model.eval(), ["classifier"]):
        assert second.__dict__.get(hfreg.hooks.SAMPLE_FLAG)
    hfreg.unpatch_model(model)
    assert not second._forward_pre_hooks and not original._forward_pre_hooks


def _hook_of(module):
    """The one hfreg hook ``module`` holds."""
    (hook,) = [h for h in module._forward_pre_hooks.values() if type(h).__module__.startswith("hfreg.")]
    return hook


def test_a_head_with_its_own_dropout_that_peft_copies_takes_the_rates_and_is_restored():
    # RoBERTa's head holds its own dropout module: the copy PEFT's SEQ_CLS task trains keeps the patched rate, and
    # rate factors, mc_dropout and unpatching reach it there too
    peft = pytest.importorskip("peft")
    inner = AutoModelForSequenceClassification.from_config(
        hfreg.small_twin(AutoConfig.for_model("roberta", num_labels=2)))
    before = inner.classifier.dropout.p
    hfreg.patch_model(inner, only("classifier", 0.5))
    model = peft.get_peft_model(inner, peft.LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS"))
    copy = inner.classifier.modules_to_save["default"].dropout
    assert copy.p == 0.5
    hfreg.set_rate_factors(model, {"classifier": 0.2})
    assert copy.p == pytest.approx(0.1) and inner.classifier.original_module.dropout.p == pytest.approx(0.1)
    hfreg.set_rate_factors(model, {"classifier": 1.0})
    with hfreg.mc_dropout(model.eval(), ["classifier"]):
        assert copy.training and copy.p == 0.5
    assert not copy.training
    hfreg.unpatch_model(model)
    assert copy.p == before and inner.classifier.original_module.dropout.p == before


def test_a_module_around_a_nested_hooked_head_replaced_by_something_else_warns_once():
    inner = AutoModelForImageClassification.from_config(
        hfreg.small_twin(AutoConfig.for_model("resnet", num_labels=3)))
    hfreg.patch_model(inner, only("classifier", 0.5))
    linear = inner.classifier[1]
    inner.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(linear.in_features, 3))
    inputs = hfreg.probe_inputs(inner)
    with pytest.warns(UserWarning, match=r"a module around 'classifier.1' was replaced after the patch by a "
                                         r"Sequential, which holds none of its hooks"):
        inner(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inner(**inputs)


def test_a_hooked_module_replaced_by_something_else_warns_once():
    model = _twin("llama")
    hfreg.patch_model(model, only("heads"))
    attn = model.layers[0].self_attn
    attn.o_proj = torch.nn.Linear(attn.o_proj.in_features, attn.o_proj.out_features, bias=False)  # not a wrapper
    inputs = hfreg.probe_inputs(model)
    with pytest.warns(UserWarning, match=r"'o_proj' of LlamaAttention was replaced by a Linear after the patch"):
        model(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)


# an activation that weighs a branch rather than computing its features is not the MLP's: routing scores, a gated
# norm's gate, IDEFICS' tanh(alpha) gate on a residual branch
WEIGHING = {
    "deepseek_v4": ("layers.0.mlp.gate.score_fn", "layers.0.mlp.experts.act_fn"),  # a router
    "axk2": ("layers.0.input_layernorm.mlp.activation_fn", "layers.0.mlp.act_fn"),  # a norm's gate MLP
    "idefics": ("gated_cross_attn_layers.0.act_dense", "gated_cross_attn_layers.0.mlp.act_fn"),  # on a parameter
}


@pytest.mark.parametrize("model_type", sorted(WEIGHING))
def test_routers_and_gates_keep_their_activations(model_type):
    model = _twin(model_type)
    weighing, mlp = WEIGHING[model_type]
    assert hfreg.sites._ACTIVATION.fullmatch(type(model.get_submodule(weighing)).__name__)
    hfreg.patch_model(model, only("activation"))
    sites = {s.path for s in hfreg.inspect_model(model) if s.kind == "activation"}
    assert mlp in sites and weighing not in sites


def test_a_layer_named_like_a_norm_keeps_its_mlp_activation():
    # wav2vec2's stable-layer-norm layers are `Wav2Vec2EncoderLayerStableLayerNorm`: only what sits below the layer
    # is read for routers, gates and norms
    torch.manual_seed(0)
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("wav2vec2", do_stable_layer_norm=True)))
    layer = hfreg.sites.analyze(model).layers[0]
    assert type(model.get_submodule(layer.path)).__name__.endswith("Norm")
    assert [p for p, _ in layer.activations] == [f"{layer.path}.feed_forward.intermediate_act_fn"]


def test_a_router_activation_alone_is_not_taken_for_the_mlp():
    # Inkling 2: the router's sigmoid was the only activation module of its MoE layers; its experts' soft-capped
    # SwiGLU is a function of batched weights, so nothing is left to take the knob
    with pytest.warns(UserWarning, match=r"`activation`=0.2 cannot apply"):
        hfreg.patch_model(_twin("inkling2_text"), Reg(activation=0.2))


@pytest.mark.parametrize("model_type", ["gpt_oss", "mamba"])
def test_activation_warns_where_no_output_projection_fits(model_type):
    # GPT-OSS: experts as batched weights, the activation a function; Mamba: a mixer, no MLP
    model = _twin(model_type)
    assert not any(layer.projections for layer in hfreg.sites.analyze(model).layers)
    with pytest.warns(UserWarning, match=r"`activation`=0.2 cannot apply .* no activation module, nor an MLP output"):
        hfreg.patch_model(model, Reg(activation=0.2))


def _twin(model_type):
    torch.manual_seed(0)
    return AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model(model_type)))


def _train_varies(model, inputs):
    """Training output reproducible under a seed and different under some other seed (LayerDrop over two layers
    draws one of four patterns)."""
    model.train()
    outs = []
    for seed in (1, 1, 2, 3, 4, 5):
        torch.manual_seed(seed)
        outs.append(first_tensor(model(**inputs)))
    return torch.equal(outs[0], outs[1]) and any(not torch.equal(outs[0], o) for o in outs[2:])


def test_layerdrop_skips_layers_that_return_lists():
    model = _twin("openai-gpt")  # its blocks return [hidden_states, ...]
    hfreg.patch_model(model, Reg(layerdrop=0.5))
    assert _train_varies(model, hfreg.probe_inputs(model))


def test_a_broken_native_site_is_held_at_zero_and_the_knob_injected():
    # PegasusX's own encoder LayerDrop sets the states to None when it skips: at 0.5 its forward would fail
    model = _twin("pegasus_x")
    inputs = hfreg.probe_inputs(model)
    hfreg.patch_model(model, Reg(layerdrop=0.5))
    assert model.encoder.layerdrop == 0.0 and model.decoder.layerdrop == 0.5
    assert "encoder.layers.0" in {s.path for s in hfreg.inspect_model(model) if s.kind == "layerdrop"}
    assert _train_varies(model, inputs)
    hfreg.unpatch_model(model)
    assert model.encoder.layerdrop == model.config.encoder_layerdrop


def test_a_rate_attribute_whose_module_was_never_built_is_held_at_zero():
    # PP-DocLayout-V3's mask head builds its Dropout2d only when dropout_ratio > 0, and forward reads the ratio
    model = _twin("pp_doclayout_v3")
    inputs = hfreg.probe_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hfreg.patch_model(model, Reg(hidden=0.3, embedding=0.3))
    fpn = next(m for m in model.modules() if type(m).__name__ == "PPDocLayoutV3MaskFeatFPN")
    assert fpn.dropout_ratio == 0.0 and not hasattr(fpn, "dropout")
    with torch.no_grad():
        model.eval()(**inputs)  # ran into the missing module before
        model.train()(**inputs)


def test_state_space_blocks_have_their_mixer_as_branch_end_and_an_uncalled_activation_warns():
    model = _twin("mamba")
    [layer, _] = hfreg.sites.analyze(model).layers
    assert [p for p, _ in layer.branches] == ["layers.0.mixer"]
    assert layer.activations == []  # MambaMixer builds `act` but applies its activation as a function
    inputs = hfreg.probe_inputs(model)
    for knob in ("hidden", "drop_path", "layerdrop"):
        hfreg.patch_model(model, Reg(**{knob: 0.5}))
        assert _train_varies(model, inputs), knob
    with pytest.warns(UserWarning, match="`activation`=0.2 cannot apply to mamba"):
        hfreg.patch_model(model, Reg(activation=0.2))


def test_layers_whose_forward_is_called_directly_refuse_layerdrop_and_keep_their_branch_hooks():
    # SqueezeBERT's encoder calls `layer.forward(...)`: no hook on a layer runs, while the layer's parts run theirs
    model = _twin("squeezebert")
    assert hfreg.probing.inert(model).layers == {"encoder.layers.*"}
    inputs = hfreg.probe_inputs(model)
    with pytest.warns(UserWarning, match=r"`layerdrop`=0.5 cannot apply to squeezebert \(SqueezeBertModel\): its "
                                         r"SqueezeBertModule layers are run by calling their forward directly"):
        hfreg.patch_model(model, only("layerdrop"))
    assert "layerdrop" in hfreg.patch_state(model).refused
    assert not [s for s in hfreg.inspect_model(model) if s.kind == "layerdrop"]  # no site claimed
    hfreg.patch_model(model, only("drop_path"))  # at the branch ends, which run their hooks
    assert _train_varies(model, inputs)
    # both branches of every layer take hidden dropout (the attention module itself returns a dict: the branch ends
    # at its post-attention dropout, before the residual add)
    hfreg.patch_model(model, only("hidden"))
    ends = [m for layer in model.encoder.layers for m in (layer.post_attention.dropout, layer.output.dropout)]
    seen = {m: [] for m in ends}
    handles = [m.register_forward_hook(lambda mod, a, out: seen[mod].append(out)) for m in ends]
    model.train()
    for seed in (0, 1):
        torch.manual_seed(seed)
        model(**inputs)
    for h in handles:
        h.remove()
    assert all(not torch.equal(*outs) for outs in seen.values())
    # a tower the inputs never reach (LLaVA's vision tower fed text) runs neither its layers nor their parts
    assert hfreg.probing.inert(_twin("llava")).layers == frozenset()


def test_knobs_at_a_layers_input_are_refused_where_its_hooks_never_run():
    from hfreg.inject import apply_spec

    # Llama has no native embedding dropout (injected at the first layer's input) nor LayerDrop
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        state = apply_spec(_twin("llama"), Reg(embedding=0.3, layerdrop=0.2, hidden=0.1),
                           hfreg.sites.Inert(layers=frozenset({"layers.*"})))
    assert sorted(state.refused) == ["embedding", "layerdrop"]
    assert state.refused["embedding"].endswith("LlamaDecoderLayer layers are run by calling their forward "
                                               "directly, so no hook on a layer runs")
    # a speech encoder has no input embeddings: NEFTune would go on its first layer's input
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        state = apply_spec(_twin("wav2vec2"), Reg(embedding_noise=5.0),
                           hfreg.sites.Inert(layers=frozenset({"encoder.layers.*"})))
    assert state.refused["embedding_noise"].startswith("it has no input embeddings (`get_input_embeddings`), and "
                                                       "its Wav2Vec2EncoderLayer layers are run by calling")


@pytest.mark.parametrize("model_type,ends", [
    # a ModuleDict's own forward never runs: BridgeTower's CLIP-style MLP ends at its last entry
    ("bridgetower", ["attn", "mlp.c_proj"]),
    # two attention and two MLP sub-layers per layer, held in lists; the MoE's output joins the last residual add
    ("longcat_flash", ["self_attn.0", "mlps.0", "self_attn.1", "mlps.1", "mlp"]),
    # every sub-block adds its residual inside (after a LayerNorm): the branch ends before it
    ("mobilebert", ["attention.output.dense", "ffn.0.output.dense", "ffn.1.output.dense", "ffn.2.output.dense",
                    "output.dense", "output.bottleneck.dropout"]),
])
def test_every_branch_end_is_a_module_that_runs(model_type, ends):
    model = _twin(model_type)
    layer = next(x for x in hfreg.sites.analyze(model).layers if x.branches and not x.path.startswith("text_model")
                 and "cross_modal" not in x.path)
    assert [p.removeprefix(layer.path + ".") for p, _ in layer.branches] == ends
    ran = []
    handles = [m.register_forward_hook(lambda mod, a, out, p=p: ran.append(p)) for p, m in layer.branches]
    model.train()(**hfreg.probe_inputs(model))
    for h in handles:
        h.remove()
    assert sorted(set(ran)) == sorted(p for p, _ in layer.branches)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama", "t5", "bloom", "mobilebert", "mpt", "cpmant"])
def test_a_layer_with_every_branch_dropped_still_passes_its_input_on(model_type, monkeypatch):
    """Drop-path's premise, coverage's `branches` invariant: a branch end's output joins the residual stream after
    it, so a layer whose branches all drop passes its input on. MPT's MLP takes the residual as an argument and
    CPM-Ant's sub-blocks add their own: without their table entries, the generic branch ends would zero the stream."""
    model = _twin(model_type)
    assert _coverage().passes_input_on(model, hfreg.probe_inputs(model))
    if model_type in ("mpt", "cpmant"):
        monkeypatch.delitem(ARCHITECTURES, model_type)
        model = _twin(model_type)
        assert not _coverage().passes_input_on(model, hfreg.probe_inputs(model))


def test_a_branch_end_whose_output_is_no_tensor_says_so_at_the_first_forward(monkeypatch):
    # without its table entry, SqueezeBERT's attention module (which returns a dict) is taken for a branch end
    monkeypatch.delitem(hfreg.architectures.ARCHITECTURES, "squeezebert")
    model = _twin("squeezebert")
    assert "encoder.layers.0.attention" in [p for p, _ in hfreg.sites.analyze(model).layers[0].branches]
    hfreg.patch_model(model, only("hidden"))
    with pytest.warns(UserWarning, match=r"`hidden` and `drop_path` cannot act at the output of "
                                         r"SqueezeBertSelfAttention \(a dict, not a tensor\)") as caught:
        model.train()(**hfreg.probe_inputs(model))
    assert len([w for w in caught if "SqueezeBertSelfAttention" in str(w.message)]) == 1  # once per class


def test_attention_injected_where_no_sdpa_runs_says_so_at_the_first_forward():
    # a hybrid whose layers are all linear attention: the modules are named like attention but compute none
    config = hfreg.small_twin(AutoConfig.for_model("bailing_hybrid"))
    config.layer_types, config.num_hidden_layers = ["linear_attention"] * 2, 2
    model = AutoModel.from_config(config)
    hfreg.patch_model(model, Reg(attention=0.3))
    inputs = hfreg.probe_inputs(model)
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(**inputs)
        model(**inputs)
    assert [str(w.message) for w in caught] == ["hfreg: `attention`=0.3 cannot apply to BailingHybridDeltaAttention: "
                                                "it computed attention without scaled_dot_product_attention, where "
                                                "hfreg injects it"]


@functools.cache
def _coverage():
    """`benchmarks/coverage.py`, whose invariants the tests share."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "coverage.py")
    spec = importlib.util.spec_from_file_location("hfreg_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keeps():
    """The invariant `benchmarks/coverage.py` checks on every model type, shared with the tests."""
    return _coverage().keeps


@pytest.mark.parametrize("model_type,warned", [
    ("flava_image_codebook", ["attention", "layerdrop", "heads", "mixout"]),  # a tensor output; frozen by default
    ("uvdoc_backbone", ["attention", "heads"]),
    ("hgnet_v2", ["attention", "layerdrop", "heads"]),  # a backbone: feature maps
])
def test_coverage_judges_residual_backbones_by_every_invariant(model_type, warned):
    """Types the coverage builder once could not judge (outputs it did not compare) or whose residual blocks were
    not layers: every invariant holds, and only knobs that cannot act there warn."""
    status, failed, note, knobs = _coverage().check(model_type)
    assert (status, failed, knobs) == ("warns", [], warned), note


@pytest.mark.parametrize("model_type", list(TINY))
def test_a_knob_never_leaves_fewer_acting_sites_nor_undoes_the_models_own(model_type):
    keeps = _keeps()
    model = build(model_type, True)
    native = hfreg.inspect_model(model)
    for knob in [k for k in KNOBS if k != "adapter"]:
        patch_quietly(model, only(knob))
        assert keeps(native, hfreg.inspect_model(model), knob), knob


def test_convolutional_residual_blocks_are_layers_for_stochastic_depth():
    """ConvNeXt V2's blocks end their branch in a `drop_path` module: hfreg's depth schedule runs over them."""
    model = build("convnextv2", drop_path_rate=0.1)
    native = {s.path: s.rate for s in hfreg.inspect_model(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, Reg(drop_path=0.3))
    sites = [(s.path, s.layer, round(s.rate, 6)) for s in hfreg.inspect_model(model) if s.kind == "drop_path"]
    assert sites == [("encoder.stages.0.layers.0.drop_path", 0, 0.0), ("encoder.stages.1.layers.0.drop_path", 1, 0.15),
                     ("encoder.stages.1.layers.1.drop_path", 2, 0.3)]
    hfreg.unpatch_model(model)
    assert {s.path: s.rate for s in hfreg.inspect_model(model)} == native


def test_native_drop_path_acts_in_place_where_no_layer_stack_is_found(monkeypatch):
    """Without a stack to hook, the model's own drop-path sites take the knob (layers 1..N of N): the request is
    honoured, never turned into zero."""

    monkeypatch.setattr(hfreg.sites, "FALLBACK_BRANCHES", ())
    model = build("convnextv2", drop_path_rate=0.1)
    assert not hfreg.sites.analyze(model).towers
    inputs = make_inputs("convnextv2", model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, Reg(drop_path=0.3))
    sites = [(s.path, round(s.rate, 6)) for s in hfreg.inspect_model(model) if s.kind == "drop_path"]
    assert sites == [("encoder.stages.1.layers.0.drop_path:drop_prob", 0.15),
                     ("encoder.stages.1.layers.1.drop_path:drop_prob", 0.3)]
    first = forward(model, inputs, True, seed=1)
    assert any(not torch.equal(first, forward(model, inputs, True, seed=s)) for s in range(2, 8))
    hfreg.set_rate_factors(model, {"drop_path": 0.5})  # the sites in place are live for schedules
    assert [round(s.rate, 6) for s in hfreg.inspect_model(model) if s.kind == "drop_path"] == [0.075, 0.15]
    hfreg.patch_model(model, Reg.zero())
    assert torch.equal(forward(model, inputs, True, seed=1), forward(model, inputs, True, seed=2))


def test_a_knob_that_cannot_apply_leaves_the_models_own_sites_as_they_were():
    """Falcon under eager attention: `attention` cannot act, so its (rotary-path-dead) attention dropout keeps the
    model's rate instead of being zeroed by a request for more."""
    model = build("falcon", attention_dropout=0.1)
    before = [m.attention_dropout.p for m in model.h.modules() if hasattr(m, "attention_dropout")
              and isinstance(m.attention_dropout, torch.nn.Dropout)]
    assert before == [0.1, 0.1]
    with pytest.warns(UserWarning, match="`attention`=0.3 cannot apply to falcon"):
        hfreg.patch_model(model, Reg(attention=0.3))
    assert [m.attention_dropout.p for m in model.h.modules() if hasattr(m, "attention_dropout")
            and isinstance(m.attention_dropout, torch.nn.Dropout)] == before
    hfreg.patch_model(model, Reg.zero())  # zero always applies: training deterministic
    assert {m.attention_dropout.p for m in model.h.modules() if isinstance(getattr(m, "attention_dropout", None),
                                                                           torch.nn.Dropout)} == {0.0}


@pytest.mark.parametrize("model_type,key", [("levit", "drop_path_rate"), ("cvt", "drop_path_rate"),
                                            ("diffllama", "attention_dropout")])
def test_patch_config_writes_only_what_the_config_class_accepts(model_type, key, tmp_path):
    config = AutoConfig.for_model(model_type)
    original = getattr(config, key)
    with pytest.warns(UserWarning, match=rf"not written to \w+Config\.{key}"):
        patched = hfreg.patch_config(config, Reg(attention=0.2, drop_path=0.2))
    assert getattr(patched, key) == original
    patched.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.hfreg == Reg(attention=0.2, drop_path=0.2).to_dict()


def test_layerdrop_says_when_a_layer_that_changes_the_shape_cannot_be_skipped():
    """BiT's blocks end in a `drop_path` module, so they are layers; the first block of a stage changes the shape
    and cannot be skipped: LayerDrop says so at the first refused skip, and skips the blocks it can."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("bit", depths=[1, 2], hidden_sizes=[128, 256], embedding_size=64,
                                  layer_type="bottleneck")
    model = AutoModel.from_config(config).eval()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    hfreg.patch_model(model, only("layerdrop", 0.9))
    with pytest.warns(UserWarning, match="`layerdrop`=0.9 cannot skip BitBottleneckLayer layers that change"):
        outs = [forward(model, inputs, True, seed=s) for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # the second block of stage 2 is skipped at times


def test_resnet_blocks_are_layers_with_their_one_layer_as_branch():
    """ResNet's bottleneck adds its shortcut after `self.layer`: hidden dropout and drop-path act there, eval and
    weights stay exact, unpatch restores the original. (Training passes move BatchNorm's running statistics, so
    eval is compared before any.)"""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("resnet", depths=[1, 2], hidden_sizes=[32, 64], embedding_size=16)
    model = AutoModel.from_config(config).eval()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    train0 = forward(model, inputs, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # attention: none in a CNN
        hfreg.patch_model(model, FULL)
    assert torch.equal(forward(model, inputs, False), forward(hfreg.unpatch_model(model), inputs, False))
    for knob in ("hidden", "drop_path"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hfreg.patch_model(model, only(knob, 0.5))
        sites = [s.path for s in hfreg.inspect_model(model) if s.kind == knob]
        assert sites == ["encoder.stages.0.layers.0.layer", "encoder.stages.1.layers.0.layer",
                         "encoder.stages.1.layers.1.layer"]
        first = forward(model, inputs, True, seed=1)
        assert torch.equal(first, forward(model, inputs, True, seed=1))
        assert any(not torch.equal(first, forward(model, inputs, True, seed=s)) for s in range(2, 6))
    hfreg.unpatch_model(model)
    assert torch.equal(forward(model, inputs, True), train0)


@pytest.mark.parametrize("model_type,branch", [("efficientnet", "projection.dropout"),
                                               ("mobilenet_v2", "reduce_1x1")])
def test_only_blocks_that_add_a_residual_are_regularized_or_skipped(model_type, branch):
    """EfficientNet's and MobileNetV2's stages open with a block that adds no residual (it changes the shape): its
    output is the main path, so hidden dropout, drop-path and LayerDrop act on the residual blocks only, over the
    whole depth; EfficientNet's own dropout in a block without residual is never called and is not listed."""

    model = build(model_type)
    layers = hfreg.sites.analyze(model).layers
    flag = {"efficientnet": "projection.apply_dropout", "mobilenet_v2": "use_residual"}[model_type]
    residual = [bool(hfreg.sites._attribute(layer.module, flag)) for layer in layers]
    assert any(residual) and not all(residual)
    assert [layer.skippable for layer in layers] == residual
    assert [[p for p, _ in layer.branches] for layer in layers] == [
        [f"{layer.path}.{branch}"] if r else [] for layer, r in zip(layers, residual)]
    if model_type == "efficientnet":
        listed = {s.path for s in hfreg.inspect_model(model) if s.kind == "hidden"}
        assert listed == {f"{layer.path}.projection.dropout" for layer, r in zip(layers, residual) if r}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, Reg(hidden=0.1, drop_path=0.2, layerdrop=0.1))
    sites = hfreg.inspect_model(model)
    skipped = [s.layer for s in sites if s.kind == "layerdrop"]
    assert skipped == [i for i, r in enumerate(residual) if r]
    rates = {s.layer: s.rate for s in sites if s.kind == "drop_path"}
    assert rates[skipped[-1]] == pytest.approx(0.2 * skipped[-1] / (len(layers) - 1))


def test_parts_summed_into_one_branch_share_one_drop_path_draw():
    """GraniteMoeHybrid's MLP branch is the routed experts' output plus the shared MLP's: drop-path keeps or drops
    both together, per sample (one draw), with hidden dropout off."""
    model = build("granitemoehybrid")
    layer = model.layers[1]
    raw, done = {}, {}
    for name in ("block_sparse_moe", "shared_mlp"):
        getattr(layer, name).register_forward_hook(lambda m, a, out, n=name: raw.__setitem__(n, out.clone()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, only("drop_path", 0.5))
    for name in ("block_sparse_moe", "shared_mlp"):
        getattr(layer, name).register_forward_hook(lambda m, a, out, n=name: done.__setitem__(n, out.clone()))
    inputs = make_inputs("granitemoehybrid", model.config, batch=8)
    scales = []
    for seed in range(4):
        forward(model, inputs, True, seed)
        per = {n: (done[n] / raw[n]).flatten(1) for n in raw}
        for n, s in per.items():  # one factor per sample: 0 (dropped) or 1 / (1 - 0.5) (kept)
            assert torch.allclose(s, s[:, :1].expand_as(s)) and set(s[:, 0].tolist()) <= {0.0, 2.0}, n
        assert torch.equal(per["block_sparse_moe"][:, 0], per["shared_mlp"][:, 0])
        scales.append(per["shared_mlp"][:, 0])
    assert len({tuple(s.tolist()) for s in scales}) > 1


def test_levit_residual_layers_take_stochastic_depth_over_depth():
    """LeViT's residual layer adds `module(x) * mask`: its `drop_rate` is drop-path, and hfreg's hooks on `module`
    replace it, at the depth profile's rates; the subsampling attention between stages adds no residual and is
    neither regularized nor skipped."""
    model = build("levit")
    assert {n.kind for n in hfreg.sites.analyze(model).natives if n.key == "LevitResidualLayer.drop_rate"} \
        == {"drop_path"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # attention, heads, activation: none LeViT has that hfreg can reach
        hfreg.patch_model(model, Reg(drop_path=0.3, layerdrop=0.1))
    sites = [s for s in hfreg.inspect_model(model) if s.rate]
    assert all(s.path.endswith(".module") for s in sites if s.kind == "drop_path")
    assert not any("Subsample" in type(model.get_submodule(s.path)).__name__ for s in sites if s.kind == "layerdrop")
    assert not any(s.source != "injected" for s in sites)  # the native drop_rate gives way to the hooks
    assert max(s.rate for s in sites if s.kind == "drop_path") == pytest.approx(0.3)


def test_a_plain_convolutional_stack_says_why_knobs_of_layers_cannot_act():
    """MobileNetV1 has no residual connection: knobs of layers warn so, and the model is left as it was."""
    model = AutoModel.from_config(AutoConfig.for_model("mobilenet_v1", image_size=32, depth_multiplier=0.25))
    with pytest.warns(UserWarning, match=r"`drop_path`=0.3 cannot apply to mobilenet_v1 .*no stack of residual"):
        hfreg.patch_model(model, Reg(drop_path=0.3))
    assert not hfreg.patch_state(model).injected


def test_a_scale_the_model_applies_in_eval_too_is_not_a_rate():
    """PP-LCNet's classifier multiplies by (1 - hidden_dropout_prob) in eval and training alike: no site, and the
    patched model's eval output is the model's own."""
    model = AutoModelForImageClassification.from_config(
        AutoConfig.for_model("pp_lcnet", hidden_dropout_prob=0.2, num_labels=3)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = forward(model, {"pixel_values": pixels}, False)
    assert not any(s.path.endswith("hidden_dropout_prob") for s in hfreg.inspect_model(model))
    patch_quietly(model, FULL)
    assert torch.equal(forward(model, {"pixel_values": pixels}, False), before)
    assert model.hidden_dropout_prob == 0.2


def test_a_backbone_returning_feature_maps_is_probed_and_inspected():
    """A backbone's output is a tuple of feature maps inside its ModelOutput: probing compares those, so its own
    drop-path sites act (and are listed), not taken for inert."""
    from transformers import ConvNextV2Backbone

    config = AutoConfig.for_model("convnextv2", image_size=32, num_channels=3, hidden_sizes=[16, 32], depths=[1, 2],
                                  num_stages=2, drop_path_rate=0.1, out_features=["stage1", "stage2"])
    backbone = ConvNextV2Backbone(config).eval()
    results = hfreg.probe(backbone, {"pixel_values": torch.randn(2, 3, 32, 32)}, patched=False)
    assert [(r.path, r.acts) for r in results] == [("encoder.stages.1.layers.0.drop_path:drop_prob", True),
                                                   ("encoder.stages.1.layers.1.drop_path:drop_prob", True)]
    assert [s.kind for s in hfreg.inspect_model(backbone)] == ["drop_path", "drop_path"]


def test_drophead_acts_on_the_output_projection_wherever_it_is_defined():
    """Phi-3 defines `o_proj` before `qkv_proj`: DropHead takes the projection named as an output, not the last
    Linear of the attention module (which would drop slices of the hidden states going in)."""
    model = build("phi3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(model, only("heads", 0.3))
    assert [s.path for s in hfreg.inspect_model(model) if s.kind == "heads"] == [
        f"layers.{i}.self_attn.o_proj.<input>" for i in (0, 1)]


def test_drophead_where_attention_never_calls_its_output_projection_says_so():
    """WavLM hands its projections' weights to `F.multi_head_attention_forward`, which never calls `out_proj` as a
    module: a hook there would never run, so `heads` warns, names why, and lists no site (it listed two, which
    `benchmarks/coverage.py` took for acting only while the model's SpecAugment masks drew beside them)."""
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("wavlm")))
    with pytest.warns(UserWarning, match=r"`heads`=0\.3 cannot apply .*F\.multi_head_attention_forward, which never"):
        hfreg.patch_model(model, only("heads", 0.3))
    assert not [s for s in hfreg.inspect_model(model) if s.kind == "heads"]
    assert [s.kind for s in hfreg.inspect_model(hfreg.patch_model(build("bert"), only("heads", 0.3)))].count(
        "heads") == 2  # an attention that calls its projection keeps its sites


def test_calls_reads_every_method_but_init_and_the_classes_inherited():
    """`sites.calls` finds a call in any method of a class or of one it inherits from, not in `__init__`, and not a
    longer name that ends the same way; the DropHead refusal above rests on it."""
    from hfreg.sites import calls

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.note = "F.project(x)"  # a call in __init__ is no call in forward

        def helper(self, x):
            return torch.nn.functional.linear(x, x)

    class Child(Base):
        def forward(self, x):
            return self.helper(x)

    assert calls(Child, "linear") and calls(Child, "helper")
    assert not calls(Child, "project") and not calls(Child, "near")


def test_t5s_sub_layer_dropout_is_residual_dropout_without_a_table_entry():
    """T5's blocks hold their sub-layers in a list `layer`, each ending its residual branch in a dropout: found by
    the generic fallback, those dropouts are hidden (residual) dropout and give way to hfreg's branch hooks, the
    dropout after the MLP's activation is activation dropout, and the attention-probability one stays attention."""
    kinds = {s.path: s.kind for s in hfreg.inspect_model(build("t5"))}
    assert kinds["encoder.block.0.layer.0.dropout"] == kinds["encoder.block.0.layer.1.dropout"] == "hidden"
    assert kinds["decoder.block.0.layer.1.dropout"] == "hidden"  # cross-attention's
    assert kinds["encoder.block.0.layer.1.DenseReluDense.dropout"] == "activation"
    assert kinds["encoder.block.0.layer.0.SelfAttention:dropout"] == "attention"
    model = hfreg.patch_model(build("t5"), Reg(attention=0.1, hidden=0.2))
    sites = {(s.path, s.kind): s for s in hfreg.inspect_model(model)}
    assert sites[("encoder.block.0.layer.0.dropout", "hidden")].source == "injected"
    assert ("encoder.block.0.layer.0.dropout", "attention") not in sites
    config = AutoConfig.for_model("roberta-prelayernorm", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, pad_token_id=1)
    pre = {s.path: s.kind for s in hfreg.inspect_model(AutoModel.from_config(config))}
    assert pre["encoder.layer.0.attention.self.dropout"] == "attention"


def test_a_knob_left_unset_keeps_its_native_sites_listed_and_acting():
    """A spec that sets only `attention` leaves BERT's own hidden dropout (0.1) where it is: still listed by
    `inspect_model` at its rate, still acting in training mode."""
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    before = sorted((s.path, s.rate) for s in hfreg.inspect_model(model) if s.kind == "hidden")
    hfreg.patch_model(model, hfreg.RegularizationConfig(attention=0.2))
    after = sorted((s.path, s.rate) for s in hfreg.inspect_model(model) if s.kind == "hidden")
    assert before and after == before and all(rate == 0.1 for _, rate in after)
    model.train()
    x = torch.randint(0, 100, (2, 8))
    attention_off = hfreg.RegularizationConfig(attention=0.0)
    hfreg.unpatch_model(model)
    hfreg.patch_model(model, attention_off)
    torch.manual_seed(0)
    a = model(x).last_hidden_state
    torch.manual_seed(1)
    b = model(x).last_hidden_state
    assert not torch.equal(a, b)  # the hidden dropout left in place still draws
