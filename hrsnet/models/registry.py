"""Presets: the report's three networks as configs of one class, each written as what it changes
from its base, and create_model()."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import HRNetConfig
from .hrnet import HighResolutionNet


@dataclass(frozen=True)
class Preset:
    """A named network: its base preset (None: HRNetConfig's defaults, the official HRNet), the
    config fields it changes, a label for figures, and a revision.

    ``revision`` enters the run id of every run of this network: raise it whenever a change to
    the code changes what this preset computes, so results of the old network are never read
    as results of the new one.
    """

    label: str
    base: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    revision: int = 1


# In report order, each after its base. Where the report's text and the released notebooks
# differ, the notebooks' choice is the preset value (it produced the numbers); each such
# difference is a field an ablation can flip.
PRESETS: dict[str, Preset] = {
    # The original HRNet-Wx-C (Wang et al.; timm's hrnet_w18 at width 18, 1000 classes).
    "hrnet_official": Preset("original HRNet"),
    # The report's re-implementation: pre-activation units, new branches made by fusion, and the
    # released notebooks' fusion chains, conv biases and head unit.
    # Revision 2: the pre-activation units' convs got their bias (608 x C parameters).
    "hrnet": Preset(
        "HRNet (pre-activated)",
        base="hrnet_official",
        revision=2,
        changes=dict(
            unit="preact",
            new_branch="fuse",
            fusion_chain_activation="after",
            fusion_chain_width="double",
            conv_bias=True,
            head_activation_after_add=False,
        ),
    ),
    # HRSNet as the authors ran it: the report's HRNet with 4 modules in every stage. The report's
    # text adds a skip from each stage's input to its last module, but the released notebooks'
    # `x = x + residual` concatenates two Python lists, and the last module reads only the first
    # entries: no skip is computed (hrsnet.analysis.paper.STAGE_SKIP_FINDING). The published
    # HRSNet numbers come from this network.
    # Revision 2: conv biases (as hrnet). Revision 3: no stage skip (revision 2 had one).
    "hrsnet": Preset("HRSNet", base="hrnet", revision=3, changes=dict(modules_per_stage=(4, 4, 4))),
    # HRSNet as the report's text describes it, with the stage skip; the authors never trained it.
    "hrsnet_skip": Preset("HRSNet with stage skip (the text)", base="hrsnet", changes=dict(stage_skip=True)),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in report order (the original network first)."""
    return list(PRESETS)


def preset_fields(name: str) -> dict[str, Any]:
    """Every config field a preset sets: its base's, then its own changes."""
    preset = PRESETS[name]
    return {**(preset_fields(preset.base) if preset.base else {}), **preset.changes}


def model_config(name: str, width: int = 18, num_classes: int = 100, **overrides: Any) -> HRNetConfig:
    """The validated config of preset ``name`` with ``overrides`` (any HRNetConfig field) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    allowed = set(HRNetConfig.field_names()) - {"width", "num_classes"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return HRNetConfig(width=width, num_classes=num_classes, **{**preset_fields(name), **overrides})


def create_model(name: str, width: int = 18, num_classes: int = 100, **overrides: Any) -> HighResolutionNet:
    """Build preset ``name`` at width C=``width``; keyword overrides change single config fields,
    e.g. ``create_model("hrnet", unit="basic")``."""
    return HighResolutionNet(model_config(name, width, num_classes, **overrides))


def config_differences() -> list[dict[str, Any]]:
    """One row per config field, with each preset's value (for the architecture notebook)."""
    rows = []
    for config_field in dataclasses.fields(HRNetConfig):
        if config_field.name in ("width", "num_classes"):
            continue
        values = {name: getattr(model_config(name), config_field.name) for name in list_models()}
        rows.append({"field": config_field.name, **values})
    return rows
