"""hfreg: one regularization spec for any Hugging Face transformer.

The library is this package's top level (config, layers, provenance, twin, sites, state, hooks, knobs, inject, probing,
patcher); `hfreg.finetune` is the harness that measures overfitting under it. Names that need torch load on first
use, so `hfreg.config` and the harness's torch-free parts (records, report) import quickly; static tools see them
through the `TYPE_CHECKING` imports below.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from . import unapplied
from .config import KNOBS, RegularizationConfig, Schedule

__version__ = "0.1.0"

# plain `from_pretrained` of a checkpoint whose config records a spec says once that it loaded it unpatched
unapplied.watch()

_LAZY = {
    "DropPath": "layers", "drop_path": "layers", "drop_path_rates": "layers", "drop_head": "layers",
    "mixout": "layers", "embedding_noise": "layers", "Site": "sites", "rdrop_loss": "rdrop",
    "rdrop_objective": "rdrop", "NOISE_KEYS": "architectures", "NOISE_MODULES": "architectures",
    "load_regularized": "patcher", "inspect_model": "patcher", "patch_config": "patcher", "patch_model": "patcher",
    "is_patched": "state", "unpatch_model": "state", "set_rate_factors": "state", "patch_state": "state",
    "PatchState": "state",
    "RateScheduler": "schedule", "RateSchedulerCallback": "schedule", "rate_scheduler_callback": "schedule",
    "mc_dropout": "mc", "mc_predict": "mc", "MCPrediction": "mc",
    "disable_dropout": "probing", "probe": "probing", "probe_inputs": "probing", "small_twin": "twin",
    "Probe": "probing",
}

if TYPE_CHECKING:
    from .architectures import NOISE_KEYS, NOISE_MODULES
    from .layers import DropPath, drop_head, drop_path, drop_path_rates, embedding_noise, mixout
    from .mc import MCPrediction, mc_dropout, mc_predict
    from .patcher import inspect_model, load_regularized, patch_config, patch_model
    from .probing import Probe, disable_dropout, probe, probe_inputs
    from .rdrop import rdrop_loss, rdrop_objective
    from .schedule import RateScheduler, RateSchedulerCallback, rate_scheduler_callback
    from .sites import Site
    from .state import PatchState, is_patched, patch_state, set_rate_factors, unpatch_model
    from .twin import small_twin

__all__ = [
    "KNOBS", "NOISE_KEYS", "NOISE_MODULES", "DropPath", "MCPrediction", "PatchState", "Probe", "RateScheduler",
    "RateSchedulerCallback", "RegularizationConfig", "Schedule", "Site", "disable_dropout", "drop_head", "drop_path",
    "drop_path_rates", "embedding_noise", "inspect_model", "is_patched", "load_regularized",
    "mc_dropout", "mc_predict", "mixout", "patch_config", "patch_model", "patch_state", "probe", "probe_inputs",
    "rate_scheduler_callback", "rdrop_loss", "rdrop_objective", "set_rate_factors", "small_twin", "unpatch_model",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hfreg' has no attribute {name!r}")
