"""Saving a patched model and loading it back: the spec travels in config.json, `load_regularized` picks the class
from the config's architectures and applies it, plain `from_pretrained` loads unpatched and says so once, and the CLI
shows every knob a patched folder records."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
import transformers
from tiny_models import build, first_tensor, make_inputs

import hfreg
import hfreg.unapplied
from hfreg import RegularizationConfig as Reg
from hfreg.cli import main
from hfreg.patcher import auto_class_for

# every knob a BERT classifier can take, Mixout and DropHead included
SPEC = Reg(attention=0.1, hidden=0.2, embedding=0.1, activation=0.1, classifier=0.3, drop_path=0.2, layerdrop=0.1,
           heads=0.1, mixout=0.4, embedding_noise=5.0, drop_path_profile="uniform")


def logits(model, inputs, train: bool, seed: int = 0):
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return first_tensor(model(**inputs))


@pytest.mark.parametrize("archs,expected", [
    (["BertForSequenceClassification"], "AutoModelForSequenceClassification"),
    (["BertForMaskedLM"], "AutoModelForMaskedLM"),
    (["BertModel"], "AutoModel"),
    (None, "AutoModel"),
])
def test_auto_class_follows_the_architectures(archs, expected):
    assert auto_class_for(transformers.BertConfig(architectures=archs)).__name__ == expected
    assert auto_class_for(transformers.LlamaConfig(architectures=["LlamaForCausalLM"])).__name__ == \
        "AutoModelForCausalLM"


def test_a_config_naming_no_architecture_gets_the_base_model_or_a_types_only_head():
    """No architectures named: `AutoModel` where it maps the type; a type with heads alone gets its first head's
    Auto class (in one fixed order), and a config of no model type the base Auto class."""
    from hfreg.patcher import type_auto_class

    assert auto_class_for(transformers.BertConfig()) is transformers.AutoModel
    assert auto_class_for(transformers.UperNetConfig()) is transformers.AutoModelForSemanticSegmentation
    assert auto_class_for(transformers.VitPoseConfig()) is transformers.AutoModelForPoseEstimation
    assert type_auto_class("sam_mask_decoder") is None and type_auto_class(None) is None
    assert auto_class_for(transformers.SiglipTextConfig()) is transformers.SiglipTextModel  # a sub-model's config
    assert auto_class_for(transformers.PretrainedConfig()) is transformers.AutoModel


def test_model_from_config_builds_what_an_auto_class_maps_under_another_name():
    """Evolla's config class sits under another type name in `AutoModel`'s mappings, which refuses it: the class
    made for it builds it, as `hfreg inspect evolla` and the coverage benchmark do; where there is none (SAM's mask
    decoder, a plain module) the Auto class's own error stands."""
    from hfreg.patcher import model_from_config

    config = transformers.AutoConfig.for_model("evolla")
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        transformers.AutoModel.from_config(config)
    with torch.device("meta"):
        assert type(model_from_config(config)).__name__ == "EvollaModel"
        with pytest.raises(ValueError, match="Unrecognized configuration class"):
            model_from_config(transformers.AutoConfig.for_model("sam_mask_decoder"), transformers.AutoModel)


def test_auto_class_refuses_an_unknown_architecture():
    with pytest.raises(ValueError, match=r"names architectures \['BertForNothing'\], which transformers .* pass "
                                         r"`auto_class=`"):
        auto_class_for(transformers.BertConfig(architectures=["BertForNothing"]))


def test_load_regularized_keeps_the_classification_head(tmp_path):
    model = build("bert", head=True)
    model.save_pretrained(tmp_path)
    loaded = hfreg.load_regularized(tmp_path, Reg(classifier=0.2), attn_implementation="eager")
    assert type(loaded) is type(model)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert {s.rate for s in hfreg.inspect_model(loaded) if s.kind == "classifier"} == {0.2}
    base = hfreg.load_regularized(tmp_path, Reg(hidden=0.1), auto_class=transformers.AutoModel)  # still honoured
    assert type(base).__name__ == "BertModel"


