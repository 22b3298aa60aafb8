"""Time estimates: minutes per run of a profile and in total, from real runs' histories, a bench
CSV or a measurement here; and the real loop's settings side by side (loop.csv)."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.paper import RELEASED_NOTEBOOK_RESULTS
from ..profiles import profile_runs
from ..rundir import write_csv
from ..runtime import resolve_device
from .bench import FULL_SPLIT_SIZES, Setting, default_variant, device_name, log, measure, read_bench_csv


@dataclass
class EpochCost:
    """Seconds of one epoch of one (network, C) at the profile's full split sizes, and per run
    what is paid once. NaN: not measured (left out of the sums, and said so)."""

    train_seconds: float
    val_seconds: float = math.nan
    checkpoint_seconds: float = math.nan
    test_seconds: float = math.nan  # the test pass after training
    overhead_seconds: float = math.nan  # per run: start-up, data, test pass (from wall times)
    source: str = ""

    @property
    def epoch_seconds(self) -> float:
        return self.train_seconds + _nz(self.val_seconds) + _nz(self.checkpoint_seconds)

    def run_seconds(self, epochs: int) -> float:
        return epochs * self.epoch_seconds + _nz(self.test_seconds) + _nz(self.overhead_seconds)


def _nz(value: float) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def released_epochs(arch: str, width: int) -> int | None:
    """How many epochs the authors' released run of (arch, C) went (hrsnet.analysis.paper), or None."""
    entry = RELEASED_NOTEBOOK_RESULTS.get((arch, width))
    match = re.match(r"\s*(\d+)", entry[1]) if entry else None
    return int(match[1]) if match else None


def _history_dirs(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "history.csv").exists():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(history.parent for history in path.rglob("history.csv")))
        else:
            raise ValueError(f"{path} is neither a run directory (with history.csv) nor a folder of runs")
    return found


def _history_column(history, name: str):
    """A history's column as floats without its empty values (epochs restored from a checkpoint
    written before the column existed), or None when it has no value at all."""
    if name not in history:
        return None
    values = history[name].astype(float).dropna()
    return values if len(values) else None


def read_wall_seconds(path: str | Path | None) -> dict[str, float]:
    """run_id -> wall seconds of the whole ``python -m hrsnet train`` process (a CSV with columns
    run_id, wall_seconds, as scripts/gpu_session.sh writes it); the last row of a run id counts."""
    if path is None or not Path(path).exists():
        return {}
    with open(path, newline="") as stream:
        return {row["run_id"]: float(row["wall_seconds"]) for row in csv.DictReader(stream) if row.get("wall_seconds")}


def epoch_costs_from_histories(
    paths: list[str | Path], full_train: int, full_val: int, wall_seconds: dict[str, float] | None = None
) -> dict[tuple[str, int], EpochCost]:
    """(arch, C) -> EpochCost from the history.csv of real runs (run directories, or folders
    holding them), scaled to ``full_train`` / ``full_val`` images from each run's own split sizes
    (config.json). Training seconds are ``train_seconds`` when the history has that column, else
    ``epoch_seconds`` (the training loop); ``val_seconds`` and ``checkpoint_seconds`` are used when
    present. With the run's wall time (``wall_seconds``, by run id), what the epochs do not account
    for (start-up, data, test pass) is the run's overhead. Several runs of one (arch, C): medians."""
    per_cell: dict[tuple[str, int], list[tuple[EpochCost, str]]] = {}
    wall_seconds = wall_seconds or {}
    for run_dir in _history_dirs(paths):
        config = json.loads((run_dir / "config.json").read_text())
        train, dataset = config["train"], config["dataset"]
        history = pd.read_csv(run_dir / "history.csv")
        if not len(history):
            continue

        train_seconds = _history_column(history, "train_seconds")
        if train_seconds is None:
            train_seconds = history["epoch_seconds"].astype(float)
        val_seconds = _history_column(history, "val_seconds")
        checkpoint_seconds = _history_column(history, "checkpoint_seconds")
        measured = train_seconds.sum() + sum(c.sum() for c in (val_seconds, checkpoint_seconds) if c is not None)
        wall = wall_seconds.get(config["run_id"], math.nan)
        cost = EpochCost(
            train_seconds=float(train_seconds.median()) * full_train / dataset["train_size"],
            val_seconds=float(val_seconds.median()) * full_val / dataset["val_size"]
            if val_seconds is not None
            else math.nan,
            checkpoint_seconds=float(checkpoint_seconds.median()) if checkpoint_seconds is not None else math.nan,
            overhead_seconds=max(0.0, wall - measured) if math.isfinite(wall) else math.nan,
        )
        setting = f"{train['image_size']}px batch {train['batch_size']}"
        per_cell.setdefault((train["arch"], int(train["width"])), []).append((cost, setting))
    costs = {}
    for cell, measured in per_cell.items():
        fields = ("train_seconds", "val_seconds", "checkpoint_seconds", "overhead_seconds")
        values = {
            name: statistics.median(getattr(cost, name) for cost, _ in measured)
            if all(math.isfinite(getattr(cost, name)) for cost, _ in measured)
            else math.nan
            for name in fields
        }
        settings = sorted({setting for _, setting in measured})
        costs[cell] = EpochCost(**values, source=f"history of {len(measured)} run(s) at {', '.join(settings)}")
    return costs


