"""hfreg: one regularization spec for any Hugging Face transformer."""

from .config import KNOBS, RegularizationConfig
from .layers import DropPath, drop_path, drop_path_rates
from .patcher import from_pretrained, inspect_model, is_patched, patch_config, patch_model, unpatch_model
from .sites import Site

__version__ = "0.1.0"

__all__ = [
    "KNOBS",
    "DropPath",
    "RegularizationConfig",
    "Site",
    "drop_path",
    "drop_path_rates",
    "from_pretrained",
    "inspect_model",
    "is_patched",
    "patch_config",
    "patch_model",
    "unpatch_model",
]
