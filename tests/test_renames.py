"""Names changed so that each word means one thing: records and spec files written under the earlier names still
load and match (same digests, same prediction files)."""

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


def test_specs_saved_under_the_earlier_key_load_and_the_earlier_api_names_are_gone():
    """Renamed before the first release: the earlier API names are gone (one name per thing), while spec files
    written under the earlier key still load, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = Reg.from_dict({"drop_path": 0.2, "drop_path_schedule": "uniform"})
    assert old == Reg(drop_path=0.2, drop_path_profile="uniform") and "drop_path_schedule" not in old.to_dict()
    with pytest.raises(TypeError):
        Reg(drop_path=0.2, drop_path_schedule="uniform")
    for gone in ("knobs", "drop_path_schedule"):
        assert not hasattr(old, gone)
    assert not hasattr(hfreg, "from_pretrained") and "from_pretrained" not in hfreg.__all__
    with pytest.raises(TypeError):
        hfreg.drop_path_rates(0.2, 3, schedule="uniform")
    with pytest.raises(TypeError):
        hfreg.probe(build("bert"), knobs=False)


def test_records_keep_the_key_they_were_written_with():
    """A committed record of the drop-path preset still has the digest today's preset gives it: resuming finds it."""
    with open(os.path.join(ROOT, "docs", "results", "sst2", "runs.jsonl")) as f:
        record = next(r for r in map(json.loads, f) if r["preset"] == "drop-path")
    contents = load_preset("drop-path").contents()
    assert contents == record["preset_config"] and "drop_path_schedule" in contents
    assert run_key(record)[2] == digest(contents)
