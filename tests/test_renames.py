"""Names changed so that each word means one thing: the earlier names still work, with a FutureWarning, and
records written under them still match (same digests, same prediction files)."""

import json
import os
import warnings

import pytest
from tiny_models import build

import hfreg
from hfreg import RegularizationConfig as Reg
from hfreg.finetune.presets import load_preset
from hfreg.finetune.records import digest, run_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_drop_path_profile_earlier_name_passes_reads_and_loads():
    with pytest.warns(FutureWarning, match="use `drop_path_profile`"):
        old = Reg(drop_path=0.2, drop_path_schedule="uniform")
    assert old == Reg(drop_path=0.2, drop_path_profile="uniform")
    with pytest.warns(FutureWarning, match="drop_path_profile"):
        assert old.drop_path_schedule == "uniform"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # files written with the earlier key load silently
        assert Reg.from_dict({"drop_path": 0.2, "drop_path_schedule": "uniform"}) == old
        assert "drop_path_schedule" not in old.to_dict() and old.to_dict()["drop_path_profile"] == "uniform"
    with pytest.warns(FutureWarning, match="profile="):
        assert hfreg.drop_path_rates(0.2, 3, schedule="uniform") == hfreg.drop_path_rates(0.2, 3, "uniform")


def test_records_keep_the_key_they_were_written_with():
    """A committed record of the drop-path preset still has the digest today's preset gives it: resuming finds it."""
    with open(os.path.join(ROOT, "docs", "results", "sst2", "runs.jsonl")) as f:
        record = next(r for r in map(json.loads, f) if r["preset"] == "drop-path")
    contents = load_preset("drop-path").contents()
    assert contents == record["preset_config"] and "drop_path_schedule" in contents
    assert run_key(record)[2] == digest(contents)


def test_knob_values_and_the_earlier_knobs():
    reg = Reg(hidden=0.1, embedding_noise=5.0)
    assert reg.knob_values() == {"hidden": 0.1, "embedding_noise": 5.0}
    with pytest.warns(FutureWarning, match="knob_values"):
        assert reg.knobs() == reg.knob_values()


def test_site_config_key_and_the_earlier_origin():
    model = build("bert")
    site = next(s for s in hfreg.inspect_model(model) if s.config_key)
    with pytest.warns(FutureWarning, match="config_key"):
        assert site.origin == site.config_key


def test_probe_patched_and_the_earlier_knobs():
    model = build("bert")
    with pytest.warns(FutureWarning, match="patched="):
        old = hfreg.probe(model, knobs=False)
    assert [(p.path, p.acts) for p in old] == [(p.path, p.acts) for p in hfreg.probe(model, patched=False)]


def test_load_regularized_and_the_earlier_from_pretrained(tmp_path):
    build("bert").save_pretrained(tmp_path)
    with pytest.warns(FutureWarning, match="load_regularized"):
        old = hfreg.from_pretrained(tmp_path, Reg(hidden=0.2))
    new = hfreg.load_regularized(tmp_path, Reg(hidden=0.2))
    assert hfreg.inspect_model(old) == hfreg.inspect_model(new)
