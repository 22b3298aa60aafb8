"""One run on several GPUs or nodes: ``torchrun --nproc_per_node=K -m hrsnet train ...``.

torchrun starts K processes (per node) and gives each ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``fit()`` sees them (``launched_by_torchrun``) and trains the run here, with
PyTorch's DistributedDataParallel. Without those variables nothing here is used.

- Process group: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU, with a
  timeout (``HRSNET_DIST_TIMEOUT_S``, default 1800 s), destroyed in a ``finally``.
- Data: every process holds the whole dataset on its device (hrsnet.data), draws the same
  permutation and augmentation from the same seeded generator, and trains on its contiguous
  slice of every global batch. The global batch stays ``config.batch_size``, so the run id and
  the protocol do not depend on K. Every batch, the last one of an epoch included, must split
  evenly over the K processes (else a one-line ValueError names the K that do); then DDP's
  average of the per-process mean gradients is the mean gradient of the global batch.
- BatchNorm: SyncBatchNorm on CUDA (statistics over the global batch, as one process would
  compute them); on the CPU (gloo, which SyncBatchNorm does not support) each process
  normalises with its own slice's statistics, and the running statistics that validation and
  test use are rank 0's (DDP broadcasts rank 0's buffers before every forward).
- Files: only rank 0 holds the run's lock and writes the run directory (config, checkpoints,
  history, status, test outputs); it validates and tests alone while the others wait. The
  other processes write nothing: they receive rank 0's start state (a fresh one, or last.pt)
  by broadcast, so no shared filesystem is needed. Checkpoints hold the plain model's
  state_dict, so a run resumes with any K, or without torchrun.
- Errors: an exception on rank 0 is broadcast at the next hand-over and raised on every
  process; a process that fails elsewhere destroys its process group, which makes the
  others' collectives fail (gloo) or time out, and torchrun ends the remaining workers.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..data import DatasetSplits
from ..runtime import check_device_name
from .trainer import Trainer

__all__ = [
    "DistContext",
    "DistributedTrainer",
    "PeerFailedError",
    "check_shardable",
    "state_from_bytes",
    "state_to_bytes",
    "launched_by_torchrun",
]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT_VARIABLE = "HRSNET_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


class PeerFailedError(RuntimeError):
    """Another process of the run failed; raised where its own error could not be sent."""


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set RANK, WORLD_SIZE and LOCAL_RANK."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def check_shardable(batch_size: int, train_size: int, world_size: int) -> None:
    """ValueError (one line, naming the K that work) unless every batch of an epoch, the last
    partial one included, splits evenly over ``world_size`` processes."""
    last = train_size % batch_size
    if batch_size % world_size == 0 and last % world_size == 0:
        return
    allowed = [k for k in range(1, batch_size + 1) if batch_size % k == 0 and last % k == 0]
    last_note = f" and the last batch of an epoch ({last} of {train_size} training images)" if last else ""
    raise ValueError(
        f"{world_size} processes cannot share batches of {batch_size}{last_note} evenly; "
        f"use a total process count (nodes x --nproc_per_node) of {', '.join(map(str, allowed))}"
    )


def _timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_VARIABLE)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0; got {raw!r}")
    return value


def _process_device(name: str, local_rank: int) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for auto (with a GPU) or cuda, else the CPU."""
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ValueError(f"under torchrun each process uses cuda:LOCAL_RANK; use --device cuda or auto, not {name!r}")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank}, but torch sees {count}; "
            f"use --nproc_per_node {count} or fewer"
        )
    return torch.device("cuda", local_rank)


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, device, and the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this context initialised the process group (and destroys it)

    @classmethod
    def start(cls, device_name: str) -> DistContext:
        """Join the process group torchrun's variables describe (NCCL on CUDA, gloo on the CPU)."""
        rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
        device = _process_device(device_name, local_rank)
        timeout = _timeout_seconds()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def on_main(self, work: Callable[[], Any], share: Callable[[Any], Any] = lambda result: None) -> Any:
        """Rank 0 runs ``work``; every rank returns ``share(result)``, sent from rank 0.

        An exception in ``work`` (not KeyboardInterrupt) is sent too: rank 0 raises it as it
        was, the others raise a copy (or PeerFailedError when it cannot be pickled).
        """
        message: list[Any] = [None]
        error: Exception | None = None
        if self.is_main:
            try:
                message[0] = ("ok", share(work()))
            except Exception as caught:
                error = caught
                message[0] = ("error", _portable(caught))
        dist.broadcast_object_list(message, src=0)
        kind, payload = message[0]
        if error is not None:
            raise error
        if kind == "error":
            raise payload from PeerFailedError(f"rank 0 failed: {type(payload).__name__}")
        return payload


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a PeerFailedError with its first line."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error):
            return error
    except Exception:
        pass
    return PeerFailedError(f"rank 0 failed: {type(error).__name__}: {first_line}")


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """A Trainer's checkpoint_state as bytes, for a broadcast to the other processes."""
    stream = io.BytesIO()
    torch.save(state, stream)
    return stream.getvalue()


def state_from_bytes(payload: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


class DistributedTrainer(Trainer):
    """A Trainer that is one of ``context.world_size`` processes training one run.

    Every process trains its rows of each global batch through DistributedDataParallel
    (``attach()``, once every process holds the start state); the whole global batch is
    gathered and augmented by every process alike (the generators advance as with one
    process), then sliced. Rank 0 alone validates, checkpoints, writes the run directory and
    tests, and hands the resulting status to the others.
    """

    def __init__(
        self, config: TrainConfig, data: DatasetSplits, device, run_dir=None, *, context: DistContext, **shape
    ):
        super().__init__(config, data, device, run_dir, world_size=context.world_size, **shape)
        self.context = context
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def attach(self) -> None:
        """SyncBatchNorm (NCCL only), then DDP, which makes every rank start from rank 0's
        parameters and buffers. ``self.model`` stays the plain model (checkpoints, evaluation)."""
        context = self.context
        if context.backend == "nccl":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # in place below the top module
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[context.device.index] if context.device.type == "cuda" else None
        )
        config = self.config
        self.step_model = self.ddp if config.compile == "none" else torch.compile(self.ddp, mode=config.compile)

    def rows(self, size: int) -> slice:
        """This process's contiguous rows of a global batch of ``size`` (a multiple of K)."""
        share = size // self.world_size
        return slice(self.context.rank * share, (self.context.rank + 1) * share)

    @staticmethod
    def reduce(totals: torch.Tensor) -> torch.Tensor:
        """The epoch's sums over every process (EpochMeter's ``reduce``)."""
        dist.all_reduce(totals)
        return totals

    def finish_epoch(self, epoch: int, train_row: dict[str, float]) -> None:
        parent = super().finish_epoch
        self.status = self.context.on_main(lambda: parent(epoch, train_row), lambda _: self.status)

    def finish(self) -> None:
        self.context.on_main(super().finish)
        self.finished = True
