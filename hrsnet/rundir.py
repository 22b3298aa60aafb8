"""The run directory: its files, written whole or not at all, and read back.

``results/runs/<run_id>/`` holds:

- ``config.json``: every setting of the run, the model config, dataset sizes, package
  versions, git commit, device name.
- ``split.json``: the seeded train / validation split (positions in the source training set).
- ``history.csv``: one row per completed epoch: epoch, train_loss, train_acc, val_loss,
  val_acc, lr, epoch_seconds, images_per_second (accuracies as fractions).
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
  (hrsnet.runlock; never deleted, held only while a process trains).
- ``.<name>.<random>.tmp``: a file being written; one left by a killed process is removed
  when the run is next trained.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# epoch_seconds is the training pass; the epoch's validation (with the best checkpoint's
# write) and last.pt's write are timed apart. Histories written before those two columns
# existed still read (the columns come back empty), as do rows restored from a checkpoint,
# which is saved before its own write can be timed.
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
HISTORY_COLUMNS = [*HISTORY_COLUMNS_BEFORE_TIMING, "val_seconds", "checkpoint_seconds"]
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
        from .preflight import describe_write_error

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
    import pandas as pd

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
    if list(history.columns) == HISTORY_COLUMNS_BEFORE_TIMING:
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
        import numpy as np

        path = self.run_dir / EXAMPLES_FILE
        if not path.exists():
            return None
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}


def read_run(run_dir: Path) -> Run:
    """Every file of a run directory that exists; a run without a status file counts as failed."""
    import pandas as pd

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


@dataclass(frozen=True)
class RunCheck:
    """What a run directory's files say together: problems found, and what a rerun will do."""

    state: str
    problems: tuple[str, ...]
    action: str


def check_run(run_dir: Path, probe_lock: bool = True) -> RunCheck:
    """Cross-check a run's files without training: status, metrics, history, checkpoint, lock.
    ``probe_lock=False`` in the process that holds the run's lock (fit())."""
    from .runlock import lock_state

    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.state if status else "new"
    problems: list[str] = []
    if status is not None and status.state == UNREADABLE:
        problems.append(status.reason)
    lock = lock_state(run_dir) if probe_lock and run_dir.exists() else "none"
    if lock == "held":
        from .runlock import describe_holder, lock_holder

        return RunCheck("training", (), f"skip: being trained by {describe_holder(lock_holder(run_dir))}")
    checkpoint_epochs = None
    last = run_dir / LAST_CHECKPOINT
    if last.exists():
        try:
            import torch  # mmap: the history without reading the weights

            checkpoint_epochs = len(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["history"])
        except Exception as error:
            problems.append(f"checkpoint {last} is corrupt or unreadable ({type(error).__name__})")
    for name in (CONFIG_FILE, TEST_METRICS_FILE):
        if (run_dir / name).exists():
            try:
                read_json(run_dir / name)
            except RunFileError as error:
                problems.append(str(error).split(";")[0])
    try:
        history_epochs = len(read_history(run_dir))
    except RunFileError as error:
        history_epochs = None
        problems.append(str(error).split(";")[0])
    if checkpoint_epochs is not None and history_epochs is not None and history_epochs < checkpoint_epochs:
        problems.append(f"history.csv has {history_epochs} epochs, the checkpoint {checkpoint_epochs}")
    if status is not None and status.finished and not (run_dir / TEST_METRICS_FILE).exists():
        problems.append(f"{status.state} but {TEST_METRICS_FILE} is missing")
    if status is not None and status.state == "running" and lock == "stale":
        problems.append("its process died (the lock is stale)")
    if status is not None and status.finished and not problems:
        return RunCheck(state, (), "skip: finished")
    if checkpoint_epochs is not None:
        return RunCheck(state, tuple(problems), f"resume after epoch {checkpoint_epochs}")
    if last.exists() or (status is not None and status.finished):
        return RunCheck(state, tuple(problems), "cannot resume: rerun with --force to start over")
    return RunCheck(state, tuple(problems), "start")
