"""Checkpoints in and out: one format, read with weights_only, optimizer kernels kept as built.

A checkpoint is a dict written by ``Trainer.checkpoint_state`` (``last.pt``: model, optimizer,
early stopping, history, status, random states) or ``best_checkpoint_state`` (``best_epochNNN.pt``:
the model only). Both carry ``format``; ``last.pt`` also the run id, so one run's checkpoint is
never resumed by another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import rundir

CHECKPOINT_FORMAT = 1
# How an optimizer's step is computed, not what: the checkpoint's values of these must not
# replace the ones the optimizer was built with (a CPU's foreach kernel on a GPU, a capturable
# Adam made not capturable, which a CUDA graph then refuses).
KERNEL_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, of another format, or from a different run."""


class ForeignCheckpointError(CheckpointError):
    """A checkpoint of another run (copied or moved into this run's folder)."""


def save_checkpoint(path: Path, state: dict[str, Any], needed_bytes: int | None = None) -> None:
    """torch.save through rundir.atomic_write: the old file or the complete new one, never half."""
    rundir.atomic_write(path, lambda stream: torch.save(state, stream), binary=True, needed_bytes=needed_bytes)


# What last.pt holds for a run to resume from it (Trainer.checkpoint_state).
RESUME_KEYS = ("model", "optimizer", "early_stopping", "history", "best_checkpoint", "stop", "rng")


def load_checkpoint_file(
    path: Path, run_id: str | None = None, keys: tuple[str, ...] = ("model",), mmap: bool = False
) -> dict[str, Any]:
    """torch.load with weights_only=True; a clear CheckpointError when corrupt, of another format,
    without one of ``keys``, or (with ``run_id``) from another run. ``mmap``: the tensors are
    mapped, not read (a check of the other keys costs no weight reads)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}); "
            "delete it or rerun with --force to start over"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not an hrsnet checkpoint (format {CHECKPOINT_FORMAT}); "
            "delete it or rerun with --force"
        )
    if run_id is not None and state.get("run_id") != run_id:
        raise ForeignCheckpointError(
            f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {run_id!r}; "
            "move it away or rerun with --force"
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} (written by an older version?); rerun with --force"
        )
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """``optimizer.load_state_dict``, keeping the optimizer's own kernel options, then give each
    state tensor its parameter's memory layout.

    ``load_state_dict`` restores ``fused``, ``foreach`` and ``capturable`` from the checkpoint's
    param groups: the kernel of the machine that wrote it. They say how, not what, so the values
    the optimizer was built with are put back. Fused kernels also assume a parameter and its
    state (momentum buffer) share strides; a checkpoint saved with another layout (contiguous on
    a CPU, resumed channels_last on a GPU) would otherwise be updated wrongly: fused SGD does so
    silently (torch 2.14, CPU; tests/test_bench.py shows it).
    """
    built = [{key: group[key] for key in KERNEL_OPTIONS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, options in zip(optimizer.param_groups, built):
        group.update(options)
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)
                elif key == "step" and group.get("capturable") and value.device != param.device:
                    state[key] = value.to(param.device)  # a capturable step counter lives on the device


def cuda_rng_state(device: torch.device) -> list[torch.Tensor]:
    """The random state of ``device``'s CUDA generator alone (not of every visible GPU: a run resumes
    on a machine with another number of GPUs), as a list of at most one tensor."""
    return [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []


def restore_cuda_rng_state(states: list[torch.Tensor], device: torch.device) -> None:
    """Give ``device``'s CUDA generator the saved state. Checkpoints of older versions saved every
    visible GPU's state: the run's own device index is taken if there, else the first."""
    if device.type != "cuda" or not states:
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_rng_state(states[index] if index < len(states) else states[0], device)
