"""Benchmarks: training and inference throughput, peak memory and FLOP utilisation, with
timm's ``hrnet_w18`` measured the same way in the same process, so ratios come from one run.

Timing follows the usual rules: warm-up steps first (allocator, cuDNN autotuning,
compilation), a device synchronisation before reading any clock (CUDA events on a GPU),
the median over repeats. The training step includes the device-resident preprocessing of
a uint8 batch (gather, resize to the setting's size, normalise), as in training. FLOPs per
image come from FlopCounterMode (forward + backward of one image), on the meta device, or on
the CPU at small image sizes (the same count, in less time).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..config import TrainConfig
from ..data import preprocess
from ..engine.cudagraphs import GraphedTrainStep
from ..engine.step import BatchShare, StepSettings, train_step
from ..models import create_model, list_models
from ..provenance import cpu_model, git_commit
from ..rundir import atomic_write
from ..runtime import (
    autocast_context,
    make_optimizer,
    memory_format,
    resolve_channels_last,
    resolve_device,
    resolve_optimizer_kernel,
    resolve_precision,
)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' datasheets.
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 SXM", 989.4),
    ("H100 80GB HBM3", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 756.0),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
]
TIMM_PEER = "timm:hrnet_w18"
# (train, validation, test) images of each dataset's full splits, for time estimates.
FULL_SPLIT_SIZES = {
    "cifar100": (40_000, 10_000, 10_000),
    "synthetic": (40_000, 10_000, 10_000),
    "digits": (1150, 288, 359),
}
NUM_CLASSES = 100
# compile_seconds: the wall time of building the step and its first FIRST_STEPS steps, less
# FIRST_STEPS steady steps: torch.compile's compilation, or a CUDA graph's warm-up and capture.
FIRST_STEPS = 3
# train_flops_per_image counts on the CPU up to this image size, above it on the meta device.
SMALL_FLOP_COUNT_SIZE = 64
# One row of results/bench/<device>.csv; rows are appended as they are measured.
BENCH_COLUMNS = [
    "device",
    "device_name",
    "torch",
    "group",
    "model",
    "arch",
    "width",
    "setting",
    "image_size",
    "batch_size",
    "variant",
    "precision",
    "channels_last",
    "compile",
    "graphs",
    "optimizer_kernel",
    "train_step_ms",
    "compile_seconds",
    "train_images_per_second",
    "peak_memory_gib",
    "inference_images_per_second",
    "train_gflops_per_image",
    "achieved_tflops",
    "peak_tflops",
    "flop_utilisation",
    "measured",  # the UTC date of the measurement
    "commit",  # the git commit of the code measured ("" outside a checkout)
]
# Columns added after the first version, with the value an earlier row means: read_bench_csv
# reads older files (reference/bench/ holds some) with these filled.
ADDED_COLUMNS = {"graphs": "False", "compile_seconds": "nan", "measured": "", "commit": ""}
ROW_KEY = ("group", "model", "width", "setting", "variant")  # what --resume matches rows by
PARTS = ("grid", "peer", "ablation", "preprocessing")  # what --only can name, besides NETWORK:C


@dataclass(frozen=True)
class Setting:
    name: str
    image_size: int
    batch_size: int


@dataclass(frozen=True)
class Variant:
    """The fast-path switches of one measured training step."""

    name: str
    precision: str = "fp32"  # or "bf16" (autocast)
    channels_last: bool = False
    compile: str = "none"  # torch.compile mode; "reduce-overhead" adds CUDA graphs
    optimizer_kernel: str = "for-loop"  # "for-loop", "foreach" or "fused"
    graphs: bool = False  # whole-step CUDA graph (hrsnet.cudagraphs); CUDA only


PLAIN = Variant("plain fp32 eager")


def default_settings(device: torch.device) -> list[Setting]:
    if device.type == "cuda":
        return [Setting("paper", 224, 16), Setting("throughput", 224, 128)]
    # A CPU cannot do a 224x224 sweep in minutes; --settings paper still asks for it.
    return [Setting("cpu", 64, 16)]


def parse_setting(text: str) -> Setting:
    """``paper``, ``throughput``, ``cpu`` or ``name:SIZE:BATCH``."""
    named = {
        "paper": Setting("paper", 224, 16),
        "throughput": Setting("throughput", 224, 128),
        "cpu": Setting("cpu", 64, 16),
    }
    if text in named:
        return named[text]
    match = re.fullmatch(r"([a-z0-9_-]+):(\d+):(\d+)", text)
    if not match:
        raise ValueError(f"setting must be paper, throughput, cpu or NAME:IMAGE_SIZE:BATCH_SIZE; got {text!r}")
    return Setting(match[1], int(match[2]), int(match[3]))


def default_variant(device: torch.device) -> Variant:
    """What training uses by default on this device (TrainConfig's "auto" switches)."""
    return Variant(
        "default",
        precision=resolve_precision("auto", device),
        channels_last=resolve_channels_last("auto", device),
        optimizer_kernel=resolve_optimizer_kernel("auto", device),
    )


def graphs_variant(device: torch.device) -> Variant:
    """The default switches plus the whole-step CUDA graph."""
    return dataclasses.replace(default_variant(device), name="default + whole-step CUDA graph", graphs=True)


def ablation_variants(device: torch.device, include_compile: bool) -> list[Variant]:
    """The plain fp32 eager path, then one fast-path switch added at a time; on CUDA, the
    whole-step CUDA graph and torch.compile's two modes are each added to the fused step."""
    steps = [PLAIN]
    steps.append(dataclasses.replace(steps[-1], name="+ channels_last", channels_last=True))
    if device.type == "cuda":
        steps.append(dataclasses.replace(steps[-1], name="+ bf16 autocast", precision="bf16"))
        steps.append(dataclasses.replace(steps[-1], name="+ fused optimizer", optimizer_kernel="fused"))
    else:
        steps.append(dataclasses.replace(steps[-1], name="+ foreach optimizer", optimizer_kernel="foreach"))
    eager = steps[-1]
    if device.type == "cuda":
        steps.append(dataclasses.replace(eager, name="+ whole-step CUDA graph", graphs=True))
    if include_compile:
        steps.append(dataclasses.replace(eager, name="+ torch.compile", compile="default"))
        if device.type == "cuda":
            steps.append(dataclasses.replace(eager, name="+ torch.compile reduce-overhead", compile="reduce-overhead"))
    return steps


def ablation_chunks(variants: list[Variant]) -> list[list[Variant]]:
    """The ablation's variants in the groups measured (and written) together: the eager steps side
    by side (interleaved timing), then each variant whose warm-up compiles or captures (minutes for
    torch.compile) on its own, so a run stopped during one keeps every row measured before it."""
    eager = [v for v in variants if v.compile == "none" and not v.graphs]
    return ([eager] if eager else []) + [[v] for v in variants if v not in eager]


def timm_variant(device: torch.device) -> Variant:
    """timm's recommended fast settings, as its train.py applies them with ``--amp --amp-dtype
    bfloat16 --channels-last``: autocast (bf16: no loss scaler, as timm does for bf16) and a
    channels_last model; its SGD keeps torch's default kernel (foreach on CUDA). On a CPU without
    bf16 units, channels_last in fp32."""
    if device.type == "cuda":
        return Variant(
            "timm AMP bf16 + channels_last", precision="bf16", channels_last=True, optimizer_kernel="foreach"
        )
    return Variant("timm channels_last", channels_last=True, optimizer_kernel="foreach")


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file name for results/bench/: the GPU's name, or cpu-<N>threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_model(name: str, width: int, **options: Any) -> nn.Module:
    """A preset at width C (``options``: model options, as ``--model-option`` gives them), or timm's peer."""
    if name == TIMM_PEER:
        if options:
            raise ValueError(f"{TIMM_PEER} takes no model options; got {sorted(options)}")
        import timm  # lazy: timm is optional (the test extra), needed only for the peer

        return timm.create_model("hrnet_w18", pretrained=False, num_classes=NUM_CLASSES)
    return create_model(name, width=width, num_classes=NUM_CLASSES, **options)


def train_flops_per_image(name: str, width: int, image_size: int, device: str | None = None, **options: Any) -> int:
    """Forward + backward FLOPs of one image (a multiply-add counts 2), counted by FlopCounterMode
    (``options``: model options, as build_model takes them).

    ``device`` None: up to SMALL_FLOP_COUNT_SIZE pixels on real CPU tensors, larger on the meta
    device (shapes only: no memory, no compute). The count depends on shapes alone, so both give
    the same number (tests/test_bench.py); at small sizes the CPU is 3x faster than torch's Python
    meta kernels (seconds per network), at 224px the meta device is what fits anywhere.
    """
    device = device or ("cpu" if image_size <= SMALL_FLOP_COUNT_SIZE else "meta")
    if device not in ("cpu", "meta"):
        raise ValueError(f"FLOPs are counted on cpu or meta; got {device!r}")
    # Two images: in training mode BatchNorm needs more than one value per channel, and at
    # small sizes the lowest branch is 1x1. Conv and matmul FLOPs are linear in the batch.
    # On the CPU without torch.device("cpu") as a context: its function mode would add to every op.
    # fork_rng: real weights draw from the CPU generator; the caller's next draws stay as they were.
    placement = torch.device("meta") if device == "meta" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), placement:
        model = build_model(name, width, **options)
        images = torch.zeros(2, 3, image_size, image_size)
        labels = torch.zeros(2, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(images), labels).backward()
    return int(counter.get_total_flops()) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block_seconds(run: Callable[[], None], device: torch.device, steps: int) -> float:
    """Seconds per call of ``run``, timed over one block of ``steps`` calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    begin = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - begin) / steps


def _median_seconds(run: Callable[[], None], device: torch.device, steps: int, repeats: int) -> float:
    return statistics.median(_block_seconds(run, device, steps) for _ in range(repeats))


def _source_batch(device: torch.device, count: int = 512) -> torch.Tensor:
    """CIFAR-sized uint8 images on the device: what a training run holds."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)


