"""Run directories written by hand in the documented schema (hrsnet.rundir), for figure tests."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from hrsnet import rundir
from hrsnet.config import TrainConfig


def write_fixture_run(
    config: TrainConfig,
    state: str,
    epochs: int,
    num_classes: int = 10,
    diverge_at: int | None = None,
    with_test: bool = True,
    train_loss: Sequence[float] | None = None,
    val_acc: Sequence[float] | None = None,
    top1_last: float = 0.5,
    class_accuracy: Sequence[float] | None = None,
    environment: dict | None = None,
    train_loss_tail: Sequence[float] | None = None,
    val_loss: Sequence[float] | None = None,
    top5_last: float = 0.9,
    best: dict | None = None,
    columns: Sequence[str] = rundir.HISTORY_COLUMNS,
) -> None:
    """A run directory as fit() would leave it: complete, early-stopped, diverged, or partial.
    ``train_loss`` / ``train_loss_tail`` / ``val_loss`` / ``val_acc`` (one value per epoch), ``top1_last``,
    ``top5_last``, ``best`` (test_metrics.json's "best") and ``class_accuracy`` (one value per class) give
    known values instead of the generated ones (the tail defaults to the epoch mean, as with fewer than
    1,000 batches an epoch); ``environment`` is config.json's; ``columns``: history.csv's header (an older
    schema leaves out the newer columns)."""
    run_dir = config.run_dir()
    rundir.write_json(
        run_dir / rundir.CONFIG_FILE,
        {
            "run_id": config.run_id,
            "train": dataclasses.asdict(config),
            "model": {},
            "parameters": 10_000_000 + 1000 * config.width,
            "dataset": {"name": config.dataset, "num_classes": num_classes},
            **({"environment": environment} if environment is not None else {}),
        },
    )
    rundir.write_json(
        run_dir / rundir.SPLIT_FILE,
        {"seed": config.seed, "val_fraction": config.val_fraction, "train_indices": [0, 1], "val_indices": [2]},
    )
    rng = np.random.default_rng(config.width)
    rows = []
    for epoch in range(1, epochs + 1):
        diverged = diverge_at is not None and epoch >= diverge_at
        mean = (
            math.nan
            if diverged
            else (train_loss[epoch - 1] if train_loss is not None else 2.3 / epoch + rng.uniform(0, 0.05))
        )
        tail = math.nan if diverged else (train_loss_tail[epoch - 1] if train_loss_tail is not None else mean)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": mean,
                "train_acc": 0.1 * epoch,
                "val_loss": math.nan
                if diverged
                else (val_loss[epoch - 1] if val_loss is not None else 2.0 / epoch + 0.3),
                "val_acc": val_acc[epoch - 1] if val_acc is not None else 0.08 * epoch,
                "lr": 0.005,
                "epoch_seconds": 1.0,
                "images_per_second": 100.0,
                "val_seconds": 0.25,
                "checkpoint_seconds": 0.125,
                "train_loss_tail": tail,
            }
        )
    rundir.write_csv(run_dir / rundir.HISTORY_FILE, rows, list(columns))
    reasons = {
        "complete": f"reached the epoch limit ({epochs})",
        "running": f"epoch {epochs} of at most 25 done",
        "diverged": f"non-finite training loss (mean nan) at epoch {diverge_at}",
        "early-stopped": "validation loss did not improve for 2 epochs",
    }
    rundir.write_status(run_dir, rundir.RunStatus(state, reasons.get(state, "")))
    if not with_test:
        return
    last = None if state == "diverged" else {"top1": top1_last, "top5": top5_last, "loss": 1.5, "epoch": epochs}
    best = best if best is not None else {"top1": 0.55, "top5": 0.91, "loss": 1.4, "epoch": max(1, epochs - 1)}
    rundir.write_json(run_dir / rundir.TEST_METRICS_FILE, {"last": last, "best": best})
    accuracy = rng.uniform(0, 1, num_classes) if class_accuracy is None else np.asarray(class_accuracy, dtype=float)
    rundir.write_csv(
        run_dir / rundir.PER_CLASS_FILE,
        [
            {
                "class_index": i,
                "class_name": str(i),
                "support": 10,
                "correct": round(10 * a),
                "accuracy": round(10 * a) / 10,
            }
            for i, a in enumerate(accuracy)
        ],
        rundir.PER_CLASS_COLUMNS,
    )
    labels = np.repeat(np.arange(num_classes), 2)
    images = rng.integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)
    rundir.atomic_write(
        run_dir / rundir.EXAMPLES_FILE,
        lambda s: np.savez_compressed(s, images=images, labels=labels, predictions=labels),
        binary=True,
    )
