"""Whole-step CUDA graphs: one captured training step, replayed once per batch.

PyTorch's documented whole-network capture recipe (CUDA semantics, "Whole-network capture";
``torch.cuda.graph``): a few eager warm-up steps on a side stream (cuDNN autotuning, the
optimizer's state, the allocator), gradients set to None, then one step captured into a
``torch.cuda.CUDAGraph`` with static input buffers; each later step copies its inputs into
those buffers and replays the graph. What is captured here is the whole fixed-shape step of
fit(): index gather from the device-resident uint8 split, augmentation (from a device
generator), preprocessing, forward, loss, backward and the optimizer step. The only per-step
input is a device tensor of batch indices (copied into a static index buffer); labels are
gathered inside the graph, and loss and logits come back in static output tensors that the
next replay overwrites.

What a graph needs (``graphs_unavailable_reason`` says which is missing):
- a CUDA device;
- a fixed batch: every step has ``batch_size`` images (a last partial batch needs an eager step);
- an optimizer whose step can be captured: SGD (its learning rate, a Python float, is baked
  into the graph: a schedule that changes it needs a tensor lr), or one whose param groups
  have ``capturable=True`` (Adam: ``capturable=True``; ``fused=True`` alone is refused by
  PyTorch's capture health check);
- no torch.compile on the same model (compile's "reduce-overhead" mode has its own graphs).

Used by hrsnet.engine.trainer when ``--cuda-graphs`` resolves to on (``resolve_cuda_graphs``), by
the benchmark (variant "graphs"), and checked against eager steps by ``python -m hrsnet
gpucheck``. The captured body is hrsnet.engine.step.train_step, plain PyTorch that runs on any
device, and ``GraphedTrainStep(capture=False)`` runs the same steps without a graph, so the
training loop around it is tested on a CPU too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import torch
import torch.nn as nn

from .step import BatchShare, StepSettings, train_step

WARMUP_STEPS = 3  # the documented recipe's eager warm-up iterations before capture

# ``--cuda-graphs auto`` turns graphs on only once they are measured to win in the real loop on
# a GPU. The switch is set by hand from loop.csv (scripts/gpu_session.sh, step 3: fit() at 224px,
# batch 16, hrnet_official C=18, timed on epoch 2): True when the `graphs` row's images_per_second
# is at least hrsnet.tools.targets.GRAPHS_WIN_SPEEDUP (1.1) times the `eager` row's
# (`python -m hrsnet bench --targets FOLDER` prints the decision). Not measured yet: False.
GRAPHS_WIN_MEASURED = False


class GraphsUnavailableError(RuntimeError):
    """Whole-step CUDA graphs cannot be used here; the message says why."""


def optimizer_unavailable_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer.step()`` cannot be captured, or None if it can."""
    if isinstance(optimizer, torch.optim.SGD):
        return None  # no step counter on the host; a float lr is baked into the graph
    groups = optimizer.param_groups
    if all(group.get("capturable", False) for group in groups):
        return None
    name = type(optimizer).__name__
    return (
        f"{name} is not capturable: make it with capturable=True (PyTorch refuses to capture "
        f"step() of an optimizer whose param groups have capturable=False, fused or not)"
    )


