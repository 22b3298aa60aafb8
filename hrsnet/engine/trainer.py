"""The Trainer: one run's model, optimizer, data, history and status, and its epoch loop.

Defaults follow the authors' released notebooks (hrsnet.config.TrainConfig). ``Trainer.run()``
is the loop: the data sits on the device (hrsnet.data), each epoch trains (hrsnet.engine.step),
validates, checkpoints and appends to history.csv; early stopping watches the validation loss;
the test set is scored at the end with both the last-epoch model (what the notebooks reported)
and the best-validation one. Opening, locking and launching runs is hrsnet.runs' job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import rundir
from ..config import TrainConfig
from ..data import DATASET_LABELS, DatasetSplits, Split
from ..models import create_model
from ..models.pretrained import initialise
from ..provenance import environment_info
from ..rundir import RunStatus
from ..runtime import (
    make_optimizer,
    memory_format,
    resolve_channels_last,
    resolve_eval_batch_size,
    resolve_optimizer_kernel,
    resolve_precision,
)
from .checkpoint import (
    CHECKPOINT_FORMAT,
    RESUME_KEYS,
    CheckpointError,
    cuda_rng_state,
    load_checkpoint_file,
    load_optimizer_state,
    restore_cuda_rng_state,
    save_checkpoint,
)
from .cudagraphs import GraphedTrainStep, resolve_cuda_graphs
from .evaluate import EvalResult, evaluate
from .step import BatchShare, EpochMeter, StepSettings, train_step

__all__ = ["EarlyStopping", "Trainer", "config_optimizer", "step_model"]

EXAMPLES_PER_CLASS = 4


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


def _progress(iterable, quiet: bool, **kwargs):
    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        tqdm.write(message)


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


def _metrics(result: EvalResult, epoch: int) -> dict[str, Any]:
    return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "epoch": epoch}


class Trainer:
    """One run: its model, optimizer, data, history and status. ``run()`` is the loop.

    Built with everything that shapes it: ``packed_with`` (seeds trained in one packed network
    with this one, hrsnet.engine.packing), ``world_size`` (processes training this run together,
    hrsnet.engine.distributed) and ``checkpoint_bytes`` (for the message of a failed write).
    Whole-step CUDA graphs are decided here (``TrainConfig.cuda_graphs``): "on" where they cannot
    work raises ValueError before anything is written.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: DatasetSplits,
        device: torch.device,
        run_dir: Path | None = None,
        *,
        packed_with: int = 1,
        world_size: int = 1,
        checkpoint_bytes: int | None = None,
    ):
        self.config = config
        self.device = device
        self.data = data
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
        self.packed_with, self.world_size, self.checkpoint_bytes = packed_with, world_size, checkpoint_bytes
        self.precision = resolve_precision(config.precision, device)
        self.memory_format = memory_format(resolve_channels_last(config.channels_last, device))
        self.step_settings = StepSettings(config.image_size, self.precision, self.memory_format, config.augment)
        self.cuda_graphs, self.cuda_graphs_reason = resolve_cuda_graphs(
            config.cuda_graphs,
            device,
            compile_mode=config.compile,
            batch_size=config.batch_size,
            train_size=len(data.train),
            packed_seeds=packed_with,
            processes=world_size,
            augment=config.augment,
        )
        torch.manual_seed(config.seed)
        self.model = self.build_model()
        # --init timm: ImageNet weights (all but the classifier). Here, at construction, so that
        # a failure (no timm, offline) comes before --force deletes a run's files; a resumed run
        # then takes its checkpoint's weights over them.
        self.init_details = initialise(self.model, config.init, config.arch, config.width)
        self.step_model = step_model(self.model, config)
        # Adam's step goes into a CUDA graph only when capturable (SGD's always can).
        self.optimizer = config_optimizer(config, self.model.parameters(), device, capturable=self.cuda_graphs)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        # Augmentation draws on the training device: a CPU run from the shuffle generator (its
        # state resumes exactly), a GPU run from a generator of its own on the GPU (no host-to-
        # device copy per step, and a CUDA graph can replay it), saved in checkpoints too.
        self.augment_generator = (
            self.shuffle_generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(config.seed)
        )
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        self.history: list[dict[str, Any]] = []
        self.best_checkpoint: str | None = None
        self.status: RunStatus | None = None  # how training ended, once it has
        self.saved_epochs = 0  # epochs in last.pt: what a resume would start from
        self.finished = False  # test outputs and final status written
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
        self.check_run_folder(epoch)
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
        self.check_run_folder()
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
        config = self.config
        self.model.train()
        order = torch.randperm(len(self.data.train), generator=self.shuffle_generator).to(self.device)
        batches = list(order.split(config.batch_size))
        meter = EpochMeter(1, len(batches), self.device, config.log_every, self.reduce)
        meter.start(self.optimizer.param_groups[0]["lr"])
        steps = self.graphed_steps(batches) if self.cuda_graphs else self.eager_steps(batches)
        bar = _progress(steps, config.quiet, desc=f"epoch {epoch}/{config.epochs}", leave=False, total=len(batches))
        for batch, (losses, logits, labels) in enumerate(bar):
            meter.add(batch, losses, logits, labels)
            if meter.due(batch):
                diverged = meter.check()
                if diverged:
                    self.mark_diverged(diverged[0][1], epoch, batch + 1, len(batches))
                    break
                bar.set_postfix(loss=f"{meter.mean_loss():.4f}")
        bar.close()
        meter.stop()
        return meter.rows()[0]

    # Processes training this run together sum their epoch totals with this (a float64 tensor in,
    # the sum over processes out); None: this process alone (hrsnet.engine.distributed sets it).
    reduce = None

    def rows(self, size: int) -> slice | None:
        """This process's rows of a batch of ``size``: all of them (None) when it trains alone."""
        return None

    def batch_share(self, index: torch.Tensor) -> BatchShare:
        """This process's share of the step on the training images at positions ``index``."""
        split = self.data.train
        return BatchShare(split.images, split.labels, index, self.augment_generator, self.rows(len(index)))

    def eager_steps(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        """Train on each batch in turn, eagerly; yields train_step's (losses, logits, labels)."""
        for index in batches:
            yield train_step(self.step_model, self.optimizer, [self.batch_share(index)], self.step_settings)

    def graphed_steps(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        """As eager_steps, through one captured CUDA graph of the whole step (hrsnet.engine.cudagraphs).

        The graph is captured at the first epoch this process trains, after warm-up steps on
        that epoch's first batches (they train as any other). A last batch smaller than the
        others is trained eagerly through the same step. The outputs of one replay are
        overwritten by the next: the caller accumulates them first.
        """
        batches = list(batches)
        last_partial = batches.pop() if len(batches[-1]) < self.config.batch_size else None
        done = 0
        if self.graphed_step is None:
            self.graphed_step = GraphedTrainStep(
                self.step_model,
                self.optimizer,
                self.batch_share(batches[0]),
                self.step_settings,
                warmup_indices=batches,
                capture=self.device.type == "cuda",
            )
            yield from self.graphed_step.warmup_outputs
            done = len(self.graphed_step.warmup_outputs)
        for index in batches[done:]:
            yield self.graphed_step.step(index)
        if last_partial is not None:
            yield train_step(self.step_model, self.optimizer, [self.batch_share(last_partial)], self.step_settings)

    def validate(self, epoch: int) -> dict[str, float]:
        """Score the validation split; update early stopping, the best checkpoint and the status."""
        val = self.evaluate(self.data.val)
        stopping = self.early_stopping
        if not math.isfinite(val.loss):
            self.status = RunStatus("diverged", f"non-finite validation loss ({val.loss}) at epoch {epoch}")
        elif stopping.update(epoch, val.loss):
            self.best_checkpoint = f"best_epoch{epoch:03d}.pt"
            save_checkpoint(
                self.run_dir / self.best_checkpoint,
                {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": self.model.state_dict()},
            )
        elif stopping.should_stop:
            waited = stopping.epochs_without_improvement
            self.status = RunStatus(
                "early-stopped",
                f"validation loss did not improve for {waited} epoch{'' if waited == 1 else 's'} "
                f"(patience {stopping.patience}; best {stopping.best_loss:.4f} at epoch {stopping.best_epoch})",
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
        last_checkpoint = self.run_dir / rundir.LAST_CHECKPOINT
        if last_checkpoint.exists():
            self.load_checkpoint(last_checkpoint)
            _log(f"[{self.config.run_id}] resuming after epoch {self.epoch}", self.config.quiet)
            self.check_run_folder()  # a config.json or split.json lost since is written again
        else:
            self.write_run_files()
        self.remove_stale_best_checkpoints()
        # history.csv is rewritten from the checkpoint: it may hold an epoch the checkpoint lacks.
        rundir.write_csv(self.run_dir / rundir.HISTORY_FILE, self.history, rundir.HISTORY_COLUMNS)
        rundir.write_status(self.run_dir, self.progress_status())

    def check_run_folder(self, epoch: int | None = None) -> None:
        """Before the run's files are written: stop if the run folder was removed (the files
        written next would recreate it, a run without its config that looks finished); write
        config.json and split.json again if they went missing or were damaged since."""
        if not self.run_dir.is_dir():
            lost = f"epoch {epoch} was trained but not saved" if epoch is not None else "nothing was lost"
            raise rundir.RunFileError(
                f"run folder {self.run_dir} was removed while the run trained ({lost}); stopped without "
                "recreating it; run the same command again to start the run over",
                self.run_dir,
            )
        for name, read, write in (
            (rundir.CONFIG_FILE, rundir.read_config, self.write_config_file),
            (rundir.SPLIT_FILE, rundir.read_split, self.write_split_file),
        ):
            try:
                found = read(self.run_dir) is not None
                cause = "is missing"
            except rundir.RunFileError as error:
                found, cause = False, error.cause.removeprefix(str(self.run_dir / name) + " ")
            if not found:
                write()
                _log(f"[{self.config.run_id}] {name} {cause}; written again from the run's settings", self.config.quiet)

    def progress_status(self) -> RunStatus:
        return RunStatus("running", f"epoch {self.epoch} of at most {self.config.epochs} done")

    def save_epoch(self) -> None:
        """Best checkpoint (already written), then last (which names it), then history, then status:
        a crash between any two leaves a state that resumes to the same result. Ctrl-C and SIGTERM
        wait until all are written: the "interrupted after epoch N" they lead to is then exact."""
        with rundir.interrupts_deferred():
            started = time.perf_counter()
            save_checkpoint(self.run_dir / rundir.LAST_CHECKPOINT, self.checkpoint_state(), self.checkpoint_bytes)
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
        self.write_config_file()
        self.write_split_file()

    def write_config_file(self) -> None:
        config, data = self.config, self.data
        rundir.write_json(
            self.run_dir / rundir.CONFIG_FILE,
            {
                "run_id": config.run_id,
                "identity": config.identity(),
                "train": dataclasses.asdict(config),
                "model": self.model.config.to_dict(),
                "init": self.init_details,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "dataset": {
                    "name": data.name,
                    "label": data.label or DATASET_LABELS[data.name],
                    "num_classes": data.num_classes,
                    "train_size": len(data.train),
                    "val_size": len(data.val),
                    "test_size": len(data.test),
                    **data.details,  # how it was split and read (hrsnet.data), e.g. images converted to RGB
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

    def write_split_file(self) -> None:
        config, data = self.config, self.data
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
                "cuda": cuda_rng_state(self.device),
                # a GPU run's augmentation generator (a CPU run's is the shuffle generator)
                "augment": None
                if self.augment_generator is self.shuffle_generator
                else self.augment_generator.get_state(),
            },
        }

    def load_checkpoint(self, path: Path) -> None:
        self.load_state(load_checkpoint_file(path, self.config.run_id, RESUME_KEYS), f"checkpoint {path}")

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
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        restore_cuda_rng_state(rng.get("cuda") or [], self.device)
        if rng.get("augment") is not None and self.augment_generator is not self.shuffle_generator:
            self.augment_generator.set_state(rng["augment"])

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