def make_train_step(model: nn.Module, variant: Variant, setting: Setting, device: torch.device):
    """A closure doing one training step of fit() (gather by index, preprocess, forward, backward,
    optimizer: hrsnet.engine.step.train_step); with ``variant.graphs`` the whole step is a CUDA
    graph (hrsnet.engine.cudagraphs), whose warm-up and capture happen here."""
    layout = memory_format(variant.channels_last)
    model.to(device=device, memory_format=layout).train()
    protocol = TrainConfig()  # the optimizer training uses by default
    optimizer = make_optimizer(
        protocol.optimizer,
        model.parameters(),
        protocol.lr,
        protocol.momentum,
        protocol.weight_decay,
        variant.optimizer_kernel,
    )
    forward = model if variant.compile == "none" else torch.compile(model, mode=variant.compile)
    source = _source_batch(device)
    labels_all = torch.randint(0, NUM_CLASSES, (len(source),), generator=torch.Generator().manual_seed(1)).to(device)
    # Batch indices as fit() has them: a device permutation, sliced per step (no host work).
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(2)).to(device)
    position = [0]

    def next_index() -> torch.Tensor:
        start = position[0] % (len(source) - setting.batch_size + 1)
        position[0] += setting.batch_size
        return order[start : start + setting.batch_size]

    settings = StepSettings(setting.image_size, variant.precision, layout)
    if variant.graphs:
        graphed = GraphedTrainStep(model, optimizer, BatchShare(source, labels_all, next_index()), settings)

        def graph_step() -> None:
            graphed.step(next_index())

        return graph_step

    def step() -> None:
        model.train()
        train_step(forward, optimizer, [BatchShare(source, labels_all, next_index())], settings)

    return step


