"""fit(): the training loop of the report's protocol, resumable, logged to the run directory.

Defaults follow the authors' released notebooks (see TrainConfig). One readable loop: the
data sits on the device (hrsnet.data), each epoch trains, validates, checkpoints and appends
to history.csv; early stopping watches the validation loss; the test set is scored at the
end with both the last-epoch model (what the notebooks reported) and the best-validation one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import rundir
from .data import DATASETS, DatasetSplits, load_dataset, preprocess
from .evaluate import EvalResult, evaluate
from .models import create_model, list_models, model_config

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
SWITCHES = ("auto", "on", "off")
EXAMPLES_PER_CLASS = 4
CHECKPOINT_FORMAT = 1

# Settings that only say where or how fast a run executes. They are left out of the run id,
# so a run can be resumed on another machine, from another data copy, with other switches.
OPERATIONAL_FIELDS = ("data_dir", "results_dir", "device", "deterministic", "channels_last",
                      "compile", "fused_optimizer", "eval_batch_size", "log_every", "quiet")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, validated at construction (before any data is loaded).

    Defaults are the released notebooks' protocol: CIFAR-100 at 224x224, SGD lr 0.005
    momentum 0.9 without weight decay, batch 16, at most 25 epochs, early stopping on the
    validation loss with patience 2 and min delta 0, cross-entropy. ``optimizer="adam"``
    gives the report's text (Adam, lr 0.005, beta1 0.9).
    """

    arch: str = "hrnet"
    width: int = 2
    model_options: tuple[tuple[str, Any], ...] = ()  # HRNetConfig field overrides, for ablations
    dataset: str = "cifar100"
    data_dir: str | None = None  # default: $HRSNET_DATA, else data/ in the repository
    image_size: int = 224
    epochs: int = 25
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9  # SGD momentum, or Adam's beta1
    weight_decay: float = 0.0
    patience: int = 2
    min_delta: float = 0.0
    val_fraction: float = 0.2
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip; off in the paper
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    # --- operational: where and how fast, not what (not part of the run id) ---
    deterministic: bool = False
    device: str = "auto"
    channels_last: str = "auto"  # auto: on for CUDA and CPU (CPU: +16% per step at 64px, measured)
    compile: str = "none"  # torch.compile mode; "reduce-overhead" adds CUDA graphs
    fused_optimizer: str = "auto"  # auto: fused kernels on CUDA, foreach elsewhere
    eval_batch_size: int | None = None  # default: max(batch_size, 64); does not change results
    log_every: int = 50  # batches between progress updates (each one is a host sync)
    results_dir: str = "results"
    quiet: bool = False

    def __post_init__(self) -> None:
        _check(self.arch in list_models(), f"arch must be one of {', '.join(list_models())}; got {self.arch!r}")
        _check(self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        _check(self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        for name in ("channels_last", "fused_optimizer"):
            _check(getattr(self, name) in SWITCHES,
                   f"{name} must be one of {', '.join(SWITCHES)}; got {getattr(self, name)!r}")
        for name, minimum in (("width", 1), ("epochs", 1), ("batch_size", 1), ("patience", 0),
                              ("image_size", 32), ("log_every", 1), ("seed", 0)):
            value = getattr(self, name)
            _check(_is_int(value) and value >= minimum, f"{name} must be an integer >= {minimum}; got {value!r}")
        for name in ("train_subset", "val_subset", "test_subset", "eval_batch_size"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 1),
                   f"{name} must be an integer >= 1 or None; got {value!r}")
        _check(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a number > 0; got {self.lr!r}")
        _check(isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1,
               f"momentum must be a number in [0, 1); got {self.momentum!r}")
        _check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
               f"weight_decay must be a number >= 0; got {self.weight_decay!r}")
        _check(isinstance(self.min_delta, (int, float)) and self.min_delta >= 0,
               f"min_delta must be a number >= 0; got {self.min_delta!r}")
        _check(isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1,
               f"val_fraction must be a number strictly between 0 and 1; got {self.val_fraction!r}")
        try:
            torch.device(self.device) if self.device != "auto" else None
        except RuntimeError:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}") from None
        if isinstance(self.model_options, dict):
            object.__setattr__(self, "model_options", tuple(sorted(self.model_options.items())))
        try:
            self.model_config(num_classes=1)  # the model's own validation, before any data
        except ValueError as error:
            raise ValueError(f"model_options: {error}") from None

    def model_config(self, num_classes: int):
        return model_config(self.arch, self.width, num_classes, **dict(self.model_options))

    def identity(self) -> dict[str, Any]:
        """The settings that define what the run computes (hashed into its run id)."""
        values = dataclasses.asdict(self)
        return {key: value for key, value in values.items() if key not in OPERATIONAL_FIELDS}

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=list).encode()).hexdigest()
        return f"{self.arch}_c{self.width}_{self.dataset}{self.image_size}_{digest[:8]}"

    def run_dir(self) -> Path:
        return Path(self.results_dir) / "runs" / self.run_id


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