def test_load_regularized_sends_each_keyword_where_from_pretrained_does(tmp_path):
    """A config setting (``num_labels``) goes to the config, the loader's own (``dtype``) to the loader, as plain
    ``from_pretrained`` sends them (the config was read without them, and ``num_labels`` reached the model's
    ``__init__``); what neither takes is refused as ``from_pretrained`` refuses it."""
    build("bert", head=True).save_pretrained(tmp_path)
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                           dtype=torch.float64)
    loaded = hfreg.load_regularized(tmp_path, Reg(hidden=0.2), num_labels=3, dtype=torch.float64)
    assert loaded.config.num_labels == plain.config.num_labels == 3 and loaded.classifier.out_features == 3
    assert loaded.classifier.weight.dtype == plain.classifier.weight.dtype == torch.float64
    assert loaded.config.hidden_dropout_prob == 0.2  # the spec still reaches the config it built from
    with pytest.raises(TypeError, match="no_such_setting"):
        hfreg.load_regularized(tmp_path, no_such_setting=1)
    model, info = hfreg.load_regularized(tmp_path, Reg(hidden=0.2), output_loading_info=True)
    assert hfreg.patch_state(model).reg.hidden == 0.2 and not info["missing_keys"]


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_a_patched_and_saved_model_loads_back_patched(tmp_path, model_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # knobs a model cannot take say so; the same on both sides
        model = hfreg.patch_model(build(model_type, head=True), SPEC)
        model.save_pretrained(tmp_path)
        loaded = hfreg.load_regularized(tmp_path, attn_implementation="eager")
    assert type(loaded) is type(model) and hfreg.patch_state(loaded).reg == SPEC
    assert hfreg.inspect_model(loaded) == hfreg.inspect_model(model)  # same sites, same rates
    inputs = make_inputs(model_type, model.config, head=True)
    assert torch.equal(logits(loaded, inputs, False), logits(model, inputs, False))
    for seed in (1, 2):  # the same draws in training mode, Mixout's targets included
        assert torch.equal(logits(loaded, inputs, True, seed), logits(model, inputs, True, seed))
    assert not torch.equal(logits(loaded, inputs, True, 1), logits(loaded, inputs, True, 2))


def test_plain_from_pretrained_loads_unpatched_and_says_so_once(tmp_path, monkeypatch):
    hfreg.patch_model(build("bert", head=True), Reg(hidden=0.2, drop_path=0.1)).save_pretrained(tmp_path)
    monkeypatch.setattr(hfreg.unapplied, "_told", False)
    with pytest.warns(UserWarning, match=r"records an hfreg regularization spec .* loaded unpatched. Load it with "
                                         r"`hfreg.load_regularized\(...\)`"):
        plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert not hfreg.is_patched(plain) and plain.config.hfreg == Reg(hidden=0.2, drop_path=0.1).to_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)  # once per process
        monkeypatch.setattr(hfreg.unapplied, "_told", False)
        assert hfreg.is_patched(hfreg.load_regularized(tmp_path))  # applies it: nothing to say
        build("bert").save_pretrained(tmp_path / "plain")
        transformers.AutoModel.from_pretrained(tmp_path / "plain")  # no spec recorded: nothing to say
    assert not [w for w in caught if "records an hfreg" in str(w.message)]


def test_the_warning_needs_only_import_hfreg_before_transformers(tmp_path):
    """In a fresh process, `import hfreg` first: the hook waits for transformers' modeling code."""
    hfreg.patch_model(build("bert"), Reg(hidden=0.2)).save_pretrained(tmp_path)
    code = ("import sys, hfreg; assert 'transformers.modeling_utils' not in sys.modules; "
            "from transformers import AutoModel; AutoModel.from_pretrained(sys.argv[1]); "
            "AutoModel.from_pretrained(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("records an hfreg regularization spec") == 1


@pytest.mark.parametrize("how", ["cli", "python"])
def test_inspect_and_compare_show_every_knob_a_patched_folder_records(tmp_path, capsys, how):
    src, out = tmp_path / "src", tmp_path / "out"
    spec = Reg(attention=0.2, hidden=0.15, classifier=0.3, drop_path=0.2, heads=0.1, mixout=0.5, embedding_noise=5.0)
    if how == "cli":
        build("bert", head=True).save_pretrained(src)
        knobs = ["--attention", "0.2", "--hidden", "0.15", "--classifier", "0.3", "--drop_path", "0.2", "--heads",
                 "0.1", "--mixout", "0.5", "--embedding_noise", "5"]
        assert main(["patch", str(src), "-o", str(out), *knobs]) == 0
    else:
        hfreg.patch_model(build("bert", head=True), spec).save_pretrained(out)
    capsys.readouterr()
    assert main(["compare", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[2:2 + len(hfreg.KNOBS)]}
    assert rows == {**{k: "-" for k in hfreg.KNOBS}, "attention": "0.2", "hidden": "0.15",
                    # BERT builds its embedding dropout from `hidden_dropout_prob`, which `patch_config` sets
                    "embedding": "0.15" if how == "cli" else "0.1",
                    "classifier": "0.3", "drop_path": "0/0.2", "heads": "0.1", "mixout": "0.5",
                    "embedding_noise": "5"}
    assert "out: its config records an hfreg spec" in text and "mixout=0.5" in text
    assert main(["inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = {line.split()[1] for line in lines[2:] if len(line.split()) == 6}
    assert {"drop_path", "mixout", "heads", "embedding_noise", "classifier"} <= kinds


def test_compare_on_architectures_transformers_does_not_know(tmp_path, capsys):
    transformers.BertConfig(architectures=["MyBertThing"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(tmp_path)
    assert main(["compare", str(tmp_path)]) == 0
    assert "does not know its architectures ['MyBertThing']: shown is the base model" in capsys.readouterr().out
