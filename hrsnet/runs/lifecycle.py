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
from ..data import DatasetSplits, dataset_bytes, dataset_num_classes, load_dataset
from ..engine.checkpoint import RESUME_KEYS, CheckpointError, ForeignCheckpointError, load_checkpoint_file
from ..engine.trainer import Trainer
from ..models import create_model
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
        raise CheckpointError(f"run {config.run_id}: {'; '.join((*check.problems, check.action))}")
    repair = "; training again rewrites it" if check.action.startswith("resume") and not force else ""
    for problem in check.problems:
        log(f"[{config.run_id}] {problem}{repair}", config.quiet)
    estimate = _memory_estimate(config, device)
    # The dataset loaded below goes to the same device: its bytes count too (once: a packed seed
    # loaded before this one already holds its own, and the free memory shows it).
    data_bytes = 0 if data is not None else dataset_bytes(config.dataset, config.data_dir, config.image_size)[0]
    preflight.check_memory(preflight.with_data(preflight.scale_estimate(estimate, packed_with), data_bytes), device)
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
    """The run's splits (hrsnet.data), on ``device``; refused in one line, before anything is read,
    when the dataset cannot fit in the memory available."""
    preflight.check_dataset_memory(*dataset_bytes(config.dataset, config.data_dir, config.image_size), device)
    data = load_dataset(
        config.dataset,
        config.data_dir,
        config.seed,
        config.val_fraction,
        config.train_subset,
        config.val_subset,
        config.test_subset,
        image_size=config.image_size,
    ).to(device)
    check_data_fits(config, data)
    return data


def check_data_fits(config: TrainConfig, data: DatasetSplits) -> None:
    """ValueError (one line, naming the sizes) for splits a run cannot use: an empty training,
    validation or test set (an empty validation set would score 0.0 and pick a "best" model
    from nothing), or a training batch of 1 image where the network normalises a 1x1 map with
    BatchNorm, which needs 2 or more values per channel (torch's "Expected more than 1 value
    per channel when training", mid-epoch)."""
    sizes = {"training": len(data.train), "validation": len(data.val), "test": len(data.test)}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        source = len(data.train_indices) + len(data.val_indices)
        hint = ""
        if "validation" in empty and source and round(source * config.val_fraction) == 0:
            hint = f"; a --val-fraction of at least {1 / source:.2g} holds out 1 of the {source} training images"
        elif "training" in empty and data.val_indices:
            hint = "; use a smaller --val-fraction"
        raise ValueError(
            f"the {config.dataset} splits leave no {' and no '.join(empty)} image "
            f"({', '.join(f'{name} {size}' for name, size in sizes.items())}; val_fraction {config.val_fraction}"
            f"{''.join(f', {key} {value}' for key, value in _subsets(config))}){hint}"
        )
    count, batch = sizes["training"], config.batch_size
    if (batch == 1 or count % batch == 1) and _one_image_fails(
        config.arch, config.width, data.num_classes, config.image_size, config.model_options
    ):
        where = f"{config.arch} at {config.image_size}x{config.image_size} normalises a 1x1 map with BatchNorm"
        if batch == 1 or count == 1:
            option = "--batch-size 1" if batch == 1 else "1 training image"
            fix = "--batch-size 2 or more" if batch == 1 else "--train-subset 2 or more"
            raise ValueError(f"{option} cannot train: {where}, which needs 2 or more images; use {fix}")
        other = min((size for size in range(2, 2 * batch + 2) if count % size != 1), key=lambda size: abs(size - batch))
        raise ValueError(
            f"{count} training images in batches of {batch} leave a last batch of 1 image, and {where}, which "
            f"needs 2 or more; use --train-subset {count - 1} (or {count + 1} if there are as many), "
            f"or --batch-size {other}"
        )


def _subsets(config: TrainConfig) -> list[tuple[str, int]]:
    names = ("train_subset", "val_subset", "test_subset")
    return [(name, getattr(config, name)) for name in names if getattr(config, name) is not None]


