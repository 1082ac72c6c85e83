import copy
import pickle

import pytest

from hfreg import KNOBS, RegularizationConfig


def test_round_trip(tmp_path):
    reg = RegularizationConfig(attention=0.1, hidden=0.2, drop_path=0.05, drop_path_schedule="uniform")
    reg.save_pretrained(tmp_path)
    assert RegularizationConfig.from_pretrained(tmp_path) == reg
    assert RegularizationConfig.from_pretrained(tmp_path / "hfreg_config.json").to_dict() == reg.to_dict()
    assert copy.deepcopy(reg) == reg and pickle.loads(pickle.dumps(reg)) == reg


def test_zero_sets_every_knob():
    assert RegularizationConfig.zero().knobs() == {k: 0.0 for k in KNOBS}
    assert RegularizationConfig().knobs() == {}


@pytest.mark.parametrize("knob", KNOBS)
@pytest.mark.parametrize("bad", [-0.01, 1.0, 1.5, "0.1", True, float("nan")])
def test_bad_rates_name_the_value(knob, bad):
    with pytest.raises(ValueError, match=f"`{knob}` must be a float in \\[0, 1\\)"):
        RegularizationConfig(**{knob: bad})


@pytest.mark.parametrize("field,value", [("drop_path_schedule", "cosine"), ("drop_path_mode", "per_token")])
def test_bad_choices(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be one of .*'{value}'"):
        RegularizationConfig(**{field: value})


def test_unknown_keys():
    with pytest.raises(ValueError, match="unknown regularization option.*dropout"):
        RegularizationConfig.from_dict({"dropout": 0.1})


def test_patch_config_records_an_adapter_spec(tmp_path):
    from transformers import BertConfig

    import hfreg

    cfg = hfreg.patch_config(BertConfig(), RegularizationConfig(hidden=0.2, adapter=0.1))
    assert cfg.hfreg["adapter"] == 0.1 and cfg.hidden_dropout_prob == 0.2
    assert "adapter" not in RegularizationConfig(hidden=0.2).to_dict()  # unset: absent, as in older specs
