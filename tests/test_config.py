import copy
import pickle

import pytest

from hfreg import KNOBS, RegularizationConfig
from hfreg.config import SCALES


def test_round_trip(tmp_path):
    reg = RegularizationConfig(attention=0.1, hidden=0.2, drop_path=0.05, drop_path_profile="uniform", heads=0.1,
                               mixout=0.7, embedding_noise=5, mixout_modules=["*.attention.*"], mixout_target="zero")
    reg.save_pretrained(tmp_path)
    assert RegularizationConfig.from_pretrained(tmp_path) == reg
    assert RegularizationConfig.from_pretrained(tmp_path / "hfreg_config.json").to_dict() == reg.to_dict()
    assert copy.deepcopy(reg) == reg and pickle.loads(pickle.dumps(reg)) == reg


def test_zero_sets_every_knob():
    assert RegularizationConfig.zero().knob_values() == {k: 0.0 for k in KNOBS}
    assert RegularizationConfig().knob_values() == {}


@pytest.mark.parametrize("knob", [k for k in KNOBS if k not in SCALES])
@pytest.mark.parametrize("bad", [-0.01, 1.0, 1.5, "0.1", True, float("nan")])
def test_bad_rates_name_the_value(knob, bad):
    with pytest.raises(ValueError, match=f"`{knob}` must be a float in \\[0, 1\\)"):
        RegularizationConfig(**{knob: bad})


@pytest.mark.parametrize("bad", [-0.01, float("inf"), "5", True, float("nan")])
def test_bad_scales_name_the_value(bad):
    with pytest.raises(ValueError, match="`embedding_noise` must be a finite float >= 0"):
        RegularizationConfig(embedding_noise=bad)
    assert RegularizationConfig(embedding_noise=15).embedding_noise == 15.0


@pytest.mark.parametrize("bad", ["*.attention.*", [], [""], [3]])
def test_bad_mixout_modules(bad):
    with pytest.raises(ValueError, match="`mixout_modules` must be a non-empty list of module-path patterns"):
        RegularizationConfig(mixout=0.1, mixout_modules=bad)


def test_newer_knobs_absent_from_older_specs():
    assert set(RegularizationConfig(hidden=0.1).to_dict()) & {"heads", "mixout", "embedding_noise",
                                                               "mixout_modules", "mixout_target"} == set()


@pytest.mark.parametrize("bad", ["pretrained", 0, ""])
def test_bad_mixout_target(bad):
    with pytest.raises(ValueError, match=f"`mixout_target` must be one of \\['zero', None\\], got {bad!r}"):
        RegularizationConfig(mixout=0.1, mixout_target=bad)
    with pytest.raises(ValueError, match="`mixout_target`='zero' needs a rate: set `mixout`"):  # else a silent no-op
        RegularizationConfig(mixout_target="zero")


@pytest.mark.parametrize("field,value", [("drop_path_profile", "cosine"), ("drop_path_mode", "per_token")])
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


def test_zero_takes_knobs_too():
    reg = RegularizationConfig.zero(hidden=0.1, drop_path_mode="per_batch")
    assert reg.hidden == 0.1 and reg.attention == 0.0 and reg.drop_path_mode == "per_batch"


def test_a_spec_giving_a_setting_under_both_names_is_refused():
    with pytest.raises(ValueError, match="gives both 'drop_path_schedule' and 'drop_path_profile'.*give "
                                         "'drop_path_profile' alone"):
        RegularizationConfig.from_dict({"drop_path_schedule": "linear", "drop_path_profile": "uniform"})
    assert RegularizationConfig.from_dict({"drop_path_schedule": "uniform"}).drop_path_profile == "uniform"


def test_numpy_rates_are_rates_and_stored_as_floats():
    import json
    from fractions import Fraction

    import numpy as np

    reg = RegularizationConfig(hidden=np.float32(0.1), embedding_noise=np.float64(5), attention=np.int64(0),
                               classifier=np.float16(0.3), layerdrop=Fraction(1, 10))
    # a float32 0.1 is the 0.1 its user wrote, not 0.10000000149..., which would reach preset names
    assert type(reg.hidden) is float and reg.hidden == 0.1 and reg.attention == 0.0 and reg.classifier == 0.3
    assert reg.layerdrop == 0.1 and reg.embedding_noise == 5.0
    assert all(type(v) is float for v in reg.knob_values().values())  # numpy's float64 is a float subclass
    assert RegularizationConfig.from_dict(json.loads(json.dumps(reg.to_dict()))) == reg
    with pytest.raises(ValueError, match=r"`hidden` must be a float in \[0, 1\) or None, got np.True_ \(bool\)"):
        RegularizationConfig(hidden=np.bool_(True))
