"""hfreg with the tools people train with: HF Trainer, PEFT LoRA, gradient checkpointing, torch.compile, DDP."""

import os
import warnings

import pytest
import torch
from tiny_models import build, first_tensor, make_inputs

import hfreg
from hfreg import RegularizationConfig as Reg

SPEC = Reg(attention=0.1, hidden=0.2, drop_path=0.2, classifier=0.1)


def train_logits(model, inputs, seed):
    model.train()
    torch.manual_seed(seed)
    return first_tensor(model(**inputs))


def test_hf_trainer_trains_a_patched_model(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = hfreg.patch_model(build("llama", head=True), SPEC)
    ids = torch.randint(3, 100, (16, 8), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": [i % 3 for i in range(16)]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1,
                             report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model=model, args=args, train_dataset=data).train()
    assert hfreg.is_patched(model)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path / "saved")
    reloaded = hfreg.load_regularized(tmp_path / "saved", auto_class=type(model))
    assert {s.kind for s in hfreg.inspect_model(reloaded)} >= {"hidden", "drop_path", "attention"}


@pytest.mark.parametrize("order", ["patch_then_peft", "peft_then_patch"])
def test_peft_lora(order):
    peft = pytest.importorskip("peft")
    model = build("llama", head=True)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, task_type="SEQ_CLS")
    if order == "patch_then_peft":
        model = peft.get_peft_model(hfreg.patch_model(model, SPEC), lora)
    else:
        model = hfreg.patch_model(peft.get_peft_model(model, lora), SPEC)
    inputs = make_inputs("llama", model.config, head=True)
    sites = hfreg.inspect_model(model)
    assert {s.rate for s in sites if s.kind == "hidden"} == {0.2}
    # with `adapter` unset, LoRA's own dropout is listed as PEFT set it, and left alone
    assert {(s.kind, s.rate) for s in sites if "lora" in s.path} == {("adapter", 0.05)}
    a, b = train_logits(model, inputs, 1), train_logits(model, inputs, 2)
    assert not torch.equal(a, b) and torch.equal(a, train_logits(model, inputs, 1))
    loss = first_tensor(model(**inputs)).sum()
    loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    hfreg.unpatch_model(model)
    assert not hfreg.is_patched(model)


def mixout_under_lora(order):
    """A tiny Llama classifier with LoRA on q and v and Mixout 0.5, in either order, its adapters then moved away
    from the weights Mixout holds as targets (it mixes towards them, so before any step it changes nothing)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)  # the same model and adapters either way
    model, reg = build("llama", head=True), Reg(mixout=0.5)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS", init_lora_weights=False)
    if order == "patch_then_peft":
        model = peft.get_peft_model(hfreg.patch_model(model, reg), lora)
    else:
        model = hfreg.patch_model(peft.get_peft_model(model, lora), reg)
    sites = hfreg.inspect_model(model)  # patched first: Mixout moves to the adapters here (or at the next forward)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model, sites


@pytest.mark.parametrize("order", ["patch_then_peft", "peft_then_patch"])
def test_dropconnect_under_lora_drops_the_frozen_base_weights_too(order):
    """DropConnect is Mixout towards zero, but a frozen weight dropped to zero does change the output: under LoRA it
    drops the base weights and the adapters', in either order, and acts on a fresh adapter (B = 0) at once."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model, reg = build("llama", head=True), Reg(mixout=0.5, mixout_target="zero")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    if order == "patch_then_peft":
        model = peft.get_peft_model(hfreg.patch_model(model, reg), lora)
    else:
        model = hfreg.patch_model(peft.get_peft_model(model, lora), reg)
    dropped = {s.path for s in hfreg.inspect_model(model) if s.kind == "mixout"}
    assert {"model.layers.0.self_attn.q_proj.base_layer", "model.layers.0.self_attn.q_proj.lora_A.default",
            "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"} <= dropped
    inputs = make_inputs("llama", model.config, head=True)
    with torch.no_grad():
        assert not torch.equal(train_logits(model, inputs, 1), train_logits(model, inputs, 2))