@dataclass
class RunResult:
    run_dir: Path
    status: rundir.RunStatus
    test_metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or from a different run."""


# --- devices and switches ---------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def _switch(value: str, device: torch.device, auto_devices: tuple[str, ...] = ("cuda",)) -> bool:
    return device.type in auto_devices if value == "auto" else value == "on"


def resolve_precision(precision: str, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


def autocast_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def training_step(forward: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  labels: torch.Tensor, image_size: int, precision: str = "fp32",
                  memory_format: torch.memory_format = torch.contiguous_format, augment: bool = False,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a uint8 batch on its device, forward (autocast if bf16), cross-entropy in
    float32, backward, optimizer step. Shared by fit() and the benchmark."""
    inputs = preprocess(images, image_size, augment, generator, memory_format)
    with autocast_context(precision, images.device):
        logits = forward(inputs)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


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


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def make_optimizer(config: TrainConfig, parameters, device: torch.device) -> torch.optim.Optimizer:
    fused = _switch(config.fused_optimizer, device)
    kernel = {"fused": True} if fused else {"foreach": device.type == "cuda" or None}
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, **kernel)
    return torch.optim.Adam(parameters, lr=config.lr, betas=(config.momentum, 0.999),
                            weight_decay=config.weight_decay, **kernel)


# --- the run ------------------------------------------------------------------------------

def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    from . import __version__
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__, "hrsnet": __version__,
        "git_commit": _git_commit(), "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }


def _progress(iterable, quiet: bool, **kwargs):
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        from tqdm.auto import tqdm
        tqdm.write(message)


