"""The run directory: its files, written whole or not at all, and read back.

``results/runs/<run_id>/`` holds:

- ``config.json``: every setting of the run, the model config, dataset sizes, package
  versions, git commit, device name.
- ``split.json``: the seeded train / validation split (positions in the source training set).
- ``history.csv``: one row per completed epoch: epoch, train_loss (the epoch mean), train_acc,
  val_loss, val_acc, lr, epoch_seconds, images_per_second, val_seconds, checkpoint_seconds,
  train_loss_tail (the released notebooks' training loss); accuracies as fractions.
- ``per_class.csv``: test accuracy of the last-epoch model per class: class_index,
  class_name, support, correct, accuracy.
- ``test_metrics.json``: ``{"last": {"top1", "top5", "loss", "epoch"}, "best": {...}}``,
  accuracies as fractions; "best" is the checkpoint with the lowest validation loss.
- ``class_examples.npz``: a few test images per class (uint8 NHWC, native resolution),
  their labels and the last model's predictions, for the best/worst-class figures.
- ``status``: first line the state (running, complete, early-stopped, diverged, failed),
  second line the reason.
- ``last.pt`` and ``best_epochNNN.pt``: checkpoints (git-ignored).
- ``.lock``: the lock of the process training the run, with its pid, host and start time
  (hrsnet.runs.lock; never deleted, held only while a process trains).
- ``.<name>.<random>.tmp``: a file being written; one left by a killed process is removed
  when the run is next trained.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# epoch_seconds is the training pass; the epoch's validation (with the best checkpoint's
# write) and last.pt's write are timed apart. train_loss_tail is the released notebooks'
# training loss (the mean over the batches after the last multiple of 1,000; hrsnet.engine.step).
# Histories written before a column existed still read (it comes back empty), as do rows
# restored from a checkpoint, which is saved before its own write can be timed.
HISTORY_COLUMNS_BEFORE_TIMING = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
]
HISTORY_COLUMNS_BEFORE_TAIL = [*HISTORY_COLUMNS_BEFORE_TIMING, "val_seconds", "checkpoint_seconds"]
HISTORY_COLUMNS = [*HISTORY_COLUMNS_BEFORE_TAIL, "train_loss_tail"]
PER_CLASS_COLUMNS = ["class_index", "class_name", "support", "correct", "accuracy"]
STATES = ("running", "complete", "early-stopped", "diverged", "failed")
FINISHED_STATES = ("complete", "early-stopped", "diverged")

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
HISTORY_FILE = "history.csv"
PER_CLASS_FILE = "per_class.csv"
TEST_METRICS_FILE = "test_metrics.json"
EXAMPLES_FILE = "class_examples.npz"
STATUS_FILE = "status"
LAST_CHECKPOINT = "last.pt"
TEMP_SUFFIX = ".tmp"
UNREADABLE = "unreadable"  # what read_status reports for a status file it cannot parse


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunFileError(RuntimeError):
    """A file of a run that cannot be read or written; the message names the file and the cause."""


def atomic_write(
    path: Path, write: Callable[[Any], None], binary: bool = False, needed_bytes: int | None = None
) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place,
    so a reader (or a crash) only ever sees the old file or the complete new one.

    A failed write (a full disk, a read-only folder; torch.save's own stream errors) raises
    RunFileError naming the file, the cause and, with ``needed_bytes``, the space it needs.
    Ctrl-C during the write is held until the file is in place, then raised.
    """
    path = Path(path)
    temp_name = None
    try:
        with interrupts_deferred():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
            with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            os.replace(temp_name, path)
    except (OSError, RuntimeError) as error:
        _remove(temp_name)
        raise RunFileError(describe_write_error(path, error, needed_bytes)) from error
    except BaseException:
        _remove(temp_name)
        raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until the block has ended, then act
    on it as the previous handler would (KeyboardInterrupt, by default).

    Why: a KeyboardInterrupt raised inside torch.save's stream callback is turned by its C++
    writer into a RuntimeError ("unexpected pos ..."), so an interrupted checkpoint write
    used to end the run as "failed" with a disk-space message instead of "interrupted".
    Only the main thread can set signal handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _remove(temp_name: str | None) -> None:
    if temp_name is not None:
        Path(temp_name).unlink(missing_ok=True)


