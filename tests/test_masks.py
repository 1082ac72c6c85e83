"""hfreg's CPU dropout masks: 16 random bits per entry, the expectation kept, seeds reproduced, and a patched
model's every dropout drawn that way during its training forward (PyTorch's draws with HFREG_FAST_MASKS=0)."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build, first_tensor, make_inputs

import hfreg
from hfreg import layers
from hfreg.fast_masks import attention_with_dropout


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.13, 1 / 65536, 1 - 1 / 65536, 1 - 1e-6, 1.0])
def test_keep_mask_probability_scale_and_seed(keep):
    torch.manual_seed(0)
    mask, scale = layers.keep_mask((1000, 1000), keep)
    level = round(keep * 65536)
    assert scale == 65536 / level  # the exact inverse of the rounded keep probability
    assert abs(mask.float().mean().item() - level / 65536) < 5 * (keep * (1 - keep) / 1e6) ** 0.5 + 1e-12
    torch.manual_seed(0)
    assert torch.equal(layers.keep_mask((1000, 1000), keep)[0], mask)
    assert not torch.equal(layers.keep_mask((1000, 1000), keep)[0], mask) or level == 65536


def test_dropout_keeps_the_expectation_and_passes_gradients_through_kept_entries():
    torch.manual_seed(1)
    x = torch.full((500, 1000), 3.0, requires_grad=True)
    y = layers.dropout(x, 0.25)
    assert abs(y.mean().item() - 3.0) < 0.02 and abs((y == 0).float().mean().item() - 0.25) < 0.005
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0) * (65536 / round(0.75 * 65536)))
    assert layers.dropout(x, 0.25, training=False) is x and layers.dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="`p` must be a float in"):
        layers.dropout(x, 1.0)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("gqa", [False, True])
def test_attention_math_path_matches_sdpa(mask_kind, gqa, monkeypatch):
    """With the dropout made the identity, the attention hfreg computes under a rate is PyTorch's."""
    monkeypatch.setattr(layers, "dropout", lambda x, p, training=True: x)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k, v = (torch.randn(2, 2 if gqa else 4, 5, 8, generator=g) for _ in range(2))
    kwargs = {"enable_gqa": gqa}
    if mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(2, 1, 5, 5, generator=g) > 0.3
        kwargs["attn_mask"][..., 0] = True  # no fully masked row here: PyTorch's fused path gives NaN there
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 5, 5, generator=g)
    elif mask_kind == "causal":
        kwargs["is_causal"] = True
    torch.testing.assert_close(attention_with_dropout(q, k, v, dropout_p=0.1, **kwargs),
                               F.scaled_dot_product_attention(q, k, v, **kwargs))


def test_a_fully_masked_row_gives_zeros_as_the_math_path_does():
    q = k = v = torch.ones(1, 1, 2, 4)
    mask = torch.tensor([[True, True], [False, False]])
    out = attention_with_dropout(q, k, v, attn_mask=mask, dropout_p=0.5)
    assert torch.isfinite(out).all() and torch.equal(out[0, 0, 1], torch.zeros(4))


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_a_patched_training_forward_draws_no_bernoulli_on_a_cpu(model_type, monkeypatch):
    """Every dropout of the training forward goes through `keep_mask`: PyTorch's Bernoulli sampler never runs;
    with HFREG_FAST_MASKS=0 (the flag) it does, and eval is untouched either way."""
    model = hfreg.patch_model(build(model_type, head=True), hfreg.RegularizationConfig(
        attention=0.2, hidden=0.2, classifier=0.2, embedding=0.2, activation=0.2))
    inputs = make_inputs(model_type, model.config, head=True)
    with torch.no_grad():
        eval_out = first_tensor(model.eval()(**inputs))
    model.train()
    torch.manual_seed(0)
    fast, fast_draws = _bernoulli_draws(model, inputs)
    assert not fast_draws
    torch.manual_seed(0)
    assert torch.equal(first_tensor(model(**inputs)), fast)  # reproducible under a seed
    monkeypatch.setattr(layers, "FAST_MASKS", False)
    torch.manual_seed(0)
    slow, slow_draws = _bernoulli_draws(model, inputs)
    assert slow_draws and not torch.equal(slow, fast)
    with torch.no_grad():
        assert torch.equal(first_tensor(model.eval()(**inputs)), eval_out)


def _bernoulli_draws(model, inputs):
    """The output of one forward and how many times PyTorch's Bernoulli sampler ran in it (seen by the profiler:
    `F.dropout` calls it from C++)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = first_tensor(model(**inputs))
    return out, sum(e.count for e in prof.key_averages() if "bernoulli" in e.key)
