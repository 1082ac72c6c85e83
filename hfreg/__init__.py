"""hfreg: one regularization spec for any Hugging Face transformer.

The library is this package's top level (config, layers, sites, patcher); `hfreg.finetune` is the harness that
measures overfitting under it. Names that need torch load on first use, so `hfreg.config` and the harness's
torch-free parts (records, report) import quickly.
"""

from importlib import import_module

from .config import KNOBS, RegularizationConfig, Schedule

__version__ = "0.1.0"

_LAZY = {
    "DropPath": "layers", "drop_path": "layers", "drop_path_rates": "layers", "drop_head": "layers",
    "mixout": "layers", "embedding_noise": "layers", "Site": "sites", "rdrop_loss": "rdrop",
    "rdrop_objective": "rdrop",
    "from_pretrained": "patcher", "inspect_model": "patcher", "is_patched": "patcher", "patch_config": "patcher",
    "patch_model": "patcher", "unpatch_model": "patcher", "set_rate_factors": "patcher", "patch_state": "patcher",
    "PatchState": "patcher",
    "RateScheduler": "schedule", "rate_scheduler_callback": "schedule",
    "mc_dropout": "mc", "mc_predict": "mc",
    "disable_dropout": "probing", "probe": "probing", "probe_inputs": "probing", "small_twin": "probing",
}

__all__ = ["KNOBS", "RegularizationConfig", "Schedule", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hfreg' has no attribute {name!r}")
