"""Scoring a model on a split: loss, top-1/top-5, per-class counts, predictions.

Everything accumulates on the device; the only host sync is the final copy of the totals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import Split, preprocess
from ..runtime import autocast_context


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy
    top1: float  # fractions
    top5: float
    per_class_correct: torch.Tensor  # (num_classes,) int64, CPU
    per_class_support: torch.Tensor
    predictions: torch.Tensor  # (N,) top-1 class per image, CPU


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: Split,
    num_classes: int,
    image_size: int,
    batch_size: int = 64,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalResult:
    """Eval-mode pass over ``split`` (on the model's device) in batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    device = split.images.device
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    topk = torch.zeros((), device=device, dtype=torch.long)
    per_class_correct = torch.zeros(num_classes, device=device, dtype=torch.long)
    predictions = torch.empty(len(split), device=device, dtype=torch.long)
    for start in range(0, len(split), batch_size):
        images = preprocess(split.images[start : start + batch_size], image_size, memory_format=memory_format)
        labels = split.labels[start : start + batch_size]
        with autocast_context(precision, device):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        ranked = logits.topk(k, dim=1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum()
        topk += hits.any(dim=1).sum()
        per_class_correct.index_add_(0, labels, hits[:, 0].long())
        predictions[start : start + batch_size] = ranked[:, 0]
    model.train(was_training)
    total = max(1, len(split))
    support = torch.bincount(split.labels, minlength=num_classes)
    loss, correct1, correctk = torch.stack([loss_sum, top1.double(), topk.double()]).tolist()  # one sync
    return EvalResult(
        loss / total, correct1 / total, correctk / total, per_class_correct.cpu(), support.cpu(), predictions.cpu()
    )
