"""DropHead, Mixout and NEFTune: the functions' statistics, and what the patcher's hooks guarantee on real models
(the invariants over every tiny architecture are in test_patcher.py)."""

import gc
import math
import warnings
import weakref

import pytest
import torch
from tiny_models import build, first_tensor, make_inputs

import hfreg
from hfreg import RegularizationConfig as Reg
from hfreg.layers import drop_head, embedding_noise, mixout


def test_functions_are_identity_in_eval_and_at_zero():
    x = torch.randn(4, 3, 8)
    assert drop_head(x, 0.5, 4, training=False) is x and drop_head(x, 0.0, 4, training=True) is x
    assert mixout(x, torch.zeros_like(x), 0.5, training=False) is x
    assert embedding_noise(x, 5.0, training=False) is x and embedding_noise(x, 0.0, training=True) is x


def test_drop_head_drops_whole_heads_per_example_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(2000, 5, 4 * 3)  # 4 heads of width 3
    y = drop_head(x, 0.25, 4, training=True).view(2000, 5, 4, 3)
    assert torch.allclose(y.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (y == y[:, :1, :, :1]).all()  # one draw per example and head: every token and unit of a head alike
    assert abs((y[:, 0, :, 0] == 0).float().mean().item() - 0.25) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.02
    with pytest.raises(ValueError, match=r"last dimension \(10\) is not a multiple of heads=4"):
        drop_head(torch.ones(2, 10), 0.1, 4, training=True)


def test_mixout_mixes_in_the_target_with_the_paper_scaling_and_unbiased_gradient():
    torch.manual_seed(0)
    w = torch.full((400, 500), 2.0, requires_grad=True)
    target = torch.full((400, 500), 1.0)
    y = mixout(w, target, 0.3, training=True)
    # each entry is either the target (dropped: 1) or target + (w - target) / (1 - p)
    assert torch.allclose(y.unique(), torch.tensor([1.0, 1 + 1 / 0.7]))
    assert abs(y.mean().item() - 2.0) < 0.01  # the expectation is the current weight
    y.sum().backward()
    assert torch.allclose(w.grad.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert abs(w.grad.mean().item() - 1.0) < 0.01


def test_embedding_noise_is_neftune():
    torch.manual_seed(0)
    x = torch.zeros(3, 16, 32)
    noise = embedding_noise(x, 5.0, training=True)
    bound = 5.0 / math.sqrt(16 * 32)
    assert noise.abs().max().item() <= bound and noise.abs().max().item() > 0.9 * bound
    assert abs(noise.mean().item()) < 0.05 * bound


def _train(model, inputs, seed):
    model.train()
    torch.manual_seed(seed)
    return first_tensor(model(**inputs))


def test_mixout_targets_are_held_once_trained_weights_mix_and_unpatch_releases_them():
    model = build("bert", True)
    inputs = make_inputs("bert", model.config, head=True)
    hfreg.patch_model(model, Reg(**{**Reg.zero().knob_values(), "mixout": 0.9}))
    state = model._hfreg_patch
    enters = [h for h in state.live if h[2] == "mixout"]
    linears = [n for n, m in model.bert.encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(enters) == len(linears) == 12  # every Linear of the 2 layers; the head and pooler excluded
    assert not any(s.path.startswith(("classifier", "bert.pooler")) for s in hfreg.inspect_model(model)
                   if s.kind == "mixout")
    # before any training the mix equals the weight: the same output whatever the seed
    with torch.no_grad():
        assert torch.equal(_train(model, inputs, 1), _train(model, inputs, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = _train(model, inputs, 3).sum()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder" in n and "weight" in n)
    opt.step()
    keys = list(model.state_dict())
    with torch.no_grad():
        assert not torch.equal(_train(model, inputs, 1), _train(model, inputs, 2))
    assert "weight" not in model.bert.encoder.layer[0].attention.self.query.__dict__  # the parameter shows again
    assert list(model.state_dict()) == keys
    target, kind = weakref.ref(enters[0][0].target), type(enters[0][0])
    hfreg.unpatch_model(model)
    assert not hfreg.is_patched(model)
    assert not any(isinstance(h, kind) for m in model.modules() for h in m._forward_pre_hooks.values())
    del state, enters
    gc.collect()
    assert target() is None  # released with the patch: nothing else holds the targets


def test_patching_again_keeps_the_mixout_targets():
    """A rate changed mid-training by patching again still mixes towards the weights of the first patch; after
    `unpatch_model`, a patch takes the weights as they are."""
    model = build("bert", True)
    query = model.bert.encoder.layer[0].attention.self.query
    pretrained = query.weight.detach().clone()
    hfreg.patch_model(model, Reg.zero(mixout=0.9))
    with torch.no_grad():
        query.weight.add_(1.0)  # a training step

    def target():
        held = hfreg.patch_state(model).held["mixout"]
        return held.enters[held.modules.index(query)].target

    hfreg.patch_model(model, Reg.zero(mixout=0.5, hidden=0.1))
    assert torch.equal(target(), pretrained)
    key = model.bert.encoder.layer[0].attention.self.key
    key.weight = torch.nn.Parameter(torch.randn(16, 32))  # a weight of another shape takes a new target
    key.out_features = 16
    hfreg.patch_model(model, Reg.zero(mixout=0.5))
    held = hfreg.patch_state(model).held["mixout"]
    assert torch.equal(held.enters[held.modules.index(key)].target, key.weight)
    key.weight, key.out_features = torch.nn.Parameter(torch.randn(32, 32)), 32
    assert {s.rate for s in hfreg.inspect_model(model, verify=False) if s.kind == "mixout"} == {0.5}
    hfreg.unpatch_model(model)
    hfreg.patch_model(model, Reg.zero(mixout=0.5))
    assert torch.equal(target(), query.weight)


def test_dropconnect_is_mixout_towards_zero_and_keeps_no_copy_of_the_weights():
    """`mixout_target="zero"`: each weight of the layers is zero or scaled by 1/(1-p) in a training forward (it acts
    at once, with no step taken), the same weights in eval and in `state_dict`; its target is one zero, not a copy.
    Patching again with Mixout's own target takes the weights as they are then, and back to zero drops them again."""
    model = build("bert", True)
    inputs = make_inputs("bert", model.config, head=True)
    query = model.bert.encoder.layer[0].attention.self.query
    weight, keys = query.weight.detach().clone(), set(model.state_dict())
    with torch.no_grad():
        model.eval()
        before = first_tensor(model(**inputs))
    hfreg.patch_model(model, Reg.zero(mixout=0.5, mixout_target="zero"))
    seen = []
    handle = query.register_forward_pre_hook(lambda m, args: seen.append(m.weight.detach().clone()))  # after hfreg's
    with torch.no_grad():
        assert not torch.equal(_train(model, inputs, 1), _train(model, inputs, 2))
        model.eval()
        assert torch.equal(first_tensor(model(**inputs)), before)
    hfreg.layers.FAST_MASKS = False  # PyTorch's Bernoulli draws, as on a GPU
    try:
        with torch.no_grad():
            _train(model, inputs, 3)
    finally:
        hfreg.layers.FAST_MASKS = True
    handle.remove()
    for used in seen[:2] + seen[3:]:  # each entry dropped to 0 or kept at twice its value, about half each
        kept = used != 0
        assert torch.allclose(used[kept], 2 * weight[kept]) and 0.3 < kept.float().mean() < 0.7
    assert torch.equal(seen[2], weight) and set(model.state_dict()) == keys
    held = hfreg.patch_state(model).held["mixout"]
    assert all(enter.target.numel() == 1 and not enter.target.any() for enter in held.enters)
    with torch.no_grad():
        query.weight.add_(1.0)  # a training step
    hfreg.patch_model(model, Reg.zero(mixout=0.5))  # Mixout proper: towards the weights as they are now
    held = hfreg.patch_state(model).held["mixout"]
    assert torch.equal(held.enters[held.modules.index(query)].target, query.weight)
    hfreg.patch_model(model, Reg.zero(mixout=0.5, mixout_target="zero"))
    held = hfreg.patch_state(model).held["mixout"]
    assert held.enters[held.modules.index(query)].target.numel() == 1


def test_mixout_modules_choose_where_it_acts_and_warn_when_nothing_matches():
    model = build("llama")
    hfreg.patch_model(model, Reg(mixout=0.5, mixout_modules=["*.self_attn.o_proj", "*.mlp.down_proj"]))
    paths = sorted(s.path for s in hfreg.inspect_model(model) if s.kind == "mixout")
    assert paths == ["layers.0.mlp.down_proj", "layers.0.self_attn.o_proj", "layers.1.mlp.down_proj",
                     "layers.1.self_attn.o_proj"]
    with pytest.warns(UserWarning, match=r"`mixout`=0.5 cannot apply to llama .*no trainable weighted module "
                                         r"matches mixout_modules=\['nothing'\]"):
        hfreg.patch_model(model, Reg(mixout=0.5, mixout_modules=["nothing"]))


def test_drop_head_sits_at_the_output_projection_with_the_configured_head_count():
    model = build("llama")  # 4 heads
    hfreg.patch_model(model, Reg(heads=0.5))
    assert sorted(s.path for s in hfreg.inspect_model(model) if s.kind == "heads") == [
        "layers.0.self_attn.o_proj.<input>", "layers.1.self_attn.o_proj.<input>"]
    seen = []
    o_proj = model.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    inputs = make_inputs("llama", model.config)
    with torch.no_grad():
        _train(model, inputs, 0)
    handle.remove()
    heads = seen[0].unflatten(-1, (model.config.num_attention_heads, -1))  # after hfreg's hook: what o_proj gets
    zero = (heads == 0).all(-1).all(1)  # (batch, heads): a head zeroed at every token
    assert zero.any() and not zero.all()


def test_embedding_noise_reaches_tied_encoder_decoder_embeddings_and_stack_inputs():
    bart = build("bart")
    hfreg.patch_model(bart, Reg(embedding_noise=5.0))
    assert sorted(s.path for s in hfreg.inspect_model(bart) if s.kind == "embedding_noise") == [
        "decoder.embed_tokens", "encoder.embed_tokens", "shared"]
    wav = build("wav2vec2")  # no input embeddings: the first layer's input takes the noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hfreg.patch_model(wav, Reg(embedding_noise=5.0))
    assert [s.path for s in hfreg.inspect_model(wav) if s.kind == "embedding_noise"] == ["encoder.layers.0.<input>"]


def test_rate_scheduler_moves_the_new_knobs():
    model = build("bert", True)
    hfreg.patch_model(model, Reg(heads=0.2, mixout=0.4, embedding_noise=10.0, schedule={"all": "early"}))
    sched = hfreg.RateScheduler(model, 10)
    assert sched.rates() == pytest.approx({"heads": 0.2, "mixout": 0.4, "embedding_noise": 10.0})
    for _ in range(5):
        sched.step()
    assert {s.rate for s in hfreg.inspect_model(model) if s.kind in ("heads", "mixout", "embedding_noise")} == {0.0}