class Trainer:
    """Holds one run's model, optimizer, data and state; fit() drives it."""

    def __init__(self, config: TrainConfig, data: DatasetSplits, device: torch.device):
        self.config = config
        self.device = device
        self.data = data
        self.precision = resolve_precision(config.precision, device)
        channels_last = _switch(config.channels_last, device, auto_devices=("cuda", "cpu"))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)
        self.model = create_model(config.arch, config.width, data.num_classes, **dict(config.model_options))
        self.model.to(device=device, memory_format=self.memory_format)
        self.step_model = self.model if config.compile == "none" else torch.compile(self.model, mode=config.compile)
        self.optimizer = make_optimizer(config, self.model.parameters(), device)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        self.history: list[dict[str, Any]] = []
        self.best_checkpoint: str | None = None
        self.stop: tuple[str, str] | None = None  # (state, reason) once training has ended

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or max(self.config.batch_size, 64)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
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
        bar = _progress(range(num_batches), config.quiet, desc=f"epoch {epoch}/{config.epochs}", leave=False)
        for batch in bar:
            index = order[batch * config.batch_size:(batch + 1) * config.batch_size]
            labels = split.labels[index]
            loss, logits = self.train_step(split.images[index], labels)
            loss_sum += loss.detach() * len(index)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            # Reading the loss is a host sync: only every log_every batches and at the end.
            if (batch + 1) % config.log_every == 0 or batch == num_batches - 1:
                seen = min((batch + 1) * config.batch_size, len(split))
                mean_loss = loss_sum.item() / seen
                if not math.isfinite(mean_loss):
                    bar.close()
                    self.stop = ("diverged", f"non-finite training loss (mean {mean_loss}) at epoch {epoch}, "
                                             f"detected at batch {batch + 1}/{num_batches}")
                    seconds = time.perf_counter() - start
                    return {"train_loss": mean_loss, "train_acc": correct.item() / seen, "lr": lr,
                            "epoch_seconds": seconds, "images_per_second": seen / seconds}
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum.item() / len(split), "train_acc": correct.item() / len(split), "lr": lr,
                "epoch_seconds": seconds, "images_per_second": len(split) / seconds}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a uint8 batch; returns (loss, logits), not synchronised."""
        return training_step(self.step_model, self.optimizer, images, labels, self.config.image_size,
                             self.precision, self.memory_format, self.config.augment, self.shuffle_generator)

    def evaluate(self, split, model: torch.nn.Module | None = None) -> EvalResult:
        return evaluate(model or self.model, split, self.data.num_classes, self.config.image_size,
                        self.eval_batch_size, self.precision, self.memory_format)

    # --- checkpoints ------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "run_id": self.config.run_id,
            "identity": json.dumps(self.config.identity(), sort_keys=True, default=list),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "early_stopping": self.early_stopping.state_dict(), "history": self.history,
            "best_checkpoint": self.best_checkpoint, "stop": list(self.stop) if self.stop else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint_file(path, self.config)
        try:
            self.model.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint {path} does not fit this run's model or optimizer: "
                                  f"{str(error).splitlines()[0]}; rerun with --force to start over") from None
        self.early_stopping = EarlyStopping(**state["early_stopping"])
        self.history = list(state["history"])
        self.best_checkpoint = state["best_checkpoint"]
        self.stop = tuple(state["stop"]) if state["stop"] else None
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_generator.set_state(state["rng"]["shuffle"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def load_checkpoint_file(path: Path, config: TrainConfig | None = None) -> dict[str, Any]:
    """torch.load with weights_only=True; a clear CheckpointError when corrupt or from another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}); "
                              "delete it or rerun with --force to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an hrsnet checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it or rerun with --force")
    if config is not None and state.get("run_id") != config.run_id:
        raise CheckpointError(f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {config.run_id!r}; "
                              "move it away or rerun with --force")
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    rundir.atomic_write(path, lambda stream: torch.save(state, stream), binary=True)


def _remove_stale_best_checkpoints(run_dir: Path, keep: str | None) -> None:
    for path in run_dir.glob("best_epoch*.pt"):
        if path.name != keep:
            path.unlink(missing_ok=True)


def _metrics(result: EvalResult, epoch: int) -> dict[str, Any]:
    return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "epoch": epoch}


