"""The High-Resolution Network family: one configurable class, three presets."""
from .config import HRNetConfig
from .hrnet import HighResolutionNet
from .registry import PRESETS, config_differences, create_model, list_models, model_config
from .summary import ModelSummary, count_forward_flops, summary

__all__ = [
    "HRNetConfig", "HighResolutionNet", "PRESETS", "ModelSummary", "config_differences",
    "count_forward_flops", "create_model", "list_models", "model_config", "summary",
]