def epoch_cost_from_step(step_ms: float, inference_images_per_second: float, config, source: str) -> EpochCost:
    """An epoch from a training step time and an inference rate at the run's settings."""
    full_train, full_val, full_test = FULL_SPLIT_SIZES[config.dataset]
    train_images = min(config.train_subset or full_train, full_train)
    val_images = min(config.val_subset or full_val, full_val)
    test_images = min(config.test_subset or full_test, full_test)
    return EpochCost(
        train_seconds=math.ceil(train_images / config.batch_size) * step_ms / 1000,
        val_seconds=val_images / inference_images_per_second,
        test_seconds=test_images * 2 / inference_images_per_second,  # last and best model
        source=source,
    )


def epoch_costs_from_bench_csv(path: str | Path, configs) -> dict[tuple[str, int], EpochCost]:
    """(arch, C) -> EpochCost from a bench CSV's rows at the runs' image size and batch (the
    grid's row first, else any row of our network with the default switches)."""
    rows = read_bench_csv(Path(path))
    costs = {}
    for config in configs:
        matching = [
            row
            for row in rows
            if row["model"] == config.arch
            and int(row["width"]) == config.width
            and int(row["image_size"]) == config.image_size
            and int(row["batch_size"]) == config.batch_size
        ]
        matching.sort(key=lambda row: (row["group"] != "grid", row["variant"] != "default"))
        if matching:
            row = matching[0]
            costs[(config.arch, config.width)] = epoch_cost_from_step(
                float(row["train_step_ms"]),
                float(row["inference_images_per_second"]),
                config,
                f"bench CSV {Path(path).name}: {row['group']} {row['variant']}",
            )
    return costs


