"""The High-Resolution Network family: one configurable class, and the report's networks as presets of it."""

from .config import HRNetConfig
from .hrnet import HighResolutionNet
from .registry import PRESETS, Preset, config_differences, create_model, list_models, model_config, preset_fields
from .summary import ModelSummary, count_forward_flops, summary

__all__ = [
    "HRNetConfig",
    "HighResolutionNet",
    "PRESETS",
    "Preset",
    "ModelSummary",
    "config_differences",
    "count_forward_flops",
    "create_model",
    "list_models",
    "model_config",
    "preset_fields",
    "summary",
]
