"""A run's lifecycle under its lock: open (check its files, resume or start), train with failures
recorded in its status, finish; and ``check_run``, what a run directory's files say together.

The caller (hrsnet.runs.launch) holds the run's lock (hrsnet.runs.lock) around all of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import rundir
from ..config import TrainConfig
from ..data import DATASET_CLASSES, DatasetSplits, load_dataset
from ..engine.checkpoint import CheckpointError
from ..engine.trainer import Trainer
from ..rundir import RunStatus
from ..runtime import configure_determinism, resolve_precision
from . import preflight
from .lock import LOCK_FILE, describe_holder, lock_holder, lock_state


def log(message: str, quiet: bool = False) -> None:
    """One line above any progress bar (tqdm.write), unless ``quiet``."""
    if not quiet:
        tqdm.write(message)


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
    Trainer class, called as ``make_trainer(config, data, device, run_dir, packed_with=...,
    checkpoint_bytes=...)``."""
    run_dir = config.run_dir()
    check = check_run(run_dir, probe_lock=False)
    if check.action == "skip: finished" and not force:
        log(f"[{config.run_id}] already {check.state}; skipping (force=True reruns it)", config.quiet)
        return rundir.read_run(run_dir)
    if check.action.startswith("cannot resume") and not force:
        raise CheckpointError(
            f"run {config.run_id} cannot resume ({'; '.join(check.problems) or check.state}); "
            "rerun with --force to start over"
        )
    for problem in check.problems:
        log(f"[{config.run_id}] {problem}; repairing from the checkpoint", config.quiet)
    estimate = _memory_estimate(config, device)
    preflight.check_memory(preflight.scale_estimate(estimate, packed_with), device)
    configure_determinism(config.deterministic, device)
    if data is None:
        data = load_run_data(config, device)
    # "cuda_graphs on" where graphs cannot work fails here, before force deletes anything.
    trainer = make_trainer(
        config, data, device, run_dir, packed_with=packed_with, checkpoint_bytes=preflight.checkpoint_bytes(estimate)
    )
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
    log(
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


@dataclass(frozen=True)
class RunCheck:
    """What a run directory's files say together: problems found, and what a rerun will do."""

    state: str
    problems: tuple[str, ...]
    action: str


def check_run(run_dir: Path, probe_lock: bool = True) -> RunCheck:
    """Cross-check a run's files without training: status, metrics, history, checkpoint, lock.
    ``probe_lock=False`` in the process that holds the run's lock (fit())."""
    run_dir = Path(run_dir)
    status = rundir.read_status(run_dir)
    state = status.state if status else "new"
    problems: list[str] = []
    if status is not None and status.state == rundir.UNREADABLE:
        problems.append(status.reason)
    lock = lock_state(run_dir) if probe_lock and run_dir.exists() else "none"
    if lock == "held":
        return RunCheck("training", (), f"skip: being trained by {describe_holder(lock_holder(run_dir))}")
    checkpoint_epochs = None
    last = run_dir / rundir.LAST_CHECKPOINT
    if last.exists():
        try:
            # mmap: the history without reading the weights
            checkpoint_epochs = len(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["history"])
        except Exception as error:
            problems.append(f"checkpoint {last} is corrupt or unreadable ({type(error).__name__})")
    for name in (rundir.CONFIG_FILE, rundir.TEST_METRICS_FILE):
        if (run_dir / name).exists():
            try:
                rundir.read_json(run_dir / name)
            except rundir.RunFileError as error:
                problems.append(str(error).split(";")[0])
    try:
        history_epochs = len(rundir.read_history(run_dir))
    except rundir.RunFileError as error:
        history_epochs = None
        problems.append(str(error).split(";")[0])
    if checkpoint_epochs is not None and history_epochs is not None and history_epochs < checkpoint_epochs:
        problems.append(f"history.csv has {history_epochs} epochs, the checkpoint {checkpoint_epochs}")
    if status is not None and status.finished and not (run_dir / rundir.TEST_METRICS_FILE).exists():
        problems.append(f"{status.state} but {rundir.TEST_METRICS_FILE} is missing")
    if status is not None and status.state == "running" and lock == "stale":
        problems.append("its process died (the lock is stale)")
    if status is not None and status.finished and not problems:
        return RunCheck(state, (), "skip: finished")
    if checkpoint_epochs is not None:
        return RunCheck(state, tuple(problems), f"resume after epoch {checkpoint_epochs}")
    if last.exists() or (status is not None and status.finished):
        return RunCheck(state, tuple(problems), "cannot resume: rerun with --force to start over")
    return RunCheck(state, tuple(problems), "start")