@pytest.mark.parametrize("order", ["patch_then_peft", "peft_then_patch"])
def test_mixout_acts_on_the_lora_adapters_in_either_order(order):
    model, sites = mixout_under_lora(order)
    mixed = sorted(s.path for s in sites if s.kind == "mixout")
    layers = model.config.num_hidden_layers
    assert mixed == sorted(f"model.layers.{i}.self_attn.{m}_proj.lora_{ab}.default" for i in range(layers)
                           for m in "qv" for ab in "AB")  # the adapters' weights, not the frozen base weights
    inputs = make_inputs("llama", model.config, head=True)
    a, b = train_logits(model, inputs, 1), train_logits(model, inputs, 2)
    assert not torch.equal(a, b) and torch.equal(a, train_logits(model, inputs, 1))
    other, _ = mixout_under_lora("peft_then_patch" if order == "patch_then_peft" else "patch_then_peft")
    assert torch.equal(a, train_logits(other, inputs, 1))  # the same model, whichever order
    model.eval()
    with torch.no_grad():
        eval_out = first_tensor(model(**inputs))
    hfreg.set_rate_factors(model, {"mixout": 0.0})
    assert torch.equal(train_logits(model, inputs, 1), train_logits(model, inputs, 2))
    hfreg.set_rate_factors(model, {"mixout": 1.0})
    train_logits(model, inputs, 1).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    hfreg.unpatch_model(model)
    assert all(not isinstance(h, hfreg.hooks.Hook) for m in model.modules()
               for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])
    model.eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(model(**inputs)), eval_out)


def test_mixout_follows_weights_frozen_after_the_patch():
    """Frozen after patching, at the next forward: a weight that can no longer move is no longer mixed."""
    model = hfreg.patch_model(build("bert"), Reg(mixout=0.3))
    before = {s.path for s in hfreg.inspect_model(model) if s.kind == "mixout"}
    for p in model.encoder.layer[0].parameters():
        p.requires_grad_(False)
    model.train()(**make_inputs("bert", model.config))
    after = {s.path for s in hfreg.patch_state(model).injected if s.kind == "mixout"}
    assert after == {p for p in before if not p.startswith("encoder.layer.0.")} and after
    hfreg.set_rate_factors(model, {"mixout": 0.5})
    for p in model.encoder.layer[1].attention.parameters():
        p.requires_grad_(False)
    sites = [s for s in hfreg.inspect_model(model) if s.kind == "mixout"]
    assert {s.rate for s in sites} == {0.15} and not any(".attention." in s.path for s in sites)


