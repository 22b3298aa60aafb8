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

Every file is validated when read (``read_run``, and a reader per file): it must read and have
the shape above (columns, keys, numbers where numbers belong, one row per class, config.json
naming this folder's run). A run is finished only if its status says so and every file a
finished run writes is there, reads and fits the others (test metrics of the history's last
epoch, split and config of one seed). Anything else raises RunFileError naming the file and
the cause: the figures leave such a run out, ``python -m hrsnet runs`` names the file and what
a rerun does, and training the run again rebuilds the files from ``last.pt``.
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
PIPELINE_FILE = "pipeline.json"  # not a run file: what one ./run_all.sh cost, written beside its figures
UNREADABLE = "unreadable"  # what read_status reports for a status file it cannot parse


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunFileError(RuntimeError):
    """A file of a run that cannot be read or written; the message names the file and the cause.

    ``path`` is the file and ``cause`` the message without advice (for callers that add their own,
    such as ``python -m hrsnet runs``, which knows whether a checkpoint can rebuild the file).
    """

    def __init__(self, message: str, path: Path | str | None = None, cause: str | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.cause = cause if cause is not None else message


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


# The signals that stop a run: Ctrl-C, and what kill and Slurm send (hrsnet.runs.launch makes
# SIGTERM interrupt training as Ctrl-C does).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) or SIGTERM that arrives inside the block until the block has ended,
    then act on it as the previous handler would (KeyboardInterrupt for SIGINT by default, the
    process ends for SIGTERM by default; hrsnet.runs.launch's handler while training).

    Why: a KeyboardInterrupt raised inside torch.save's stream callback is turned by its C++
    writer into a RuntimeError ("unexpected pos ..."), so an interrupted checkpoint write
    used to end the run as "failed" with a disk-space message instead of "interrupted".
    Only the main thread can set signal handlers; elsewhere the block runs as it is. An
    ignored signal stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = {}
    for signum in INTERRUPT_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
        if received:
            signum, frame = received[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)


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
    reason = " ".join(status.reason.splitlines())  # the file is two lines: a state, a reason
    atomic_write(Path(run_dir) / STATUS_FILE, lambda stream: stream.write(f"{status.state}\n{reason}\n"))


# --- reading: every file validated -----------------------------------------------------------
#
# Each reader returns the file's content, None when the file is not there, or raises
# RunFileError naming the file and what is wrong with it: unreadable (empty, binary, truncated),
# of the wrong shape (columns, keys, one row per class), or with a non-number where a number
# belongs. read_run() adds what the files must say together, and which files a finished run needs.

REBUILD_ADVICE = (
    "training the run again rebuilds it from last.pt where the run has one "
    "(`python -m hrsnet runs` says what a rerun does), else --force starts the run over"
)
# What every finished run has, and what its test pass writes when it scored a model.
FINISHED_RUN_FILES = (CONFIG_FILE, SPLIT_FILE, HISTORY_FILE, TEST_METRICS_FILE)
TEST_PASS_FILES = (PER_CLASS_FILE, EXAMPLES_FILE)
# What every epoch of a run that did not diverge measured (the timing columns may be empty).
MEASURED_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
METRIC_KEYS = ("top1", "top5", "loss", "epoch")
EXAMPLE_KEYS = ("images", "labels", "predictions")
_NON_FINITE_TEXT = ("nan", "inf", "-inf")  # how write_json stores non-finite floats


def damaged(path: Path, cause: str) -> RunFileError:
    """The RunFileError of a damaged run file: ``"<path> <cause>; <how to repair>"``."""
    return RunFileError(f"{path} {cause}; {REBUILD_ADVICE}", path, f"{path} {cause}")


def _read_error(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A JSON number, or the text write_json gives a non-finite float."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in _NON_FINITE_TEXT


def read_json(path: Path) -> Any:
    """A JSON file of a run; RunFileError naming the file when it is truncated or not JSON."""
    try:
        with open(path) as stream:
            return json.load(stream)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(Path(path), f"is not readable JSON ({_read_error(error)})") from error
    except OSError as error:  # a folder, no permission
        raise damaged(Path(path), f"cannot be read ({_read_error(error)})") from error


def _read_table(path: Path, **options) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, **options)
        with open(path, "rb") as stream:  # write_csv ends every row with a line break: a cut file does not
            stream.seek(-1, os.SEEK_END)
            cut = stream.read(1) != b"\n"
    except (ValueError, OSError) as error:  # EmptyDataError, ParserError and UnicodeDecodeError are ValueErrors
        raise damaged(path, f"is not a readable table ({_read_error(error)})") from error
    if cut:
        raise damaged(path, "is cut short (its last row has no line end)")
    return table


def _numbers(path: Path, table: pd.DataFrame, column: str, whole: bool = False) -> pd.Series:
    """``table[column]`` as numbers (empty cells: NaN); RunFileError at the first cell that is not one."""
    values = pd.to_numeric(table[column], errors="coerce")
    text = table[column].astype(str).str.strip()
    bad = values.isna() & table[column].notna() & ~text.str.lower().isin(["", *_NON_FINITE_TEXT])
    if whole:
        bad |= values.isna() | (values % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        kind = "a whole number" if whole else "a number"
        raise damaged(path, f"has {table[column].iloc[row]!r} in column {column}, row {row + 1}, where {kind} belongs")
    return values.astype("int64") if whole else values.astype(float)


def _fraction_problem(path: Path, values: pd.Series, column: str) -> None:
    outside = values.notna() & ((values < 0) | (values > 1))
    if outside.any():
        row = int(np.flatnonzero(outside.to_numpy())[0])
        raise damaged(path, f"has {values.iloc[row]} in column {column}, row {row + 1}: a fraction must be in [0, 1]")


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """config.json: an object naming this folder's run, its settings ("train"), "dataset" and "parameters"."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return None
    config = read_json(path)
    problem = _config_problem(config, run_dir.name)
    if problem:
        raise damaged(path, problem)
    return config


def _config_problem(config: Any, run_id: str) -> str | None:
    if not isinstance(config, dict):
        return f"holds a JSON {type(config).__name__}, not an object"
    missing = [key for key in ("run_id", "train", "dataset", "parameters") if key not in config]
    if missing:
        return f"lacks {', '.join(missing)}"
    if config["run_id"] != run_id:
        return f"describes run {config['run_id']!r}, not this folder's {run_id!r}"
    train, dataset = config["train"], config["dataset"]
    if not isinstance(train, dict) or not isinstance(dataset, dict):
        return "has a 'train' or 'dataset' entry that is not an object"
    if not isinstance(train.get("arch"), str):
        return f"has train.arch {train.get('arch')!r}, not a network name"
    for key in ("width", "image_size", *(("seed",) if "seed" in train else ())):
        if not _is_int(train.get(key)):
            return f"has train.{key} {train.get(key)!r}, not a whole number"
    if not isinstance(dataset.get("name"), str) or not _is_int(dataset.get("num_classes")):
        return "has no dataset.name and whole-number dataset.num_classes"
    if dataset["num_classes"] < 1 or not _is_int(config["parameters"]) or config["parameters"] < 1:
        return "has a class count or parameter count below 1"
    return None


def read_split(run_dir: Path) -> dict[str, Any] | None:
    """split.json: the seed, val_fraction and the disjoint train / validation positions."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        return None
    split = read_json(path)
    if not isinstance(split, dict) or any(key not in split for key in ("seed", "val_fraction")):
        raise damaged(path, "is not an object with seed, val_fraction, train_indices and val_indices")
    for key in ("train_indices", "val_indices"):
        positions = split.get(key)
        if not isinstance(positions, list) or not all(_is_int(item) and item >= 0 for item in positions):
            raise damaged(path, f"has a {key} that is not a list of positions (whole numbers >= 0)")
    if not _is_int(split["seed"]) or not _is_number(split["val_fraction"]):
        raise damaged(path, "has a seed or val_fraction that is not a number")
    if set(split["train_indices"]) & set(split["val_indices"]):
        raise damaged(path, "puts some images in both the training and the validation split")
    return split


def read_history(run_dir: Path) -> pd.DataFrame:
    """history.csv as a DataFrame (empty, with the schema's columns, before the first epoch):
    the schema's columns, a number (or empty) in every cell, epochs 1, 2, ... in order."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    history = _read_table(path)
    if list(history.columns) in (HISTORY_COLUMNS_BEFORE_TIMING, HISTORY_COLUMNS_BEFORE_TAIL):
        history = history.reindex(columns=HISTORY_COLUMNS)
    if list(history.columns) != HISTORY_COLUMNS:
        raise damaged(path, f"has columns {list(history.columns)[:12]}, not {HISTORY_COLUMNS}")
    if history.empty:
        return history
    for column in HISTORY_COLUMNS:
        history[column] = _numbers(path, history, column, whole=column == "epoch")
    if history["epoch"].tolist() != list(range(1, len(history) + 1)):
        raise damaged(path, f"has epochs {history['epoch'].tolist()[:10]}, not 1, 2, ... in order")
    for column in ("train_acc", "val_acc"):
        _fraction_problem(path, history[column], column)
    return history


def read_per_class(run_dir: Path, num_classes: int | None = None) -> pd.DataFrame | None:
    """per_class.csv: one row per class (``num_classes`` when given), class_index 0, 1, ...,
    0 <= correct <= support, accuracy = correct / support."""
    path = Path(run_dir) / PER_CLASS_FILE
    if not path.exists():
        return None
    raw = _read_table(path, dtype=str, keep_default_na=False)
    if list(raw.columns) != PER_CLASS_COLUMNS:
        raise damaged(path, f"has columns {list(raw.columns)[:12]}, not {PER_CLASS_COLUMNS}")
    if raw.empty:
        raise damaged(path, "has no rows")
    table = pd.DataFrame({"class_name": raw["class_name"].astype(str)})
    for column in ("class_index", "support", "correct"):
        table[column] = _numbers(path, raw, column, whole=True)
    table["accuracy"] = _numbers(path, raw, "accuracy")
    table = table[PER_CLASS_COLUMNS]
    if num_classes is not None and len(table) != num_classes:
        raise damaged(path, f"has {len(table)} rows, not one per class ({num_classes})")
    if table["class_index"].tolist() != list(range(len(table))):
        raise damaged(path, "has class_index values other than 0, 1, 2, ... in order")
    counts_ok = (table["support"] >= 0) & (table["correct"] >= 0) & (table["correct"] <= table["support"])
    expected = table["correct"] / table["support"].clip(lower=1)
    if not counts_ok.all() or not np.allclose(table["accuracy"], expected, rtol=0, atol=1e-6):
        row = int(np.flatnonzero(~(counts_ok & np.isclose(table["accuracy"], expected, rtol=0, atol=1e-6)))[0])
        raise damaged(path, f"row {row + 1}: support, correct and accuracy do not agree")
    return table


def read_test_metrics(run_dir: Path) -> dict[str, Any] | None:
    """test_metrics.json: ``{"last": ..., "best": ...}``, each null or {top1, top5, loss, epoch}."""
    path = Path(run_dir) / TEST_METRICS_FILE
    if not path.exists():
        return None
    metrics = read_json(path)
    if not isinstance(metrics, dict) or set(metrics) != {"last", "best"}:
        keys = sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__
        raise damaged(path, f"has {keys}, not the keys 'last' and 'best'")
    for model, entry in metrics.items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or set(entry) != set(METRIC_KEYS):
            raise damaged(path, f"has a {model!r} entry that is not {{{', '.join(METRIC_KEYS)}}}")
        if not all(_is_number(entry[key]) for key in ("top1", "top5", "loss")):
            raise damaged(path, f"has a non-number in {model!r}")
        if not _is_int(entry["epoch"]) or entry["epoch"] < 1:
            raise damaged(path, f"has {model!r} epoch {entry['epoch']!r}, not a whole number >= 1")
        for key in ("top1", "top5"):
            value = float(entry[key])
            if math.isfinite(value) and not 0 <= value <= 1:
                raise damaged(path, f"has {model!r} {key} {value}: a fraction must be in [0, 1]")
    return metrics


def read_examples(run_dir: Path, num_classes: int | None = None) -> dict[str, np.ndarray] | None:
    """class_examples.npz: uint8 NHWC images with 3 channels, and as many integer labels and predictions."""
    path = Path(run_dir) / EXAMPLES_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("an .npy array, not an .npz archive")
            examples = {key: archive[key] for key in archive.files}
    except Exception as error:  # BadZipFile, EOFError, zlib.error, ValueError, OSError: any damage
        raise damaged(path, f"is not a readable .npz archive ({_read_error(error)})") from error
    missing = [key for key in EXAMPLE_KEYS if key not in examples]
    if missing:
        raise damaged(path, f"lacks {', '.join(missing)}")
    images, labels, predictions = (examples[key] for key in EXAMPLE_KEYS)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise damaged(path, f"has images {images.dtype} {images.shape}, not uint8 (N, H, W, 3)")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.ndim != 1 or len(values) != len(images) or not np.issubdtype(values.dtype, np.integer):
            raise damaged(path, f"has {name} {values.dtype} {values.shape}, not {len(images)} whole numbers")
        if len(values) and (values.min() < 0 or (num_classes is not None and values.max() >= num_classes)):
            raise damaged(path, f"has {name} outside the classes 0..{(num_classes or 0) - 1}")
    return examples


def _status_problem(path: Path) -> str | None:
    """What is wrong with a status file that exists, or None."""
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError) as error:
        return f"is not a status file ({_read_error(error)})"
    first = (text.splitlines() or [""])[0].strip()
    if first not in STATES:
        return f"names no known state ({first[:40]!r})"
    if len(text.splitlines()) != 2 or not text.endswith("\n"):  # write_status writes both lines, whole
        return "is cut short or has extra lines (a state line and a reason line, each ending in a line break)"
    return None


def read_status(run_dir: Path) -> RunStatus | None:
    """The run's status, or None when the run has not started; a damaged file reads as the state
    UNREADABLE, its reason naming the file and what is wrong."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    problem = _status_problem(path)
    if problem:
        return RunStatus(UNREADABLE, f"{path} {problem}; the next run rewrites it")
    lines = path.read_text().splitlines() + ["", ""]
    return RunStatus(lines[0].strip(), lines[1].strip())


@dataclass
class Run:
    """One run directory, read back and validated: the only reader of its files (fit(), the
    figures, the statistics)."""

    run_dir: Path
    config: dict[str, Any] | None  # None until the run has written config.json
    status: RunStatus
    history: pd.DataFrame
    test_metrics: dict[str, Any] | None
    per_class: pd.DataFrame | None
    split: dict[str, Any] | None = None
    class_examples: dict[str, np.ndarray] | None = None

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
    def num_classes(self) -> int | None:
        return (self.config or {}).get("dataset", {}).get("num_classes")

    @property
    def parameters(self) -> int | None:
        return (self.config or {}).get("parameters")

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def examples(self) -> dict[str, Any] | None:
        """class_examples.npz: a few test images per class, their labels and the last model's predictions."""
        return self.class_examples


def _inspect(run_dir: Path) -> tuple[Run | None, list[RunFileError]]:
    """Read every file of a run directory; (the run, or None if a file is damaged; every problem)."""
    run_dir = Path(run_dir)
    problems: list[RunFileError] = []

    def attempt(read: Callable[[], Any], default: Any = None) -> Any:
        try:
            return read()
        except RunFileError as error:
            problems.append(error)
            return default

    status = read_status(run_dir)
    if status is not None and status.state == UNREADABLE:
        path = run_dir / STATUS_FILE
        problems.append(RunFileError(status.reason, path, status.reason.split("; the next run")[0]))
    config = attempt(lambda: read_config(run_dir))
    num_classes = (config or {}).get("dataset", {}).get("num_classes")
    split = attempt(lambda: read_split(run_dir))
    history = attempt(lambda: read_history(run_dir))
    metrics = attempt(lambda: read_test_metrics(run_dir))
    per_class = attempt(lambda: read_per_class(run_dir, num_classes))
    examples = attempt(lambda: read_examples(run_dir, num_classes))
    if config is not None and split is not None:
        train = config["train"]
        if (
            train.get("seed", 0) != split["seed"]
            or train.get("val_fraction", split["val_fraction"]) != split["val_fraction"]
        ):
            problems.append(damaged(run_dir / SPLIT_FILE, "has another seed or val_fraction than config.json"))
    if status is not None and status.finished:
        problems += _finished_problems(run_dir, status, history, metrics)
    if problems:
        return None, problems
    run = Run(
        run_dir=run_dir,
        config=config,
        status=status or RunStatus("failed", "no status file"),
        history=history,
        test_metrics=metrics,
        per_class=per_class,
        split=split,
        class_examples=examples,
    )
    return run, []


def _finished_problems(
    run_dir: Path, status: RunStatus, history: pd.DataFrame | None, metrics: dict | None
) -> list[RunFileError]:
    """What a finished run (complete, early-stopped, diverged) lacks: every file it writes, with
    results that fit its history. Files already found damaged are not named again."""

    def missing(name: str) -> RunFileError:
        return damaged(run_dir / name, f"is missing, though the run's status is {status.state}")

    problems = [missing(name) for name in FINISHED_RUN_FILES if not (run_dir / name).exists()]
    if history is not None and (run_dir / HISTORY_FILE).exists() and history.empty:
        problems.append(damaged(run_dir / HISTORY_FILE, f"has no epoch, though the run's status is {status.state}"))
    elif history is not None and status.state != "diverged":  # a non-finite loss would have made it diverged
        measured = history[list(MEASURED_COLUMNS)]
        blank = ~np.isfinite(measured.to_numpy(dtype=float))
        if blank.any():
            row, column = (int(index[0]) for index in np.nonzero(blank))
            problems.append(
                damaged(
                    run_dir / HISTORY_FILE,
                    f"has no finite {MEASURED_COLUMNS[column]} in row {row + 1}, which a {status.state} run has",
                )
            )
    if metrics is None:
        return problems
    if metrics["last"] is None and status.state != "diverged":
        problems.append(
            damaged(run_dir / TEST_METRICS_FILE, f"has no last-model result, which a {status.state} run has")
        )
    if history is not None and not history.empty:
        epochs = len(history)
        if metrics["last"] is not None and metrics["last"]["epoch"] != epochs:
            problems.append(
                damaged(
                    run_dir / TEST_METRICS_FILE,
                    f"scores the model of epoch {metrics['last']['epoch']}, but history.csv has {epochs} epochs",
                )
            )
        if metrics["best"] is not None and metrics["best"]["epoch"] > epochs:
            problems.append(
                damaged(run_dir / TEST_METRICS_FILE, f"has a best epoch after the last of history.csv ({epochs})")
            )
    if metrics["last"] is not None or metrics["best"] is not None:  # then the test pass wrote these too
        problems += [missing(name) for name in TEST_PASS_FILES if not (run_dir / name).exists()]
    return problems


def run_file_problems(run_dir: Path) -> list[RunFileError]:
    """Every damaged file of a run directory, and every file its finished status needs but lacks."""
    return _inspect(run_dir)[1]


def read_run(run_dir: Path) -> Run:
    """Every file of a run directory that exists, each validated; a run without a status file
    counts as failed. RunFileError (naming the file and the cause) for any damaged file, or for
    a finished run that lacks a file or whose files disagree."""
    run, problems = _inspect(run_dir)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise RunFileError(f"{first.cause}{more}; {REBUILD_ADVICE}", first.path, first.cause)
    return run


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
    errno.ENAMETOOLONG: "file name too long",
    errno.EISDIR: "a folder of that name is in the way",
    errno.ENOTDIR: "a file stands where a folder belongs",
}
# Write failures that free space would not fix, and what would.
_FREE_SPACE = "free space or choose another --results-dir"
_NOT_ABOUT_SPACE = {
    errno.EROFS: "choose another --results-dir",
    errno.EACCES: "choose another --results-dir",
    errno.EPERM: "choose another --results-dir",
    errno.ENAMETOOLONG: "choose a shorter --results-dir",
    errno.EISDIR: "move that folder away (training again then writes the file)",
    errno.ENOTDIR: "move the file that stands where a folder belongs away, or choose another --results-dir",
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
    code = os_error.errno if os_error is not None else None
    if code in _NOT_ABOUT_SPACE:  # the free space is beside the point: not shown, not blamed
        space_text = ""
    if code == errno.ENAMETOOLONG:
        cause = f"file name too long (the path has {len(os.fsencode(str(path)))} bytes)"
    return f"could not write {path}: {cause}{space_text}; {_NOT_ABOUT_SPACE.get(code, _FREE_SPACE)}"