def _write_test_outputs(trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    """Score the test set with the last and the best model; write metrics, per-class, examples."""
    test = trainer.data.test
    metrics: dict[str, Any] = {"last": None, "best": None}
    last = None
    if trainer.stop is None or trainer.stop[0] != "diverged":
        last = trainer.evaluate(test)
        metrics["last"] = _metrics(last, trainer.epoch)
    if trainer.best_checkpoint and last is not None and trainer.early_stopping.best_epoch == trainer.epoch:
        metrics["best"] = _metrics(last, trainer.epoch)  # the best checkpoint is the last model
    elif trainer.best_checkpoint:
        best_model = create_model(trainer.config.arch, trainer.config.width, trainer.data.num_classes,
                                  **dict(trainer.config.model_options))
        best_state = torch.load(run_dir / trainer.best_checkpoint, map_location="cpu", weights_only=True)
        best_model.load_state_dict(best_state["model"])
        best_model.to(device=trainer.device, memory_format=trainer.memory_format)
        best = trainer.evaluate(test, best_model)
        metrics["best"] = _metrics(best, trainer.early_stopping.best_epoch)
        last = last or best  # a diverged run's per-class table comes from its best model
    rundir.write_json(run_dir / rundir.TEST_METRICS_FILE, metrics)
    if last is not None:
        rows = [{"class_index": index, "class_name": name, "support": int(last.per_class_support[index]),
                 "correct": int(last.per_class_correct[index]),
                 "accuracy": float(last.per_class_correct[index] / max(1, last.per_class_support[index]))}
                for index, name in enumerate(trainer.data.class_names)]
        rundir.write_csv(run_dir / rundir.PER_CLASS_FILE, rows, rundir.PER_CLASS_COLUMNS)
        _write_class_examples(run_dir, test, last.predictions)
    return metrics


def _write_class_examples(run_dir: Path, test, predictions: torch.Tensor) -> None:
    labels = test.labels.cpu()
    chosen = []
    for class_index in labels.unique().tolist():
        chosen.extend((labels == class_index).nonzero().flatten()[:EXAMPLES_PER_CLASS].tolist())
    index = torch.tensor(chosen, dtype=torch.long)
    images = test.images.cpu()[index].permute(0, 2, 3, 1).contiguous().numpy()

    def write(stream):
        np.savez_compressed(stream, images=images, labels=labels[index].numpy(),
                            predictions=predictions.cpu()[index].numpy())
    rundir.atomic_write(run_dir / rundir.EXAMPLES_FILE, write, binary=True)


def fit(config: TrainConfig, force: bool = False) -> RunResult:
    """Train (or resume, or skip) the run ``config`` describes; returns its final status and metrics.

    A finished run (complete, early-stopped, diverged) is skipped unless ``force``; a run with
    a checkpoint continues from its last completed epoch; ``force`` starts over.
    """
    run_dir = config.run_dir()
    status = rundir.read_status(run_dir)
    if status is not None and status.finished and not force:
        _log(f"[{config.run_id}] already {status.state} ({status.reason}); skipping (force=True reruns it)", config.quiet)
        return load_result(run_dir)
    if force and run_dir.exists():
        for path in run_dir.iterdir():
            if path.is_file():
                path.unlink()

    device = resolve_device(config.device)
    configure_determinism(config.deterministic, device)
    data = load_dataset(config.dataset, config.data_dir, config.seed, config.val_fraction,
                        config.train_subset, config.val_subset, config.test_subset).to(device)
    trainer = Trainer(config, data, device)
    last_checkpoint = run_dir / rundir.LAST_CHECKPOINT
    if last_checkpoint.exists():
        trainer.load_checkpoint(last_checkpoint)
        _log(f"[{config.run_id}] resuming after epoch {trainer.epoch}", config.quiet)
    else:
        _write_run_files(config, trainer, run_dir)
    _remove_stale_best_checkpoints(run_dir, trainer.best_checkpoint)
    # history.csv is rewritten from the checkpoint: it may hold an epoch the checkpoint lacks.
    rundir.write_csv(run_dir / rundir.HISTORY_FILE, trainer.history, rundir.HISTORY_COLUMNS)
    rundir.write_status(run_dir, "running", f"epoch {trainer.epoch} of at most {config.epochs} done")

    try:
        _train_epochs(trainer, run_dir)
        metrics = _write_test_outputs(trainer, run_dir)
    except KeyboardInterrupt:
        rundir.write_status(run_dir, "failed", f"interrupted after epoch {trainer.epoch}; run again to resume")
        raise
    except Exception as error:
        rundir.write_status(run_dir, "failed", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                                                f" (after epoch {trainer.epoch}; run again to resume)")
        raise
    state, reason = trainer.stop
    rundir.write_status(run_dir, state, reason)
    _log(f"[{config.run_id}] {state}: {reason}; test top-1 (last model) "
         f"{metrics['last']['top1'] if metrics['last'] else float('nan'):.4f}", config.quiet)
    return RunResult(run_dir, rundir.RunStatus(state, reason), metrics, trainer.history)


def _write_run_files(config: TrainConfig, trainer: Trainer, run_dir: Path) -> None:
    data = trainer.data
    rundir.write_json(run_dir / rundir.CONFIG_FILE, {
        "run_id": config.run_id,
        "train": dataclasses.asdict(config),
        "model": trainer.model.config.to_dict(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "dataset": {"name": data.name, "num_classes": data.num_classes, "train_size": len(data.train),
                    "val_size": len(data.val), "test_size": len(data.test)},
        "resolved": {"device": str(trainer.device), "precision": trainer.precision,
                     "channels_last": trainer.memory_format == torch.channels_last,
                     "compile": config.compile},
        "environment": environment_info(trainer.device),
    })
    rundir.write_json(run_dir / rundir.SPLIT_FILE, {
        "seed": config.seed, "val_fraction": config.val_fraction,
        "train_indices": data.train_indices, "val_indices": data.val_indices})


def _train_epochs(trainer: Trainer, run_dir: Path) -> None:
    config = trainer.config
    epochs = _progress(range(trainer.epoch + 1, config.epochs + 1), config.quiet,
                       desc=config.run_id, initial=trainer.epoch, total=config.epochs)
    for epoch in epochs:
        if trainer.stop is not None:
            break
        row = {"epoch": epoch, **trainer.train_one_epoch(epoch)}
        if trainer.stop is None:
            val = trainer.evaluate(trainer.data.val)
            row.update(val_loss=val.loss, val_acc=val.top1)
            if not math.isfinite(val.loss):
                trainer.stop = ("diverged", f"non-finite validation loss ({val.loss}) at epoch {epoch}")
            elif trainer.early_stopping.update(epoch, val.loss):
                trainer.best_checkpoint = f"best_epoch{epoch:03d}.pt"
                _save_checkpoint(run_dir / trainer.best_checkpoint, {"format": CHECKPOINT_FORMAT, "epoch": epoch,
                                                                     "model": trainer.model.state_dict()})
            elif trainer.early_stopping.should_stop:
                stopping = trainer.early_stopping
                trainer.stop = ("early-stopped", f"validation loss did not improve for {stopping.patience} epochs "
                                                 f"(best {stopping.best_loss:.4f} at epoch {stopping.best_epoch})")
        else:
            row.update(val_loss=math.nan, val_acc=math.nan)
        trainer.history.append(row)
        if trainer.stop is None and epoch == config.epochs:
            trainer.stop = ("complete", f"reached the epoch limit ({config.epochs})")
        # Best checkpoint, then last (which names it), then history: a crash between any two
        # leaves a state that resumes to the same result.
        _save_checkpoint(run_dir / rundir.LAST_CHECKPOINT, trainer.checkpoint_state())
        _remove_stale_best_checkpoints(run_dir, trainer.best_checkpoint)
        rundir.write_csv(run_dir / rundir.HISTORY_FILE, trainer.history, rundir.HISTORY_COLUMNS)
        rundir.write_status(run_dir, "running", f"epoch {epoch} of at most {config.epochs} done")
        _log(f"[{config.run_id}] epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
             f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['images_per_second']:.0f} img/s",
             config.quiet)
    if trainer.stop is None:  # resumed a run whose last epoch was already done
        trainer.stop = ("complete", f"reached the epoch limit ({config.epochs})")


def load_result(run_dir: Path) -> RunResult:
    """Read a run directory back (status, test metrics, history) without training."""
    import csv

    run_dir = Path(run_dir)
    metrics_path = run_dir / rundir.TEST_METRICS_FILE
    history_path = run_dir / rundir.HISTORY_FILE
    history = []
    if history_path.exists():
        with open(history_path) as stream:
            history = [{key: float(value) if key != "epoch" else int(value) for key, value in row.items()}
                       for row in csv.DictReader(stream)]
    return RunResult(run_dir, rundir.read_status(run_dir) or rundir.RunStatus("failed", "no status file"),
                     rundir.read_json(metrics_path) if metrics_path.exists() else None, history)