def remove_temporary_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files that killed writers left behind (call only while holding the run's lock)."""
    leftovers = [path for path in Path(run_dir).glob(f".*{TEMP_SUFFIX}") if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _json_safe(value: Any) -> Any:
    """NaN and infinities become strings: strict JSON readers reject the bare tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda stream: json.dump(_json_safe(data), stream, indent=2, sort_keys=False))


def read_json(path: Path) -> Any:
    """A JSON file of a run; RunFileError naming the file when it is truncated or not JSON."""
    try:
        with open(path) as stream:
            return json.load(stream)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(
            f"{path} is not readable JSON ({type(error).__name__}: {error}); "
            "delete the run folder or rerun it with --force"
        ) from error


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    def write(stream):
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


@dataclass(frozen=True)
class RunStatus:
    state: str
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


def write_status(run_dir: Path, status: RunStatus) -> None:
    if status.state not in STATES:
        raise ValueError(f"status must be one of {', '.join(STATES)}; got {status.state!r}")
    atomic_write(Path(run_dir) / STATUS_FILE, lambda stream: stream.write(f"{status.state}\n{status.reason}\n"))


def read_status(run_dir: Path) -> RunStatus | None:
    """The run's status, or None when the run has not started."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    try:
        lines = path.read_text().splitlines() + ["", ""]
    except UnicodeDecodeError as error:
        return RunStatus(UNREADABLE, f"{path} is not a status file ({error}); the next run rewrites it")
    if lines[0].strip() not in STATES:
        return RunStatus(
            UNREADABLE, f"{path} names no known state ({lines[0].strip()[:40]!r}); the next run rewrites it"
        )
    return RunStatus(lines[0].strip(), lines[1].strip())


def read_history(run_dir: Path) -> pd.DataFrame:
    """history.csv as a DataFrame (empty, with the schema's columns, before the first epoch)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    try:
        history = pd.read_csv(path)
    except (UnicodeDecodeError, ValueError) as error:  # pandas' ParserError is a ValueError
        raise RunFileError(
            f"{path} is not a readable history ({type(error).__name__}); "
            "training the run again rewrites it from the checkpoint"
        ) from error
    if list(history.columns) in (HISTORY_COLUMNS_BEFORE_TIMING, HISTORY_COLUMNS_BEFORE_TAIL):
        history = history.reindex(columns=HISTORY_COLUMNS)
    if list(history.columns) != HISTORY_COLUMNS:
        raise RunFileError(
            f"{path} has columns {list(history.columns)}, not {HISTORY_COLUMNS}; "
            "training the run again rewrites it from the checkpoint"
        )
    return history


@dataclass
class Run:
    """One run directory, read back: the only reader of its files (fit(), the figures, the statistics)."""

    run_dir: Path
    config: dict[str, Any] | None  # None until the run has written config.json
    status: RunStatus
    history: pd.DataFrame
    test_metrics: dict[str, Any] | None
    per_class: pd.DataFrame | None

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def _train(self, key: str) -> Any:
        return (self.config or {}).get("train", {}).get(key)

    @property
    def arch(self) -> str:
        return self._train("arch")

    @property
    def width(self) -> int:
        return self._train("width")

    @property
    def seed(self) -> int:
        return self._train("seed") or 0

    @property
    def image_size(self) -> int:
        return self._train("image_size")

    @property
    def dataset(self) -> str:
        return (self.config or {}).get("dataset", {}).get("name") or self._train("dataset")

    @property
    def parameters(self) -> int | None:
        return (self.config or {}).get("parameters")

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def examples(self) -> dict[str, Any] | None:
        """class_examples.npz: a few test images per class, their labels and the last model's predictions."""
        path = self.run_dir / EXAMPLES_FILE
        if not path.exists():
            return None
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}


def read_run(run_dir: Path) -> Run:
    """Every file of a run directory that exists; a run without a status file counts as failed."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / CONFIG_FILE, run_dir / TEST_METRICS_FILE
    per_class_path = run_dir / PER_CLASS_FILE
    return Run(
        run_dir=run_dir,
        config=read_json(config_path) if config_path.exists() else None,
        status=read_status(run_dir) or RunStatus("failed", "no status file"),
        history=read_history(run_dir),
        test_metrics=read_json(metrics_path) if metrics_path.exists() else None,
        per_class=pd.read_csv(per_class_path, dtype={"class_name": str}) if per_class_path.exists() else None,
    )


# --- write errors in one line -----------------------------------------------------------------


def format_bytes(count: int | float) -> str:
    """1234567 -> '1.2 MB', 40_000_000 -> '40 MB' (decimal units)."""
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            break
        value /= 1000
    if unit == "bytes":
        return f"{int(value)} bytes"
    if value >= 10000:  # only absurd requests get here
        return f"{value:.1e} {unit}"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (whose filesystem a new file would land on)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}
# What torch.save raises when a write fails inside its zip writer (its C++ stream hides errno).
_TORCH_WRITE_FAILURES = ("unexpected pos", "failed writing file", "file write failed", "iostream error")
_FULL_ENOUGH_BYTES = 16 * 2**20  # with no size given, less than this free reads as a full disk


def _os_error_in_chain(error: BaseException) -> OSError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def describe_write_error(path: Path | str, error: BaseException, needed_bytes: int | None = None) -> str:
    """One line on why writing ``path`` failed: the file, the cause, the space a checkpoint needs.

    Handles OSErrors (ENOSPC, EDQUOT, EROFS, EACCES, ...), also when chained under another
    error, and torch.save's ``RuntimeError: [enforce fail at inline_container.cc...] unexpected
    pos``, which names no cause: it reads as a full disk when the disk has less free than
    ``needed_bytes`` (or than 16 MiB when not given).
    """
    path = Path(path)
    try:
        free: int | None = shutil.disk_usage(existing_ancestor(path.parent)).free
    except OSError:
        free = None
    space = []
    if free is not None:
        space.append(f"{format_bytes(free)} free in {path.parent}")
    if needed_bytes is not None:
        space.append(f"a checkpoint needs about {format_bytes(needed_bytes)}")
    space_text = f" ({', '.join(space)})" if space else ""
    os_error = _os_error_in_chain(error)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if os_error is not None:
        cause = _CAUSES.get(os_error.errno) or f"{os_error.strerror or os_error} (errno {os_error.errno})"
    elif isinstance(error, RuntimeError) and any(marker in str(error) for marker in _TORCH_WRITE_FAILURES):
        full = free is not None and free < (needed_bytes if needed_bytes is not None else _FULL_ENOUGH_BYTES)
        cause = "no space left on device" if full else f"the write failed ({type(error).__name__}: {text})"
    else:
        cause = f"{type(error).__name__}: {text}"
    if os_error is not None and os_error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose another --results-dir"
    else:
        advice = "free space or choose another --results-dir"
    return f"could not write {path}: {cause}{space_text}; {advice}"
