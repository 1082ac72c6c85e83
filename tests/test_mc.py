"""MC-dropout: dropout sampled at inference, everything else in eval mode, the model left exactly as it was."""

import warnings

import pytest
import torch
from tiny_models import TINY, build, first_tensor, make_inputs

import hfreg
from hfreg import RegularizationConfig as Reg

CASES = [(m, head) for m in TINY for head in (False, True)]
SPEC = dict(attention=0.3, hidden=0.3, embedding=0.3, activation=0.3, classifier=0.3, drop_path=0.3)


def out(model, inputs, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return first_tensor(model(**inputs)).clone()


@pytest.mark.parametrize("model_type,head", CASES)
def test_mc_dropout_samples_dropout_only_and_restores_modes(model_type, head):
    model = build(model_type, head, **({"alibi": True} if model_type == "falcon" else {}))
    inputs = make_inputs(model_type, model.config, head=head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hfreg.patch_model(model, Reg(**{k: v for k, v in SPEC.items() if head or k != "classifier"}))
    model.train()
    model.encoder.train(False) if hasattr(model, "encoder") and isinstance(model.encoder, torch.nn.Module) else None
    modes = [m.training for m in model.modules()]
    evaluated = out(model.eval(), inputs, 0)
    model.train()
    for m, mode in zip(model.modules(), modes):
        m.training = mode
    with hfreg.mc_dropout(model):
        assert not any(m.training for m in model.modules() if "norm" in type(m).__name__.lower())
        owners = {s.path.split(":")[0] for s in hfreg.inspect_model(model) if s.source in ("module", "attribute")}
        assert {n for n, m in model.named_modules() if m.training} <= owners  # only what reads a rate itself
        first = out(model, inputs, 1)
        assert torch.equal(first, out(model, inputs, 1)), "reproducible under a seed"
        assert any(not torch.equal(first, out(model, inputs, s)) for s in range(2, 8)), "samples differ"
    assert [m.training for m in model.modules()] == modes
    # with every rate 0, an MC pass is the eval pass
    hfreg.patch_model(model, Reg.zero())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no dropout site in force"
        with hfreg.mc_dropout(model):
            assert torch.equal(out(model, inputs, 1), evaluated)
    assert [m.training for m in model.modules()] == modes


def test_mc_predict_returns_mean_probabilities_and_uncertainty():
    model = hfreg.patch_model(build("llama", head=True), Reg(hidden=0.3, attention=0.1))
    inputs = make_inputs("llama", model.config, batch=3, head=True)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    torch.manual_seed(0)
    p = hfreg.mc_predict(model, inputs, samples=10, chunk=4)
    assert p.samples.shape == (10, 3, 3) and p.probs.shape == (3, 3)
    assert torch.allclose(p.probs.sum(-1), torch.ones(3)) and torch.allclose(p.probs, p.samples.mean(0))
    assert (p.mutual_information >= -1e-6).all() and (p.mutual_information > 0).any()
    assert torch.allclose(p.entropy, -(p.probs * p.probs.log()).sum(-1))
    assert not model.training
    one = hfreg.mc_predict(model, inputs, samples=1)
    assert torch.allclose(one.mutual_information, torch.zeros(3), atol=1e-6)


def test_per_batch_drop_path_samples_stay_independent():
    model = hfreg.patch_model(build("llama", head=True), Reg(drop_path=0.5, drop_path_mode="per_batch"))
    inputs = make_inputs("llama", model.config, head=True)
    torch.manual_seed(0)
    p = hfreg.mc_predict(model, inputs, samples=8)
    assert len({tuple(s.flatten().tolist()) for s in p.samples}) > 1


def test_mc_errors_and_warnings():
    model = build("falcon", head=True, hidden_dropout=0.2)  # unpatched: Falcon reads this rate from its config
    inputs = make_inputs("falcon", model.config, head=True)
    with pytest.warns(UserWarning, match=r"cannot sample config\.hidden_dropout"):
        hfreg.mc_predict(model, inputs, samples=2)
    for kwargs, words in [({"samples": 0}, "samples"), ({"samples": 2, "chunk": 0}, "chunk"),
                          ({"samples": 2, "knobs": ("dropout",)}, "unknown knob")]:
        with pytest.raises(ValueError, match=words):
            hfreg.mc_predict(model, inputs, **kwargs)
