import json
import os
import subprocess
import sys

import pytest
import torch

import hfreg
from hfreg.cli import _shipped, knob_rates, load_config, main

HFREG = os.path.join(os.path.dirname(sys.executable), "hfreg")

# Published dropout values of the shipped configs (from each checkpoint's config.json).
PUBLISHED = {
    "bert-base-uncased": {"attention": "0.1", "hidden": "0.1", "embedding": "0.1"},
    "roberta-base": {"attention": "0.1", "hidden": "0.1"},
    "gpt2": {"attention": "0.1", "hidden": "0.1", "embedding": "0.1"},
    "meta-llama/Meta-Llama-3-8B": {"attention": "0", "hidden": "-", "drop_path": "-"},
    "mistralai/Mistral-7B-v0.1": {"attention": "0", "hidden": "-"},
    "microsoft/phi-2": {"attention": "0", "hidden": "0.1", "embedding": "0"},
    "t5-base": {"attention": "0.1", "hidden": "0.1", "activation": "0.1"},
    "facebook/bart-base": {"attention": "0.1", "hidden": "0.1", "activation": "0.1", "layerdrop": "0"},
    "google/vit-base-patch16-224": {"attention": "0", "hidden": "0"},
    "microsoft/swin-tiny-patch4-window7-224": {"drop_path": "0.0091..0.1"},
    "facebook/dinov2-base": {"hidden": "-", "drop_path": "-"},
}


def test_shipped_configs_load():
    names = _shipped()
    assert len(names) >= 15
    for name in names:
        assert load_config(name).model_type


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_compare_reports_published_values(name):
    rates = knob_rates(load_config(name))
    for knob, value in PUBLISHED[name].items():
        assert rates[knob] == value, (name, knob, rates)


