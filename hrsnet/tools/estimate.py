"""Time estimates: minutes per run of a profile and in total; and the real loop's settings side
by side (loop.csv).

Every run of the profile gets a row. Its epoch time is measured at the profile's image size and
batch, or scaled to them by a measured cost there, or the row says why it cannot be estimated:

1. the real loop of this network x C at the profile's size and batch (history.csv of runs),
   scaled by image counts only (the same size and batch: the cost is per image);
2. the real loop of another network x C at that size and batch, times the ratio of the two
   networks' bench step times there (a bench CSV's rows of one variant);
3. the real loop of this network x C at another size or batch, times the ratio of its bench
   costs per image at the profile's setting and at the history's (both rows in the bench CSV);
4. a bench CSV row of this network x C at that size and batch (its step time and inference rate);
5. a measurement here at that size and batch (the bench's step), when asked for or when no other
   source is given.

Epoch 1 of a run includes warm-up (cuDNN autotuning, a CUDA graph's capture, torch.compile):
the epoch time is the median of the later epochs when a run has any (epoch 1's extra is counted
once per run), else epoch 1's, and the row says so. Seeds packed into one network share its
training time: each run counts its share.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field, replace
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
    """Seconds of one epoch of one run at the profile's split sizes, and what a run pays once.
    NaN: not measured (counted as 0, and the row says validation was not counted)."""

    train_seconds: float
    val_seconds: float = math.nan
    checkpoint_seconds: float = math.nan
    test_seconds: float = math.nan  # the test pass after training (last and best model)
    overhead_seconds: float = math.nan  # per run: start-up, data, epoch 1's warm-up
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


def read_wall_seconds(path: str | Path | None) -> dict[str, float]:
    """run_id -> wall seconds of the whole ``python -m hrsnet train`` process (a CSV with columns
    run_id, wall_seconds, as scripts/gpu_session.sh writes it); the last row of a run id counts.
    A packed run's id stands for the whole pack (one process trains its seeds)."""
    if path is None or not Path(path).exists():
        return {}
    with open(path, newline="") as stream:
        return {row["run_id"]: float(row["wall_seconds"]) for row in csv.DictReader(stream) if row.get("wall_seconds")}


@dataclass
class LoopRun:
    """One run of the real loop, as its config.json and history.csv tell it."""

    run_id: str
    arch: str
    width: int
    image_size: int
    batch_size: int
    train_size: int
    val_size: int
    test_size: int
    packed_seeds: int
    cuda_graphs: bool
    history: pd.DataFrame = field(repr=False)

    @property
    def setting(self) -> str:
        return f"{self.image_size}px batch {self.batch_size}"

    @property
    def loop(self) -> str:
        """How the loop ran: eager, whole-step CUDA graphs, or N packed seeds."""
        if self.packed_seeds > 1:
            return f"{self.packed_seeds} packed seeds"
        return "CUDA graphs" if self.cuda_graphs else "eager"

    def column(self, name: str, epochs: pd.Series | None = None) -> pd.Series | None:
        """A column's values as floats (of ``epochs`` rows if given), without empty values, or None."""
        if name not in self.history:
            return None
        frame = self.history if epochs is None else self.history[epochs]
        values = frame[name].astype(float).dropna()
        return values if len(values) else None

    @property
    def timed(self) -> pd.Series:
        """The rows whose epoch time counts: the epochs after the first (epoch 1 includes warm-up,
        capture and autotuning) when there are any, else the first."""
        later = self.history["epoch"].astype(int) >= 2
        return later if later.any() else ~later

    @property
    def timed_epochs(self) -> str:
        epochs = self.history["epoch"][self.timed].astype(int).tolist()
        if epochs == [1]:
            return "1 (with warm-up)"
        return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"

    def train_seconds(self) -> float:
        """Median training seconds of the timed epochs (``train_seconds`` if a history has that
        column, else ``epoch_seconds``, the training loop's time)."""
        values = self.column("train_seconds", self.timed)
        if values is None:
            values = self.column("epoch_seconds", self.timed)
        return float(values.median()) if values is not None else math.nan

    def first_epoch_extra(self) -> float:
        """What epoch 1 took beyond a timed epoch (warm-up), or 0 when epoch 1 is the timed one."""
        first = self.column("epoch_seconds", self.history["epoch"].astype(int) == 1)
        if first is None or self.timed_epochs.startswith("1"):
            return 0.0
        return max(0.0, float(first.iloc[0]) - self.train_seconds())


