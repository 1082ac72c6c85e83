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


def test_mc_dropout_silences_the_patched_knobs_not_asked_for():
    """A module samples as a whole, and one may carry several knobs (a branch: hidden dropout and drop-path; a layer:
    LayerDrop): under `mc_dropout(knobs=["hidden"])` the others sample at rate 0, so the draws equal those of a
    model patched with hidden dropout alone, and every rate is back on leaving."""
    inputs = make_inputs("llama", build("llama").config)

    def draws(spec):
        torch.manual_seed(0)
        model = hfreg.patch_model(build("llama"), spec).eval()
        with torch.no_grad(), hfreg.mc_dropout(model, knobs="hidden"):  # one name is one knob
            torch.manual_seed(1)
            return [first_tensor(model(**inputs)) for _ in range(4)], model

    alone, _ = draws(Reg(hidden=0.2))
    both, model = draws(Reg(hidden=0.2, drop_path=0.9, layerdrop=0.9, drop_path_profile="uniform"))
    assert all(torch.equal(a, b) for a, b in zip(alone, both))
    assert hfreg.patch_state(model).factors == {k: 1.0 for k in hfreg.config.KNOBS}


def test_mc_predict_draws_layerdrop_once_per_pass():
    """LayerDrop draws once per batch, so repeated inputs in one batch would share it: each pass runs alone."""
    model = hfreg.patch_model(build("bert", head=True), Reg.zero(layerdrop=0.5))
    pred = hfreg.mc_predict(model, make_inputs("bert", model.config, head=True), samples=12, knobs=["layerdrop"])
    assert len({tuple(s.flatten().tolist()) for s in pred.samples}) > 1


def test_mc_predict_draws_a_weight_mask_once_per_pass():
    """Mixout and DropConnect draw one weight mask per forward, which repeated inputs in one batch would share: each
    pass runs alone, so its samples differ."""
    model = hfreg.patch_model(build("bert", head=True), Reg.zero(mixout=0.5, mixout_target="zero"))
    pred = hfreg.mc_predict(model, make_inputs("bert", model.config, head=True), samples=8, knobs=["mixout"])
    assert len({tuple(s.flatten().tolist()) for s in pred.samples}) == 8


def test_mc_and_the_patch_state_look_through_a_wrapper_put_on_after_the_patch():
    """Patch, then wrap (as `accelerator.prepare` does): reading, sampling and unpatching see the patched model."""
    model = hfreg.patch_model(build("bert", head=True), Reg(hidden=0.2))
    wrapped = torch.nn.DataParallel(model)
    inputs = make_inputs("bert", model.config, head=True)
    assert hfreg.is_patched(wrapped) and hfreg.patch_state(wrapped).reg.hidden == 0.2
    assert hfreg.inspect_model(wrapped, verify=False) == hfreg.inspect_model(model, verify=False)
    assert hfreg.mc_predict(wrapped, inputs, samples=2).samples.shape[0] == 2
    scheduler = hfreg.RateScheduler(wrapped, total_steps=4, kind="early", cutoff=1)
    scheduler.step()
    assert scheduler.rates() == {"hidden": 0.0}
    hfreg.unpatch_model(wrapped)
    assert not hfreg.is_patched(model) and not hfreg.is_patched(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot patch a DataParallel-wrapped model"):
        hfreg.patch_model(wrapped, Reg(hidden=0.1))


def test_mc_predict_says_what_it_needs():
    model = build("bert")
    with pytest.raises(ValueError, match=r"`inputs` holds no batched tensor"):
        hfreg.mc_predict(model, {})
    with pytest.raises(ValueError, match=r"mc_predict needs an output with `.logits` .* BertModel gives"):
        hfreg.mc_predict(model, make_inputs("bert", model.config), samples=2)


def test_a_nested_mc_dropout_samples_its_own_knobs():
    """An inner `mc_dropout` turns on the knobs it names even where an outer one silenced them, and leaving it gives
    the outer one's rates back."""
    model = hfreg.patch_model(build("llama"), Reg(hidden=0.2, attention=0.2)).eval()
    inputs = make_inputs("llama", model.config)
    with torch.no_grad(), hfreg.mc_dropout(model, knobs=["hidden"]):
        outer = hfreg.patch_state(model).factors
        assert outer["attention"] == 0.0 and outer["hidden"] == 1.0
        with hfreg.mc_dropout(model, knobs=["attention"]):
            assert hfreg.patch_state(model).factors["attention"] == 1.0
            assert hfreg.patch_state(model).factors["hidden"] == 0.0
            a, b = first_tensor(model(**inputs)), first_tensor(model(**inputs))
            assert not torch.equal(a, b)
        assert hfreg.patch_state(model).factors["attention"] == 0.0
        a, b = first_tensor(model(**inputs)), first_tensor(model(**inputs))
        assert not torch.equal(a, b)  # the outer one still samples its own
    assert hfreg.patch_state(model).factors == {k: 1.0 for k in hfreg.config.KNOBS}
