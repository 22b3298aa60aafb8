"""THE training step, and the meter of an epoch of steps.

``train_step`` is the one place a step is computed: gather a batch by index from the
device-resident uint8 split, augment it (one crop/flip, drawing on the random source it is
given), preprocess, forward (bf16 autocast if asked), cross-entropy in float32, backward,
optimizer step. The eager loop (``Trainer``), the captured CUDA graph (``GraphedTrainStep``),
the seed pack (``PackedSeeds``, one share per seed, stacked along the channels of a packed
network) and the benchmark all call it. It never synchronises with the host, so a graph can
capture it.

``EpochMeter`` keeps what an epoch of steps reports, per seed, on the device: loss and
correct sums, the released notebooks' tail loss, divergence (checked every ``log_every``
batches: each check is a host sync), images and time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import preprocess, random_crop_flip
from ..runtime import autocast_context

# The released notebooks reset their running training loss every 1,000 batches and report the
# mean over the batches after the last reset (hrsnet.analysis.paper): history.csv's train_loss_tail.
RELEASED_LOSS_WINDOW = 1000


@dataclass(frozen=True)
class StepSettings:
    """What a step does with a batch besides the model: size, precision, layout, augmentation."""

    image_size: int
    precision: str = "fp32"
    memory_format: torch.memory_format = torch.contiguous_format
    augment: bool = False


@dataclass(frozen=True)
class BatchShare:
    """One seed's share of a step: which images of its split, and its random source.

    ``rows``: this process's rows of the (augmented) batch when several processes train one
    run (hrsnet.engine.distributed); None for the whole batch.
    """

    images: torch.Tensor  # the split's uint8 images (N, 3, h, w), on the device
    labels: torch.Tensor  # the split's int64 labels
    index: torch.Tensor  # this step's positions in the split, on the device
    generator: torch.Generator | None = None  # augmentation's random source (None: the device's default)
    rows: slice | None = None


def gather(share: BatchShare, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images (augmented if asked) and labels of one share, on the device."""
    images = share.images.index_select(0, share.index)
    labels = share.labels.index_select(0, share.index)
    if augment:
        # Cropping and flipping uint8 images before the float conversion gives the same values
        # as after it, with a quarter of the memory traffic.
        images = random_crop_flip(images, share.generator)
    if share.rows is not None:
        images, labels = images[share.rows], labels[share.rows]
    return images, labels