@functools.lru_cache(maxsize=16)
def _one_image_fails(arch: str, width: int, num_classes: int, image_size: int, model_options) -> bool:
    """Whether a training step on 1 image fails in BatchNorm, on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = create_model(arch, width=width, num_classes=num_classes, **dict(model_options))
    model.train()
    try:
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    except ValueError as error:
        return "Expected more than 1 value per channel" in str(error)
    return False


def train_guarded(trainers: Sequence[Trainer], train: Callable[[], Any]) -> None:
    """Call ``train``; if it is interrupted (Ctrl-C, SIGTERM) or raises, mark each unfinished
    run as such (with the epoch a rerun resumes after) before the exception goes on.

    The statuses are written with SIGINT and SIGTERM held; a signal that arrived before that,
    while the exception was on its way here, ends the recording early: it is then recorded
    again, as the interruption it is, and raised.
    """
    try:
        train()
    except BaseException as error:
        try:
            _record_ending(trainers, error)
        except KeyboardInterrupt as late:
            _record_ending(trainers, late)
            raise
        raise


def _record_ending(trainers: Sequence[Trainer], error: BaseException) -> None:
    with rundir.interrupts_deferred():
        for trainer in (trainer for trainer in trainers if not trainer.finished):
            _record_failure(trainer.run_dir, ending_reason(error, trainer.saved_epochs))


def ending_reason(error: BaseException, saved_epochs: int) -> str:
    """The status reason of a run that ``error`` ended after ``saved_epochs`` saved epochs."""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted after epoch {saved_epochs}; run again to resume"
    first_line = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, CheckpointError):  # its message says what to do: running again would not help
        return f"{type(error).__name__}: {first_line}"
    return f"{type(error).__name__}: {first_line} (after epoch {saved_epochs}; run again to resume)"


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
    """Write a "failed" status if the disk lets us; the error being raised matters more. A run
    folder that was removed is not created again for it."""
    if not Path(run_dir).is_dir():
        return
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
        dataset_num_classes(config.dataset, config.data_dir),
        config.image_size,
        config.batch_size,
        config.model_options,
        config.optimizer,
        resolve_precision(config.precision, device),
    )


@dataclass(frozen=True)
class RunCheck:
    """What a run directory's files say together: problems found, and what a rerun will do
    ("skip: finished", "skip: being trained by ...", "resume after epoch N", "cannot resume: why;
    what to do", or "start")."""

    state: str
    problems: tuple[str, ...]
    action: str


def check_run(run_dir: Path, probe_lock: bool = True) -> RunCheck:
    """Cross-check a run's files without training: each file read and validated (hrsnet.rundir),
    the checkpoint (whose run, what it holds), the status and the lock. A run is finished only
    when its status says so and every file a finished run has reads and fits. ``probe_lock=False``
    in the process that holds the run's lock (fit())."""
    run_dir = Path(run_dir)
    status = rundir.read_status(run_dir)
    state = status.state if status else "new"
    lock = lock_state(run_dir) if probe_lock and run_dir.exists() else "none"
    if lock == "held":
        return RunCheck("training", (), f"skip: being trained by {describe_holder(lock_holder(run_dir))}")
    problems = [error.cause for error in rundir.run_file_problems(run_dir)]
    checkpoint_epochs, checkpoint_problem, foreign = _checkpoint(run_dir)
    try:
        history_epochs = len(rundir.read_history(run_dir))
    except rundir.RunFileError:
        history_epochs = None  # already among the problems
    if checkpoint_epochs is not None and history_epochs is not None and history_epochs < checkpoint_epochs:
        problems.append(f"history.csv has {history_epochs} epochs, the checkpoint {checkpoint_epochs}")
    if status is not None and status.state == "running" and lock == "stale":
        problems.append("its process died (the lock is stale)")
    finished = status is not None and status.finished
    if finished and not problems:
        # A finished run needs no checkpoint; another run's one is worth a word (it was moved here).
        note = (f"{checkpoint_problem}: not used; move it to its own run's folder or away",) if foreign else ()
        return RunCheck(state, note, "skip: finished")
    if checkpoint_epochs is not None:
        return RunCheck(state, tuple(problems), f"resume after epoch {checkpoint_epochs}")
    if checkpoint_problem is not None:
        advice = "move it away or rerun with --force to start over" if foreign else "rerun with --force to start over"
        return RunCheck(state, tuple(problems), f"cannot resume: {checkpoint_problem}; {advice}")
    if finished:
        return RunCheck(
            state,
            tuple(problems),
            f"cannot resume: no checkpoint ({rundir.LAST_CHECKPOINT}) to rebuild the files from; "
            "rerun with --force to start over",
        )
    return RunCheck(state, tuple(problems), "start")


def _checkpoint(run_dir: Path) -> tuple[int | None, str | None, bool]:
    """(epochs in last.pt if a resume can use it, else None; why it cannot; whether it is another
    run's). The same checks as the resume itself (load_checkpoint_file), the weights mapped, not read."""
    last = run_dir / rundir.LAST_CHECKPOINT
    if not last.exists():
        return None, None, False
    try:
        state = load_checkpoint_file(last, run_dir.name, RESUME_KEYS, mmap=True)
        return len(state["history"]), None, False
    except CheckpointError as error:
        return None, str(error).split("; ")[0], isinstance(error, ForeignCheckpointError)
    except Exception as error:  # a history that is not a list, ...
        return None, f"checkpoint {last} is not usable ({type(error).__name__})", False
