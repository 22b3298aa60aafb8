"""fit(): the training loop of the report's protocol, resumable, logged to the run directory.

Defaults follow the authors' released notebooks (see hrsnet.config.TrainConfig). One readable
loop, Trainer.run(): the data sits on the device (hrsnet.data), each epoch trains, validates,
checkpoints and appends to history.csv; early stopping watches the validation loss; the test
set is scored at the end with both the last-epoch model (what the notebooks reported) and the
best-validation one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import preflight, rundir
from .config import TrainConfig
from .cudagraphs import GraphedTrainStep, graph_step_body, resolve_cuda_graphs
from .data import DATASET_CLASSES, DATASET_LABELS, DatasetSplits, Split, load_dataset, preprocess
from .evaluate import EvalResult, evaluate
from .models import create_model
from .rundir import RunStatus
from .runlock import LOCK_FILE, RunLock, RunLockedError
from .runtime import (
    configure_determinism,
    make_optimizer,
    memory_format,
    optimization_step,
    resolve_channels_last,
    resolve_device,
    resolve_eval_batch_size,
    resolve_optimizer_kernel,
    resolve_precision,
)

__all__ = ["TrainConfig", "Trainer", "fit", "fit_seeds", "training_step", "CheckpointError", "EarlyStopping"]

EXAMPLES_PER_CLASS = 4
CHECKPOINT_FORMAT = 1


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by more than min_delta for ``patience`` epochs."""

    patience: int
    min_delta: float
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch; True if it is the new best."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.epochs_without_improvement = val_loss, epoch, 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        # Keras semantics: patience 0 stops at the first epoch without improvement.
        return self.epochs_without_improvement >= max(self.patience, 1)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or from a different run."""


def training_step(
    forward: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_size: int,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a uint8 batch on its device, forward (autocast if bf16), cross-entropy in
    float32, backward, optimizer step. Shared by fit() and the benchmark."""
    inputs = preprocess(images, image_size, augment, generator, memory_format)
    return optimization_step(forward, optimizer, inputs, labels, precision)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """``optimizer.load_state_dict``, then give each state tensor its parameter's memory layout.

    Fused optimizer kernels assume a parameter and its state (momentum buffer) share strides.
    A checkpoint saved with another layout (contiguous on a CPU, resumed channels_last on a
    GPU) would otherwise be updated wrongly: fused SGD does so silently (torch 2.14, CPU;
    tests/test_bench.py shows it).
    """
    optimizer.load_state_dict(state_dict)
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)


def load_checkpoint_file(path: Path, config: TrainConfig | None = None) -> dict[str, Any]:
    """torch.load with weights_only=True; a clear CheckpointError when corrupt or from another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    if config is not None and state.get("run_id") != config.run_id:
        raise CheckpointError(
            f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {config.run_id!r}; "
            "move it away or rerun with --force"
        )
    return state


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    from . import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "hrsnet": __version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }


def _progress(iterable, quiet: bool, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)


def step_model(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """What a training step calls: ``model``, or compiled as ``config.compile`` asks."""
    return model if config.compile == "none" else torch.compile(model, mode=config.compile)


def config_optimizer(
    config: TrainConfig, parameters, device: torch.device, capturable: bool = False
) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, with its settings and its kernel resolved for ``device``
    (``capturable``: its step can go into a CUDA graph)."""
    return make_optimizer(
        config.optimizer,
        parameters,
        config.lr,
        config.momentum,
        config.weight_decay,
        resolve_optimizer_kernel(config.fused_optimizer, device),
        capturable,
    )


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(message)


def _save_checkpoint(path: Path, state: dict[str, Any], needed_bytes: int | None = None) -> None:
    rundir.atomic_write(path, lambda stream: torch.save(state, stream), binary=True, needed_bytes=needed_bytes)


def _metrics(result: EvalResult, epoch: int) -> dict[str, Any]:
    return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "epoch": epoch}