def read_loop_run(run_dir: Path) -> LoopRun:
    config = json.loads((run_dir / "config.json").read_text())
    train, dataset, resolved = config["train"], config["dataset"], config.get("resolved", {})
    history = pd.read_csv(run_dir / "history.csv")
    return LoopRun(
        run_id=config["run_id"],
        arch=train["arch"],
        width=int(train["width"]),
        image_size=int(train["image_size"]),
        batch_size=int(train["batch_size"]),
        train_size=int(dataset["train_size"]),
        val_size=int(dataset["val_size"]),
        test_size=int(dataset.get("test_size", 0)),
        packed_seeds=int(resolved.get("packed_seeds", 1)),
        cuda_graphs=bool(resolved.get("cuda_graphs", False)),
        history=history,
    )


def read_loop_runs(paths: list[str | Path]) -> list[LoopRun]:
    """The runs (with at least one epoch) in these run directories or folders of them."""
    runs = [read_loop_run(run_dir) for run_dir in _history_dirs(paths)]
    return [run for run in runs if len(run.history)]


def cost_from_run(
    run: LoopRun, full_train: int, full_val: int, full_test: int, wall_seconds: dict[str, float]
) -> EpochCost:
    """One run's epoch at ``full_*`` images, from its own sizes (the cost is per image at its
    setting). Packed seeds share the training time: each counts 1/seeds of it. Validation and
    checkpoints are per run; the test pass is twice (last and best model) the validation's cost
    per image. The run's wall time, less what its epochs and test pass account for, is its
    overhead (start-up, data); epoch 1's warm-up is added to it."""
    share = 1 / run.packed_seeds
    train = run.train_seconds()
    val = run.column("val_seconds", run.timed)
    val_per_image = float(val.median()) / run.val_size if val is not None and run.val_size else math.nan
    checkpoint = run.column("checkpoint_seconds", run.timed)
    overhead = run.first_epoch_extra() * share
    wall = wall_seconds.get(run.run_id, math.nan)
    if math.isfinite(wall):  # one process: a pack's wall time holds every seed's validation and test
        per_run = sum(
            float(c.sum()) for c in (run.column(n) for n in ("val_seconds", "checkpoint_seconds")) if c is not None
        )
        per_run += _nz(val_per_image) * run.test_size * 2
        shared = run.column("epoch_seconds")
        accounted = (float(shared.sum()) if shared is not None else 0.0) + per_run * run.packed_seeds
        overhead += max(0.0, wall - accounted) * share
    return EpochCost(
        train_seconds=train / run.train_size * full_train * share,
        val_seconds=val_per_image * full_val,
        checkpoint_seconds=float(checkpoint.median()) if checkpoint is not None else math.nan,
        test_seconds=val_per_image * full_test * 2,
        overhead_seconds=overhead,
        source=f"real loop, {run.loop}, at {run.setting} (epoch {run.timed_epochs})",
    )


def epoch_costs_from_histories(
    paths: list[str | Path],
    full_train: int,
    full_val: int,
    wall_seconds: dict[str, float] | None = None,
    full_test: int = 0,
) -> dict[tuple[str, int], EpochCost]:
    """(arch, C) -> EpochCost from the history.csv of real runs (run directories or folders of
    them) at their own image size and batch; several runs of one (arch, C) in one loop setting
    (seeds): medians; in several settings (eager, graphs, packed): the cheapest."""
    return _costs_by_cell(read_loop_runs(paths), (full_train, full_val, full_test), wall_seconds or {})


def _median_cost(costs: list[EpochCost], source: str) -> EpochCost:
    names = ("train_seconds", "val_seconds", "checkpoint_seconds", "test_seconds", "overhead_seconds")
    values = {
        name: statistics.median(getattr(cost, name) for cost in costs)
        if all(math.isfinite(getattr(cost, name)) for cost in costs)
        else math.nan
        for name in names
    }
    runs = f"{len(costs)} runs, " if len(costs) > 1 else ""
    return EpochCost(**values, source=f"{source[:-1]}, {runs}median)" if runs else source)


