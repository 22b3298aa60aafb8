"""Parameter and FLOP counts, from torch's own FlopCounterMode (no hand-written counter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model


@dataclass(frozen=True)
class ModelSummary:
    name: str
    width: int
    image_size: int
    num_classes: int
    parameters: int  # all parameters
    trainable_parameters: int  # requires_grad
    forward_flops: int  # FlopCounterMode count for one image (a multiply-add counts 2)

    @property
    def forward_gmacs(self) -> float:
        """Multiply-accumulates in billions: the unit HRNet's papers quote as "GFLOPs"."""
        return self.forward_flops / 2e9


def count_forward_flops(model: torch.nn.Module, image_size: int, batch_size: int = 1) -> int:
    """FLOPs of one forward pass (eval mode) on a batch, counted by FlopCounterMode."""
    device = next(model.parameters()).device
    inputs = torch.zeros(batch_size, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def summary(name: str, width: int, image_size: int = 224, num_classes: int = 100, **overrides: Any) -> ModelSummary:
    """Parameters and forward FLOPs (per image) of preset ``name`` at width C.

    The model is built on the meta device: shapes only, so even C=30 at 224x224 costs no
    memory or compute.
    """
    with torch.device("meta"):
        model = create_model(name, width=width, num_classes=num_classes, **overrides)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(
        name, width, image_size, num_classes, parameters, trainable, count_forward_flops(model, image_size)
    )


def head_parameters(name: str, width: int, num_classes: int = 100) -> int:
    """Parameters of the classification head (incre, downsampling, final layer, classifier)."""
    with torch.device("meta"):
        model = create_model(name, width=width, num_classes=num_classes)
    head = [model.incre_modules, model.downsamp_modules, model.final_layer, model.classifier]
    return sum(p.numel() for module in head for p in module.parameters())