def estimate_profile(
    profile: str,
    device: str = "auto",
    steps: int | None = None,
    warmup: int | None = None,
    quiet: bool = False,
    histories: list[str | Path] | None = None,
    bench_csv: str | Path | None = None,
    wall_csv: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Minutes per run of ``profile``: epochs x (training + validation + checkpoint seconds of one
    epoch) + what a run pays once (test pass, start-up), at the authors' epoch counts (hrsnet.paper;
    where they released none for a network and C, the profile's cap) and at the cap.

    Epoch times come from the history.csv of real runs (``histories``; the most faithful: the
    real loop), else from a bench CSV's rows at the profile's settings, else are measured here
    (training step and inference rate, as the bench does). A (network, C) with no source in
    histories or the bench CSV is measured here too, unless histories were given (then it is
    reported as not measured)."""
    configs = profile_runs(profile)
    full_train, full_val, _ = FULL_SPLIT_SIZES[configs[0].dataset]
    train_images = min(configs[0].train_subset or full_train, full_train)
    val_images = min(configs[0].val_subset or full_val, full_val)
    costs: dict[tuple[str, int], EpochCost] = {}
    if histories:
        costs.update(epoch_costs_from_histories(histories, train_images, val_images, read_wall_seconds(wall_csv)))
    if bench_csv is not None:
        for cell, cost in epoch_costs_from_bench_csv(bench_csv, configs).items():
            costs.setdefault(cell, cost)
    resolved = None
    rows = []
    for config in configs:
        cell = (config.arch, config.width)
        if cell not in costs and not histories and bench_csv is None:
            resolved = resolved or resolve_device(device)
            cuda = resolved.type == "cuda"
            measured = measure(
                [(config.arch, config.width, default_variant(resolved))],
                Setting(profile, config.image_size, config.batch_size),
                resolved,
                warmup if warmup is not None else (10 if cuda else 1),
                steps if steps is not None else (20 if cuda else 2),
                3 if cuda else 1,
            )[0]
            costs[cell] = epoch_cost_from_step(
                measured["train_step_ms"],
                measured["inference_images_per_second"],
                config,
                f"measured here ({device_name(resolved)})",
            )
        cost = costs.get(cell)
        released = released_epochs(config.arch, config.width)
        epochs_released = released if released is not None else config.epochs
        row = {
            "run_id": config.run_id,
            "arch": config.arch,
            "width": config.width,
            "seed": config.seed,
            "epoch_minutes": cost.epoch_seconds / 60 if cost else math.nan,
            "validation_counted": bool(cost and math.isfinite(cost.val_seconds)),
            "epochs_released": epochs_released,
            "epochs_released_source": "released" if released is not None else "cap (none released)",
            "minutes_released": cost.run_seconds(epochs_released) / 60 if cost else math.nan,
            "max_epochs": config.epochs,
            "run_minutes": cost.run_seconds(config.epochs) / 60 if cost else math.nan,
            "source": cost.source if cost else "not measured",
        }
        rows.append(row)
        if config.seed == configs[0].seed:
            log(
                f"  {config.arch:16s} C={config.width:<3d} {row['epoch_minutes']:7.2f} min/epoch; "
                f"{row['minutes_released']:7.1f} min at {epochs_released} epochs ({row['epochs_released_source']}), "
                f"{row['run_minutes']:7.1f} min at {config.epochs}  [{row['source']}]",
                quiet,
            )
    return rows


def estimate_totals(rows: list[dict[str, Any]], jobs: int = 1, speedup: float | None = None) -> dict[str, Any]:
    """Total minutes of the estimate's runs, in sequence and as ``jobs`` concurrent jobs on one
    device, whose combined throughput is ``speedup`` x one job's (measured; default: no gain).

    With N jobs each runs at speedup/N of its solo speed, so the wall time is the larger of
    total/speedup (the work, shared) and the longest run x N/speedup (it cannot be split)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    speedup = 1.0 if speedup is None else float(speedup)
    if not speedup > 0:
        raise ValueError(f"speedup must be > 0; got {speedup}")
    measured = [row for row in rows if math.isfinite(row["run_minutes"])]
    totals: dict[str, Any] = {"runs": len(rows), "runs_measured": len(measured), "jobs": jobs, "speedup": speedup}
    for key in ("minutes_released", "run_minutes"):
        total = sum(row[key] for row in measured)
        longest = max((row[key] for row in measured), default=0.0)
        totals[f"sequential_{key}"] = total
        totals[f"concurrent_{key}"] = max(total / speedup, longest * jobs / speedup) if jobs > 1 else total
    return totals


def concurrency_speedup(single: str | Path, concurrent: str | Path) -> float:
    """Combined training throughput of runs trained at the same time (``concurrent``: their run
    directories, or a folder of them) over that of one run alone (``single``), from the
    images_per_second of their histories' first epochs."""

    def rates(path) -> list[float]:
        return [float(pd.read_csv(run / "history.csv")["images_per_second"].iloc[0]) for run in _history_dirs([path])]

    alone, together = rates(single), rates(concurrent)
    if not alone or not together:
        raise ValueError(f"no history.csv under {single if not alone else concurrent}")
    return sum(together) / statistics.mean(alone)


LOOP_COLUMNS = ["setting", "runs", "cuda_graphs", "packed_seeds", "images_per_second", "speedup", "epoch_seconds"]


def loop_comparison(settings: dict[str, str | Path]) -> list[dict[str, Any]]:
    """The real training loop (fit) in several settings, one row each, from the first epoch of
    every run under each setting's folder: its combined training images/s (the sum over runs
    that trained together, e.g. packed seeds), the speedup over the first setting, and what
    the runs' config.json says was resolved (graphs on or off, seeds per pack)."""
    rows = []
    for setting, folder in settings.items():
        runs = _history_dirs([folder])
        if not runs:
            raise ValueError(f"no history.csv under {folder} (setting {setting!r})")
        firsts = [pd.read_csv(run / "history.csv").iloc[0] for run in runs]
        resolved = [json.loads((run / "config.json").read_text())["resolved"] for run in runs]
        rows.append(
            {
                "setting": setting,
                "runs": len(runs),
                "cuda_graphs": "/".join(sorted({str(bool(r.get("cuda_graphs"))).lower() for r in resolved})),
                "packed_seeds": max(int(r.get("packed_seeds", 1)) for r in resolved),
                "images_per_second": sum(float(first["images_per_second"]) for first in firsts),
                "epoch_seconds": max(float(first["epoch_seconds"]) for first in firsts),
            }
        )
    for row in rows:
        row["speedup"] = row["images_per_second"] / rows[0]["images_per_second"]
    return rows


def write_loop_comparison(folder: str | Path, settings: list[str]) -> list[dict[str, Any]]:
    """loop_comparison of ``folder``/loop/<setting> for each setting, written to ``folder``/loop.csv
    and printed (scripts/gpu_session.sh loop)."""
    folder = Path(folder)
    rows = loop_comparison({name: folder / "loop" / name for name in settings})
    write_csv(folder / "loop.csv", rows, LOOP_COLUMNS)
    for row in rows:
        print(
            f"{row['setting']:8s} {row['images_per_second']:9.1f} img/s  x{row['speedup']:.2f}  "
            f"(graphs {row['cuda_graphs']}, {row['packed_seeds']} seed(s) per pack, {row['runs']} run(s))"
        )
    return rows