def _cheapest(settings: dict[str, list[EpochCost]]) -> EpochCost:
    costs = [_median_cost(costs, source) for source, costs in settings.items()]
    return min(costs, key=lambda cost: cost.epoch_seconds)


def _costs_by_cell(
    runs: list[LoopRun], sizes: tuple[int, int, int], wall: dict[str, float]
) -> dict[tuple[str, int], EpochCost]:
    """(arch, C) -> the cheapest loop setting's median cost of these runs at ``sizes`` images."""
    per_cell: dict[tuple[str, int], dict[str, list[EpochCost]]] = {}
    for run in runs:
        cost = cost_from_run(run, *sizes, wall)
        per_cell.setdefault((run.arch, run.width), {}).setdefault(cost.source, []).append(cost)
    return {cell: _cheapest(settings) for cell, settings in per_cell.items()}


def epoch_cost_from_step(step_ms: float, inference_images_per_second: float, config, source: str) -> EpochCost:
    """An epoch from a training step time and an inference rate at the run's settings."""
    train_images, val_images, test_images = split_sizes(config)
    return EpochCost(
        train_seconds=math.ceil(train_images / config.batch_size) * step_ms / 1000,
        val_seconds=val_images / inference_images_per_second,
        test_seconds=test_images * 2 / inference_images_per_second,  # last and best model
        source=source,
    )


def split_sizes(config) -> tuple[int, int, int]:
    """(train, validation, test) images of a run of ``config`` (its subsets of the full splits)."""
    full_train, full_val, full_test = FULL_SPLIT_SIZES[config.dataset]
    return (
        min(config.train_subset or full_train, full_train),
        min(config.val_subset or full_val, full_val),
        min(config.test_subset or full_test, full_test),
    )


def bench_row(rows: list[dict[str, str]], arch: str, width: int, image_size: int, batch_size: int, variant=None):
    """The bench CSV's row of our network (arch, C) at this size and batch (the grid's default
    row first, then any default row, then the others), of ``variant`` if given; or None."""
    matching = [
        row
        for row in rows
        if row["model"] == arch
        and int(row["width"]) == width
        and int(row["image_size"]) == image_size
        and int(row["batch_size"]) == batch_size
        and (variant is None or row["variant"] == variant)
    ]
    matching.sort(key=lambda row: (row["variant"] != "default", row["group"] != "grid"))
    return matching[0] if matching else None


def _per_image_ms(row) -> float:
    return float(row["train_step_ms"]) / int(row["batch_size"])


def epoch_costs_from_bench_csv(path: str | Path, configs) -> dict[tuple[str, int], EpochCost]:
    """(arch, C) -> EpochCost from a bench CSV's rows at the runs' image size and batch."""
    rows = read_bench_csv(Path(path))
    costs = {}
    for config in configs:
        row = bench_row(rows, config.arch, config.width, config.image_size, config.batch_size)
        if row is not None:
            costs[(config.arch, config.width)] = epoch_cost_from_step(
                float(row["train_step_ms"]),
                float(row["inference_images_per_second"]),
                config,
                f"bench CSV {Path(path).name}: {row['group']} {row['variant']} at {row['image_size']}px "
                f"batch {row['batch_size']}",
            )
    return costs


def scaled_from_other_network(
    config, runs_there: dict[tuple[str, int], EpochCost], rows: list[dict[str, str]]
) -> EpochCost | None:
    """This (arch, C)'s epoch from another network's real loop at the same size and batch, times
    the ratio of their bench step times there (one variant; the closest reference network)."""
    candidates = []
    for (arch, width), cost in runs_there.items():
        reference = bench_row(rows, arch, width, config.image_size, config.batch_size)
        if reference is None:
            continue
        own = bench_row(rows, config.arch, config.width, config.image_size, config.batch_size, reference["variant"])
        if own is None:
            continue
        ratio = float(own["train_step_ms"]) / float(reference["train_step_ms"])
        inference = float(reference["inference_images_per_second"]) / float(own["inference_images_per_second"])
        candidates.append((abs(math.log(ratio)), ratio, inference, arch, width, reference["variant"], cost))
    if not candidates:
        return None
    _, ratio, inference, arch, width, variant, cost = min(candidates, key=lambda candidate: candidate[0])
    return replace(
        cost,
        train_seconds=cost.train_seconds * ratio,
        val_seconds=cost.val_seconds * inference,
        test_seconds=cost.test_seconds * inference,
        source=f"{cost.source} of {arch} C={width} x bench step ratio {ratio:.3g} ({variant})",
    )


