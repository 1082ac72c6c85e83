"""disable_dropout proves itself; probe finds the sites that act, on every architecture and published config."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY, build, first_tensor, make_inputs
from transformers import AutoConfig, AutoModel

import hfreg
from hfreg.cli import _shipped, load_config, main
from hfreg.patcher import auto_class_for

CASES = [(m, head) for m in TINY for head in (False, True)]
# native sites that do nothing on these models although forward reads them, and why: `inspect_model` must leave
# them out (its small-twin check finds them; the probe found them first)
KNOWN_INERT = {
    ("falcon", "config.attention_dropout"): "residual dropout after attention, read only when parallel_attn is off",
    ("pegasus", "model.decoder.layers.0.encoder_attn:dropout"): "the causal LM has no encoder: cross-attention "
                                                                "never runs",
    ("siglip", "vision_model.head.attention:dropout"): "image classification pools without the attention head",
}


@pytest.mark.parametrize("model_type,head", CASES)
def test_disable_dropout_proves_itself_everywhere(model_type, head):
    model = build(model_type, head, layerdrop=0.3) if model_type in ("bart", "wav2vec2") else build(model_type, head)
    inputs = make_inputs(model_type, model.config, head=head)
    assert hfreg.disable_dropout(model, inputs) is model and hfreg.is_patched(model)
    assert not model.training  # the caller's mode is kept
    model.train()
    torch.manual_seed(1)
    a = first_tensor(model(**inputs))
    torch.manual_seed(2)
    assert torch.equal(a, first_tensor(model(**inputs)))


def test_disable_dropout_names_what_still_draws_random_numbers():
    model = build("bert")
    # randomness hfreg does not know about: a foreign hook that always drops
    model.encoder.layer[1].output.register_forward_hook(lambda m, a, out: F.dropout(out, 0.3, True))
    with pytest.raises(RuntimeError, match=r"encoder\.layer\.1\.output \(bernoulli") as e:
        hfreg.disable_dropout(model)
    assert "\n" not in str(e.value)


def test_disable_dropout_switches_off_training_noise_and_unpatch_restores_it():
    # SpecAugment masks are drawn with numpy: no torch op to name, yet training is random until they are off
    model = build("hubert", mask_time_prob=0.5, mask_time_length=2)
    inputs = make_inputs("hubert", model.config)
    with pytest.raises(RuntimeError, match="no torch random op"):
        hfreg.disable_dropout(model, inputs, noise=False)
    hfreg.disable_dropout(model, inputs)
    assert model.config.mask_time_prob == 0.0
    hfreg.unpatch_model(model)
    assert model.config.mask_time_prob == 0.5
    # MoE router jitter lives in a module attribute copied from the config at build time: found by provenance
    model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("switch_transformers")))
    router = model.encoder.block[1].layer[1].mlp.router
    hfreg.disable_dropout(model, hfreg.probe_inputs(model))
    assert router.jitter_noise == 0.0 and model.config.router_jitter_noise == 0.0
    hfreg.unpatch_model(model)
    assert router.jitter_noise == model.config.router_jitter_noise == 0.01


def test_disable_dropout_runs_a_module_whose_noise_has_no_switch_as_in_eval_and_unpatch_gives_it_back():
    """GroupViT's grouping blocks draw Gumbel noise whenever they train, with no config key or attribute to turn it
    off (`NOISE_MODULES`): `disable_dropout` runs those blocks' own forward as in eval mode (a hard argmax), the rest
    of the model training; `noise=False` leaves them drawing, and says where; `unpatch_model` gives the noise back."""
    from transformers import GroupViTVisionModel

    model = GroupViTVisionModel(hfreg.small_twin(AutoConfig.for_model("groupvit_vision_model")))
    inputs = hfreg.probe_inputs(model)

    def train_out(seed):
        model.train()
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(**inputs).last_hidden_state

    before = train_out(1)
    assert not torch.equal(before, train_out(2))  # the Gumbel noise
    with pytest.raises(RuntimeError, match=r"downsample\.assign \(rand"):
        hfreg.disable_dropout(model, inputs, noise=False)
    hfreg.unpatch_model(model)
    hfreg.disable_dropout(model, inputs)
    assert torch.equal(train_out(1), train_out(2)) and model.training
    assign = model.vision_model.encoder.stages[0].downsample.assign
    assert assign.training  # only its forward runs as in eval: the module's own mode stays the caller's
    model.eval()
    with torch.no_grad():
        evaluated = model(**inputs).last_hidden_state
    model.train()
    model(**inputs).last_hidden_state.sum().backward()  # the hard assignment is straight-through: it still learns
    assert assign.q_proj.weight.grad.abs().sum() > 0
    hfreg.unpatch_model(model)
    assert torch.equal(train_out(1), before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, evaluated)  # eval was never touched
    # `probe` switches the noise off for every knob it applies, not only for its base: at rate 0 none acts
    assert not [r.kind for r in hfreg.probe(model, inputs, rate=0.0) if r.acts]


@pytest.mark.parametrize("model_type,head", CASES)
def test_probe_every_site(model_type, head):
    model = build(model_type, head, **({"alibi": True} if model_type == "falcon" else {}))
    inputs = make_inputs(model_type, model.config, head=head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = hfreg.probe(model, inputs)
    assert not hfreg.is_patched(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    natives = [r for r in results if r.source != "hfreg"]
    listed = {s.path for s in hfreg.inspect_model(model) if s.source != "injected"}
    assert listed <= {r.path for r in natives if not r.dead}
    for r in natives:
        if r.dead:
            assert not r.acts, f"{r.path} is flagged dead but acts"
        elif r.path in listed:
            assert r.acts or not r.exercised, f"{r.path} ({r.kind}) is listed as a site but does nothing"
        else:
            assert not r.acts, f"{r.path} ({r.kind}) acts but inspect_model leaves it out"
    knobs = {r.kind: r for r in results if r.source == "hfreg"}
    for knob, r in knobs.items():
        assert r.acts != bool(r.note), f"{knob}: acts={r.acts}, note={r.note!r}"  # a knob that cannot act says so


@pytest.mark.parametrize("model_type,path", KNOWN_INERT)
def test_inspect_leaves_out_sites_that_do_nothing(model_type, path):
    model = build(model_type, head=True)
    probed = {r.path: r for r in hfreg.probe(model, make_inputs(model_type, model.config, head=True), patched=False)}
    assert probed[path].exercised and not probed[path].acts and not probed[path].dead
    assert path in {s.path for s in hfreg.inspect_model(model, verify=False)}  # what reading the code finds
    assert path not in {s.path for s in hfreg.inspect_model(model)}


def test_probe_finds_falcons_inert_attention_on_its_default_path():
    results = hfreg.probe(build("falcon"), make_inputs("falcon", build("falcon").config))
    inert = [r for r in results if r.source != "hfreg" and not r.acts and not r.dead]
    assert [r.path for r in inert] == ["config.attention_dropout"]
    attention = next(r for r in results if r.source == "hfreg" and r.kind == "attention")
    assert not attention.acts and "attention" in attention.note


@pytest.mark.parametrize("name", _shipped())
def test_probe_small_twins_of_published_configs(name):
    config = load_config(name)
    twin = hfreg.small_twin(config)
    assert type(twin) is type(config) and getattr(twin, "model_type") == config.model_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_config(twin)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000
    results = hfreg.probe(model)
    assert all(r.acts for r in results if r.source != "hfreg" and not r.dead)
    assert {r.kind for r in results if r.source == "hfreg" and r.acts} == set(hfreg.KNOBS) - {"classifier", "adapter"}


def test_small_twin_keeps_each_layer_kind_and_a_visible_initialisation():
    twin = hfreg.small_twin(AutoConfig.for_model("gemma3_text"))  # five sliding-window layers, then a global one
    assert twin.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert twin.num_hidden_layers == 3
    blip = AutoConfig.for_model("blip")
    assert blip.vision_config.initializer_range == 1e-10  # dropout on ~0 branch outputs would not show
    assert hfreg.small_twin(blip).vision_config.initializer_range == 0.02


def test_small_twin_keeps_the_sizes_that_must_agree():
    """Sizes tied in the config stay tied in the twin: multi-head attention keeps a key-value head per head, grouped
    heads divide the head count, multi-head latent attention keeps its rotary head as `head_dim`, and a text tower's
    projection meets the vision tower's width (SigLIP)."""
    from transformers import LlamaConfig

    assert hfreg.small_twin(LlamaConfig(num_attention_heads=32, num_key_value_heads=32)).num_key_value_heads == 4
    gqa = hfreg.small_twin(LlamaConfig(num_attention_heads=32, num_key_value_heads=8))
    assert (gqa.num_attention_heads, gqa.num_key_value_heads, gqa.head_dim) == (4, 2, 16)
    odd = hfreg.small_twin(LlamaConfig(hidden_size=96, num_attention_heads=3, num_key_value_heads=2))
    assert (odd.num_attention_heads, odd.num_key_value_heads, odd.head_dim) == (3, 1, 21)  # its own 3 heads
    mla = hfreg.small_twin(AutoConfig.for_model("deepseek_v3"))
    assert mla.num_key_value_heads == mla.num_attention_heads == 4
    assert mla.head_dim == mla.qk_rope_head_dim and mla.qk_head_dim == mla.qk_nope_head_dim + mla.qk_rope_head_dim
    assert mla.kv_lora_rank <= 64 and mla.q_lora_rank <= 64
    siglip = hfreg.small_twin(AutoConfig.for_model("siglip"))
    assert siglip.text_config.projection_size == siglip.vision_config.hidden_size == 64
    qwen2_vl = hfreg.small_twin(AutoConfig.for_model("qwen2_vl")).text_config  # its default sections: [16, 24, 24]
    assert sum(qwen2_vl.rope_parameters["mrope_section"]) == qwen2_vl.hidden_size // qwen2_vl.num_attention_heads // 2
    assert hfreg.small_twin(AutoConfig.for_model("ministral")).head_dim == 16  # None in its default config
    assert hfreg.small_twin(AutoConfig.for_model("rt_detr")).num_queries == 8  # 300, more than a small image's anchors
    assert hfreg.small_twin(AutoConfig.for_model("glm5_next_text")).qk_rope_head_dim == 0  # no rotary part: none added
    mistral4 = hfreg.small_twin(AutoConfig.for_model("mistral4"))
    assert mistral4.head_dim == mistral4.qk_head_dim  # its head_dim is the whole query head
    v2 = hfreg.small_twin(AutoConfig.for_model("deepseek_v2"))
    assert v2.num_experts_per_tok == 2  # None in its default config: the router cannot take it
    dots1 = hfreg.small_twin(AutoConfig.for_model("dots1"))
    assert (dots1.n_routed_experts, dots1.n_shared_experts, dots1.num_experts_per_tok) == (4, 1, 2)
    nemotron = hfreg.small_twin(AutoConfig.for_model("nemotron"))  # its default leaves the key-value heads None
    assert nemotron.num_key_value_heads == nemotron.num_attention_heads == 4
    t5gemma = hfreg.small_twin(AutoConfig.for_model("t5gemma"))  # its decoder attends to an encoder of 2304
    assert t5gemma.decoder.cross_attention_hidden_size == t5gemma.encoder.hidden_size == 64
    v3 = hfreg.small_twin(AutoConfig.for_model("deepseek_v3"))  # 256 routed experts in 8 groups, top 4 groups
    assert (v3.n_routed_experts, v3.n_group, v3.topk_group, v3.num_experts_per_tok) == (4, 2, 1, 2)
    bailing = hfreg.small_twin(AutoConfig.for_model("bailing_hybrid"))  # 512 experts in 8 groups, top 4 groups
    assert (bailing.num_experts, bailing.n_group, bailing.topk_group, bailing.num_experts_per_tok) == (4, 2, 1, 2)
    depth = hfreg.small_twin(AutoConfig.for_model("depth_anything"))  # DINOv2's stages 9-12 feed its neck
    backbone = depth.backbone_config
    assert (backbone.num_hidden_layers, backbone.out_indices, backbone.out_features) == \
        (4, [1, 2, 3, 4], ["stage1", "stage2", "stage3", "stage4"])
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert depth.reassemble_hidden_size == backbone.hidden_size == 64
    assert hfreg.small_twin(AutoConfig.for_model("dinov2")).out_indices == [2]  # the last of the twin's stages
    encodec = hfreg.small_twin(AutoConfig.for_model("encodec"))  # its codebook reads the encoder's width
    assert encodec.codebook_dim == encodec.hidden_size == 64
    squeezebert = hfreg.small_twin(AutoConfig.for_model("squeezebert"))  # it asserts the two widths are equal
    assert squeezebert.embedding_size == squeezebert.hidden_size == 64
    backbone = AutoConfig.for_model("depth_anything").backbone_config  # the same four stages, counted from the end
    backbone.set_output_features_output_indices(out_features=None, out_indices=[-4, -3, -2, -1])
    assert hfreg.small_twin(backbone).out_indices == [1, 2, 3, 4]
    with warnings.catch_warnings():  # a type with heads alone, fed at its backbone's image size (256 x 192)
        warnings.simplefilter("ignore")
        pose = auto_class_for(AutoConfig.for_model("vitpose")).from_config(
            hfreg.small_twin(AutoConfig.for_model("vitpose")))
    assert type(pose).__name__ == "VitPoseForPoseEstimation"
    assert tuple(hfreg.probe_inputs(pose)["pixel_values"].shape) == (2, 3, 256, 192)
    pose(**hfreg.probe_inputs(pose))  # runs
    for name in ("deepseek_v3", "siglip", "qwen2_vl", "ministral", "deepseek_v2", "dots1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model(name)))
            model(**hfreg.probe_inputs(model))  # runs


def test_probe_draws_several_times_before_it_calls_a_knob_without_effect(monkeypatch):
    """LayerDrop at 0.5 keeps both of a twin's 2 layers a quarter of the time: on ViTPose's twin the first seed
    drops neither, so a single draw called the knob without effect."""
    import hfreg.probing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pose = auto_class_for(AutoConfig.for_model("vitpose")).from_config(
            hfreg.small_twin(AutoConfig.for_model("vitpose")))

    def layerdrop_acts():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return next(r.acts for r in hfreg.probe(pose, rate=0.5) if r.kind == "layerdrop" and r.source == "hfreg")

    assert layerdrop_acts()
    monkeypatch.setattr(hfreg.probing, "_DRAWS", 1)  # one draw: the seed that drops nothing
    assert not layerdrop_acts()


def test_probe_inputs_feed_a_video_model_its_frames():
    """A video model's clips have the frames its config names (VideoMAE's position table is sized for them), as
    `pixel_values` or `pixel_values_videos`, whichever its forward takes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        videomae = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("videomae")))
        vjepa = AutoModel.from_config(hfreg.small_twin(AutoConfig.for_model("vjepa2")))
    inputs = hfreg.probe_inputs(videomae)
    assert tuple(inputs["pixel_values"].shape) == (2, videomae.config.num_frames, 3, 224, 224)
    assert videomae(**inputs).last_hidden_state.isfinite().all()
    assert hfreg.probe_inputs(vjepa)["pixel_values_videos"].dim() == 5  # no frame count named: 4
    assert tuple(hfreg.probe_inputs(build("bert", False))["input_ids"].shape) == (2, 8)  # text models as before


def test_probe_inputs_give_audio_in_the_layout_the_forward_takes():
    """Log-mel features: Whisper takes (batch, mel, frames), a Conformer encoder (Parakeet) and Speech2Text (batch,
    frames, mel), which the forward tells; the mel bins are the config's, or its audio encoder's (LASR's CTC model
    keeps them in ``encoder_config``). Waveforms: (batch, samples) for wav2vec2, (batch, 1, samples) for a codec."""
    from hfreg.patcher import model_from_config

    def twin(model_type):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            return model_from_config(hfreg.small_twin(AutoConfig.for_model(model_type)))

    whisper, parakeet, lasr = twin("whisper"), twin("parakeet_encoder"), twin("lasr_ctc")
    assert lasr.config.encoder_config.num_mel_bins == 128 and not hasattr(lasr.config, "num_mel_bins")
    inputs = hfreg.probe_inputs(parakeet)
    assert inputs["input_features"].shape[1:] == (400, parakeet.config.num_mel_bins)  # any length: a short clip
    assert hfreg.probe_inputs(whisper)["input_features"].shape[1:] == (whisper.config.num_mel_bins, 3000)
    assert hfreg.probe_inputs(lasr)["input_features"].shape[-1] == 128
    dac, wav2vec2 = twin("dac"), twin("wav2vec2")  # a codec's waveform has a channel axis, a speech encoder's not
    assert hfreg.probe_inputs(dac)["input_values"].shape[:2] == (2, 1)
    assert hfreg.probe_inputs(wav2vec2)["input_values"].dim() == 2
    for model in (whisper, parakeet, lasr, dac, wav2vec2):
        with torch.no_grad():
            model.eval()(**hfreg.probe_inputs(model))


def test_the_layout_check_keeps_each_modules_mode_and_the_random_state_and_the_first_layout_where_none_runs():
    """The eval pass that tells a speech model's layout leaves every module's mode as it was (a frozen part in eval
    mode, MC dropout's modules in training mode) and the random state too, whether the pass runs or fails; where
    neither layout runs, the first is kept, so that the caller sees the model's own error for it."""
    from torch import nn

    from hfreg.probing import _layout, _runs

    class FramesFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen, self.drop = nn.Linear(80, 4), nn.Dropout(0.5)

        def forward(self, input_features):
            return self.drop(self.frozen(input_features)) + torch.rand(1)  # draws in eval mode too

    class Neither(FramesFirst):
        def forward(self, input_features):
            raise RuntimeError("no layout runs")

    toy = FramesFirst().train()
    toy.frozen.eval()
    mel_first, frames_first = {"input_features": torch.randn(2, 80, 500)}, {"input_features": torch.randn(2, 500, 80)}
    state = torch.random.get_rng_state()
    assert not _runs(toy, mel_first) and _runs(toy, frames_first)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert toy.training and toy.drop.training and not toy.frozen.training
    assert _layout(toy, mel_first, "input_features").shape == (2, 400, 80)
    assert _layout(Neither(), mel_first, "input_features") is mel_first["input_features"]


def test_probe_cli(capsys):
    assert main(["probe", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "small twin" in out and "h.0.attn.attn_dropout" in out and "knobs through hfreg that act" in out
    # MRA's attention outputs zeros on a CPU, so DropHead's hooks change nothing; inspect still lists them (it leaves
    # out inert native sites only), so the note does not say it leaves them out
    assert main(["probe", "mra"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["*", "heads"]]
    assert row.split()[4] == "no" and row.endswith("patched, but without effect here")
    # SqueezeBERT's encoder calls each layer's forward directly: the patch refuses LayerDrop there, and says why
    assert main(["probe", "squeezebert"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["*", "layerdrop"]]
    assert row.split()[4] == "no" and row.endswith("layers are run by calling their forward directly, so no hook "
                                                   "on a layer runs")
    assert main(["probe", "no/such-model-anywhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfreg: error: cannot find a config") and err.count("\n") == 1


def test_twin_verdicts_and_provenance_are_cached_on_disk_across_processes(tmp_path):
    """The first patch of a structure builds and probes a small twin and builds the class on the meta device; a
    later process reads both verdicts from the disk cache and builds neither. `HFREG_CACHE=off` turns it off; a
    torn file is computed again."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    patch = ("import sys; sys.path.insert(0, 'tests'); import hfreg, hfreg.probing as p, hfreg.provenance as q; "
             "from tiny_models import build; {before}hfreg.patch_model(build('bert'), hfreg.RegularizationConfig("
             "hidden=0.1)); print('patched')")
    boom = "p._inert = q._sources = lambda *a: sys.exit('computed again'); "

    def start(before, cache_dir):
        env = {**os.environ, "HFREG_CACHE": str(cache_dir)}
        return subprocess.Popen([sys.executable, "-c", patch.format(before=before)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=root, env=env)

    def finish(proc):
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    assert finish(start("", cache)).returncode == 0
    files = sorted(f.name.split("-")[0] for f in cache.iterdir())
    assert files == ["inert", "sources"]
    warm, off = start(boom, cache), start(boom, "off")  # independent: side by side
    warm, off = finish(warm), finish(off)
    assert warm.returncode == 0 and "patched" in warm.stdout, warm.stderr
    assert "computed again" in off.stderr
    for f in cache.iterdir():
        f.write_text("[[1, 2")  # torn
    cold = finish(start(boom, cache))
    assert cold.returncode != 0 and "computed again" in cold.stderr


def test_the_cache_key_covers_every_source_the_verdicts_run_and_not_the_harness():
    from hfreg.cache import _source_files

    files = _source_files()
    assert {"probing.py", "inject.py", "knobs/stack.py", "knobs/attention.py"} <= set(files)  # the knobs' too
    assert not [f for f in files if f.startswith("finetune")]


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "0.5", True])
def test_probe_refuses_a_rate_outside_zero_to_one(rate):
    with pytest.raises(ValueError, match=rf"probe's rate must lie in \[0, 1\).*got {rate!r}"):
        hfreg.probe(build("bert", False), rate=rate)