def make_inference_step(model: nn.Module, variant: Variant, setting: Setting, device: torch.device):
    layout = memory_format(variant.channels_last)
    model.to(device=device, memory_format=layout)
    source = _source_batch(device)

    @torch.no_grad()
    def step() -> None:
        model.eval()
        images = preprocess(source[: setting.batch_size], setting.image_size, memory_format=layout)
        with autocast_context(variant.precision, device):
            model(images)

    return step


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure(
    cases: list[tuple[str, int, Variant]],
    setting: Setting,
    device: torch.device,
    warmup: int,
    steps: int,
    repeats: int,
    inference: bool = True,
) -> list[dict[str, Any]]:
    """One row per (model name, width, variant), measured side by side.

    Each model is built and warmed up on its own (its peak memory is read then); then the
    timed blocks alternate between the models (A B A B ...), so a drift in clock speed or
    temperature during the run touches all of them alike. The median block is reported.
    """
    prepared = []
    first_seconds = []
    for name, width, variant in cases:
        torch.manual_seed(0)
        model = build_model(name, width)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        begin = time.perf_counter()
        train_step = make_train_step(model, variant, setting, device)
        for index in range(warmup):
            train_step()
            if index + 1 == min(warmup, FIRST_STEPS):
                _sync(device)
                first_seconds.append(time.perf_counter() - begin)
        if warmup == 0:
            first_seconds.append(math.nan)
        _sync(device)
        peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
        infer_step = None
        if inference:  # inference timing stays eager
            infer_step = make_inference_step(model, dataclasses.replace(variant, compile="none"), setting, device)
            for _ in range(max(1, warmup // 2)):
                infer_step()
            _sync(device)
        prepared.append((train_step, infer_step, peak_memory))
    train_blocks: list[list[float]] = [[] for _ in cases]
    infer_blocks: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for index, (train_step, infer_step, _) in enumerate(prepared):
            train_blocks[index].append(_block_seconds(train_step, device, steps))
            if infer_step is not None:
                infer_blocks[index].append(_block_seconds(infer_step, device, steps))
    rows = []
    for case, (_, _, peak_memory), train_times, infer_times, first in zip(
        cases, prepared, train_blocks, infer_blocks, first_seconds
    ):
        step_seconds = statistics.median(train_times)
        variant = case[2]
        compiled = variant.compile != "none" or variant.graphs
        rows.append(
            {
                "train_step_ms": step_seconds * 1000,
                "compile_seconds": max(0.0, first - min(warmup, FIRST_STEPS) * step_seconds) if compiled else math.nan,
                "train_images_per_second": setting.batch_size / step_seconds,
                "peak_memory_gib": peak_memory,
                "inference_images_per_second": setting.batch_size / statistics.median(infer_times)
                if infer_times
                else math.nan,
            }
        )
    return rows


@dataclass
class BenchOptions:
    archs: tuple[str, ...] = tuple(list_models())
    widths: tuple[int, ...] = (2, 18, 30)
    settings: tuple[Setting, ...] | None = None  # None: default_settings(device)
    device: str = "auto"
    peak_tflops: float | None = None
    warmup: int | None = None  # None: 10 on CUDA, 1 on CPU
    steps: int | None = None  # None: 20 on CUDA, 2 on CPU
    repeats: int | None = None  # None: 5 on CUDA, 2 on CPU
    timm: bool = True
    ablation: bool = True
    include_compile: bool | None = None  # None: on CUDA only (CPU compilation takes minutes)
    preprocessing: bool = True
    results_dir: str = "results"
    output: str | None = None  # CSV path; default results_dir/bench/<device>.csv
    quiet: bool = False
    only: tuple[str, ...] = ()  # parts (PARTS) and grid cells NETWORK:C; empty: everything
    resume: bool = False  # keep the CSV's rows and measure only the missing ones
    grid_variant: str = "default"  # the grid's switches: default, graphs (CUDA) or plain
    flops: bool = True  # count FLOPs per image (seconds per network at 224px): FLOP utilisation


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def parse_only(items: tuple[str, ...] | list[str], archs: tuple[str, ...]) -> tuple[set[str], set[tuple[str, int]]]:
    """``--only`` items -> (parts to run, grid cells). A cell NETWORK:C implies the grid part."""
    parts: set[str] = set()
    cells: set[tuple[str, int]] = set()
    for item in items:
        if item in PARTS:
            parts.add(item)
            continue
        name, _, width = item.rpartition(":")
        if not name or not width.isdigit() or name not in list_models():
            raise ValueError(
                f"--only takes {', '.join(PARTS)} or a grid cell NETWORK:C with NETWORK one of "
                f"{', '.join(list_models())} (e.g. hrnet_official:30); got {item!r}"
            )
        cells.add((name, int(width)))
        parts.add("grid")
    return parts, cells


def _row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[key]) for key in ROW_KEY)