def scaled_from_other_setting(config, cost: EpochCost, run_setting: tuple[int, int], rows) -> EpochCost | None:
    """This (arch, C)'s epoch from its real loop at another (size, batch), times the ratio of its
    bench costs per image at the profile's setting and at the run's (rows of one variant), or None."""
    target = bench_row(rows, config.arch, config.width, config.image_size, config.batch_size)
    if target is None:
        return None
    there = bench_row(rows, config.arch, config.width, *run_setting, target["variant"])
    if there is None:
        return None
    ratio = _per_image_ms(target) / _per_image_ms(there)
    inference = float(there["inference_images_per_second"]) / float(target["inference_images_per_second"])
    return replace(
        cost,
        train_seconds=cost.train_seconds * ratio,
        val_seconds=cost.val_seconds * inference,
        test_seconds=cost.test_seconds * inference,
        source=f"{cost.source} x bench cost per image ratio {ratio:.3g} "
        f"({config.image_size}px batch {config.batch_size} / {run_setting[0]}px batch {run_setting[1]})",
    )


def estimate_profile(
    profile: str,
    device: str = "auto",
    steps: int | None = None,
    warmup: int | None = None,
    quiet: bool = False,
    histories: list[str | Path] | None = None,
    bench_csv: str | Path | None = None,
    wall_csv: str | Path | None = None,
    measure_missing: bool | None = None,
) -> list[dict[str, Any]]:
    """One row per run of ``profile``: minutes per epoch, per run at the authors' epoch counts
    (hrsnet.analysis.paper; where they released none, the profile's cap) and at the cap, and the
    source (see the module's docstring); a run that cannot be estimated has NaN minutes and says
    why. ``measure_missing``: measure here what has no other source (None: only when neither
    histories nor a bench CSV are given)."""
    configs = profile_runs(profile)
    if measure_missing is None:
        measure_missing = not histories and bench_csv is None
    rows_bench = read_bench_csv(Path(bench_csv)) if bench_csv is not None else []
    wall = read_wall_seconds(wall_csv)
    runs = read_loop_runs(histories) if histories else []
    costs: dict[tuple[str, int], EpochCost] = {}
    reasons: dict[tuple[str, int], str] = {}
    resolved = None
    for config in configs:
        cell = (config.arch, config.width)
        if cell in costs or cell in reasons:
            continue
        sizes = split_sizes(config)
        target = (config.image_size, config.batch_size)
        at_target = _costs_by_cell([run for run in runs if (run.image_size, run.batch_size) == target], sizes, wall)
        cost = at_target.get(cell)
        if cost is None and rows_bench:
            cost = scaled_from_other_network(config, at_target, rows_bench)
        if cost is None and rows_bench:
            for run in runs:
                if (run.arch, run.width) == cell and (run.image_size, run.batch_size) != target:
                    own = _costs_by_cell([run], sizes, wall)[cell]
                    cost = scaled_from_other_setting(config, own, (run.image_size, run.batch_size), rows_bench)
                    if cost is not None:
                        break
        if cost is None and rows_bench:
            cost = epoch_costs_from_bench_csv(bench_csv, [config]).get(cell)
        if cost is None and measure_missing:
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
            cost = epoch_cost_from_step(
                measured["train_step_ms"],
                measured["inference_images_per_second"],
                config,
                f"measured here ({device_name(resolved)}) at {config.image_size}px batch {config.batch_size}",
            )
        if cost is not None:
            costs[cell] = cost
            continue
        elsewhere = sorted({run.setting for run in runs if (run.arch, run.width) == cell})
        reasons[cell] = f"not estimated: no measurement at {config.image_size}px batch {config.batch_size}" + (
            f" (its real loop ran at {', '.join(elsewhere)}, and no bench CSV row pair scales it)" if elsewhere else ""
        )
    rows = []
    for config in configs:
        cell = (config.arch, config.width)
        cost = costs.get(cell)
        released = released_epochs(config.arch, config.width)
        epochs_released = released if released is not None else config.epochs
        row = {
            "run_id": config.run_id,
            "arch": config.arch,
            "width": config.width,
            "seed": config.seed,
            "image_size": config.image_size,
            "batch_size": config.batch_size,
            "epoch_minutes": cost.epoch_seconds / 60 if cost else math.nan,
            "validation_counted": bool(cost and math.isfinite(cost.val_seconds)),
            "epochs_released": epochs_released,
            "epochs_released_source": "released" if released is not None else "cap (none released)",
            "minutes_released": cost.run_seconds(epochs_released) / 60 if cost else math.nan,
            "max_epochs": config.epochs,
            "run_minutes": cost.run_seconds(config.epochs) / 60 if cost else math.nan,
            "source": cost.source if cost else reasons[cell],
        }
        rows.append(row)
        if config.seed == configs[0].seed:
            minutes = (
                f"{row['epoch_minutes']:7.2f} min/epoch; {row['minutes_released']:7.1f} min at {epochs_released} "
                f"epochs ({row['epochs_released_source']}), {row['run_minutes']:7.1f} min at {config.epochs}"
                if cost
                else "-"
            )
            log(f"  {config.arch:16s} C={config.width:<3d} {minutes}  [{row['source']}]", quiet)
    return rows


