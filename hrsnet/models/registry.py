"""Presets: the report's three networks as configs of one class, and create_model()."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import HRNetConfig
from .hrnet import HighResolutionNet

# Where the report's text and the released notebooks differ, the notebooks' choice is the
# preset value (it produced the numbers); each such difference is a field an ablation can flip.
PRESETS: dict[str, dict[str, Any]] = {
    # The original HRNet-Wx-C (Wang et al.; timm's hrnet_w18 at width 18, 1000 classes).
    "hrnet_official": dict(
        unit="basic", modules_per_stage=(1, 4, 3), new_branch="last", stage_skip=False,
        fusion_chain_activation="between", fusion_chain_width="source", conv_bias=False,
        head_activation_after_add=True,
    ),
    # The report's re-implementation: pre-activation units, new branches made by fusion,
    # and the released notebooks' fusion chains, conv biases and head unit.
    "hrnet": dict(
        unit="preact", modules_per_stage=(1, 4, 3), new_branch="fuse", stage_skip=False,
        fusion_chain_activation="after", fusion_chain_width="double", conv_bias=True,
        head_activation_after_add=False,
    ),
    # HRSNet: the report's HRNet with 4 modules per stage and a skip from each stage's input
    # to the input of its last module.
    "hrsnet": dict(
        unit="preact", modules_per_stage=(4, 4, 4), new_branch="fuse", stage_skip=True,
        fusion_chain_activation="after", fusion_chain_width="double", conv_bias=True,
        head_activation_after_add=False,
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(PRESETS)


def model_config(name: str, width: int = 18, num_classes: int = 100, **overrides: Any) -> HRNetConfig:
    """The validated config of preset ``name`` with ``overrides`` (any HRNetConfig field) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    allowed = set(HRNetConfig.field_names()) - {"width", "num_classes"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(
            f"unknown model option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return HRNetConfig(width=width, num_classes=num_classes, **{**PRESETS[name], **overrides})


def create_model(name: str, width: int = 18, num_classes: int = 100, **overrides: Any) -> HighResolutionNet:
    """Build preset ``name`` at width C=``width``; keyword overrides change single config fields,
    e.g. ``create_model("hrnet", unit="basic")``."""
    return HighResolutionNet(model_config(name, width, num_classes, **overrides))


def config_differences() -> list[dict[str, Any]]:
    """One row per config field, with each preset's value (for the architecture notebook)."""
    rows = []
    for field in dataclasses.fields(HRNetConfig):
        if field.name in ("width", "num_classes"):
            continue
        values = {name: model_config(name).to_dict()[field.name] for name in list_models()}
        rows.append({"field": field.name, **values})
    return rows
