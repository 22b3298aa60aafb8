"""Parameter and FLOP counts, from torch's own FlopCounterMode (no hand-written counter)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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


class _ShapeOnlyOnMeta(torch.overrides.TorchFunctionMode):
    """On meta tensors, BatchNorm, ReLU and same-shape adds return a tensor of the input's shape
    without running torch's Python meta kernels: they count no FLOPs, keep every shape, and were
    three quarters of a meta forward's time (measured: same count, 3x to 6x faster)."""

    IN_PLACE = (torch.Tensor.relu_, torch.Tensor.add_, torch.Tensor.__iadd__)
    OUT_OF_PLACE = (F.batch_norm, F.relu, torch.relu, torch.Tensor.relu, torch.Tensor.add, torch.Tensor.__add__)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.is_meta and (func in self.IN_PLACE or func in self.OUT_OF_PLACE):
            other = args[1] if len(args) > 1 and func not in (F.batch_norm,) else None
            if other is None or (isinstance(other, torch.Tensor) and other.shape == first.shape):
                return first if func in self.IN_PLACE else torch.empty_like(first)
        return func(*args, **kwargs)


def count_forward_flops(model: torch.nn.Module, image_size: int, batch_size: int = 1) -> int:
    """FLOPs of one forward pass (eval mode) on a batch, counted by FlopCounterMode."""
    device = next(model.parameters()).device
    inputs = torch.zeros(batch_size, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    shortcut = _ShapeOnlyOnMeta() if device.type == "meta" else contextlib.nullcontext()
    try:
        with torch.no_grad(), shortcut, FlopCounterMode(display=False) as counter:
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


def parameter_count(name: str, width: int, num_classes: int = 100, **overrides: Any) -> int:
    """All parameters of preset ``name`` at width C (built on the meta device), as summary() counts them."""
    with torch.device("meta"):
        model = create_model(name, width=width, num_classes=num_classes, **overrides)
    return sum(p.numel() for p in model.parameters())


def head_parameters(name: str, width: int, num_classes: int = 100) -> int:
    """Parameters of the classification head (incre, downsampling, final layer, classifier)."""
    with torch.device("meta"):
        model = create_model(name, width=width, num_classes=num_classes)
    head = [model.incre_modules, model.downsamp_modules, model.final_layer, model.classifier]
    return sum(p.numel() for module in head for p in module.parameters())