def estimate_totals(rows: list[dict[str, Any]], jobs: int = 1, speedup: float | None = None) -> dict[str, Any]:
    """Total minutes of the estimated runs, in sequence and as ``jobs`` concurrent jobs on one
    device, whose combined throughput is ``speedup`` x one job's (measured; default: no gain).
    ``complete``: every run of the rows is estimated (only then is the total the profile's).

    With N jobs each runs at speedup/N of its solo speed, so the wall time is the larger of
    total/speedup (the work, shared) and the longest run x N/speedup (it cannot be split)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    speedup = 1.0 if speedup is None else float(speedup)
    if not speedup > 0:
        raise ValueError(f"speedup must be > 0; got {speedup}")
    measured = [row for row in rows if math.isfinite(row["run_minutes"])]
    totals: dict[str, Any] = {
        "runs": len(rows),
        "runs_measured": len(measured),
        "complete": len(measured) == len(rows),
        "jobs": jobs,
        "speedup": speedup,
    }
    for key in ("minutes_released", "run_minutes"):
        total = sum(row[key] for row in measured)
        longest = max((row[key] for row in measured), default=0.0)
        totals[f"sequential_{key}"] = total
        totals[f"concurrent_{key}"] = max(total / speedup, longest * jobs / speedup) if jobs > 1 else total
    return totals


def describe_totals(profile: str, rows: list[dict[str, Any]], totals: dict[str, Any]) -> list[str]:
    """The estimate's summary lines: the profile's total only when every run is estimated; else
    the estimated runs' total, named as such, and the cells left out with why."""
    released, cap = totals["sequential_minutes_released"], totals["sequential_run_minutes"]
    epochs = max(row["max_epochs"] for row in rows)
    if totals["complete"]:
        lines = [
            f"profile {profile}: {len(rows)} runs, at most {cap:.0f} minutes ({cap / 60:.1f} h) at the epoch "
            f"limit ({epochs}); {released:.0f} minutes ({released / 60:.1f} h) at the authors' epoch counts"
        ]
    else:
        missing = {(row["arch"], row["width"]): row["source"] for row in rows if not math.isfinite(row["run_minutes"])}
        lines = [
            f"profile {profile}: {len(rows)} runs; {totals['runs_measured']} estimated ({cap:.0f} minutes at the "
            f"epoch limit, {released:.0f} at the authors' counts, for those runs only); "
            f"{len(rows) - totals['runs_measured']} not estimated, so no total for the profile:"
        ]
        lines += [
            f"  {arch} C={width}: {reason.removeprefix('not estimated: ')}" for (arch, width), reason in missing.items()
        ]
    if totals["jobs"] > 1:
        lines.append(
            f"  {totals['jobs']} concurrent jobs, measured speedup {totals['speedup']:.2f}x: "
            f"{totals['concurrent_run_minutes']:.0f} minutes at the limit, "
            f"{totals['concurrent_minutes_released']:.0f} at the authors' counts"
        )
    if not all(row["validation_counted"] for row in rows if math.isfinite(row["run_minutes"])):
        lines.append("  note: validation time not measured for some runs (history without val_seconds): left out")
    return lines