def read_bench_csv(path: Path) -> list[dict[str, str]]:
    """The complete rows of a bench CSV (a line cut short by a killed run is left out), in this
    version's columns: a file of an earlier version (without the columns in ADDED_COLUMNS) is read
    with those columns filled as its rows meant them."""
    if not path.exists() or not path.stat().st_size:
        return []
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        header = list(reader.fieldnames or [])
        absent = [column for column in BENCH_COLUMNS if column not in header]
        known = [column for column in BENCH_COLUMNS if column in header] == header
        missing = [column for column in absent if column not in ADDED_COLUMNS]
        unknown = [column for column in header if column not in BENCH_COLUMNS]
        if missing or unknown or not known:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(unknown)}"] if unknown else []
            problem = "; ".join(problems) or "in another order"
            raise ValueError(
                f"{path} is not a bench CSV this version can read (columns: {problem}); "
                f"regenerate it with python -m hrsnet bench --output {path}, or move it away"
            )
        filled = {column: ADDED_COLUMNS[column] for column in absent}
        complete = [{**row, **filled} for row in reader if None not in row.values() and None not in row]
        return [{column: row[column] for column in BENCH_COLUMNS} for row in complete]


class BenchWriter:
    """Appends each measured row to the CSV at once (flushed and fsynced), so a run killed
    at any point keeps every row measured before; ``resume`` keeps the file's complete rows."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = read_bench_csv(path) if resume else []
        self.done = {_row_key(row) for row in kept}
        # Rewritten whole (atomically) first: drops a cut-short last line, writes the header.
        atomic_write(path, lambda stream: self._write(stream, kept, header=True))

    @staticmethod
    def _write(stream, rows, header: bool) -> None:
        writer = csv.DictWriter(stream, fieldnames=BENCH_COLUMNS, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", newline="") as stream:
            self._write(stream, [{key: row[key] for key in BENCH_COLUMNS} for row in rows], header=False)
            stream.flush()
            os.fsync(stream.fileno())
        self.done.update(_row_key(row) for row in rows)


def run_benchmark(options: BenchOptions) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """Measure every (network, width, setting), timm's peer, the fast-path ablation and the
    preprocessing comparison; each row is appended to results/bench/<device>.csv (or
    ``options.output``) as soon as it is measured. Returns (rows of the CSV, summary, path)."""
    device = resolve_device(options.device)
    cuda = device.type == "cuda"
    warmup = options.warmup if options.warmup is not None else (10 if cuda else 1)
    steps = options.steps if options.steps is not None else (20 if cuda else 2)
    repeats = options.repeats if options.repeats is not None else (5 if cuda else 2)
    settings = list(options.settings or default_settings(device))
    peak = peak_tflops(device, options.peak_tflops)
    include_compile = cuda if options.include_compile is None else options.include_compile
    parts, cells = parse_only(options.only, options.archs)
    if not parts:
        parts = {"grid"} | ({"peer"} if options.timm else set()) | ({"ablation"} if options.ablation else set())
        parts |= {"preprocessing"} if options.preprocessing else set()
    grid_variant = {"default": default_variant(device), "plain": PLAIN}.get(options.grid_variant)
    if options.grid_variant == "graphs":
        grid_variant = graphs_variant(device)
    if grid_variant is None:
        raise ValueError(f"--grid-variant must be default, graphs or plain; got {options.grid_variant!r}")
    if grid_variant.graphs and not cuda:
        raise ValueError("--grid-variant graphs needs a CUDA device (whole-step CUDA graphs)")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base = {
        "device": device_slug(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "measured": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "commit": git_commit() or "",
    }
    path = Path(options.output) if options.output else Path(options.results_dir) / "bench" / f"{base['device']}.csv"
    writer = BenchWriter(path, options.resume)
    flops_cache: dict[tuple[str, int, int], int] = {}

    def record(cases: list[tuple[str, str, int, Variant]], setting: Setting, group: str) -> None:
        """Measure (name, arch, width, variant) cases side by side; append one row each."""
        cases = [
            (name, arch, width, variant)
            for name, arch, width, variant in cases
            if (group, name, str(width), setting.name, variant.name) not in writer.done
        ]
        if not cases:
            return
        for name, _, width, _ in cases:
            if (name, width, setting.image_size) not in flops_cache:
                flops_cache[(name, width, setting.image_size)] = (
                    train_flops_per_image(name, width, setting.image_size) if options.flops else math.nan
                )
        batch = setting
        while True:
            try:
                measured = measure(
                    [(name, width, variant) for name, _, width, variant in cases], batch, device, warmup, steps, repeats
                )
                break
            except RuntimeError as error:  # the largest batch that fits, for the throughput setting
                if not (cuda and _is_out_of_memory(error) and batch.name == "throughput" and batch.batch_size > 8):
                    raise
                torch.cuda.empty_cache()
                batch = dataclasses.replace(batch, batch_size=batch.batch_size // 2)
        rows = []
        for (name, arch, width, variant), result in zip(cases, measured):
            flops = flops_cache[(name, width, setting.image_size)]
            achieved = flops * result["train_images_per_second"] / 1e12
            row = {
                **base,
                "group": group,
                "model": name,
                "arch": arch,
                "width": width,
                "setting": setting.name,
                "image_size": batch.image_size,
                "batch_size": batch.batch_size,
                "variant": variant.name,
                "precision": variant.precision,
                "channels_last": variant.channels_last,
                "compile": variant.compile,
                "graphs": variant.graphs,
                "optimizer_kernel": variant.optimizer_kernel,
                **result,
                "train_gflops_per_image": flops / 1e9,
                "achieved_tflops": achieved,
                "peak_tflops": peak if peak is not None else math.nan,
                "flop_utilisation": achieved / peak if peak else math.nan,
            }
            rows.append(row)
            compiled = f"  compile {row['compile_seconds']:.1f} s" if math.isfinite(row["compile_seconds"]) else ""
            log(
                f"  {group:9s} {name:16s} C={width:<3d} {setting.name:10s} {variant.name:32s} "
                f"train {row['train_images_per_second']:8.1f} img/s  "
                f"infer {row['inference_images_per_second']:8.1f} img/s{compiled}",
                options.quiet,
            )
        writer.append(rows)

    log(
        f"benchmark on {base['device_name']} (torch {torch.__version__}); warm-up {warmup}, "
        f"{steps} steps x {repeats} repeats, median; rows appended to {path}"
        + (f" (resuming: {len(writer.done)} rows kept)" if options.resume else ""),
        options.quiet,
    )
    default = default_variant(device)
    peer_ours = [default] + ([graphs_variant(device)] if cuda else []) + [PLAIN]
    for setting in settings:
        if "grid" in parts:
            for arch in options.archs:
                for width in options.widths:
                    if cells and (arch, width) not in cells:
                        continue
                    record([(arch, arch, width, grid_variant)], setting, "grid")
        if "peer" in parts:  # timm's fast settings vs our fast paths and our plain fp32 path, interleaved
            record(
                [("hrnet_official", "hrnet_official", 18, variant) for variant in peer_ours]
                + [(TIMM_PEER, "hrnet_official", 18, timm_variant(device))],
                setting,
                "peer",
            )
    if "ablation" in parts:
        ablation_setting = next((s for s in settings if s.batch_size == 16), settings[0])
        for chunk in ablation_chunks(ablation_variants(device, include_compile)):
            record([("hrnet_official", "hrnet_official", 18, v) for v in chunk], ablation_setting, "ablation")

    rows = read_bench_csv(path)
    summary = summarise(pd.DataFrame(rows, columns=BENCH_COLUMNS), base["device_name"])
    if "preprocessing" in parts:
        summary.update(compare_preprocessing(device, quiet=options.quiet))
    return rows, summary, path


def summarise(frame, device: str) -> dict[str, Any]:
    """Ratios from a bench CSV's rows: our fastest and our plain path vs timm per setting, and
    the fastest ablation step vs the plain path."""
    summary: dict[str, Any] = {"device": device}
    if not len(frame):
        return summary
    frame = frame.copy()
    for column in ("train_images_per_second", "inference_images_per_second"):
        frame[column] = frame[column].astype(float)
    for setting in dict.fromkeys(frame["setting"]):
        pair = frame[(frame["group"] == "peer") & (frame["setting"] == setting)]
        ours, peer = pair[pair["model"] == "hrnet_official"], pair[pair["model"] == TIMM_PEER]
        if not (len(ours) and len(peer)):
            continue
        timm_train = peer["train_images_per_second"].iloc[0]
        best = ours.loc[ours["train_images_per_second"].idxmax()]
        summary[f"vs_timm_train_{setting}"] = best["train_images_per_second"] / timm_train
        summary[f"vs_timm_train_{setting}_ours"] = best["variant"]
        summary[f"vs_timm_inference_{setting}"] = (
            ours["inference_images_per_second"].max() / peer["inference_images_per_second"].iloc[0]
        )
        plain = ours[ours["variant"] == PLAIN.name]
        if len(plain):
            summary[f"plain_vs_timm_train_{setting}"] = plain["train_images_per_second"].iloc[0] / timm_train
            summary[f"fastest_vs_plain_{setting}"] = (
                best["train_images_per_second"] / plain["train_images_per_second"].iloc[0]
            )
    ablation = frame[frame["group"] == "ablation"]
    if len(ablation) > 1:
        plain = ablation[ablation["variant"] == PLAIN.name]
        if len(plain):
            summary["fastest_vs_plain"] = (
                ablation["train_images_per_second"].max() / plain["train_images_per_second"].iloc[0]
            )
    return summary


def compare_preprocessing(
    device: torch.device, image_size: int = 224, count: int = 256, quiet: bool = False
) -> dict[str, float]:
    """Images/s of the device-resident batched preprocessing vs a per-image PIL pipeline
    (Resize + ToTensor + Normalize, as a torchvision Dataset with transforms does it)."""
    from PIL import Image  # lazy: only this comparison needs PIL
    from torchvision import transforms  # lazy: torchvision's import costs seconds in every bench process

    images = _source_batch(torch.device("cpu"), count)
    arrays = [image.permute(1, 2, 0).numpy() for image in images]
    pipeline = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )

    def per_image() -> None:
        torch.stack([pipeline(Image.fromarray(np.asarray(array))) for array in arrays])

    on_device = images.to(device)

    def batched() -> None:
        for start in range(0, count, 64):
            preprocess(on_device[start : start + 64], image_size)

    per_image()
    batched()
    _sync(device)
    pil_seconds = _median_seconds(per_image, torch.device("cpu"), 1, 3)
    device_seconds = _median_seconds(batched, device, 1, 5)
    result = {
        "preprocess_pil_images_per_second": count / pil_seconds,
        "preprocess_device_images_per_second": count / device_seconds,
        "preprocess_speedup": pil_seconds / device_seconds,
    }
    log(
        f"  preprocessing to {image_size}px: per-image PIL {result['preprocess_pil_images_per_second']:.0f} img/s, "
        f"batched on {device.type} {result['preprocess_device_images_per_second']:.0f} img/s "
        f"({result['preprocess_speedup']:.1f}x)",
        quiet,
    )
    return result
