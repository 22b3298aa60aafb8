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
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
]
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place,
    so a reader (or a crash) only ever sees the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


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
    with open(path) as stream:
        return json.load(stream)


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
    lines = path.read_text().splitlines() + ["", ""]
    return RunStatus(lines[0].strip(), lines[1].strip())


def read_history(run_dir: Path) -> pd.DataFrame:
    """history.csv as a DataFrame (empty, with the schema's columns, before the first epoch)."""
    import pandas as pd

    path = Path(run_dir) / HISTORY_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=HISTORY_COLUMNS)


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