def concurrency_speedup(single: str | Path, concurrent: str | Path) -> float:
    """Combined training throughput of runs trained at the same time (``concurrent``: their run
    directories, or a folder of them) over that of one run alone (``single``), from the
    images_per_second of their histories' timed epochs (LoopRun.timed)."""

    def rates(path) -> list[float]:
        return [float(run.column("images_per_second", run.timed).median()) for run in read_loop_runs([path])]

    alone, together = rates(single), rates(concurrent)
    if not alone or not together:
        raise ValueError(f"no history.csv under {single if not alone else concurrent}")
    return sum(together) / statistics.mean(alone)


LOOP_COLUMNS = [
    "setting",
    "arch",
    "width",
    "image_size",
    "batch_size",
    "runs",
    "cuda_graphs",
    "packed_seeds",
    "timed_epochs",
    "images_per_second",
    "speedup",
    "epoch_seconds",
    "first_epoch_seconds",
]


def loop_comparison(settings: dict[str, str | Path]) -> list[dict[str, Any]]:
    """The real training loop (fit) in several settings, one row each, from the timed epochs of
    every run under each setting's folder (epoch 2 of a two-epoch run: epoch 1 includes warm-up,
    cuDNN autotuning and a CUDA graph's capture, shown apart as first_epoch_seconds): combined
    training images/s (the sum over runs that trained together, e.g. packed seeds), the speedup
    over the first setting, and what the runs' config.json says was resolved."""
    rows = []
    for setting, folder in settings.items():
        runs = read_loop_runs([folder])
        if not runs:
            raise ValueError(f"no history.csv with an epoch under {folder} (setting {setting!r})")
        first = runs[0]
        rows.append(
            {
                "setting": setting,
                "arch": first.arch,
                "width": first.width,
                "image_size": first.image_size,
                "batch_size": first.batch_size,
                "runs": len(runs),
                "cuda_graphs": "/".join(sorted({str(run.cuda_graphs).lower() for run in runs})),
                "packed_seeds": max(run.packed_seeds for run in runs),
                "timed_epochs": "/".join(sorted({run.timed_epochs for run in runs})),
                "images_per_second": sum(float(run.column("images_per_second", run.timed).median()) for run in runs),
                "epoch_seconds": max(run.train_seconds() for run in runs),
                "first_epoch_seconds": max(float(run.history["epoch_seconds"].astype(float).iloc[0]) for run in runs),
            }
        )
    for row in rows:
        row["speedup"] = row["images_per_second"] / rows[0]["images_per_second"]
    return rows


def write_loop_comparison(folder: str | Path, settings: list[str], output: str | Path | None = None):
    """loop_comparison of ``folder``/<setting> for each setting, written to ``output`` (default
    ``folder``/loop.csv) and printed (scripts/gpu_session.sh)."""
    folder = Path(folder)
    rows = loop_comparison({name: folder / name for name in settings})
    write_csv(Path(output) if output else folder / "loop.csv", rows, LOOP_COLUMNS)
    for row in rows:
        print(
            f"{row['setting']:8s} {row['images_per_second']:9.1f} img/s  x{row['speedup']:.2f}  "
            f"(epoch {row['timed_epochs']}; graphs {row['cuda_graphs']}, {row['packed_seeds']} seed(s) per pack, "
            f"{row['runs']} run(s); epoch 1 {row['first_epoch_seconds']:.1f} s)"
        )
    return rows