def test_mixout_keeps_the_targets_of_weights_still_trainable_when_others_freeze():
    """Freezing some mixed weights mid-training moves Mixout off them; the weights still trainable keep the targets
    they had (their values at patch time), not their fine-tuned values of the moment."""
    model = hfreg.patch_model(build("bert"), Reg(mixout=0.5))
    kept = model.encoder.layer[1].output.dense
    target = kept.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    inputs = make_inputs("bert", model.config)
    for _ in range(2):
        first_tensor(model.train()(**inputs)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(kept.weight, target)  # it trained
    model.encoder.layer[0].requires_grad_(False)
    model(**inputs)
    held = hfreg.patch_state(model).held["mixout"]
    (enter,) = [e for m, e in zip(held.modules, held.enters) if m is kept]
    assert torch.equal(enter.target, target) and model.encoder.layer[0].output.dense not in held.modules


def test_mixout_takes_on_weights_unfrozen_after_the_patch():
    """Gradual unfreezing: a layer frozen at patch time is not mixed; unfrozen later, it is from the next forward,
    towards its values on unfreezing (the pretrained ones), while the weights mixed before keep their targets."""
    model = build("bert")
    model.encoder.layer[0].requires_grad_(False)
    hfreg.patch_model(model, Reg(mixout=0.3))
    thawed, other = model.encoder.layer[0].output.dense, model.encoder.layer[1].output.dense
    held = hfreg.patch_state(model).held["mixout"]
    assert thawed not in held.modules and other in held.modules
    before = {id(m): e.target for m, e in zip(held.modules, held.enters)}
    model.encoder.layer[0].requires_grad_(True)
    model.train()(**make_inputs("bert", model.config))
    held = hfreg.patch_state(model).held["mixout"]
    targets = {m: e.target for m, e in zip(held.modules, held.enters)}
    assert torch.equal(targets[thawed], thawed.weight) and targets[other] is before[id(other)]
    assert any(s.path == "encoder.layer.0.output.dense" for s in hfreg.inspect_model(model) if s.kind == "mixout")


def test_mixout_follows_every_change_of_which_weights_train():
    """Every layer frozen (only the head trains, as gradual unfreezing starts) leaves nothing to mix; unfreezing a
    layer later mixes it. Freezing one tensor while unfreezing another (the count unchanged) moves Mixout too."""
    model = build("bert")
    hfreg.patch_model(model, Reg(mixout=0.3))
    model.encoder.requires_grad_(False)
    inputs = make_inputs("bert", model.config)
    with pytest.warns(UserWarning, match="`mixout`=0.3 cannot apply"):
        model.train()(**inputs)
    assert not hfreg.patch_state(model).held["mixout"].modules
    model.encoder.layer[1].output.dense.requires_grad_(True)
    model(**inputs)
    assert hfreg.patch_state(model).held["mixout"].modules == [model.encoder.layer[1].output.dense]
    model.encoder.layer[1].output.dense.requires_grad_(False)
    model.encoder.layer[0].output.dense.requires_grad_(True)  # as many trainable tensors as before
    model(**inputs)
    assert hfreg.patch_state(model).held["mixout"].modules == [model.encoder.layer[0].output.dense]


def test_mixout_trains_after_the_model_changes_dtype():
    """Its targets follow the weights through `.half()`/`.to()`, as a buffer would (they broke the mix before)."""
    model = hfreg.patch_model(build("bert"), Reg(mixout=0.3))
    inputs = make_inputs("bert", model.config)
    assert first_tensor(model.to(torch.float64).train()(**inputs)).dtype == torch.float64
    assert first_tensor(model.float()(**inputs)).dtype == torch.float32


def lora_model(model_type, dropout, **kwargs):
    peft = pytest.importorskip("peft")
    # init_lora_weights=False: LoRA's B starts random, so the adapter path (and its dropout) shows in the output
    lora = peft.LoraConfig(r=4, lora_dropout=dropout, task_type="SEQ_CLS", init_lora_weights=False, **kwargs)
    return peft.get_peft_model(build(model_type, head=True), lora)


@pytest.mark.parametrize("dropout,source", [(0.05, "module"), (0.0, "injected")])
def test_adapter_knob_sets_or_injects_lora_dropout(dropout, source):
    model = lora_model("llama", dropout, target_modules=["q_proj", "v_proj"])
    inputs = make_inputs("llama", model.config, head=True)
    model.eval()
    with torch.no_grad():
        eval0 = first_tensor(model(**inputs)).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hfreg.patch_model(model, Reg(**{**Reg.zero().knob_values(), "adapter": 0.3}))
    sites = [s for s in hfreg.inspect_model(model) if s.kind == "adapter"]
    assert len(sites) == 2 * model.config.num_hidden_layers and {(s.rate, s.source) for s in sites} == {(0.3, source)}
    a, b = train_logits(model, inputs, 1), train_logits(model, inputs, 2)
    assert not torch.equal(a, b) and torch.equal(a, train_logits(model, inputs, 1))  # the adapter alone acts
    model.eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(model(**inputs)), eval0)
    assert list(model.state_dict()) == list(state)
    hfreg.disable_dropout(model, inputs)  # adapter dropout included in the all-zero spec
    hfreg.unpatch_model(model)
    rates = {type(m).__name__ + str(getattr(m, "p", "")) for n, m in model.named_modules()
             if n.endswith("lora_dropout.default")}
    assert rates == ({"Dropout0.05"} if dropout else {"Identity"})
    assert all(not isinstance(h, hfreg.hooks.Hook) for m in model.modules() for h in m._forward_hooks.values())