def train_step(
    forward: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shares: Sequence[BatchShare],
    settings: StepSettings,
    cache_enabled: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One optimisation step on one share per seed; returns (per-seed losses (S,), logits
    (B, S, classes), per-seed labels), not synchronised.

    With several shares, ``forward`` is a packed network (hrsnet.engine.packing): the shares'
    inputs are stacked along the channels and the loss is the sum of the seeds' mean losses, so
    each seed gets exactly its own gradient. ``cache_enabled``: autocast's weight-cast cache
    (off inside a CUDA graph capture, where a cache would hold tensors of the capture).
    """
    inputs, labels = [], []
    for share in shares:
        images, share_labels = gather(share, settings.augment)
        inputs.append(preprocess(images, settings.image_size, memory_format=settings.memory_format))
        labels.append(share_labels)
    stacked = (
        inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1).contiguous(memory_format=settings.memory_format)
    )
    with autocast_context(settings.precision, stacked.device, cache_enabled):
        logits = forward(stacked)
    if logits.dim() == 2:  # an unpacked network: one seed
        logits = logits.unsqueeze(1)
    # The loss in float32 whatever the autocast dtype.
    losses = torch.stack([F.cross_entropy(logits[:, k].float(), labels[k]) for k in range(len(shares))])
    optimizer.zero_grad(set_to_none=True)
    (losses[0] if len(shares) == 1 else losses.sum()).backward()
    optimizer.step()
    return losses, logits, labels


class EpochMeter:
    """Per seed: loss and correct sums on the device, the released tail loss, images, divergence.

    ``add`` after every step (no sync); ``due(batch)`` says when a divergence check (a host
    sync) is due: every ``log_every`` batches and at the last; ``check`` returns the seeds whose
    mean loss has just become non-finite (each once; its numbers freeze there). ``reduce``: sums
    a float64 tensor over the processes that train one run together (hrsnet.engine.distributed).
    """

    def __init__(
        self,
        seeds: int,
        num_batches: int,
        device: torch.device,
        log_every: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.seeds, self.num_batches, self.device, self.log_every = seeds, num_batches, device, log_every
        self.reduce = reduce
        self.loss_sum = torch.zeros(seeds, device=device)
        self.correct = torch.zeros(seeds, device=device, dtype=torch.long)
        self.tail_sum = torch.zeros(seeds, device=device)
        self.seen = 0
        self.tail_seen = 0
        self.live = [True] * seeds
        self.frozen: dict[int, list[float]] = {}  # a diverged seed's totals when it diverged
        self.lr = math.nan
        self.started = 0.0
        self.seconds = math.nan

    def start(self, lr: float) -> None:
        self.lr = lr
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.started = time.perf_counter()

    def add(self, batch: int, losses: torch.Tensor, logits: torch.Tensor, labels: Sequence[torch.Tensor]) -> None:
        """Accumulate step ``batch`` (0-based): losses (S,), logits (B, S, classes), labels per seed."""
        count = len(labels[0])
        if batch % RELEASED_LOSS_WINDOW == 0:  # where the notebooks' running sum restarts
            self.tail_sum.zero_()
            self.tail_seen = 0
        weighted = losses.detach() * count
        self.loss_sum += weighted
        self.tail_sum += weighted
        self.correct += (logits.detach().argmax(dim=2) == torch.stack(list(labels), dim=1)).sum(dim=0)
        self.seen += count
        self.tail_seen += count

    def due(self, batch: int) -> bool:
        return (batch + 1) % self.log_every == 0 or batch == self.num_batches - 1

    def totals(self) -> list[list[float]]:
        """Per seed [loss sum, correct, images, tail loss sum, tail images], over every process
        (one host sync); a diverged seed's as they were when it diverged."""
        counts = self.loss_sum.new_tensor([self.seen, self.tail_seen], dtype=torch.float64)
        stacked = torch.cat([self.loss_sum.double(), self.correct.double(), self.tail_sum.double(), counts])
        if self.reduce is not None:
            stacked = self.reduce(stacked)
        values = stacked.tolist()
        s = self.seeds
        seen, tail_seen = round(values[3 * s]), round(values[3 * s + 1])
        rows = [[values[k], values[s + k], seen, values[2 * s + k], tail_seen] for k in range(s)]
        return [self.frozen.get(k, row) for k, row in enumerate(rows)]

    def check(self) -> list[tuple[int, float]]:
        """(seed position, mean loss) of each live seed whose mean loss is no longer finite."""
        diverged = []
        for k, (loss, _, seen, _, _) in enumerate(self.totals()):
            if self.live[k] and not math.isfinite(loss / seen):
                self.live[k] = False
                self.frozen[k] = self.totals()[k]
                diverged.append((k, loss / seen))
        return diverged

    def mean_loss(self, k: int = 0) -> float:
        loss, _, seen, _, _ = self.totals()[k]
        return loss / seen

    def stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.started

    def rows(self) -> list[dict[str, float]]:
        """history.csv's training columns, one dict per seed. train_loss_tail: the mean over the
        batches after the last multiple of 1,000 (the released notebooks' quantity); NaN when the
        epoch's batches are a multiple of 1,000, where the notebooks recorded nothing."""
        rows = []
        for loss, correct, seen, tail, tail_seen in self.totals():
            whole_windows = self.num_batches % RELEASED_LOSS_WINDOW == 0
            rows.append(
                {
                    "train_loss": loss / seen,
                    "train_acc": correct / seen,
                    "lr": self.lr,
                    "epoch_seconds": self.seconds,
                    "images_per_second": seen / self.seconds,
                    "train_loss_tail": math.nan if whole_windows or not tail_seen else tail / tail_seen,
                }
            )
        return rows