def test_compare_table(capsys):
    assert main(["compare", "bert-base-uncased", "meta-llama/Meta-Llama-3-8B"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["knob", "bert-base-uncased", "Meta-Llama-3-8B"]
    assert out.splitlines()[2].split() == ["attention", "0.1", "0"]


def test_inspect_lists_every_site(capsys):
    assert main(["inspect", "bert-base-uncased"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "kind", "rate", "layer", "source", "config", "key"]
    attention = [x.split() for x in lines if " attention " in x]
    assert len(attention) == 12 and {row[-1] for row in attention} == {"attention_probs_dropout_prob"}


def test_patch_writes_config_and_weights(tmp_path, capsys):
    from tiny_models import build

    src = tmp_path / "src"
    build("llama").save_pretrained(src)
    assert main(["patch", str(src), "--hidden", "0.1", "--attention", "0.05", "-o", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["attention_dropout"] == 0.05 and config["hfreg"]["hidden"] == 0.1
    assert any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "out"))
    assert main(["patch", "gpt2", "--hidden", "0.2", "-o", str(tmp_path / "cfg")]) == 0
    assert json.loads((tmp_path / "cfg" / "config.json").read_text())["resid_pdrop"] == 0.2
    assert main(["patch", str(src), "--mixout", "0.1", "--mixout_target", "zero", "-o", str(tmp_path / "dc")]) == 0
    recorded = json.loads((tmp_path / "dc" / "config.json").read_text())["hfreg"]  # DropConnect, as loading applies
    assert recorded["mixout"] == 0.1 and recorded["mixout_target"] == "zero"
    capsys.readouterr()
    assert main(["patch", str(src), "--mixout_target", "zero", "-o", str(tmp_path / "none")]) == 2  # no rate given
    err = capsys.readouterr().err
    assert err == "hfreg: error: --mixout_target zero needs a rate: add --mixout P (DropConnect's p)\n"
    assert not (tmp_path / "none").exists()


def test_patch_writes_a_complete_loadable_folder(tmp_path, minilm_path, capsys):
    """The real MiniLM folder: weights copied unchanged, the tokenizer and the rest of the folder beside the patched
    config, so `AutoTokenizer` and `load_regularized` on the output work as on the source."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "out"
    assert main(["patch", str(minilm_path), str(out), "--attention", "0.2", "--mixout", "0.3"]) == 0  # OUT by position
    said = capsys.readouterr().out
    assert "model.safetensors (copied unchanged)" in said and "tokenizer.json" in said
    tok, ref = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(minilm_path)
    assert tok("hi")["input_ids"] == ref("hi")["input_ids"] and tok.unk_token_id not in tok("hi")["input_ids"]
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(v, load_file(os.path.join(minilm_path, "model.safetensors"))[k]) for k, v in
               weights.items())
    model = hfreg.load_regularized(out)
    assert type(model).__name__ == "BertModel" and hfreg.patch_state(model).reg.mixout == 0.3
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind == "attention"} == {0.2}
    source = AutoModel.from_pretrained(minilm_path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert json.loads((out / "hfreg_config.json").read_text())["attention"] == 0.2
    # a folder without a tokenizer, and a config alone, say what they lack
    assert main(["patch", "gpt2", "-o", str(tmp_path / "cfg"), "--hidden", "0.1"]) == 0
    assert "tokenizer          none: gpt2 is not a model folder" in capsys.readouterr().out


def test_patch_help_describes_every_knob_in_the_configs_own_words(capsys):
    """`hfreg patch --help` gives each knob flag the first sentence of its field's description in
    `RegularizationConfig`, and its range: one description for the docs and the command line."""
    from hfreg.config import KNOBS, SCALES, field_help

    with pytest.raises(SystemExit):
        main(["patch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for knob in (*KNOBS, "drop_path_profile", "drop_path_mode"):
        assert field_help(knob) and " ".join(field_help(knob).split()) in text, knob
    assert field_help("hidden") == ("dropout on the output of every residual branch (attention, cross-attention, "
                                    "MLP), just before it joins the residual stream")
    assert text.count("a scale >= 0") == len(SCALES) and text.count("a rate in [0, 1)") == len(KNOBS) - len(SCALES)
    assert field_help("no_such_field") == ""


@pytest.mark.parametrize("argv,message", [
    (["patch", "gpt2", "--hidden", "1.5", "-o", "x"], "must be a float in [0, 1), got '1.5'"),
    (["inspect", "no/such-model-anywhere"], "cannot find a config for 'no/such-model-anywhere'"),
    (["report", "/nonexistent/dir"], "no such directory: '/nonexistent/dir'"),
    (["report", "."], "'.' holds no runs.jsonl: no grid has written there"),
    (["report", "empty"], "no finished runs in empty/runs.jsonl"),
    (["export", "nope", "--preset", "classic"], "no such directory: 'nope'"),
    (["export", ".", "--preset", "classic"], "'.' holds no runs.jsonl"),
    (["inspect", "gpt2", "--bogus"], "hfreg inspect: error: unrecognized arguments: --bogus (see hfreg inspect"),
    (["patch", "gpt2", "x", "--dropout", "0.1"], "hfreg patch: error: unrecognized arguments: --dropout 0.1"),
    (["--bogus", "report", "."], "hfreg: error: unrecognized arguments: --bogus (see hfreg --help)"),
    (["report", ".", "--select_by", "bogus"], "hfreg report: error: argument --select_by: invalid choice: 'bogus'"),
    ([], "hfreg: error: the following arguments are required: command (see hfreg --help)"),
    (["patch", "gpt2", "--drop_path_profile", "cosine", "-o", "x"], "invalid choice: 'cosine' (choose from"),
    (["probe", "gpt2", "--rate", "1"], "argument --rate: must be a float in (0, 1), got '1'"),
    (["probe", "gpt2", "--rate", "0"], "argument --rate: must be a float in (0, 1), got '0'"),
    (["patch", "gpt2", "--hidden", "0.1"], "no output directory: give it as `hfreg patch MODEL OUT` or `-o OUT`"),
    (["patch", "gpt2", "a", "-o", "b"], "two output directories, 'a' and 'b': give one"),
    (["patch", "gpt2", "list.json", "--hidden", "0.1"], "output directory 'list.json' is a file: give a new or empty"),
    (["inspect", "llama"], "'llama' is a file but not a JSON config: Expecting value"),  # a file wins over a type
    (["compare", "list.json"], "'list.json' holds JSON but not a config object"),
])
def test_user_errors_exit_nonzero_without_traceback(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama").write_text("notes on llamas")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "runs.jsonl").write_text("")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line: no usage dump above it
    assert message in line


def test_the_console_script_says_a_user_error_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([HFREG, "inspect", "no/such-model-anywhere"], capture_output=True, text=True, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("hfreg: error: cannot find a config for 'no/such-model-anywhere': not a file")


def test_help():
    proc = subprocess.run([HFREG, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "inspect" in proc.stdout and "compare" in proc.stdout
    assert "path, kind, rate, layer, source, config key" in " ".join(proc.stdout.split())  # inspect's columns


def test_a_reader_that_stops_early_ends_the_output_quietly():
    """`hfreg inspect ... | head`: a reader that has gone (here one that reads nothing) closes the pipe under the
    table; no error line, exit 0."""
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; '{HFREG}' inspect bert-base-uncased | true"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert (proc.returncode, proc.stderr) == (0, "")


def test_an_error_whose_message_starts_with_an_empty_line_says_its_first_words():
    """transformers' message for a missing optional library (DETR's timm) starts with a newline."""
    from hfreg.cli import _first_line

    assert _first_line(ImportError("\nTimmBackbone requires the timm library\nmore")) == \
        "TimmBackbone requires the timm library"
    assert _first_line(ImportError("")) == "ImportError"


def test_compare_and_inspect_plot_rates_against_depth(tmp_path, capsys):
    import math

    from hfreg.cli import depth_profile
    from hfreg.sites import Site

    grid, labels = depth_profile([Site("a", "hidden", 0.1, 0), Site("b", "hidden", 0.2, 1),
                                  Site("c", "attention", 0.0, 1), Site("d", "embedding", 0.3, None)])
    assert labels == ["0", "1", "out"] and grid.shape == (len(hfreg.KNOBS), 3)
    row = hfreg.KNOBS.index
    assert list(grid[row("hidden")][:2]) == [0.1, 0.2] and grid[row("attention")][1] == 0.0
    assert math.isnan(grid[row("attention")][0]) and grid[row("embedding")][2] == 0.3  # NaN: no site there
    png = tmp_path / "cmp.png"
    assert main(["compare", "bert-base-uncased", "microsoft/swin-tiny-patch4-window7-224", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", "gpt2", "--plot", str(tmp_path / "one.png")]) == 0 and (tmp_path / "one.png").exists()
    capsys.readouterr()
    assert main(["compare", "gpt2", "--plot", str(tmp_path / "missing" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfreg: error: cannot write the plot to") and err.count("\n") == 1


def test_finetune_console_script_errors_are_one_line_and_help_lists_the_flags(tmp_path):
    """`hfreg-finetune`: an unknown flag is one line, exit 2, no usage dump; --help still prints every flag."""
    exe = os.path.join(os.path.dirname(sys.executable), "hfreg-finetune")
    proc = subprocess.run([exe, "--foo"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr == "hfreg-finetune: error: unrecognized arguments: --foo\n"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "--per_device_train_batch_size" in proc.stdout and "--report_to" in proc.stdout


def test_a_local_model_is_titled_by_its_folder_and_the_one_above(tmp_path, capsys, monkeypatch):
    """A package's `model/` folder says little alone: a local path is titled by its last two parts, a hub id or a
    shipped config by its last part, as before."""
    from transformers import BertConfig

    folder = tmp_path / "some_package" / "model"
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               architectures=["BertModel"]).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(folder), "some_package/model", "bert-base-uncased"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["knob", "some_package/model", "some_package/model", "bert-base-uncased"]


def test_an_unreachable_hub_is_said_at_once_and_the_local_cache_still_serves(tmp_path, monkeypatch, capsys):
    """Offline (the hub's host cannot be resolved: `.invalid` never is), a hub id is looked up in the local cache
    only, at once, instead of after huggingface_hub's retries; one not cached is one line naming the host."""
    import huggingface_hub.constants as hub
    from transformers import BertConfig

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--someorg--tiny-bert" / "snapshots" / ("0" * 40)
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               hidden_dropout_prob=0.3).save_pretrained(snapshot)
    (tmp_path / "models--someorg--tiny-bert" / "refs").mkdir()
    (tmp_path / "models--someorg--tiny-bert" / "refs" / "main").write_text("0" * 40)
    assert load_config("someorg/tiny-bert").hidden_dropout_prob == 0.3
    assert main(["inspect", "someorg/not-cached"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("not in the local cache, with the hub (hub.invalid) unreachable from here")


def test_the_loads_ask_the_local_cache_alone_only_where_the_hub_cannot_be_resolved(monkeypatch):
    """`hfreg.hub.hub_kwargs`, which the harness's model, config and tokenizer loads take: the local cache alone
    where the hub's host cannot be resolved; nothing where offline mode is set (transformers honours it) or the
    host resolves (a name this machine knows, whatever its network)."""
    import huggingface_hub.constants as hub

    from hfreg.hub import hub_kwargs

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    assert hub_kwargs() == {"local_files_only": True}
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert hub_kwargs() == {}
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://localhost:8080")
    assert hub_kwargs() == {}


def test_a_model_type_no_config_is_named_after_is_its_config_class_at_its_defaults(tmp_path, monkeypatch, capsys):
    """`hfreg compare opt llama`: where no file, folder, shipped config or (cached) hub model has the name, a model
    type transformers builds is its config class at its defaults, and a line under the table says so (a warning for
    a caller of `load_config` that takes no notes); a shipped config of the same name (gpt2) wins; a name that is
    neither, or a type no Auto class builds, is one line; so is a model a generic input cannot probe. A type with
    heads alone (UperNet) is built with its first head, as the note says."""
    import huggingface_hub.constants as hub
    from transformers import OPTConfig

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert main(["compare", "opt", "llama", "gpt2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["knob", "opt", "llama", "gpt2"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:13]}
    defaults = OPTConfig()
    assert rows["hidden"] == [f"{defaults.dropout:g}", "-", "0.1"]
    assert rows["attention"] == [f"{defaults.attention_dropout:g}", "0", "0.1"]
    assert lines[13:] == [f"{t}: {c}() at its defaults (a model type, not a checkpoint's config): base model, no head"
                          for t, c in (("opt", "OPTConfig"), ("llama", "LlamaConfig"))]
    assert load_config("gpt2").architectures == ["GPT2LMHeadModel"]  # the shipped config (the class has none)
    with pytest.warns(UserWarning, match=r"MambaConfig\(\) at its defaults"):
        assert load_config("mamba").model_type == "mamba"
    for name, words in (("no-such-type", "not a model type transformers builds"),
                        ("sam_mask_decoder", "is the config of a part of a model (a sub-model) that no Auto class")):
        assert main(["inspect", name]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert words in line and f"{name!r}" in line
    assert main(["probe", "upernet"]) == 0  # no base model: its semantic-segmentation head
    out = capsys.readouterr().out
    assert "UperNetConfig() at its defaults (a model type, not a checkpoint's config): no base model: " \
           "AutoModelForSemanticSegmentation's head" in out and "shown is the base model" not in out
    # what a knob said as it ran is a note under the table, once, not a warning on stderr
    assert out.count("note: `layerdrop`=0.5 cannot skip ResNetBottleNeckLayer layers") == 1
    assert main(["inspect", "siglip_text_model"]) == 0  # a sub-model's config: the class made for it, as coverage
    assert "SiglipTextConfig() at its defaults (a model type, not a checkpoint's config): a sub-model's config: " \
           "SiglipTextModel" in capsys.readouterr().out
    assert main(["inspect", "evolla"]) == 0  # a config class AutoModel maps under another name: its own class
    assert "EvollaConfig() at its defaults" in capsys.readouterr().out
    assert main(["inspect", "upernet"]) == 0  # a ResNet without dropout modules: said, not an empty table alone
    assert "no native site: every knob acts through hfreg's hooks where it can (`hfreg probe upernet` says which)" \
        in capsys.readouterr().out
    assert main(["probe", "superglue"]) == 2  # its head's own error, not a base model's that does not exist
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hfreg: error: cannot probe 'superglue' with a generic input: ValueError: Input must be")
    assert main(["probe", "siglip2"]) == 2  # its vision tower takes flattened patches: no generic input
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hfreg: error: cannot probe 'siglip2' with a generic input: RuntimeError: ")
    assert main(["probe", "siglip"]) == 0  # its twin's text projection meets the vision tower's width
    capsys.readouterr()
    assert main(["probe", "clip"]) == 0  # a dual encoder gets text and images
    assert "CLIPConfig() at its defaults" in capsys.readouterr().out


def test_inspect_compare_and_probe_keep_transformers_logging_to_errors(capfd):
    """Mamba's forward logs that its kernels fall back to PyTorch (said at its first forward, where `inspect` and
    `probe` run one): nothing about its rates, so these commands keep transformers' logging to errors, and restore
    it after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    proc = subprocess.run([HFREG, "probe", "mamba"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "falling back" not in proc.stderr and "MambaConfig()" in proc.stdout, proc.stderr
    assert main(["compare", "mamba"]) == 0
    assert hf_logging.get_verbosity() == level


def test_probe_builds_the_head_as_inspect_does(capsys):
    """`hfreg probe` builds the class the config names, head included, as `inspect` and `patch` do: on a causal LM
    `classifier` acts (dropout on the output layer's input); a model type at its defaults is the base model,
    where it cannot, and the table's last line says which knobs act."""
    def classifier_row():
        out = capsys.readouterr().out.splitlines()
        (row,) = [line.split(None, 4) for line in out if line.split()[:2] == ["*", "classifier"]]
        (last,) = [line for line in out if "knobs through hfreg that act: " in line]
        return row, last

    assert main(["probe", "gpt2"]) == 0  # the shipped config names GPT2LMHeadModel
    row, last = classifier_row()
    assert row[4] == "yes" and "classifier" in last.split("knobs through hfreg that act: ")[1]
    assert main(["probe", "llama"]) == 0  # LlamaConfig() names no architecture: the base model, no head
    row, last = classifier_row()
    assert row[4].startswith("no") and "no classification head" in row[4]
    assert "classifier" not in last.split("knobs through hfreg that act: ")[1]


def test_probe_falls_back_to_the_base_model_where_the_head_needs_inputs_of_its_own(tmp_path, capsys):
    """A head a generic input cannot run (multiple choice wants its choices) is left out: the base model is probed,
    and a note says which head and why. A decoder's classifier without a pad token gets one on the probed copy."""
    from transformers import BertConfig, BlipConfig, GPT2Config

    BertConfig(architectures=["BertForMultipleChoice"]).save_pretrained(tmp_path / "mc")
    assert main(["probe", str(tmp_path / "mc")]) == 0
    out = capsys.readouterr().out
    assert "note: shown is the base model: its head, BertForMultipleChoice, does not run on a generic input (" in out
    assert "knobs through hfreg that act: attention, hidden" in out
    BlipConfig(architectures=["BlipForQuestionAnswering"]).save_pretrained(tmp_path / "vqa")  # body: vision_model
    assert main(["probe", str(tmp_path / "vqa")]) == 0
    assert "note: shown is the base model: its head, BlipForQuestionAnswering, does not run on a generic input (" \
        in capsys.readouterr().out
    GPT2Config(architectures=["GPT2ForSequenceClassification"]).save_pretrained(tmp_path / "cls")  # no pad token
    assert main(["probe", str(tmp_path / "cls")]) == 0
    out = capsys.readouterr().out
    assert "shown is the base model" not in out and ", classifier, " in out.splitlines()[-1]