def test_adapter_knob_warns_without_an_adapter():
    with pytest.warns(UserWarning, match="`adapter`=0.1 cannot apply to llama .* no PEFT adapter"):
        hfreg.patch_model(build("llama", head=True), Reg(adapter=0.1))


def test_adapter_knob_on_the_real_minilm(minilm_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                       task_type="SEQ_CLS", init_lora_weights=False))
    inputs = dict(AutoTokenizer.from_pretrained(minilm_path)(["a fine film", "dull"], padding=True,
                                                             return_tensors="pt"))
    hfreg.patch_model(model, Reg(**{**Reg.zero().knob_values(), "adapter": 0.2}))
    sites = [s for s in hfreg.inspect_model(model) if s.kind == "adapter"]
    assert sites and all(s.source == "injected" and s.rate == 0.2 for s in sites)
    assert {s.layer for s in sites} - {None} == set(range(model.config.num_hidden_layers))  # None: pooler
    assert not torch.equal(train_logits(model, inputs, 1), train_logits(model, inputs, 2))


@pytest.mark.parametrize("model_type", ["bert", "llama", "granitemoehybrid"])
def test_gradient_checkpointing_gives_the_same_gradients(model_type):
    """Checkpointing replays torch's RNG, so the recomputed forward sees the same dropout masks (GraniteMoeHybrid:
    also a drop-path draw shared by two parts of one branch)."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = hfreg.patch_model(build(model_type, head=True), SPEC)
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        inputs = make_inputs(model_type, model.config, head=True)
        train_logits(model, inputs, 7).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("knobs", [{"attention": 0.2}, {"heads": 0.2}])
def test_torch_compile_trains_with_knobs_that_break_its_graph(knobs):
    # hooks that read their module's state break dynamo's graph; under the CPU mask mode, Llama's forward failed to
    # resume after such a break
    model = hfreg.patch_model(build("llama", head=True), Reg(**knobs))
    inputs = make_inputs("llama", model.config, head=True)
    compiled = torch.compile(model, backend="eager").train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(3)
        a = first_tensor(compiled(**inputs))
        torch.manual_seed(4)
        assert not torch.equal(a, first_tensor(compiled(**inputs)))


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_torch_compile_trains_and_evaluates_with_every_knob_at_once(family):
    # a hook that breaks dynamo's graph where the others resume would crash the first compiled forward or backward;
    # eval stays the exact identity of the eager model
    knobs = {k: 5.0 if k == "embedding_noise" else 0.2 for k in hfreg.KNOBS if k != "adapter"}  # adapter: PEFT's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hfreg.patch_model(build(family, head=True), Reg(**knobs))
        inputs = make_inputs(family, model.config, head=True)
        compiled = torch.compile(model, backend="eager").train()
        torch.manual_seed(3)
        a = first_tensor(compiled(**inputs))
        torch.manual_seed(4)
        b = first_tensor(compiled(**inputs))
        b.float().pow(2).mean().backward()
        assert not torch.equal(a, b)
        with torch.no_grad():
            assert torch.equal(first_tensor(compiled.eval()(**inputs)), first_tensor(model(**inputs)))


def test_torch_compile():
    model = hfreg.patch_model(build("llama", head=True), Reg(hidden=0.2, drop_path=0.2))
    inputs = make_inputs("llama", model.config, head=True)
    with torch.no_grad():
        eager = first_tensor(model.eval()(**inputs))
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(first_tensor(compiled.eval()(**inputs)), eager)
        compiled.train()
        torch.manual_seed(3)
        a = first_tensor(compiled(**inputs))
        torch.manual_seed(4)
        assert not torch.equal(a, first_tensor(compiled(**inputs)))
    # The compiled wrapper is read through, and refused for a patch: dynamo would not see hooks added after it traced.
    assert hfreg.is_patched(compiled) and hfreg.patch_state(compiled).reg.drop_path == 0.2
    assert [s.path for s in hfreg.inspect_model(compiled)] == [s.path for s in hfreg.inspect_model(model)]
    with pytest.raises(ValueError, match=r"cannot patch a torch.compile'd model .*: patch the model, then compile"):
        hfreg.patch_model(torch.compile(build("bert")), SPEC)
    # `accelerator.prepare` compiles the DDP wrapper: read through both
    assert hfreg.patch_state(torch.compile(torch.nn.DataParallel(model))).reg.drop_path == 0.2
    hfreg.unpatch_model(compiled)
    assert not hfreg.is_patched(model)


def test_after_a_forward_interrupted_by_ctrl_c_the_first_eval_forward_clears_what_it_left():
    """torch calls no `always_call` hook on a KeyboardInterrupt, so an attention module's forward interrupted there
    leaves its `SdpaDropout` entered, as docs/patcher.md says: the first eval forward exits it (its own output is not
    to be trusted), after training forwards or none, and eval is exact after that."""
    from torch.overrides import _get_current_function_mode_stack as modes

    model = build("falcon")
    model.config._attn_implementation = "sdpa"  # transformers' default; the tiny models run eager
    model = hfreg.patch_model(model, Reg(attention=0.5))
    assert any(s.kind == "attention" and s.source == "injected" for s in hfreg.inspect_model(model, verify=False))
    inputs = make_inputs("falcon", model.config)
    with torch.no_grad():
        eager = first_tensor(model(**inputs))

    def interrupt(*args):
        raise KeyboardInterrupt

    for train_first in (False, True):
        handle = model.h[1].self_attention.dense.register_forward_hook(interrupt)  # after the module's sdpa call
        with pytest.raises(KeyboardInterrupt):
            model.train()(**inputs)
        handle.remove()
        assert "SdpaDropout" in {type(m).__name__ for m in modes()}  # what the interrupt left
        with torch.no_grad():
            if train_first:
                model.train()(**inputs)
            model.eval()(**inputs)  # the first eval forward exits what is left
            assert not modes()
            assert torch.equal(first_tensor(model(**inputs)), eager)


def test_ddp_wrapped_model_is_refused():
    model = build("bert")
    wrapped = torch.nn.DataParallel(model)
    with pytest.raises(ValueError, match="patch before `accelerator.prepare`"):
        hfreg.patch_model(wrapped, SPEC)


def test_an_fsdp2_sharded_model_is_refused():
    """`fully_shard` turns the model's class into ``FSDP<Class>``: refused like any wrapper (its own process, which
    holds the process group)."""
    import subprocess
    import sys

    code = """
import os, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT"))
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.fsdp import fully_shard
from transformers import BertConfig, BertModel
import hfreg
model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
fully_shard(model)
try:
    hfreg.patch_model(model, hfreg.RegularizationConfig(hidden=0.1))
except ValueError as e:
    print(e)
dist.destroy_process_group()
"""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PORT": str(port)})
    assert "cannot patch a FSDPBertModel-wrapped model" in proc.stdout, proc.stderr[-2000:]


def test_deepcopy_of_a_patched_model_is_independent():
    import copy

    model = hfreg.patch_model(build("bert", head=True), SPEC)
    clone = copy.deepcopy(model)
    hfreg.unpatch_model(clone)
    assert hfreg.is_patched(model) and not hfreg.is_patched(clone)
    inputs = make_inputs("bert", model.config, head=True)
    assert not torch.equal(train_logits(model, inputs, 1), train_logits(model, inputs, 2))
