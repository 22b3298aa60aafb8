"""The frozen config that drives the one High-Resolution Network class, and its validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

UNITS = ("basic", "preact")
NEW_BRANCH_SOURCES = ("last", "fuse")
FUSION_CHAIN_ACTIVATIONS = ("between", "after")
FUSION_CHAIN_WIDTHS = ("source", "double")


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; `width=True` is a mistake, not a width of 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass(frozen=True)
class HRNetConfig:
    """Everything that tells the three networks of the report apart, one field per difference.

    The defaults are the original HRNet-Wx-C (the ``hrnet_official`` preset).

    Fields (allowed values; what each one means):

    - ``width`` (int >= 1): C, the width of the highest-resolution branch; branch i has C*2^i.
    - ``num_classes`` (int >= 1): outputs of the final linear layer.
    - ``unit`` ("basic" | "preact"): residual unit inside the branches. "basic" is the
      original post-activation unit; "preact" the report's pre-activation unit.
    - ``modules_per_stage`` (three ints >= 1): HRNet modules in stages 2, 3, 4;
      (1, 4, 3) for HRNet, (4, 4, 4) for HRSNet.
    - ``new_branch`` ("last" | "fuse"): how stages 3 and 4 get their new, lower-resolution
      branch. "last" (official): a 3x3 stride-2 conv + BN + ReLU on the last branch only.
      "fuse" (the report): one more output of the previous stage's last fusion, summing
      every branch brought down to the new resolution.
    - ``stage_skip`` (bool): HRSNet's skip connection: each stage's input is added, branch
      by branch, to the input of the stage's last module. Needs >= 2 modules per stage.
    - ``fusion_chain_activation`` ("between" | "after"): the ReLUs in a stride-2 fusion
      chain. "between" (official): after every conv but the last. "after" (the released
      notebooks): none between the convs, one after the last.
    - ``fusion_chain_width`` ("source" | "double"): the width of the intermediate convs of
      a stride-2 chain. "source" (official, and timm): they keep the source branch's width
      and only the last conv changes it. "double" (the released notebooks): each conv
      doubles the width, C*2^j -> C*2^(j+1) -> ... -> C*2^i.
    - ``conv_bias`` (bool): bias on every conv of the stem, stage 1, the transitions, the
      residual units in the branches, the fusion and the head's bottleneck units. Off in the
      official network (BatchNorm follows every conv); on in the released notebooks, which
      keep PyTorch's default everywhere. The head's downsampling and final convs have a bias
      in every preset, as in the official code.
    - ``head_activation_after_add`` (bool): the head's bottleneck units. True (official):
      ReLU after the residual sum. False (the released notebooks): ReLU at the end of the
      residual branch, before the sum, none after.
    - ``units_per_branch`` (int >= 1): residual units per branch in each module (4 in all
      three networks).
    """

    width: int = 18
    num_classes: int = 100
    unit: str = "basic"
    modules_per_stage: tuple[int, int, int] = (1, 4, 3)
    new_branch: str = "last"
    stage_skip: bool = False
    fusion_chain_activation: str = "between"
    fusion_chain_width: str = "source"
    conv_bias: bool = False
    head_activation_after_add: bool = True
    units_per_branch: int = 4

    def __post_init__(self) -> None:
        _check_int("width", self.width, 1)
        _check_int("num_classes", self.num_classes, 1)
        _check_int("units_per_branch", self.units_per_branch, 1)
        _check_choice("unit", self.unit, UNITS)
        _check_choice("new_branch", self.new_branch, NEW_BRANCH_SOURCES)
        _check_choice("fusion_chain_activation", self.fusion_chain_activation, FUSION_CHAIN_ACTIVATIONS)
        _check_choice("fusion_chain_width", self.fusion_chain_width, FUSION_CHAIN_WIDTHS)
        modules = self.modules_per_stage
        if isinstance(modules, list):  # JSON round trips give lists; store the hashable form
            object.__setattr__(self, "modules_per_stage", modules := tuple(modules))
        if not isinstance(modules, tuple) or len(modules) != 3:
            raise ValueError(f"modules_per_stage must be three integers >= 1 (stages 2, 3, 4), got {modules!r}")
        for count in modules:
            _check_int("modules_per_stage entries", count, 1)
        for name in ("stage_skip", "conv_bias", "head_activation_after_add"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.stage_skip and min(modules) < 2:
            raise ValueError(
                "stage_skip needs at least 2 modules in every stage (the skip goes from a stage's "
                f"input to its last module's input); modules_per_stage is {modules}"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