class Trainer:
    """One run: its model, optimizer, data, history and status. ``run()`` is the loop."""

    augments_in_batch = False  # True where batch() has already augmented (hrsnet.distributed)

    def __init__(self, config: TrainConfig, data: DatasetSplits, device: torch.device, run_dir: Path | None = None):
        self.config = config
        self.device = device
        self.data = data
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
        self.precision = resolve_precision(config.precision, device)
        self.memory_format = memory_format(resolve_channels_last(config.channels_last, device))
        torch.manual_seed(config.seed)
        self.model = self.build_model()
        self.step_model = step_model(self.model, config)
        self.optimizer = config_optimizer(config, self.model.parameters(), device)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        self.history: list[dict[str, Any]] = []
        self.best_checkpoint: str | None = None
        self.status: RunStatus | None = None  # how training ended, once it has
        self.saved_epochs = 0  # epochs in last.pt: what a resume would start from
        self.checkpoint_bytes: int | None = None  # for the message of a failed checkpoint write
        self.packed_with = 1  # seeds trained in one packed network with this one (hrsnet.packing)
        self.world_size = 1  # processes training this run together (hrsnet.distributed)
        self.finished = False  # test outputs and final status written
        # Whole-step CUDA graphs: resolved in start(), once packing and processes are known.
        self.cuda_graphs: bool | None = None
        self.cuda_graphs_reason = "not resolved yet"
        self.graphed_step: GraphedTrainStep | None = None  # captured at the first graphed epoch

    def build_model(self) -> torch.nn.Module:
        config = self.config
        model = create_model(config.arch, config.width, self.data.num_classes, **dict(config.model_options))
        return model.to(device=self.device, memory_format=self.memory_format)

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def eval_batch_size(self) -> int:
        return resolve_eval_batch_size(self.config.eval_batch_size, self.config.batch_size, self.device)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> RunStatus:
        """Train from the current epoch until the limit, early stopping or divergence; then test."""
        config = self.config
        epochs = _progress(
            range(self.epoch + 1, config.epochs + 1),
            config.quiet,
            desc=config.run_id,
            initial=self.epoch,
            total=config.epochs,
        )
        for epoch in epochs:
            if self.status is not None:  # resumed a run whose training had ended before its test pass
                break
            self.finish_epoch(epoch, self.train_one_epoch(epoch))
        self.finish()
        return self.status

    def finish_epoch(self, epoch: int, train_row: dict[str, float]) -> None:
        """After training epoch ``epoch``: validate (unless diverged), record, checkpoint, log."""
        config = self.config
        row = {"epoch": epoch, **train_row}
        started = time.perf_counter()
        row.update(self.validate(epoch) if self.status is None else {"val_loss": math.nan, "val_acc": math.nan})
        row["val_seconds"] = time.perf_counter() - started
        self.history.append(row)
        if self.status is None and epoch == config.epochs:
            self.status = RunStatus("complete", f"reached the epoch limit ({config.epochs})")
        self.save_epoch()
        _log(
            f"[{config.run_id}] epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['images_per_second']:.0f} img/s",
            config.quiet,
        )

    def finish(self) -> None:
        """Training is over: test the last and best models, write the final status."""
        if self.status is None:  # resumed a run whose last epoch was already done
            self.status = RunStatus("complete", f"reached the epoch limit ({self.config.epochs})")
        self.write_test_outputs()
        rundir.write_status(self.run_dir, self.status)
        self.finished = True

    def mark_diverged(self, mean_loss: float, epoch: int, batch: int, num_batches: int) -> None:
        self.status = RunStatus(
            "diverged",
            f"non-finite training loss (mean {mean_loss}) at epoch {epoch}, detected at batch {batch}/{num_batches}",
        )

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled training split; sets a "diverged" status on a non-finite loss."""
        config, split = self.config, self.data.train
        self.model.train()
        order = torch.randperm(len(split), generator=self.shuffle_generator).to(self.device)
        num_batches = math.ceil(len(split) / config.batch_size)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        seen = 0
        steps = self.graphed_batches(split, order) if self.cuda_graphs else self.eager_batches(split, order)
        bar = _progress(steps, config.quiet, desc=f"epoch {epoch}/{config.epochs}", leave=False, total=num_batches)
        for batch, (loss, logits, labels) in enumerate(bar):
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(labels)
            # Reading the loss is a host sync: only every log_every batches and at the end.
            if (batch + 1) % config.log_every == 0 or batch == num_batches - 1:
                total_loss, _, total_seen = self.epoch_totals(loss_sum, correct, seen)
                mean_loss = total_loss / total_seen
                if not math.isfinite(mean_loss):
                    self.mark_diverged(mean_loss, epoch, batch + 1, num_batches)
                    break
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        total_loss, total_correct, total_seen = self.epoch_totals(loss_sum, correct, seen)
        return {
            "train_loss": total_loss / total_seen,
            "train_acc": total_correct / total_seen,
            "lr": lr,
            "epoch_seconds": seconds,
            "images_per_second": total_seen / seconds,
        }

    def eager_batches(self, split: Split, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """Train on each batch of ``order`` in turn, eagerly; yields (loss, logits, labels)."""
        for index in order.split(self.config.batch_size):
            images, labels = self.batch(split, index)
            loss, logits = self.train_step(images, labels)
            yield loss, logits, labels

    def graphed_batches(self, split: Split, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """As eager_batches, through one captured CUDA graph of the whole step (hrsnet.cudagraphs).

        The graph is captured at the first epoch this process trains, after warm-up steps on
        that epoch's first batches (they train as any other). A last batch smaller than the
        others is trained eagerly through the same step body. Augmentation draws on the
        device's default generator (seeded with the run's seed, saved in checkpoints). The
        outputs of one replay are overwritten by the next: the caller accumulates them first.
        """
        config = self.config
        batches = list(order.split(config.batch_size))
        last_partial = batches.pop() if len(batches[-1]) < config.batch_size else None
        done = 0
        if self.graphed_step is None:
            self.graphed_step = GraphedTrainStep(
                self.model,
                self.optimizer,
                split.images,
                split.labels,
                config.batch_size,
                config.image_size,
                self.precision,
                self.memory_format,
                augment=config.augment,
                warmup_indices=batches,
                forward=self.step_model,
                capture=self.device.type == "cuda",
            )
            yield from self.graphed_step.warmup_outputs
            done = len(self.graphed_step.warmup_outputs)
        for index in batches[done:]:
            loss, logits = self.graphed_step.step(index)
            yield loss, logits, self.graphed_step.labels
        if last_partial is not None:
            yield graph_step_body(
                self.step_model,
                self.optimizer,
                split.images,
                split.labels,
                last_partial,
                config.image_size,
                self.precision,
                self.memory_format,
                config.augment,
            )

    def batch(self, split: Split, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels this process trains on for the batch ``index`` of ``split``."""
        return split.images[index], split.labels[index]

    def epoch_totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float, int]:
        """Summed loss, correct predictions and images of the epoch so far (a host sync)."""
        return loss_sum.item(), correct.item(), seen

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a uint8 batch; returns (loss, logits), not synchronised."""
        return training_step(
            self.step_model,
            self.optimizer,
            images,
            labels,
            self.config.image_size,
            self.precision,
            self.memory_format,
            self.config.augment and not self.augments_in_batch,
            self.shuffle_generator,
        )

    def validate(self, epoch: int) -> dict[str, float]:
        """Score the validation split; update early stopping, the best checkpoint and the status."""
        val = self.evaluate(self.data.val)
        stopping = self.early_stopping
        if not math.isfinite(val.loss):
            self.status = RunStatus("diverged", f"non-finite validation loss ({val.loss}) at epoch {epoch}")
        elif stopping.update(epoch, val.loss):
            self.best_checkpoint = f"best_epoch{epoch:03d}.pt"
            _save_checkpoint(
                self.run_dir / self.best_checkpoint,
                {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": self.model.state_dict()},
            )
        elif stopping.should_stop:
            self.status = RunStatus(
                "early-stopped",
                f"validation loss did not improve for {stopping.patience} "
                f"epochs (best {stopping.best_loss:.4f} at epoch {stopping.best_epoch})",
            )
        return {"val_loss": val.loss, "val_acc": val.top1}

    def evaluate(self, split: Split, model: torch.nn.Module | None = None) -> EvalResult:
        return evaluate(
            model or self.model,
            split,
            self.data.num_classes,
            self.config.image_size,
            self.eval_batch_size,
            self.precision,
            self.memory_format,
        )

    # --- the run directory ---------------------------------------------------------------

    def start(self) -> None:
        """Resume from last.pt if there is one, else write the run's config and split."""
        if self.cuda_graphs is None:
            self.resolve_cuda_graphs()
        last_checkpoint = self.run_dir / rundir.LAST_CHECKPOINT
        if last_checkpoint.exists():
            self.load_checkpoint(last_checkpoint)
            _log(f"[{self.config.run_id}] resuming after epoch {self.epoch}", self.config.quiet)
        else:
            self.write_run_files()
        self.remove_stale_best_checkpoints()
        # history.csv is rewritten from the checkpoint: it may hold an epoch the checkpoint lacks.
        rundir.write_csv(self.run_dir / rundir.HISTORY_FILE, self.history, rundir.HISTORY_COLUMNS)
        rundir.write_status(self.run_dir, self.progress_status())

    def resolve_cuda_graphs(self) -> None:
        """Decide on whole-step CUDA graphs (TrainConfig.cuda_graphs; ValueError if "on" cannot
        work here); with them, Adam is rebuilt capturable (before a checkpoint is loaded into it)."""
        config = self.config
        self.cuda_graphs, self.cuda_graphs_reason = resolve_cuda_graphs(
            config.cuda_graphs,
            self.device,
            compile_mode=config.compile,
            batch_size=config.batch_size,
            train_size=len(self.data.train),
            packed_seeds=self.packed_with,
            processes=self.world_size,
        )
        if self.cuda_graphs and config.optimizer != "sgd":
            self.optimizer = config_optimizer(config, self.model.parameters(), self.device, capturable=True)

    def progress_status(self) -> RunStatus:
        return RunStatus("running", f"epoch {self.epoch} of at most {self.config.epochs} done")

    def save_epoch(self) -> None:
        """Best checkpoint (already written), then last (which names it), then history, then status:
        a crash between any two leaves a state that resumes to the same result."""
        started = time.perf_counter()
        _save_checkpoint(self.run_dir / rundir.LAST_CHECKPOINT, self.checkpoint_state(), self.checkpoint_bytes)
        if self.history:  # for history.csv; the checkpoint was written before its time was known
            self.history[-1]["checkpoint_seconds"] = time.perf_counter() - started
        self.saved_epochs = self.epoch
        self.remove_stale_best_checkpoints()
        rundir.write_csv(self.run_dir / rundir.HISTORY_FILE, self.history, rundir.HISTORY_COLUMNS)
        rundir.write_status(self.run_dir, self.progress_status())

    def remove_stale_best_checkpoints(self) -> None:
        for path in self.run_dir.glob("best_epoch*.pt"):
            if path.name != self.best_checkpoint:
                path.unlink(missing_ok=True)

    def write_run_files(self) -> None:
        config, data = self.config, self.data
        rundir.write_json(
            self.run_dir / rundir.CONFIG_FILE,
            {
                "run_id": config.run_id,
                "identity": config.identity(),
                "train": dataclasses.asdict(config),
                "model": self.model.config.to_dict(),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "dataset": {
                    "name": data.name,
                    "label": DATASET_LABELS[data.name],
                    "num_classes": data.num_classes,
                    "train_size": len(data.train),
                    "val_size": len(data.val),
                    "test_size": len(data.test),
                },
                "resolved": {
                    "device": str(self.device),
                    "precision": self.precision,
                    "channels_last": self.memory_format == torch.channels_last,
                    "compile": config.compile,
                    "packed_seeds": self.packed_with,
                    "processes": self.world_size,
                    "cuda_graphs": self.cuda_graphs,
                    "cuda_graphs_reason": self.cuda_graphs_reason,
                    # With graphs, a last batch smaller than the others is trained eagerly.
                    "eager_last_batch": self.cuda_graphs and len(data.train) % config.batch_size != 0,
                    "eval_batch_size": self.eval_batch_size,
                },
                "environment": environment_info(self.device),
            },
        )
        rundir.write_json(
            self.run_dir / rundir.SPLIT_FILE,
            {
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "train_indices": data.train_indices,
                "val_indices": data.val_indices,
            },
        )

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.config.run_id,
            "identity": json.dumps(self.config.identity(), sort_keys=True, default=list),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "history": self.history,
            "best_checkpoint": self.best_checkpoint,
            "stop": [self.status.state, self.status.reason] if self.status else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle_generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
        }

    def load_checkpoint(self, path: Path) -> None:
        self.load_state(load_checkpoint_file(path, self.config), f"checkpoint {path}")

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Take over a ``checkpoint_state()``: model, optimizer, early stopping, history, RNGs."""
        try:
            self.model.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{source} does not fit this run's model or optimizer: "
                f"{str(error).splitlines()[0]}; rerun with --force to start over"
            ) from error
        self.early_stopping = EarlyStopping(**state["early_stopping"])
        self.history = list(state["history"])
        self.saved_epochs = len(self.history)
        self.best_checkpoint = state["best_checkpoint"]
        self.status = RunStatus(*state["stop"]) if state["stop"] else None
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_generator.set_state(state["rng"]["shuffle"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def write_test_outputs(self) -> dict[str, Any]:
        """Score the test set with the last and the best model; write metrics, per-class, examples."""
        test = self.data.test
        metrics: dict[str, Any] = {"last": None, "best": None}
        last = None
        if self.status is None or self.status.state != "diverged":
            last = self.evaluate(test)
            metrics["last"] = _metrics(last, self.epoch)
        if self.best_checkpoint and last is not None and self.early_stopping.best_epoch == self.epoch:
            metrics["best"] = _metrics(last, self.epoch)  # the best checkpoint is the last model
        elif self.best_checkpoint:
            best_model = self.build_model()
            try:
                best_model.load_state_dict(load_checkpoint_file(self.run_dir / self.best_checkpoint)["model"])
            except (CheckpointError, RuntimeError) as error:  # deleted or damaged: the last model still counts
                _log(
                    f"[{self.config.run_id}] the best-validation model is unavailable ({error}); "
                    "its test score is left empty",
                    self.config.quiet,
                )
                self.status = RunStatus(
                    self.status.state,
                    f"{self.status.reason}; best-validation checkpoint {self.best_checkpoint} unavailable",
                )
            else:
                best = self.evaluate(test, best_model)
                metrics["best"] = _metrics(best, self.early_stopping.best_epoch)
                last = last or best  # a diverged run's per-class table comes from its best model
        rundir.write_json(self.run_dir / rundir.TEST_METRICS_FILE, metrics)
        if last is not None:
            rows = [
                {
                    "class_index": index,
                    "class_name": name,
                    "support": int(last.per_class_support[index]),
                    "correct": int(last.per_class_correct[index]),
                    "accuracy": float(last.per_class_correct[index] / max(1, last.per_class_support[index])),
                }
                for index, name in enumerate(self.data.class_names)
            ]
            rundir.write_csv(self.run_dir / rundir.PER_CLASS_FILE, rows, rundir.PER_CLASS_COLUMNS)
            self.write_class_examples(last.predictions)
        return metrics

    def write_class_examples(self, predictions: torch.Tensor) -> None:
        test = self.data.test
        labels = test.labels.cpu()
        chosen = []
        for class_index in labels.unique().tolist():
            chosen.extend((labels == class_index).nonzero().flatten()[:EXAMPLES_PER_CLASS].tolist())
        index = torch.tensor(chosen, dtype=torch.long)
        images = test.images.cpu()[index].permute(0, 2, 3, 1).contiguous().numpy()

        def write(stream):
            np.savez_compressed(
                stream, images=images, labels=labels[index].numpy(), predictions=predictions.cpu()[index].numpy()
            )

        rundir.atomic_write(self.run_dir / rundir.EXAMPLES_FILE, write, binary=True)


def fit(config: TrainConfig, force: bool = False) -> rundir.Run:
    """Train (or resume, or skip) the run ``config`` describes; returns the run directory, read back.

    A finished run (complete, early-stopped, diverged) whose files agree is skipped unless
    ``force``; a run with a checkpoint continues from its last completed epoch (which also
    repairs a finished run's damaged or missing files); ``force`` starts over. Everything that
    can fail (device, results folder, memory, data, model) is checked before ``force`` removes
    the old files, and the whole run holds the run's lock: a second process is refused.
    """
    from .distributed import fit_distributed, launched_by_torchrun

    if launched_by_torchrun():  # torchrun: this process is one of several training the run together
        return fit_distributed(config, force)
    device = resolve_device(config.device)
    preflight.check_writable(config.results_dir)
    with RunLock(config.run_dir()):
        opened = open_run(config, device, force)
        if isinstance(opened, rundir.Run):
            return opened
        train_guarded([opened], opened.run)
        return finish_run(opened)


def fit_seeds(configs: Sequence[TrainConfig], force: bool = False, pack: bool = False) -> list[rundir.Run]:
    """Train the seeds of one network x C in this process: each seed is its own run (``fit``).

    A seed whose run another process holds is skipped with a line saying who holds it; a seed
    that fails does not stop the others, and once they are done the failure is raised (several
    as one error naming each). ``pack`` trains the seeds as one packed network
    (hrsnet.packing): the same result per seed within float rounding, with far fewer kernels.
    """
    configs = list(configs)
    if not configs:
        return []
    shared = {key: value for key, value in configs[0].identity().items() if key != "seed"}
    for config in configs[1:]:
        if {key: value for key, value in config.identity().items() if key != "seed"} != shared:
            raise ValueError(f"fit_seeds trains seeds of one setting; {config.run_id} differs in more than its seed")
    if pack and len(configs) > 1:
        from .packing import fit_packed

        return fit_packed(configs, force)
    results, failures = [], []
    for config in configs:
        try:
            results.append(fit(config, force))
        except RunLockedError as error:
            _log(f"[{config.run_id}] skipped: {error}", False)
        except Exception as error:  # the other seeds still train; raised below
            _log(f"[{config.run_id}] FAILED: {type(error).__name__}: {error}", False)
            failures.append((config, error))
    raise_failures(failures)
    return results


def raise_failures(failures: list[tuple[TrainConfig, BaseException]]) -> None:
    """Re-raise the one failure as it was, or several as one RuntimeError naming each run."""
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        raise RuntimeError(
            f"{len(failures)} runs failed: "
            + "; ".join(f"{config.run_id}: {type(error).__name__}: {error}" for config, error in failures)
        ) from failures[0][1]


def open_run(
    config: TrainConfig,
    device: torch.device,
    force: bool,
    packed_with: int = 1,
    data: DatasetSplits | None = None,
    make_trainer: Callable[..., Trainer] = Trainer,
) -> Trainer | rundir.Run:
    """Under the run's lock (held by the caller): the finished run, read back, if there is
    nothing to train; else a started Trainer (resumed from last.pt, or with fresh run files).
    ``packed_with``: how many runs share the training step (memory is checked for all);
    ``data``: the splits, already on ``device`` (else loaded here); ``make_trainer``: the
    Trainer class, called as ``make_trainer(config, data, device, run_dir)``."""
    run_dir = config.run_dir()
    check = rundir.check_run(run_dir, probe_lock=False)
    if check.action == "skip: finished" and not force:
        _log(f"[{config.run_id}] already {check.state}; skipping (force=True reruns it)", config.quiet)
        return rundir.read_run(run_dir)
    if check.action.startswith("cannot resume") and not force:
        raise CheckpointError(
            f"run {config.run_id} cannot resume ({'; '.join(check.problems) or check.state}); "
            "rerun with --force to start over"
        )
    for problem in check.problems:
        _log(f"[{config.run_id}] {problem}; repairing from the checkpoint", config.quiet)
    estimate = _memory_estimate(config, device)
    preflight.check_memory(preflight.scale_estimate(estimate, packed_with), device)
    configure_determinism(config.deterministic, device)
    if data is None:
        data = load_run_data(config, device)
    trainer = make_trainer(config, data, device, run_dir)
    trainer.checkpoint_bytes = preflight.checkpoint_bytes(estimate)
    trainer.packed_with = packed_with
    trainer.resolve_cuda_graphs()  # "on" where graphs cannot work fails here, before force deletes anything
    if force:  # only now: a bad flag or missing data above has not cost the old files
        for path in run_dir.iterdir():
            if path.is_file() and path.name != LOCK_FILE:
                path.unlink()
    rundir.remove_temporary_files(run_dir)
    preflight.check_disk_space(run_dir, preflight.disk_bytes_needed(estimate, run_dir), estimate)
    train_guarded([trainer], trainer.start)
    return trainer


def load_run_data(config: TrainConfig, device: torch.device) -> DatasetSplits:
    """The run's splits (hrsnet.data), on ``device``."""
    return load_dataset(
        config.dataset,
        config.data_dir,
        config.seed,
        config.val_fraction,
        config.train_subset,
        config.val_subset,
        config.test_subset,
    ).to(device)


def train_guarded(trainers: Sequence[Trainer], train: Callable[[], Any]) -> None:
    """Call ``train``; if it is interrupted or raises, mark each trainer's run as such (with the
    epoch a rerun resumes after) before the exception goes on."""
    try:
        train()
    except KeyboardInterrupt:
        for trainer in (trainer for trainer in trainers if not trainer.finished):
            _record_failure(trainer.run_dir, f"interrupted after epoch {trainer.saved_epochs}; run again to resume")
        raise
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        for trainer in (trainer for trainer in trainers if not trainer.finished):
            _record_failure(
                trainer.run_dir,
                f"{type(error).__name__}: {first_line} (after epoch {trainer.saved_epochs}; run again to resume)",
            )
        raise


def finish_run(trainer: Trainer) -> rundir.Run:
    """A trained run's directory, read back (Trainer.finish has written its final status)."""
    config, status = trainer.config, trainer.status
    result = rundir.read_run(trainer.run_dir)
    last = (result.test_metrics or {}).get("last")
    _log(
        f"[{config.run_id}] {status.state}: {status.reason}; test top-1 (last model) "
        f"{last['top1'] if last else float('nan'):.4f}",
        config.quiet,
    )
    return result


def _record_failure(run_dir: Path, reason: str) -> None:
    """Write a "failed" status if the disk lets us; the error being raised matters more."""
    try:
        rundir.write_status(run_dir, RunStatus("failed", reason))
    except rundir.RunFileError:
        pass


@functools.lru_cache(maxsize=32)
def _cached_estimate(arch, width, num_classes, image_size, batch_size, model_options, optimizer, precision):
    return preflight.estimate_training_memory(
        arch,
        width,
        num_classes,
        image_size,
        batch_size,
        dict(model_options),
        optimizer,
        precision,
        bound_small_steps=True,
    )


def _memory_estimate(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Memory of one training step of ``config`` (hrsnet.preflight), cached: it takes about a second."""
    return _cached_estimate(
        config.arch,
        config.width,
        DATASET_CLASSES[config.dataset],
        config.image_size,
        config.batch_size,
        config.model_options,
        config.optimizer,
        resolve_precision(config.precision, device),
    )