def graphs_unavailable_reason(
    device: torch.device | str,
    optimizer: torch.optim.Optimizer | None = None,
    batch_size: int | None = None,
    train_size: int | None = None,
    drop_last: bool = False,
    compile_mode: str = "none",
) -> str | None:
    """Why whole-step CUDA graphs cannot be used with these settings, or None if they can.

    ``train_size`` and ``batch_size``: an epoch whose last batch is smaller than the others
    breaks the fixed shape unless ``drop_last``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this step runs on {device.type}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; torch sees no CUDA GPU"
    if compile_mode != "none":
        return f"torch.compile (mode {compile_mode!r}) is on: use one or the other, not both"
    if batch_size is not None and train_size is not None and train_size % batch_size and not drop_last:
        return (
            f"the batch is not fixed: {train_size} training images in batches of {batch_size} leave a last "
            f"batch of {train_size % batch_size} (drop it, or run it eagerly)"
        )
    if optimizer is not None:
        return optimizer_unavailable_reason(optimizer)
    return None


def resolve_cuda_graphs(
    switch: str,
    device: torch.device | str,
    *,
    compile_mode: str = "none",
    batch_size: int,
    train_size: int,
    packed_seeds: int = 1,
    processes: int = 1,
    augment: bool = False,
) -> tuple[bool, str]:
    """(use graphs, why) for a training run: ``switch`` is TrainConfig.cuda_graphs.

    ``on`` where graphs cannot work raises ValueError naming why (a setting this run cannot
    have: the command line's one-line error); ``auto`` gives off with the reason. The
    optimizer is not checked: the Trainer makes Adam capturable. A last batch smaller than
    ``batch_size`` is trained eagerly (through the same step body).
    """
    if switch == "off":
        return False, "off: asked for"
    reason = graphs_unavailable_reason(device, compile_mode=compile_mode)
    if reason is None and packed_seeds > 1:
        reason = f"{packed_seeds} seeds are packed into one network; the packed step runs eagerly"
    if reason is None and augment and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        reason = f"augmentation draws on the run's own CUDA generator, which torch {torch.__version__} cannot replay"
    if reason is None and processes > 1:
        reason = f"{processes} processes train the run (DDP); its all-reduce is not captured here"
    if reason is None and train_size // batch_size <= WARMUP_STEPS:
        reason = (
            f"an epoch has {train_size // batch_size} full batches of {batch_size}; a graph needs more than "
            f"the {WARMUP_STEPS} eager warm-up steps"
        )
    if switch == "on":
        if reason is not None:
            raise ValueError(f"cuda_graphs on: {reason}; use auto or off")
        return True, "on: asked for"
    if reason is not None:
        return False, f"auto: {reason}"
    if not GRAPHS_WIN_MEASURED:
        return False, "auto: off until graphs are measured to win in the real loop on a GPU (use on to try them)"
    return True, "auto: measured to win on a GPU"


def graphs_available(*args, **kwargs) -> bool:
    """True when whole-step CUDA graphs can be used (graphs_unavailable_reason gives None)."""
    return graphs_unavailable_reason(*args, **kwargs) is None


class GraphedTrainStep:
    """The fixed-shape training step of one model and optimizer, captured once, replayed per step.

    ``share`` (hrsnet.engine.step.BatchShare) names the uint8 images and labels that stay on the
    GPU and the augmentation generator (its index sets the batch size); ``step(index)`` takes a
    device tensor of that many indices into them and returns train_step's (losses, logits,
    labels): static tensors that the next ``step`` overwrites, so read or accumulate them (on
    the device; no sync needed) before the next call.

    Construction runs ``warmup_steps`` eager steps on a side stream (they train the model:
    they use the first ``warmup_steps`` batches of ``warmup_indices``, or indices 0.. if none
    are given; their outputs are kept in ``warmup_outputs``) and captures the step;
    ``capture_seconds`` is the wall time both took. ``capture=False`` runs the same warm-up and
    then every step eagerly, on any device: the graph's twin, for tests and checks. The model's
    parameters, buffers and the optimizer's state keep their storage from then on: load new
    values into them in place (``copy_``, ``load_state_dict`` on the model), never by replacing
    tensors, or the graph keeps updating the old ones.
    """

    def __init__(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        share: BatchShare,
        settings: StepSettings,
        warmup_steps: int = WARMUP_STEPS,
        warmup_indices: Iterable[torch.Tensor] | None = None,
        capture: bool = True,
    ):
        device = share.images.device
        reason = graphs_unavailable_reason(device, optimizer) if capture else None
        if reason is not None:
            raise GraphsUnavailableError(reason)
        if share.labels.device != device:
            raise GraphsUnavailableError(f"images are on {device} but labels on {share.labels.device}")
        generator = share.generator
        if capture and settings.augment and generator is not None and generator.device.type != "cuda":
            raise GraphsUnavailableError("augmentation inside a graph needs a CUDA generator (or None: the default)")
        self.forward, self.optimizer, self.settings = forward, optimizer, settings
        self.batch_size = len(share.index)
        self.static_index = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.share = dataclasses.replace(share, index=self.static_index)
        self.warmup_outputs: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
        self.graph = torch.cuda.CUDAGraph() if capture else None
        forward.train()
        warmup = self._warmup_indices(warmup_indices, warmup_steps)
        begin = time.perf_counter()
        if not capture:
            for index in warmup:
                self.static_index.copy_(index)
                self.warmup_outputs.append(self._detached(self._body()))
            self.capture_seconds = time.perf_counter() - begin
            return
        if (
            settings.augment
            and generator is not None
            and generator is not torch.cuda.default_generators[device.index or 0]
        ):
            if not hasattr(self.graph, "register_generator_state"):
                raise GraphsUnavailableError(
                    f"torch {torch.__version__} cannot register a custom generator with a graph; pass None"
                )
            self.graph.register_generator_state(generator)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for index in warmup:
                self.static_index.copy_(index)
                self.warmup_outputs.append(self._detached(self._body()))
        torch.cuda.current_stream(device).wait_stream(side)
        # Gradients from the graph's private memory pool, as the recipe does.
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_outputs = self._body()
        torch.cuda.synchronize(device)  # also: the warm-up outputs, made on the side stream, are ready
        self.capture_seconds = time.perf_counter() - begin

    def _warmup_indices(self, given: Iterable[torch.Tensor] | None, steps: int) -> list[torch.Tensor]:
        """The warm-up batches: the first ``steps`` of ``given``, then indices 0, 1, ... (wrapping)."""
        batches = list(given or [])[:steps]
        total, size = len(self.share.labels), self.batch_size
        for step in range(len(batches), steps):
            batches.append(torch.arange(step * size, (step + 1) * size, device=self.static_index.device) % total)
        return batches

    @staticmethod
    def _detached(outputs):
        losses, logits, labels = outputs
        return losses.detach(), logits.detach(), labels

    def _body(self):
        # Autocast's weight-cast cache is off: a cache filled during capture would hold tensors
        # of the capture, and each cast happens once per step here anyway.
        return train_step(self.forward, self.optimizer, [self.share], self.settings, cache_enabled=False)

    def step(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Replay the step on the batch ``index`` (a device tensor of batch_size indices)."""
        if index.shape != self.static_index.shape:
            raise ValueError(f"a captured step takes exactly {self.batch_size} indices; got shape {tuple(index.shape)}")
        self.static_index.copy_(index, non_blocking=True)
        if self.graph is None:  # capture=False: the same step, eagerly
            self.static_outputs = self._detached(self._body())
        else:
            self.graph.replay()
        return self.static_outputs
